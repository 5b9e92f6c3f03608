"""Per-layer statistics (NovoGrad) and dual averaging (MADGRAD).

* `scale_by_layerwise_second_moment` keeps ONE number per tensor, an EMA of
  the squared gradient norm, and divides the whole tensor by its root. Those
  numbers are stored as one vector with an entry per parameter leaf, not as a
  tree of scalars: a tree built by mapping over params is taken for a
  param-shaped tree by `optax.tree_map_params`, which would hand a matrix's
  sharding spec to a shape-() leaf.
* `scale_by_madgrad` is MADGRAD's momentumised dual averaging: weighted sums
  of gradients and squared gradients, an anchor at the initial params, a
  cube-root denominator, and the iterate as an average of the dual point.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import bound_gradient, safe_square, saturate
from optlab._src.tree import unzip_tree, zeros_like
from optlab.primitives.basis import (ANCHOR_POINT, COUNT, INVARIANT_STAT, LINEAR_MOMENT,
                                     SECOND_MOMENT, declare_state)
from optlab.primitives.normalize import tensor_sq_norm

__all__ = [
    "LayerwiseSecondMomentState", "scale_by_layerwise_second_moment", "ScaleByMadgradState",
    "scale_by_madgrad",
]


def _is_zero(value: Any) -> bool:
  """True only for a concrete number equal to 0 (never for schedules or tracers)."""
  return V._concrete(value) == 0.0  # pylint: disable=protected-access


# --------------------------------------------------------------- NovoGrad
# A tensor's Frobenius norm is unchanged by the orthogonal rotations of an
# eigenbasis, so the per-tensor statistics are invariant, not element-wise.
@declare_state(nu=INVARIANT_STAT)
class LayerwiseSecondMomentState(NamedTuple):
  nu: jax.Array  # [number of param leaves], float32 (float64 with float64 params):
  #                EMA of each tensor's ||g||^2, in jax.tree.leaves order; 0 = not yet seen


def scale_by_layerwise_second_moment(b2: Any = 0.98, eps: Any = 0.0, eps_root: Any = 1e-8
                                     ) -> optax.GradientTransformationExtraArgs:
  """NovoGrad's layer-wise normalisation (arXiv:1905.11286), one scalar per tensor.

  For each tensor (layer) l:  v_l <- b2 v_l + (1 - b2) ||g_l||^2, except that
  v_l <- ||g_l||^2 while v_l is still 0 (its first non-zero gradient, as in
  NVIDIA's OpenSeq2Seq code; optax initialises on step 1 instead, which agrees
  unless a layer's first gradients are exactly zero);
  u_l = g_l / (sqrt(v_l + eps_root) + eps).

  The defaults are the official code's (eps inside the root). The squared
  norm is `tensor_sq_norm` (float32 or wider, saturating instead of
  overflowing); a zero denominator (zero gradient, eps = eps_root = 0) leaves
  the update as it is (zero) instead of dividing 0 by 0, and a NaN one gives
  NaN. The gradient is taken through `bound_gradient`, so one huge finite
  entry moves v_l and g_l consistently (``|u| <= ||g_l|| / sqrt(v_l) <=
  1 / sqrt(1 - b2)`` per entry) instead of saturating v_l alone.
  """
  where = "scale_by_layerwise_second_moment"
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_nonneg(where, "eps_root", eps_root)

  def init(params):
    leaves = jax.tree.leaves(params)
    dtype = functools.reduce(jnp.promote_types,
                             [accumulation_dtype(jnp.result_type(p)) for p in leaves],
                             jnp.dtype(jnp.float32))
    return LayerwiseSecondMomentState(nu=jnp.zeros([len(leaves)], dtype))

  def update(updates, state, params=None, **extra):
    del params, extra
    leaves, treedef = jax.tree.flatten(updates)
    if len(leaves) != state.nu.shape[0]:
      raise ValueError(f"optlab.{where}: updates have {len(leaves)} leaves but the state "
                       f"was initialised for {state.nu.shape[0]} (the trees do not match)")
    if not leaves:
      return updates, state
    leaves = bound_gradient(leaves)
    nu = state.nu
    sq = jnp.stack([tensor_sq_norm(g).astype(nu.dtype) for g in leaves])
    nu = jnp.where(nu == 0, sq, b2 * nu + (1 - b2) * sq)
    nu = saturate(nu.astype(state.nu.dtype))
    denom = jnp.sqrt(nu + eps_root) + eps
    denom = jnp.where(denom <= 0, jnp.ones_like(denom), denom)  # a NaN stays NaN
    out = [(g / denom[i]).astype(g.dtype) for i, g in enumerate(leaves)]
    return jax.tree.unflatten(treedef, out), LayerwiseSecondMomentState(nu)

  return optax.GradientTransformationExtraArgs(init, update)


# ---------------------------------------------------------------- MADGRAD
@declare_state(count=COUNT, s=LINEAR_MOMENT, nu=SECOND_MOMENT, x0=ANCHOR_POINT)
class ScaleByMadgradState(NamedTuple):
  count: jax.Array  # [], int32: steps taken (k of the paper for the next step)
  s: Any            # param-shaped, float32 (or the params' wider dtype): sum of lambda_k g_k
  nu: Any           # param-shaped, as s: sum of lambda_k g_k^2
  x0: Any           # param-shaped, as s: the dual-averaging anchor (the initial params)


def scale_by_madgrad(learning_rate: Any, momentum: Any = 0.9, eps: Any = 1e-6,
                     decoupled_weight_decay: Any = 0.0) -> optax.GradientTransformationExtraArgs:
  """MADGRAD's step (arXiv:2101.11075), following facebookresearch/madgrad.

  With the 0-based step k and ``lambda_k = (lr_k + eps) sqrt(k + 1)``::

    s <- s + lambda_k g,   nu <- nu + lambda_k g^2,
    z = x0 - s / (cbrt(nu) + eps),   x <- momentum x + (1 - momentum) z,

  and the update returned is the change of x: it already contains the
  learning rate, so no `scale_by_learning_rate` follows (the learning rate
  enters non-linearly, through lambda_k).

  Args:
    learning_rate: a number or a schedule k -> lr_k (evaluated at k).
    momentum: in [0, 1); 0 gives pure dual averaging.
    eps: added to the learning rate (official code; not when lr is 0) and to
      the cube root. With eps = 0, coordinates where nu is 0 do not move.
    decoupled_weight_decay: the official ``decouple_decay=True`` mode,
      x <- x_new - (lr + eps) * decoupled_weight_decay * x_old. (The default,
      coupled L2 decay, is `add_decayed_weights` in front of this.) With
      momentum 0 the official code rebuilds x0 from x each step, so the
      decay accumulates; x0 is shifted by the same amount here.

  Other details that follow the official code: the state is kept in float32
  for 16-bit params; the anchor x0 is kept for momentum 0 too (the official
  code rebuilds it from x, which is the same in exact arithmetic). Needs
  `params` in update.
  """
  where = "scale_by_madgrad"
  V.check_learning_rate(where, learning_rate)
  V.check_decay(where, "momentum", momentum)
  V.check_nonneg(where, "eps", eps)
  V.check_nonneg(where, "decoupled_weight_decay", decoupled_weight_decay)
  decay = not _is_zero(decoupled_weight_decay)
  eps_may_be_zero = not (V._concrete(eps) or 0.0) > 0  # pylint: disable=protected-access

  def init(params):
    wide = lambda p: zeros_like(p, accumulation_dtype(p.dtype))
    return ScaleByMadgradState(
        count=jnp.zeros([], jnp.int32), s=jax.tree.map(wide, params),
        nu=jax.tree.map(wide, params),
        x0=jax.tree.map(lambda p: jnp.array(p, accumulation_dtype(p.dtype), copy=True), params))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params(where, params)
    k = state.count
    lr = jnp.asarray(learning_rate(k) if callable(learning_rate) else learning_rate)
    lr = jnp.where(lr != 0, lr + eps, jnp.zeros_like(lr + eps))
    anchor_decay = jnp.where(momentum == 0, lr * decoupled_weight_decay, 0.0)

    def one(g, p, s, nu, x0):
      dt = s.dtype
      lam = lr.astype(dt) * jnp.sqrt((k + 1).astype(dt))
      g, p = g.astype(dt), p.astype(dt)
      # Saturate rather than overflow. The increments are clipped, not the sums:
      # with min(sum, max) XLA (CPU) re-derives the new sums inside the step's
      # fusion and copies the donated state buffers.
      big = jnp.finfo(dt).max
      nu = nu + jnp.minimum(lam * safe_square(g), big - nu)
      s = s + jnp.clip(lam * g, -big - s, big - s)
      rms = jnp.cbrt(nu) + eps
      if eps_may_be_zero:  # then rms is 0 where nu is: no step there (official code)
        ok = jnp.logical_not(rms <= 0)  # a NaN (from a NaN gradient) stays NaN
        step = jnp.where(ok, s / jnp.where(ok, rms, jnp.ones_like(rms)), jnp.zeros_like(s))
      else:
        step = s / rms
      delta = (1 - momentum) * (x0 - step - p)
      if decay:
        delta = delta - lr * decoupled_weight_decay * p
        x0 = x0 - anchor_decay * p
      return delta, s, nu, x0

    outs = jax.tree.map(one, updates, params, state.s, state.nu, state.x0)
    delta, s, nu, x0 = unzip_tree(updates, outs, 4)
    delta = jax.tree.map(lambda d, u: d.astype(u.dtype), delta, updates)
    cast = lambda new, old: jax.tree.map(lambda a, b: a.astype(b.dtype), new, old)
    return delta, ScaleByMadgradState(optax.safe_increment(k), cast(s, state.s),
                                      cast(nu, state.nu), cast(x0, state.x0))

  return optax.GradientTransformationExtraArgs(init, update)
