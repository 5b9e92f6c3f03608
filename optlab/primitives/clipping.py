"""Clipping: element-wise, by global or per-tensor norm, and spike-aware (SPAM).

Norms here never overflow: they are accumulated in at least float32, whole
tensors go through `normalize.tensor_norm` (safe at 1e30 and 1e-30 entries),
a tree's norm is combined from those as ``m * ||n / m||`` (m the largest
tensor norm), and row norms fall back to ``m * ||x / m||`` (``m = max |x|``)
where the plain
sum of squares is not a finite normal number. A zero tree has norm 0 and is
never rescaled.

SPAM's two stability devices (arXiv:2501.06842) live here too:
`clip_spikes(inner)` clips gradient entries that are far above the running
second moment of `inner`, and `with_momentum_reset(inner)` periodically zeroes
the moments of `inner` and warms its step back up. (SPAM's decay of the
already-updated weights is `decay.add_decayed_weights_after_step`.)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab.primitives.basis import (COUNT, INVARIANT_STAT, MOMENT, NESTED, SECOND_MOMENT,
                                     check_declared, declare_state, iter_fields, map_fields)
from optlab.primitives.normalize import tensor_norm

__all__ = [
    "clip", "clip_by_global_norm", "clip_by_tensor_norm", "ClipSpikesState",
    "clip_spikes", "MomentumResetState", "with_momentum_reset",
    "limit_norm_growth", "NormGrowthState", "clip_by_norm_growth",
    "unit_norm", "clip_by_agc",
]


# ------------------------------------------------------------------ safe norms
# Whole-tensor norms are normalize.tensor_norm (shared with the trust-ratio
# methods); what is added here is the norm of a whole tree and norms per row.
def safe_norm(x: jax.Array, axis: Any = None, *, keepdims: bool = False) -> jax.Array:
  """The 2-norm of `x` over `axis` (all axes by default) without overflow.

  In at least float32. A full reduction is `tensor_norm`; along an axis, the
  plain sum of squares is used where it is a finite normal number and the
  norm is recomputed as m * ||x / m|| (m = max |x| of the row) elsewhere.
  """
  x = jnp.asarray(x)
  if axis is None and not keepdims:
    return tensor_norm(x)
  dt = accumulation_dtype(x.dtype)
  x = x.astype(dt)
  ss = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  if x.size == 0:
    return ss
  ok = jnp.isfinite(ss) & (ss >= jnp.finfo(dt).tiny)
  m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
  safe_m = jnp.where(m > 0, m, jnp.ones_like(m))
  scaled = safe_m * jnp.sqrt(jnp.sum(jnp.square(x / safe_m), axis=axis, keepdims=True))
  scaled = scaled if keepdims else jnp.squeeze(scaled, axis=axis)
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, ss, 0)), scaled)


def safe_global_norm(tree: Any) -> jax.Array:
  """The 2-norm of all leaves of `tree` together, without overflow (0 for no leaves).

  From the per-tensor norms n_i: m * sqrt(sum (n_i / m)^2) with m = max n_i,
  so it is finite whenever the result is.
  """
  norms = [tensor_norm(x) for x in jax.tree.leaves(tree)]
  if not norms:
    return jnp.zeros([], jnp.float32)
  dt = jnp.result_type(*norms)
  norms = jnp.stack([n.astype(dt) for n in norms])
  m = jnp.max(norms)
  safe_m = jnp.where(m > 0, m, jnp.ones_like(m))
  return safe_m * jnp.sqrt(jnp.sum(jnp.square(norms / safe_m)))


def clip_leaf_by_norm(x: jax.Array, max_norm: Any) -> jax.Array:
  """x * min(1, max_norm / ||x||) for one array, in x's dtype (0 stays 0)."""
  norm = safe_norm(x)
  factor = max_norm / jnp.maximum(norm, max_norm)
  return (x.astype(norm.dtype) * factor).astype(x.dtype)


# ------------------------------------------------------------------ transforms
def clip(max_delta: Any) -> optax.GradientTransformationExtraArgs:
  """Element-wise clipping, u <- clip(u, -max_delta, max_delta)."""
  V.check_nonneg("clip", "max_delta", max_delta)

  def update(updates, state, params=None, **extra):
    del params, extra
    new = jax.tree.map(lambda u: jnp.clip(u, -max_delta, max_delta).astype(u.dtype), updates)
    return new, state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


def clip_by_global_norm(max_norm: Any) -> optax.GradientTransformationExtraArgs:
  """Rescales the whole update so that its global 2-norm is at most `max_norm`.

  u <- u * max_norm / max(||u||, max_norm). The norm never overflows (see the
  module docstring) and a zero update is left as it is. Under pmap, call it on
  the already averaged gradients so that all replicas see the same norm.
  """
  V.check_positive("clip_by_global_norm", "max_norm", max_norm)

  def update(updates, state, params=None, **extra):
    del params, extra
    norm = safe_global_norm(updates)
    factor = max_norm / jnp.maximum(norm, max_norm)
    new = jax.tree.map(lambda u: (u.astype(norm.dtype) * factor).astype(u.dtype), updates)
    return new, state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


def clip_by_tensor_norm(max_norm: Any) -> optax.GradientTransformationExtraArgs:
  """Rescales each leaf separately so that its 2-norm is at most `max_norm`.

  u_i <- u_i * max_norm / max(||u_i||, max_norm) for every tensor u_i (the
  clipping MARS applies to its corrected gradient, with max_norm = 1).
  """
  V.check_positive("clip_by_tensor_norm", "max_norm", max_norm)

  def update(updates, state, params=None, **extra):
    del params, extra
    return jax.tree.map(lambda u: clip_leaf_by_norm(u, max_norm), updates), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


# ---------------------------------------------------------- spike-aware (SPAM)
def find_second_moment(state: Any, like: Any) -> Any:
  """The first field declared (SECOND, MOMENT) in a (nested) state whose tree
  matches `like`, or None."""
  for field in iter_fields(state):
    if ((field.kind, field.role) == SECOND_MOMENT
        and jax.tree.structure(field.value) == jax.tree.structure(like)):
      return field.value
  return None


def _is_zero(value: Any) -> bool:
  """True for a concrete 0 (an int hyperparameter may arrive traced, from
  optax.inject_hyperparams; then it is handled with jnp ops)."""
  v = V._concrete(value)
  return v is not None and v == 0


def _steps_since_reset(count: jax.Array, period: Any) -> jax.Array:
  """t % period for period > 0, else t (no resets)."""
  if _is_zero(period):
    return count
  return jnp.where(jnp.asarray(period) > 0, count % jnp.maximum(period, 1), count)


@declare_state(count=COUNT, inner_state=NESTED)
class ClipSpikesState(NamedTuple):
  count: jax.Array   # [], int32: steps taken
  inner_state: Any   # the wrapped transformation's state


def clip_spikes(inner: optax.GradientTransformation, threshold: Any = 5000.0, *,
                delay: int = 0, period: int = 0) -> optax.GradientTransformationExtraArgs:
  """Spike-aware clipping (SPAM, arXiv:2501.06842), around a second-moment transform.

  Before `inner` sees the gradient, every entry with g^2 > threshold * v is
  replaced by sign(g) * sqrt(threshold * v), where v is `inner`'s running
  second moment as it stands before this step (the first state field declared
  (SECOND, MOMENT) with the gradient's tree, e.g. `scale_by_adam`'s nu, not bias
  corrected). Both of `inner`'s moments then see the clipped gradient.

  Args:
    inner: a transformation with a (SECOND, MOMENT) state field (Adam-like).
    threshold: theta; 0 turns clipping off (as in the official code).
    delay: no clipping during the first `delay` steps after each momentum
      reset, when v starts again from zero (the official ``grad_accu_steps``).
    period: the momentum-reset interval (SPAM's Delta T); 0 means no resets,
      so clipping starts at step `delay` and stays on. With a period, clipping
      is on at step t (1-based) when ``t % period >= delay``.
  """
  V.check_nonneg("clip_spikes", "threshold", threshold)
  V.check_range("clip_spikes", "delay", delay, 0)
  V.check_range("clip_spikes", "period", period, 0)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return ClipSpikesState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None, **extra):
    count = optax.safe_increment(state.count)
    nu = find_second_moment(state.inner_state, updates)
    if nu is None:
      raise TypeError("optlab.clip_spikes: the inner transformation has no second-moment "
                      "state (a field declared (SECOND, MOMENT) shaped like the updates); wrap an "
                      "Adam-like transform such as optlab.scale_by_adam")
    phase = _steps_since_reset(count, period)
    active = (phase >= delay) & (jnp.asarray(threshold) > 0)

    def clip_leaf(g, v):
      dt = accumulation_dtype(g.dtype)
      g32, limit2 = g.astype(dt), threshold * v.astype(dt)
      spike = active & (jnp.minimum(g32 * g32, jnp.finfo(dt).max) > limit2)
      clipped = jnp.sign(g32) * jnp.sqrt(jnp.where(spike, limit2, 0))
      return jnp.where(spike, clipped, g32).astype(g.dtype)

    clipped = jax.tree.map(clip_leaf, updates, nu)
    new, inner_state = inner.update(clipped, state.inner_state, params, **extra)
    return new, ClipSpikesState(count, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


@declare_state(count=COUNT, inner_state=NESTED)
class MomentumResetState(NamedTuple):
  count: jax.Array   # [], int32: steps taken
  inner_state: Any   # the wrapped transformation's state


def _zero_moments(state: Any, flag: jax.Array, where: str) -> Any:
  """`state` with every field of role MOMENT set to zero where `flag` is set
  (anchors, statistics and counters are kept)."""
  check_declared("with_momentum_reset", state, where)

  def zero(field):
    if field.role != MOMENT:
      return field.value
    return jax.tree.map(lambda x: jnp.where(flag, jnp.zeros_like(x), x), field.value)

  return map_fields(zero, state, where)


def with_momentum_reset(inner: optax.GradientTransformation, interval: int = 500,
                        warmup_steps: int = 150) -> optax.GradientTransformationExtraArgs:
  """SPAM's momentum reset with cosine warm-up (arXiv:2501.06842, official code).

  At every step t (1-based) with ``t % interval == 0`` the moment fields of
  `inner` (every state field of role MOMENT, see `declare_state`) are set to
  zero before `inner` runs; anchors (DoG's x0), other statistics and step
  counters are kept, so bias corrections continue from the global step, as in the official
  code. After each reset the output of `inner` is multiplied by
  ``1 - 0.99 * (1 + cos(pi * c / (warmup_steps + 1))) / 2`` for the
  ``c = t % interval < warmup_steps`` steps since it (0.01 at the reset step,
  close to 1 at its end; 1 before the first reset and afterwards).

  Args:
    inner: the transformation whose moments are reset.
    interval: Delta T; 0 disables resets (and the warm-up). Default: the
      official 500.
    warmup_steps: N, the length of the warm-up after each reset; 0 for none.
      Default: the official 150.
  """
  V.check_range("with_momentum_reset", "interval", interval, 0)
  V.check_range("with_momentum_reset", "warmup_steps", warmup_steps, 0)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return MomentumResetState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None, **extra):
    count = optax.safe_increment(state.count)
    inner_state = state.inner_state
    if _is_zero(interval):
      new, inner_state = inner.update(updates, inner_state, params, **extra)
      return new, MomentumResetState(count, inner_state)
    period = jnp.maximum(interval, 1)
    reset = (jnp.asarray(interval) > 0) & (count % period == 0)
    inner_state = _zero_moments(inner_state, reset, "with_momentum_reset.inner")
    new, inner_state = inner.update(updates, inner_state, params, **extra)
    if not _is_zero(warmup_steps):
      since = (count % period).astype(float)  # the default float dtype
      warm = (count >= interval) & (since < warmup_steps)
      factor = jnp.where(
          warm, 1.0 - 0.99 * (1.0 + jnp.cos(math.pi * since / (warmup_steps + 1))) / 2, 1.0)
      new = jax.tree.map(lambda u: (u * factor.astype(accumulation_dtype(u.dtype))).astype(u.dtype),
                         new)
    return new, MomentumResetState(count, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------ norm-growth limiter (Fira)
def limit_norm_growth(x: jax.Array, prev_norm: jax.Array, first: Any, gamma: Any = 1.01,
                      eps: Any = 1e-8) -> tuple[jax.Array, jax.Array]:
  """Fira's norm-growth limiter on one tensor (arXiv:2410.01623, eq. 8).

  With n = ||x||: on the ``first`` step x is returned unchanged and n is
  recorded; afterwards, if n exceeds gamma times the recorded norm, x is
  scaled down to that growth: l = max(n / (prev + eps), gamma) / gamma,
  x <- x / l, and n / l is recorded (the official code's form, eps = 1e-8).
  Returns (limited x in x's dtype, the norm to record in prev_norm's dtype).
  """
  norm = tensor_norm(x).astype(prev_norm.dtype)
  ratio = jnp.minimum(norm / (prev_norm + eps), jnp.finfo(prev_norm.dtype).max)
  limiter = jnp.where(first, 1.0, jnp.maximum(ratio, gamma) / gamma).astype(prev_norm.dtype)
  dt = jnp.promote_types(accumulation_dtype(x.dtype), prev_norm.dtype)
  return (x.astype(dt) / limiter.astype(dt)).astype(x.dtype), norm / limiter


@declare_state(count=COUNT, prev_norm=INVARIANT_STAT)
class NormGrowthState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  prev_norm: jax.Array  # [n_leaves], float32: each leaf's norm after the last step
                        # (one vector, declared invariant: see docs/architecture.md)


def clip_by_norm_growth(gamma: Any = 1.01, eps: Any = 1e-8
                        ) -> optax.GradientTransformationExtraArgs:
  """The norm-growth limiter of Fira (arXiv:2410.01623) applied to every leaf.

  Each tensor's norm may grow by at most a factor gamma per step:
  u <- u / (max(||u|| / (prev + eps), gamma) / gamma), where prev is the
  (limited) norm of the previous step; the first step only records the norm.
  Fira and APOLLO apply it inside `in_subspace` to the part of the update they
  scale; this is the same rule as a stand-alone link.
  """
  V.check_range("clip_by_norm_growth", "gamma", gamma, 1.0)
  V.check_nonneg("clip_by_norm_growth", "eps", eps)

  def init(params):
    n = len(jax.tree.leaves(params))
    return NormGrowthState(jnp.zeros([], jnp.int32), jnp.zeros([n], jnp.float32))

  def update(updates, state, params=None, **extra):
    del params, extra
    leaves, treedef = jax.tree.flatten(updates)
    first = state.count == 0
    out, norms = [], []
    for i, u in enumerate(leaves):
      v, n = limit_norm_growth(u, state.prev_norm[i], first, gamma, eps)
      out.append(v)
      norms.append(n)
    prev = jnp.stack(norms) if norms else state.prev_norm
    return (jax.tree.unflatten(treedef, out),
            NormGrowthState(optax.safe_increment(state.count), prev.astype(state.prev_norm.dtype)))

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------- adaptive clipping (AGC)
def unit_norm(x: jax.Array) -> jax.Array:
  """Norm per output unit, as Ranger21's official ``unit_norm`` (PyTorch layout).

  0-d and 1-d tensors: the whole norm (a scalar); 2-d and 3-d: over axis 1,
  kept; 4-d and more: over every axis but the first, kept. In at least
  float32 and without overflow (`safe_norm`).
  """
  if jnp.ndim(x) <= 1:
    return safe_norm(x)
  axes = 1 if jnp.ndim(x) in (2, 3) else tuple(range(1, jnp.ndim(x)))
  return safe_norm(x, axis=axes, keepdims=True)


def clip_by_agc(clipping: Any = 1e-2, eps: Any = 1e-3) -> optax.GradientTransformationExtraArgs:
  """Adaptive gradient clipping, unit-wise ("High-Performance Large-Scale Image
  Recognition Without Normalization", Brock et al., arXiv:2102.06171), as used by
  Ranger21's official code.

  With W_i the unit norms of the param (`unit_norm`, at least `eps`) and G_i
  those of the gradient: where G_i > clipping * W_i, g_i <- g_i * clipping *
  W_i / max(G_i, 1e-6). Units follow the PyTorch layout of Ranger21 (the
  first axis is the output unit; a flax Dense kernel [in, out] is therefore
  clipped per input row). Needs `params`. `optax.adaptive_grad_clip` is the
  same rule with its own unit convention (all axes but the last).
  """
  V.check_positive("clip_by_agc", "clipping", clipping)
  V.check_nonneg("clip_by_agc", "eps", eps)

  def leaf(g, p):
    dt = accumulation_dtype(g.dtype)
    w = jnp.maximum(unit_norm(p), eps)
    n = unit_norm(g)
    limit = w * clipping
    clipped = g.astype(dt) * (limit / jnp.maximum(n, 1e-6))
    return jnp.where(n > limit, clipped, g.astype(dt)).astype(g.dtype)

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params("clip_by_agc", params)
    return jax.tree.map(leaf, updates, params), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)
