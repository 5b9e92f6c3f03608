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
import numpy as np
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


def synthetic_layer_stats(params: Any, xp: Any = jnp) -> dict:
  """The contract's `layer_stats` for a tree without a model: one dense layer per
  2-D leaf ``w*`` of a flat dict (bias: the 1-D leaf ``b*`` of the same suffix and
  size d_out, if present), fitted by least squares to fixed data. With n = 16
  rows ``a[i, j] = cos(0.9 i + 1.7 j + 0.3 l)`` and targets
  ``y[i, j] = sin(1.1 i - 0.6 j + 0.5 l)`` (l: the layer's index in sorted
  order), the out_grads ``a W - y`` are the per-row gradients of
  ``0.5 |a W - y|²``: statistics consistent with a loss, that depend on the
  params and can be recomputed in NumPy (``xp=np``) by the references. The bias
  leaf is named (the homogeneous coordinate) but stays out of the out_grads, so
  a subtree without it (the masked and partition contract points) sees the same
  statistics as the whole tree."""
  import optlab
  layers = sorted(k for k, v in params.items() if xp.ndim(v) == 2 and k.startswith("w"))
  stats = {}
  for l, k in enumerate(layers):
    w = params[k]
    (d_in, d_out), b = xp.shape(w), "b" + k[1:]
    has_bias = b in params and xp.shape(params[b]) == (d_out,)
    rows, cols = np.arange(16.0)[:, None], np.arange(max(d_in, d_out), dtype=float)[None]
    a = xp.asarray(np.cos(0.9 * rows + 1.7 * cols[:, :d_in] + 0.3 * l), w.dtype)
    y = xp.asarray(np.sin(1.1 * rows - 0.6 * cols[:, :d_out] + 0.5 * l), w.dtype)
    out = a @ w - y
    stats[f"['{k}']"] = optlab.LayerStats(a, out, f"['{b}']" if has_bias else None)
  return stats


def _layer_stats(loss: Callable, params: Any) -> dict:
  """A loss with a model (the digits task) captures real statistics, empirical
  Fisher (``loss.layer_stats``); any other loss gets `synthetic_layer_stats`."""
  capture = getattr(loss, "layer_stats", None)
  return capture(params) if capture is not None else synthetic_layer_stats(params)


def _logits_fn(loss: Callable, params: Any) -> Partial:
  """A loss with a model (the digits task) gives its logits (``loss.logits_fn``);
  any other loss gets `_pairwise_logits`."""
  del params
  return Partial(getattr(loss, "logits_fn", _pairwise_logits))


BUILDERS: dict[str, Callable[[Callable, Any], Any]] = {
    "obj_fn": lambda loss, params: _as_partial(loss),
    "value": lambda loss, params: jnp.asarray(loss(params)),
    "logits_fn": _logits_fn,
    "layer_stats": _layer_stats,
}


def extra_args(names, loss, params) -> dict[str, Any]:
  """The keyword extra args `names`, computed from `loss` at `params`."""
  unknown = [n for n in names if n not in BUILDERS]
  if unknown:
    raise KeyError(f"tests/extras.py has no builder for extra args {unknown}")
  return {n: BUILDERS[n](loss, params) for n in names}
