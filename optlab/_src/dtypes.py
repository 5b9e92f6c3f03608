"""The dtypes optlab computes and stores statistics in."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def accumulation_dtype(dtype: Any) -> Any:
  """The dtype norms are computed in: float32, or the input's if wider."""
  return jnp.promote_types(dtype, jnp.float32)


def statistics_dtype(dtype: Any) -> Any:
  """The dtype a param-shaped statistic is kept in for params of `dtype`: theirs,
  but float32 for float16. float16's 5-bit exponent squares a gradient entry
  below 2.4e-4 to 0 and one above 256 to inf, so a second moment stored in it
  is 0 for small gradients (and m / (sqrt(v) + eps) explodes) or inf for large
  ones; bfloat16 has float32's exponent range."""
  dtype = jnp.dtype(dtype)
  return jnp.dtype(jnp.float32) if dtype == jnp.float16 else dtype


def tree_accumulation_dtype(tree: Any) -> Any:
  """float32, or the widest `accumulation_dtype` among the leaves of `tree`
  (float64 params): the dtype of a scalar statistic over the whole tree."""
  return functools.reduce(jnp.promote_types,
                          [accumulation_dtype(jnp.result_type(x)) for x in jax.tree.leaves(tree)],
                          jnp.dtype(jnp.float32))
