"""Kronecker-factored curvature from layer statistics: K-FAC (Martens & Grosse,
arXiv:1503.05671) and MKOR (arXiv:2306.01685).

Both methods see each dense (or conv) layer as one matrix ``W`` of shape
``(d_in + 1, d_out)``, the kernel with the bias as its last row, and
precondition its gradient from the two sides, ``L^-1 grad(W) R^-1``, with
``L`` built from the layer's inputs ``a`` and ``R`` from the gradients ``g``
of its outputs. The statistics come with each step as the keyword extra arg
``layer_stats`` (`optlab.layer_stats`), keyed by the kernel's path in the
params; which kernels get factors is fixed at ``init`` by ``mask`` and
``max_dim`` (`optlab.layer_stats.kernel_shapes`). A leaf without factors, or a
kernel the step gives no statistics for, keeps its gradient (the identity
preconditioner): the transformations that follow (momentum, learning rate)
then make the first-order rule of each recipe.

* `scale_by_kfac`: EMA factors ``A = E[a a^T]``, ``G = E[g g^T]`` and their
  damped inverses, refreshed every ``inverse_update_period`` steps;
* `clip_by_fisher_norm`: kfac-jax's ``norm_constraint`` around any
  preconditioner;
* `scale_by_mkor`: MKOR's inverse factors, updated by Sherman-Morrison rank-1
  steps, with its norm-based stabiliser and the MKOR-H switch to first order.

The factor states are dicts keyed by the kernels' path strings: they are not
shaped like the params (declared OPAQUE), so basis wrappers refuse them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab import layer_stats as LS
from optlab._src.dtypes import tree_accumulation_dtype
from optlab._src.numerics import all_finite, clip_finite, one_minus_power, value_at
from optlab._src.tree import flat_zeros, saturating_vdot
from optlab.primitives.basis import (COUNT, INVARIANT_STAT, NESTED, OPAQUE_STAT,
                                     declare_state)
from optlab.primitives.clipping import safe_norm

__all__ = ["KFACState", "scale_by_kfac", "FisherNormClipState", "clip_by_fisher_norm",
           "MKORState", "scale_by_mkor"]


# ------------------------------------------------------------------ shared parts
def _layers(where: str, extra: dict, updates: Any, factors: dict) -> dict:
  """The `Layer`s of this step for the kernels that have factors.

  Every key of the extra arg is validated against all the kernels of `updates`
  (`LS.gather`), so statistics of a kernel left out by ``mask``/``max_dim`` are
  accepted and unused, while a key that names no kernel is an error."""
  layers = LS.gather(where, extra.get("layer_stats"), updates, LS.kernel_shapes(updates))
  return {k: layers[k] for k in factors if k in layers}


def _table(params: Any, shapes: dict, make: Any) -> Any:
  """A state field: kernel path -> make(shape). Without kernels it is None, or a
  size-0 array for a tree without leaves (the placeholder `optax.tree_map_params`
  traces `init` with): a leaf, so that the placeholder's state is a tree prefix of
  every real one (`flat_zeros`)."""
  if shapes:
    return {k: make(s) for k, s in shapes.items()}
  return flat_zeros(0, jnp.float32, jax.tree.leaves(params))


def _keys(field: Any) -> dict:
  """The per-kernel dict of a state field made by `_table` ({} without kernels)."""
  return field if isinstance(field, dict) else {}


def _eye(d: int, dtype: Any) -> jax.Array:
  return jnp.eye(d, dtype=dtype)


def _sandwich(left: jax.Array, m: jax.Array, right: jax.Array) -> jax.Array:
  """left @ m @ right, finite: when the plain product overflows (huge entries of
  mixed sign sum to inf - inf = nan), it is recomputed from factors scaled to
  max-abs 1 and the scales multiplied back, clipped to the finite range."""
  plain = left @ m @ right

  def scaled():
    scales = [jnp.max(jnp.abs(x), initial=0) for x in (left, m, right)]
    unit = [x / jnp.where(s > 0, s, 1) for x, s in zip((left, m, right), scales)]
    total = jnp.clip(scales[0] * scales[1], 0, jnp.finfo(m.dtype).max) * scales[2]
    return clip_finite(unit[0] @ unit[1] @ unit[2] * clip_finite(total))

  # a NaN from the inputs stays NaN (it must show in the update)
  keep = all_finite(plain) | ~all_finite(left, m, right)
  return jax.lax.cond(keep, lambda: plain, scaled)


def _matrices(layers: dict, dtype: Any) -> dict:
  return {k: lay.grad.astype(dtype) for k, lay in layers.items()}


def _write_back(updates: Any, layers: dict, out: dict) -> Any:
  """`LS.scatter` of each direction, clipped to the finite range of its leaf's dtype
  (a float32 result near its maximum would round to inf in bfloat16)."""
  out = {k: clip_finite(m, layers[k].grad.dtype) for k, m in out.items()}
  return LS.scatter(updates, layers, out)


def _covariances(layer: Any) -> tuple[jax.Array, jax.Array]:
  """`LS.covariances`, finite: when a product overflows, it is recomputed from
  inputs scaled to max-abs 1 and the squared scale multiplied back, saturated."""
  plain = LS.covariances(layer)

  def scaled():
    dt = plain[0].dtype
    a, g = layer.a.astype(dt), layer.g.astype(dt)
    sa, sg = (jnp.max(jnp.abs(x), initial=0) for x in (a, g))
    sa, sg = (jnp.where(s > 0, s, 1) for s in (sa, sg))
    unit = LS.covariances(dataclasses.replace(layer, a=a / sa, g=g / sg))
    return tuple(clip_finite(clip_finite(f * s) * s) for f, s in zip(unit, (sa, sg)))

  keep = all_finite(plain) | ~all_finite(layer.a, layer.g)
  return jax.lax.cond(keep, lambda: plain, scaled)


# ------------------------------------------------------------------------- K-FAC
@declare_state(count=COUNT, weight=INVARIANT_STAT, a=OPAQUE_STAT, g=OPAQUE_STAT,
               a_inv=OPAQUE_STAT, g_inv=OPAQUE_STAT)
class KFACState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  weight: dict      # kernel path -> [], float32 (float64 for float64 params): the
                    # EMA's total weight sum_i decay^i (kfac-jax's WeightedMovingAverage)
  a: dict           # kernel path -> [d_in + 1, d_in + 1], same dtype: A = EMA of a^T a / n
  g: dict           # kernel path -> [d_out, d_out], same dtype: G = EMA of g^T g / n
  a_inv: dict       # kernel path -> like a: (A + pi sqrt(damping) I)^-1 (I before the
                    # first refresh)
  g_inv: dict       # kernel path -> like g: (G + sqrt(damping) / pi I)^-1


def _damped_inverses(a: jax.Array, g: jax.Array, damping: Any, has_bias: bool,
                     prev: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Factored Tikhonov damping with the trace-norm pi (Martens & Grosse, section
  6.3; kfac-jax's pi_adjusted_kronecker_factors): (A + pi sqrt(l) I)^-1 and
  (G + sqrt(l) / pi I)^-1 with pi^2 = (tr A / dim A) / (tr G / dim G). dim A is
  d_in + 1 with a bias and d_in without (the ones column is then all zeros).
  A zero factor gives sqrt(l) I for both (kfac-jax's special case). A result
  that is not finite keeps `prev`."""
  dt = a.dtype
  da, dg = a.shape[0] - (0 if has_bias else 1), g.shape[0]
  na, ng = jnp.trace(a) / max(da, 1), jnp.trace(g) / dg
  ok = (na > 0) & (ng > 0) & jnp.isfinite(na) & jnp.isfinite(ng)
  pi = jnp.sqrt(jnp.where(ok, na, 1) / jnp.where(ok, ng, 1))
  root = jnp.sqrt(jnp.asarray(damping, dt))

  def inverse(f, shift, old):
    eye = _eye(f.shape[0], dt)
    f = jnp.where(ok, f + shift * eye, root * eye)
    chol = jnp.linalg.cholesky(f)
    inv = jax.scipy.linalg.cho_solve((chol, True), eye)
    inv = (inv + inv.T) / 2
    return jnp.where(all_finite(inv), inv, old)

  return inverse(a, pi * root, prev[0]), inverse(g, root / pi, prev[1])


def scale_by_kfac(damping: Any = 1e-3, decay: Any = 0.95, inverse_update_period: int = 5, *,
                  mask: Any = None, max_dim: Optional[int] = None,
                  axis_name: Optional[str] = None) -> optax.GradientTransformationExtraArgs:
  """K-FAC's preconditioned direction (Martens & Grosse, "Optimizing Neural
  Networks with Kronecker-factored Approximate Curvature", arXiv:1503.05671),
  with kfac-jax's conventions.

  Every step, for each kernel with statistics (``a``: inputs with the
  homogeneous column, ``g``: output gradients, n rows)::

    w <- decay w + 1
    A <- A + (a^T a / n - A) / w        G <- G + (g^T g / n - G) / w

  the bias-corrected EMA of kfac-jax's ``WeightedMovingAverage`` (ema_old =
  ``decay``, ema_new = 1: the first step's factors are that step's
  statistics). On steps 0, k, 2k, ... (k = ``inverse_update_period``, after
  the factors' update, as kfac-jax) the damped inverses are refreshed
  (`_damped_inverses`: factored Tikhonov damping with the trace-norm pi), and
  the joint ``[kernel; bias]`` gradient becomes ``A^-1 grad(W) G^-1``. Leaves
  without factors keep their gradient (identity). With ``axis_name`` each
  step's ``a^T a / n`` and ``g^T g / n`` are averaged over that pmap axis
  (kfac-jax syncs its factor averages), so replicas keep identical factors.

  Args:
    damping: lambda of the factored Tikhonov damping, > 0.
    decay: the factors' EMA decay (kfac-jax's curvature_ema), in [0, 1).
    inverse_update_period: refresh the inverses every this many steps, an int >= 1.
    mask: the leaves that get factors: a tree of bools or a function of the
      params returning one (optax style); None: every leaf with ndim >= 2.
    max_dim: leave out kernels with d_in + 1 or d_out above it; None: no limit.
    axis_name: a pmap axis over which the statistics are averaged, or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `KFACState`; its
    ``update`` needs the extra arg ``layer_stats``.
  """
  where = "scale_by_kfac"
  V.check_positive(where, "damping", damping)
  V.check_decay(where, "decay", decay)
  V.check_range(where, "inverse_update_period", inverse_update_period, 1)
  V.check_range(where, "max_dim", max_dim, 1)
  period = int(inverse_update_period)

  def init(params):
    dt = tree_accumulation_dtype(params)
    shapes = LS.kernel_shapes(params, mask, max_dim)
    table = lambda make: _table(params, shapes, make)
    return KFACState(jnp.zeros([], jnp.int32), table(lambda s: jnp.zeros([], dt)),
                     table(lambda s: jnp.zeros((s[0], s[0]), dt)),
                     table(lambda s: jnp.zeros((s[1], s[1]), dt)),
                     table(lambda s: _eye(s[0], dt)), table(lambda s: _eye(s[1], dt)))

  def update(updates, state, params=None, **extra):
    del params
    layers = _layers(where, extra, updates, _keys(state.a))
    if not layers:  # no factors, or no statistics for them: the identity
      return updates, state._replace(count=optax.safe_increment(state.count))
    weight, a, g = dict(state.weight), dict(state.a), dict(state.g)
    for k, lay in layers.items():
      dt = a[k].dtype
      new_a, new_g = (x.astype(dt) for x in _covariances(lay))
      if axis_name is not None:
        new_a, new_g = jax.lax.pmean((new_a, new_g), axis_name)
      weight[k] = (decay * weight[k] + 1).astype(dt)
      eta = 1 / weight[k]
      a[k] = clip_finite((1 - eta) * a[k] + eta * new_a).astype(dt)
      g[k] = clip_finite((1 - eta) * g[k] + eta * new_g).astype(dt)

    def refresh(inverses):
      a_inv, g_inv = dict(inverses[0]), dict(inverses[1])
      for k, lay in layers.items():
        a_inv[k], g_inv[k] = _damped_inverses(a[k], g[k], damping, lay.bias is not None,
                                              (a_inv[k], g_inv[k]))
      return a_inv, g_inv

    a_inv, g_inv = jax.lax.cond(state.count % period == 0, refresh, lambda x: x,
                                (state.a_inv, state.g_inv))
    grads = _matrices(layers, tree_accumulation_dtype(updates))
    out = {k: _sandwich(a_inv[k].astype(m.dtype), m, g_inv[k].astype(m.dtype))
           for k, m in grads.items()}
    return (_write_back(updates, layers, out),
            KFACState(optax.safe_increment(state.count), weight, a, g, a_inv, g_inv))

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------ KL clipping
@declare_state(count=COUNT, inner_state=NESTED)
class FisherNormClipState(NamedTuple):
  count: jax.Array  # [], int32: steps taken (the learning-rate schedule's argument)
  inner_state: Any  # the wrapped preconditioner's state


def clip_by_fisher_norm(inner: optax.GradientTransformation, norm_constraint: Any,
                        learning_rate: Any) -> optax.GradientTransformationExtraArgs:
  """kfac-jax's ``norm_constraint`` (the "KL clipping" of Ba et al., arXiv:1611.01236)
  around a preconditioner `inner`.

  With g the updates going into `inner` and d = inner(g) the preconditioned
  direction, d approximates F^-1 g, so lr^2 <d, g> is the step's squared norm
  in the curvature's metric. The direction is scaled by
  ``min(1, sqrt(norm_constraint / (lr^2 <d, g>)))``; the sum runs over every
  leaf (leaves that `inner` leaves as they are count with <g, g>). A sum <= 0
  (a zero gradient) leaves d unchanged.

  Args:
    inner: the preconditioner, e.g. `scale_by_kfac`.
    norm_constraint: the bound c on lr^2 <d, g>, > 0.
    learning_rate: the learning rate the recipe applies later, a number or a
      schedule of the 0-based step.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `FisherNormClipState`.
  """
  where = "clip_by_fisher_norm"
  V.check_positive(where, "norm_constraint", norm_constraint)
  V.check_learning_rate(where, learning_rate)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return FisherNormClipState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None, **extra):
    new, inner_state = inner.update(updates, state.inner_state, params, **extra)
    dt = tree_accumulation_dtype(new)
    lr = jnp.asarray(value_at(learning_rate, state.count), dt)
    sq = jnp.clip(saturating_vdot(new, updates, dt) * lr * lr, 0, jnp.finfo(dt).max)
    live = sq > 0
    coef = jnp.where(live, jnp.minimum(1, jnp.sqrt(norm_constraint / jnp.where(live, sq, 1))),
                     1).astype(dt)
    out = jax.tree.map(lambda u: (u.astype(dt) * coef).astype(u.dtype), new)
    return out, FisherNormClipState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


# -------------------------------------------------------------------------- MKOR
@declare_state(count=COUNT, a_inv=OPAQUE_STAT, g_inv=OPAQUE_STAT, a_reset=INVARIANT_STAT,
               g_reset=INVARIANT_STAT, switched=INVARIANT_STAT, loss=INVARIANT_STAT)
class MKORState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  a_inv: dict       # kernel path -> [d_in + 1, d_in + 1], float32 (float64 for float64
                    # params): the inverse input factor (MKOR's R^-1), I at first
  g_inv: dict       # kernel path -> [d_out, d_out], same dtype: the inverse gradient
                    # factor (MKOR's L^-1), I at first
  a_reset: dict     # kernel path -> [], bool: reset a_inv at the next refresh
  g_reset: dict     # kernel path -> [], bool: reset g_inv at the next refresh
  switched: jax.Array  # [], bool: MKOR-H has switched to the first-order rule
  loss: jax.Array   # [3], a_inv's dtype: MKOR-H's (first loss, previous loss, EMA of
                    # the per-step loss decrease)


def _sherman_morrison(j: jax.Array, v: jax.Array, keep: Any) -> jax.Array:
  """The official code's rank-1 refresh of an inverse factor J:
  P = keep J + (1 - keep) I, then (P^-1 + v v^T)^-1 = P - P v v^T P / (1 + v^T P v)."""
  p = keep * j + (1 - keep) * _eye(j.shape[0], j.dtype)
  pv = p @ v
  return p - jnp.outer(pv, pv) / (1 + v @ pv)


def _rank1_vector(x: jax.Array, clipping_value: Any, dtype: Any,
                  axis_name: Optional[str]) -> jax.Array:
  """The batch mean of the rows of x, each entry clamped to +-clipping_value
  first (official ComputeI / ComputeG + low_rank_approx), averaged over replicas."""
  v = jnp.mean(jnp.clip(x.astype(dtype), -clipping_value, clipping_value), axis=0)
  return v if axis_name is None else jax.lax.pmean(v, axis_name)


def _mkor_refresh(inv: tuple, resets: tuple, vectors: tuple, stat_decay: Any,
                  stabilization_factor: Any, norm_threshold: Any) -> tuple:
  """One layer's factor refresh, in the official order: the input factor, then the
  gradient factor. A factor whose reset flag is set becomes
  (1 - s) J + s I (and the flag clears) instead of taking its rank-1 update; a
  factor that took one and has an entry above `norm_threshold` in absolute
  value sets both flags. A refresh that is not finite resets the factor to I."""
  out, flags = list(inv), list(resets)
  for i in range(2):
    j = out[i]
    eye = _eye(j.shape[0], j.dtype)
    reset = (1 - stabilization_factor) * j + stabilization_factor * eye
    rank1 = _sherman_morrison(j, vectors[i], stat_decay)
    rank1 = jnp.where(all_finite(rank1), rank1, eye)
    flagged = flags[i]
    out[i] = jnp.where(flagged, reset, rank1)
    flags[i] = jnp.zeros([], bool)
    big = ~flagged & (jnp.max(jnp.abs(rank1)) > norm_threshold)
    flags = [f | big for f in flags]
  return tuple(out), tuple(flags)


def _rescale(m: jax.Array, grad: jax.Array) -> jax.Array:
  """The official norm fix: m * (|g_W| + |g_b|) / (|m_W| + |m_b|), with the kernel
  rows and the bias row (the last) taken separately. A zero direction keeps the
  gradient (the official code skips the layer when the ratio is NaN)."""
  norms = lambda x: 0.5 * safe_norm(x[:-1]) + 0.5 * safe_norm(x[-1])  # halves: no overflow
  gn, mn = norms(grad), norms(m)
  live = (mn > 0) & jnp.isfinite(mn)
  ratio = clip_finite(gn / jnp.where(live, mn, 1))
  return jnp.where(live, clip_finite(m * ratio), grad)


def scale_by_mkor(inv_freq: int = 10, stat_decay: Any = 0.95, stabilization_factor: Any = 0.1,
                  norm_threshold: Any = 2.0, clipping_value: Any = 100.0,
                  switch_rate: Any = None, switch_decay: Any = 0.95, switch_warmup: int = 20, *,
                  mask: Any = None, max_dim: Optional[int] = None,
                  axis_name: Optional[str] = None) -> optax.GradientTransformationExtraArgs:
  """MKOR's preconditioned direction ("MKOR: Momentum-Enabled Kronecker-Factor-Based
  Optimizer Using Rank-1 Updates", arXiv:2306.01685), as the official code
  (Mohammad-Mozaffari/mkor, ``MKOR.step``), plus the MKOR-H switch.

  On steps 0, f, 2f, ... (f = ``inv_freq``) each kernel with statistics
  refreshes its inverse factors from the batch means ``a_bar``, ``g_bar`` of
  its (clamped) inputs and output gradients (`_mkor_refresh`)::

    J <- (P^-1 + v v^T)^-1,  P = stat_decay J + (1 - stat_decay) I   (Sherman-Morrison)

  and every step its joint ``[kernel; bias]`` gradient becomes
  ``R^-1 grad(W) L^-1`` (R^-1 = a_inv, L^-1 = g_inv), rescaled to the
  gradient's norm (`_rescale`). Both inverse factors start at I, and the first
  refresh resets them (the flags start set), so the first f steps are plain
  gradient steps. Other leaves keep their gradient.

  MKOR-H (``switch_rate`` set; needs the extra arg ``value``, the loss): with
  L_0 the first loss and r the EMA (``switch_decay``, bias-corrected) of the
  per-step decrease L_{t-1} - L_t, it switches for good to the first-order
  rule (the gradient unchanged, no more refreshes) once at least
  ``switch_warmup`` decreases were seen and ``r < switch_rate (L_0 - L_t) / t``:
  the recent decrease per step has fallen below that fraction of the average
  decrease per step since the start. The paper only says the switch is
  "loss-decrease-rate based" and the official code has none; this rule is
  ours, after the knee-point learning-rate scheduler of the paper's appendix. The step
  that fires still uses MKOR's direction.

  Args:
    inv_freq: refresh the inverse factors every this many steps, an int >= 1.
    stat_decay: the weight of the old inverse factor against I before each
      rank-1 update (the official code's fixed 0.95), in [0, 1].
    stabilization_factor: the weight s of I in a reset, (1 - s) J + s I, in [0, 1].
    norm_threshold: a factor with an entry above it (in absolute value) is
      reset at the next refresh (the official code's 2), > 0.
    clipping_value: entries of the statistics are clamped to +-this first, > 0.
    switch_rate: MKOR-H's threshold, >= 0; None: plain MKOR, never switches.
    switch_decay: the decay of MKOR-H's EMA of the loss decrease, in [0, 1).
    switch_warmup: MKOR-H does not switch before this many decreases, an int >= 1.
    mask: the leaves that get factors: a tree of bools or a function of the
      params returning one (optax style); None: every leaf with ndim >= 2.
    max_dim: leave out kernels with d_in + 1 or d_out above it; None: no limit.
    axis_name: a pmap axis over which a_bar and g_bar are averaged (the
      official all-reduce), or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `MKORState`; its
    ``update`` needs the extra arg ``layer_stats``, and ``value`` with
    ``switch_rate``.
  """
  where = "scale_by_mkor"
  V.check_range(where, "inv_freq", inv_freq, 1)
  V.check_range(where, "stat_decay", stat_decay, 0.0, 1.0)
  V.check_range(where, "stabilization_factor", stabilization_factor, 0.0, 1.0)
  V.check_positive(where, "norm_threshold", norm_threshold)
  V.check_positive(where, "clipping_value", clipping_value)
  V.check_nonneg(where, "switch_rate", switch_rate)
  V.check_decay(where, "switch_decay", switch_decay)
  V.check_range(where, "switch_warmup", switch_warmup, 1)
  V.check_range(where, "max_dim", max_dim, 1)
  freq, hybrid = int(inv_freq), switch_rate is not None

  def init(params):
    dt = tree_accumulation_dtype(params)
    shapes = LS.kernel_shapes(params, mask, max_dim)
    table = lambda make: _table(params, shapes, make)
    flags = lambda s: jnp.ones([], bool)
    return MKORState(jnp.zeros([], jnp.int32), table(lambda s: _eye(s[0], dt)),
                     table(lambda s: _eye(s[1], dt)), table(flags), table(flags),
                     jnp.zeros([], bool), jnp.zeros([3], dt))

  def switch_state(state, value):
    """(switched, loss) after this step's loss."""
    dt = state.loss.dtype
    loss = jnp.asarray(value, dt)
    if axis_name is not None:  # one decision for all replicas
      loss = jax.lax.pmean(loss, axis_name)
    first, prev, rate = state.loss[0], state.loss[1], state.loss[2]
    seen = state.count  # decreases seen after this step
    started = seen > 0
    first = jnp.where(started, first, loss)
    rate = jnp.where(started, switch_decay * rate + (1 - switch_decay) * (prev - loss), rate)
    recent = rate / one_minus_power(switch_decay, jnp.maximum(seen, 1), dt)
    average = (first - loss) / jnp.maximum(seen, 1).astype(dt)
    fire = (seen >= switch_warmup) & (recent < switch_rate * average)
    return state.switched | fire, jnp.stack([first, loss, rate])

  def update(updates, state, params=None, **extra):
    del params
    value = V.require_extra_arg(where, extra, "value", "the loss, for MKOR-H") if hybrid else None
    layers = _layers(where, extra, updates, _keys(state.a_inv))
    dt = state.loss.dtype
    fresh = (state.count % freq == 0) & ~state.switched

    def refresh(carry):
      a_inv, g_inv, a_reset, g_reset = (dict(c) for c in carry)
      for k, lay in layers.items():
        vecs = (_rank1_vector(lay.a, clipping_value, dt, axis_name),
                _rank1_vector(lay.g, clipping_value, dt, axis_name))
        (a_inv[k], g_inv[k]), (a_reset[k], g_reset[k]) = _mkor_refresh(
            (a_inv[k], g_inv[k]), (a_reset[k], g_reset[k]), vecs, stat_decay,
            stabilization_factor, norm_threshold)
      return a_inv, g_inv, a_reset, g_reset

    tables = (state.a_inv, state.g_inv, state.a_reset, state.g_reset)
    a_inv, g_inv, a_reset, g_reset = (jax.lax.cond(fresh, refresh, lambda c: c, tables)
                                      if layers else tables)
    out = {}
    for k, m in _matrices(layers, tree_accumulation_dtype(updates)).items():
      pre = _rescale(_sandwich(a_inv[k].astype(m.dtype), m, g_inv[k].astype(m.dtype)), m)
      out[k] = jnp.where(state.switched, m, pre)
    switched, loss = switch_state(state, value) if hybrid else (state.switched, state.loss)
    return (_write_back(updates, layers, out),
            MKORState(optax.safe_increment(state.count), a_inv, g_inv, a_reset, g_reset,
                      switched, loss))

  return optax.GradientTransformationExtraArgs(init, update)
