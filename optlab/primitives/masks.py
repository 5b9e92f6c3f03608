"""Wrappers that compare an inner update with the raw gradient.

`optax.chain` hands each transformation only the output of the one before it,
but cautious masking, Grams and AdamP's projection need the update *and* the
gradient it came from. Each primitive here therefore wraps an inner
transformation: it sees the updates going into `inner` (the gradient, when the
wrapper is first in the chain) and the updates coming out. The wrappers keep
no state of their own; their state is `inner`'s, unchanged, so they nest inside
basis wrappers and `optax.tree_map_params` sees the same tree.

`with_leaf_labels` is the per-tensor counterpart: it picks, leaf by leaf,
which of several transformations with the same state layout updates it (MARS
trains matrices with MARS and everything else with AdamW).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab.primitives.clipping import safe_norm

__all__ = ["cautious", "with_grams", "with_radial_projection", "with_leaf_labels"]

_RESCALES = ("mean", "count", None)


def _agree(a: jax.Array, b: jax.Array) -> jax.Array:
  """a * b > 0, element-wise, from signs (no overflow or underflow of the product)."""
  return (jnp.sign(a) * jnp.sign(b)) > 0


def cautious(inner: optax.GradientTransformation, rescale: Optional[str] = "mean"
             ) -> optax.GradientTransformationExtraArgs:
  """Cautious masking (Liang et al., "Cautious Optimizers", arXiv:2411.16085).

  With g the updates going into `inner` and u those coming out, keeps u only
  where it agrees in sign with g, phi = 1[u * g > 0] (strict, as in the
  official code), and rescales per tensor:

  * ``"mean"``  -- u * phi / max(mean(phi), 1e-3), as in the official
    ``c_adamw.py`` (and timm);
  * ``"count"`` -- u * phi * n / (sum(phi) + 1), n the tensor's size, as in the
    official ``c_lion.py`` and the paper's algorithm;
  * ``None``    -- u * phi, no rescaling.

  The mean is taken per tensor (leaf), in at least float32.
  """
  V.check_choice("cautious", "rescale", rescale, _RESCALES)
  inner = optax.with_extra_args_support(inner)

  def mask_leaf(u, g):
    dt = accumulation_dtype(u.dtype)
    phi = _agree(u, g).astype(dt)
    if rescale == "mean":
      phi = phi / jnp.maximum(jnp.mean(phi), 1e-3)
    elif rescale == "count":
      phi = phi * (phi.size / (jnp.sum(phi) + 1.0))
    return (u.astype(dt) * phi).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    new, state = inner.update(updates, state, params, **extra)
    return jax.tree.map(mask_leaf, new, updates), state

  return optax.GradientTransformationExtraArgs(inner.init, update)


def with_grams(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Grams (Cao et al., arXiv:2412.17107): the magnitude of `inner`, the sign of the gradient.

  ``u <- |inner(g)| * sign(g)``, with g the updates going into `inner`; entries
  with g = 0 become 0 (torch.sign(0) = 0 in the official code). Named
  ``with_grams`` because ``optlab.grams`` is the Grams-Adam recipe.
  """
  inner = optax.with_extra_args_support(inner)

  def update(updates, state, params=None, **extra):
    new, state = inner.update(updates, state, params, **extra)
    out = jax.tree.map(lambda u, g: (jnp.abs(u) * jnp.sign(g).astype(u.dtype)).astype(u.dtype),
                       new, updates)
    return out, state

  return optax.GradientTransformationExtraArgs(inner.init, update)


# ------------------------------------------------------------------ AdamP/SGDP
def _rows(x: jax.Array, view: str) -> jax.Array:
  # `x` has its channel axis first (see _project_leaf)
  return x.reshape(x.shape[0], -1) if view == "channel" else x.reshape(1, -1)


def _project_leaf(u, g, p, delta, eps, channel_axis):
  """AdamP's projection of one tensor; returns (projected u, projected?)."""
  dt = accumulation_dtype(u.dtype)
  # Channel axis first, as PyTorch's (out, in, ...) weights of the official code;
  # the layer view and the row-wise projection do not depend on the order.
  u32, g32, p32 = (jnp.moveaxis(x.astype(dt), channel_axis, 0) for x in (u, g, p))
  out, hit = u32, jnp.zeros([], bool)
  # The official code tries the channel view, then the layer view, and uses
  # the first whose largest |cosine(g, p)| is below delta / sqrt(row length).
  for view in ("channel", "layer"):
    gr, pr, ur = _rows(g32, view), _rows(p32, view), _rows(u32, view)
    g_norm = safe_norm(gr, axis=1, keepdims=True)
    p_norm = safe_norm(pr, axis=1, keepdims=True)
    cos = jnp.abs(jnp.sum((gr / jnp.maximum(g_norm, eps)) * (pr / jnp.maximum(p_norm, eps)),
                          axis=1))
    fires = jnp.max(cos) < delta / math.sqrt(pr.shape[1])
    pn = pr / (p_norm + eps)
    projected = (ur - pn * jnp.sum(pn * ur, axis=1, keepdims=True)).reshape(u32.shape)
    take = fires & ~hit
    out = jnp.where(take, projected, out)
    hit = hit | fires
  return jnp.moveaxis(out, 0, channel_axis), hit


def check_channel_axis(where: str, channel_axis: Any) -> None:
  """`channel_axis` must be a Python int (it picks a static axis of each tensor)."""
  if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
    raise TypeError(f"optlab.{where}: channel_axis must be an int (the output-channel axis "
                    f"of each weight), got {channel_axis!r}; with optax.inject_hyperparams, "
                    "pass it in static_args")


def _check_channel_axes(where: str, channel_axis: int, params: Any) -> None:
  """Raises ValueError naming the first projected leaf that has no `channel_axis`."""
  for path, p in jax.tree_util.tree_leaves_with_path(params):
    nd = np.ndim(p)
    if nd > 1 and not -nd <= channel_axis < nd:
      raise ValueError(f"optlab.{where}: channel_axis={channel_axis} is out of range for "
                       f"{V.path_str(path)} of shape {np.shape(p)}")


def with_radial_projection(inner: optax.GradientTransformation, delta: Any = 0.1,
                           wd_ratio: Any = 0.1, weight_decay: Any = 0.0, eps: Any = 1e-8,
                           channel_axis: int = -1) -> optax.GradientTransformationExtraArgs:
  """AdamP / SGDP's projection (Heo et al., arXiv:2006.08217; official clovaai/AdamP).

  For every tensor with more than one dimension, with g the gradient going
  into `inner` and u the update coming out: view p and g as rows, first one
  row per output channel, then the whole tensor as one row. The output
  channels lie along `channel_axis`, by default the last axis as in JAX / flax
  kernels (Dense (in, out), Conv (h, w, in, out)); the official PyTorch code
  takes axis 0 of its (out, in, ...) weights, the same channels, and
  ``channel_axis=0`` reproduces that layout. For the first view where every row has
  ``|cos(g, p)| < delta / sqrt(row length)`` (the weight looks scale-invariant),
  remove the radial part of u row by row, u <- u - p_n <p_n, u> with
  p_n = p / (||p|| + eps), and multiply the weight decay by `wd_ratio`.
  Then adds the decoupled decay, u <- u + weight_decay * ratio * p (ratio 1
  for tensors that were not projected, and for 0-d, 1-d and zero-size tensors,
  which are never projected). The cosine uses max(||.||, eps) for each norm, as recent
  ``torch.nn.functional.cosine_similarity`` does (older PyTorch clamps the
  product of the norms; the two differ only for norms below eps, where the
  cosine is ~0 either way). Needs `params`.
  """
  where = "with_radial_projection"
  for name, value in (("delta", delta), ("wd_ratio", wd_ratio),
                      ("weight_decay", weight_decay), ("eps", eps)):
    V.check_nonneg(where, name, value)
  check_channel_axis(where, channel_axis)
  channel_axis = int(channel_axis)
  inner = optax.with_extra_args_support(inner)

  def leaf(u, g, p):
    # A zero-size tensor has no direction to project (and no rows): it only decays.
    if jnp.ndim(p) > 1 and jnp.size(p) > 0:
      u32, hit = _project_leaf(u, g, p, delta, eps, channel_axis)
      ratio = jnp.where(hit, wd_ratio, 1.0)
    else:
      u32, ratio = u.astype(accumulation_dtype(u.dtype)), 1.0
    return (u32 + (weight_decay * ratio) * p.astype(u32.dtype)).astype(u.dtype)

  def init(params):
    _check_channel_axes(where, channel_axis, params)
    return inner.init(params)

  def update(updates, state, params=None, **extra):
    V.require_params(where, params)
    _check_channel_axes(where, channel_axis, params)
    new, state = inner.update(updates, state, params, **extra)
    return jax.tree.map(leaf, new, updates, params), state

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------ per-leaf choice
_SHARED = "__optlab_shared__"


def with_leaf_labels(transforms: Mapping[Hashable, optax.GradientTransformation],
                     label_fn: Callable[[jax.Array], Hashable]
                     ) -> optax.GradientTransformationExtraArgs:
  """Updates each leaf with the transformation its label names, in one shared state.

  Like `optax.partition`, but with a single state built by the first
  transformation, so the state holds no ``MaskedNode`` and
  `optax.tree_map_params` works on it with extra trees (e.g. sharding specs).
  The price is a requirement: every transformation must build the same state
  layout (same structure, shapes and dtypes), e.g. the same chain with
  different hyperparameters. Each leaf's update and its param-shaped state
  leaves come from its label's transformation; the other state leaves (step
  counts) must evolve alike in all of them and are taken from the first
  label in use. Every transformation is traced on the whole tree and XLA
  drops what is not selected, so per-leaf transformations cost nothing extra;
  ones that couple leaves (global-norm clipping) would see every leaf.

  Args:
    transforms: label -> transformation.
    label_fn: leaf -> label, from static properties (ndim, shape, dtype).
  """
  if not transforms:
    raise ValueError("optlab.with_leaf_labels: needs at least one transformation")
  keys = list(transforms)
  txs = {k: optax.with_extra_args_support(t) for k, t in transforms.items()}
  ref = txs[keys[0]]

  def init(params):
    state = ref.init(params)
    if jax.tree.leaves(params):  # not the placeholder of optax.tree_map_params
      want = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state)
      for k in keys[1:]:
        got = jax.eval_shape(txs[k].init, params)
        got = jax.tree.map(lambda x: (x.shape, x.dtype), got)
        if got != want:
          raise ValueError(f"optlab.with_leaf_labels: transformation {k!r} builds a state "
                           f"unlike that of {keys[0]!r}; all must share one layout")
    return state

  def update(updates, state, params=None, **extra):
    labels = jax.tree.map(label_fn, updates)
    used = [k for k in keys if k in set(jax.tree.leaves(labels))]
    unknown = set(jax.tree.leaves(labels)) - set(keys)
    if unknown:
      raise ValueError(f"optlab.with_leaf_labels: labels {sorted(map(str, unknown))} have "
                       f"no transformation (have {keys})")
    if not used:
      return ref.update(updates, state, params, **extra)
    results = {k: txs[k].update(updates, state, params, **extra) for k in used}
    if len(used) == 1:
      return results[used[0]]
    new = jax.tree.map(lambda lab, *us: us[used.index(lab)], labels,
                       *[results[k][0] for k in used])
    # Which label owns each state leaf: param-shaped ones follow their param. Non-param
    # values are marked leaf by leaf: one may be a None field (a statistic without
    # entries) under a leaf of the placeholder state, and must add no leaf.
    owners = optax.tree_map_params(ref, lambda _, lab: lab, state, labels,
                                   transform_non_params=lambda v: jax.tree.map(
                                       lambda _: _SHARED, v))
    owners = jax.tree.leaves(owners)
    flat = {k: jax.tree.leaves(results[k][1]) for k in used}
    treedef = jax.tree.structure(results[used[0]][1])
    merged = [flat[used[0] if o == _SHARED else o][i] for i, o in enumerate(owners)]
    return new, jax.tree.unflatten(treedef, merged)

  return optax.GradientTransformationExtraArgs(init, update)
