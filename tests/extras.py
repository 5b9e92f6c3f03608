"""The extra args that recipes declare in `catalog()`, built for the test problems.

One builder per extra-arg name. Each takes ``loss`` (a jax-traceable function
params -> scalar, the loss on the current batch) and the current ``params`` and
returns the value to pass as that keyword. The contract suite and the
reference harness both call `extra_args`; a recipe that needs a new kind of
extra arg adds one builder here.

Functions are passed as `jax.tree_util.Partial`s: pytrees, so that they can be
arguments of a jitted step. A `loss` that is already a Partial (the reference
harness binds the step number as its leaf) is passed as it is, so the jitted
step is not retraced when only the step changes.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial


def _as_partial(fn: Callable) -> Partial:
  return fn if isinstance(fn, Partial) else Partial(fn)


def _pairwise_logits(params: Any) -> jax.Array:
  """Sophia-G's logits_fn for any tree: row i of a (d, 2) batch is (x_i - sg(x_i), 0)
  for the i-th of the d flattened entries. Every logit is 0 with a unit gradient,
  so the Gauss-Newton-Bartlett estimate B * grad^2 is exactly 1 / (4 d) whatever
  labels are drawn: deterministic, for the contract and the reference."""
  flat = [jnp.ravel(l).astype(jnp.promote_types(l.dtype, jnp.float32))
          for l in jax.tree.leaves(params)]
  x = jnp.concatenate(flat) if flat else jnp.zeros((0,), jnp.float32)  # no params: no rows
  return jnp.stack([x - jax.lax.stop_gradient(x), jnp.zeros_like(x)], -1)


BUILDERS: dict[str, Callable[[Callable, Any], Any]] = {
    "obj_fn": lambda loss, params: _as_partial(loss),
    "value": lambda loss, params: jnp.asarray(loss(params)),
    "logits_fn": lambda loss, params: Partial(_pairwise_logits),
}


def extra_args(names, loss, params) -> dict[str, Any]:
  """The keyword extra args `names`, computed from `loss` at `params`."""
  unknown = [n for n in names if n not in BUILDERS]
  if unknown:
    raise KeyError(f"tests/extras.py has no builder for extra args {unknown}")
  return {n: BUILDERS[n](loss, params) for n in names}
