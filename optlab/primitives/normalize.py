"""Normalisations of an update: sign, per-tensor RMS, trust ratio (LARS / LAMB).

Also the per-tensor norm they share, `tensor_norm` / `tensor_sq_norm`: a
Euclidean norm that neither overflows (entries of 1e30 in float32) nor loses
everything to underflow (entries of 1e-30), and costs one pass over the tensor
in the common case.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype, statistics_dtype

__all__ = ["scale_by_sign", "scale_by_rms_normalize", "scale_by_trust_ratio"]


def scale_by_sign() -> optax.GradientTransformationExtraArgs:
  """u <- sign(u), element-wise (0 stays 0), in the update's dtype."""

  def update(updates, state, params=None, **extra):
    del params, extra
    return jax.tree.map(jnp.sign, updates), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


# ------------------------------------------------------------- tensor norms
def _scales(dtype: Any) -> tuple[float, float, float]:
  """(down, up, tiny) powers of two for the scaled sums of squares.

  With e = the dtype's max exponent (128 for float32, 1024 for float64):
  x * 2^(-3e/4) squared cannot overflow, x * 2^(e/2) squared cannot underflow
  for the entries that matter once the plain sum is below tiny = 2^(-e/2).
  """
  e = int(jnp.finfo(dtype).maxexp)
  return 2.0 ** (-(3 * e // 4)), 2.0 ** (e // 2), 2.0 ** (-(e // 2))


def _sum_sq_one_pass(x: jax.Array, reduce=jnp.sum) -> tuple[jax.Array, jax.Array]:
  """(t, k) with ||x|| = sqrt(t) * k, from three sibling sums over one read of x.

  Used where XLA fuses sibling reductions into one kernel (GPU, TPU): the
  extra multiplies are free in a memory-bound loop, and nothing branches.
  `reduce` sums the squares (the whole tensor; `segment_norms`: per segment).
  """
  down, up, tiny = _scales(x.dtype)
  s = reduce(x * x)
  s_down = reduce(jnp.square(x * down))
  s_up = reduce(jnp.square(x * up))
  one = jnp.ones([], x.dtype)
  small = s < tiny
  t = jnp.where(jnp.isfinite(s), jnp.where(small, s_up, s), s_down)
  k = jnp.where(jnp.isfinite(s), jnp.where(small, one / up, one), one / down)
  return t, k


def _sum_sq_with_fallback(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(t, k) as above: the plain sum, recomputed scaled by max|x| only when needed.

  Used on CPU, where sibling reductions are separate loops but `lax.cond` is a
  cheap host branch, so the common case costs exactly one plain reduction.
  """
  _, _, tiny = _scales(x.dtype)
  s = jnp.sum(x * x)
  ok = jnp.isfinite(s) & (s >= tiny)

  def rescaled(x):
    m = jnp.max(jnp.abs(x))
    m = jnp.where(m > 0, m, jnp.ones_like(m))
    return jnp.sum(jnp.square(x / m)), m

  return jax.lax.cond(ok, lambda x: (s, jnp.ones([], x.dtype)), rescaled, x)


def _sum_sq(x: Any) -> tuple[jax.Array, jax.Array]:
  x = jnp.asarray(x)
  x = x.astype(accumulation_dtype(x.dtype))
  if x.size == 0:
    return jnp.zeros([], x.dtype), jnp.ones([], x.dtype)
  return jax.lax.platform_dependent(x, cpu=_sum_sq_with_fallback, default=_sum_sq_one_pass)


def tensor_norm(x: Any) -> jax.Array:
  """The Euclidean (Frobenius) norm of a whole tensor, safe at extreme magnitudes.

  Computed in float32 (or float64 for float64 input). Entries near the
  dtype's limits neither overflow (1e30 in float32 gives 1e30 * sqrt(n), not
  inf) nor vanish (1e-30 gives 1e-30 * sqrt(n), not 0); a result beyond the
  largest finite value saturates there; an all-zero tensor gives 0; NaN/Inf
  entries propagate. One pass over `x` for inputs whose sum of squares is
  representable.
  """
  return _norm(*_sum_sq(x))


def _norm(t: jax.Array, k: jax.Array) -> jax.Array:
  """sqrt(t) * k, saturated at the largest finite value."""
  return jnp.minimum(jnp.sqrt(t) * k, jnp.finfo(t.dtype).max)


def segment_norms(x: jax.Array, segment_ids: Any, num_segments: int) -> jax.Array:
  """The Frobenius norm of each segment of the rows of `x` (N, ...), as `tensor_norm`.

  Row i belongs to segment ``segment_ids[i]``: the blocks of one tensor in a
  stack of blocks (`linalg.BlockStacks`), so that the norms of every tensor of
  a stack cost one batched computation instead of one per tensor. Safe at
  extreme magnitudes like `tensor_norm`, through the branch-free one-pass
  sums (plain, scaled down, scaled up) reduced per segment.
  """
  x = x.astype(accumulation_dtype(x.dtype)).reshape(x.shape[0], -1)
  seg = lambda v: jax.ops.segment_sum(jnp.sum(v, axis=1), segment_ids, num_segments)
  return _norm(*_sum_sq_one_pass(x, seg))


def tensor_sq_norm(x: Any) -> jax.Array:
  """sum(x^2) over a whole tensor, saturated at the largest finite value.

  Same dtype and safety as `tensor_norm` (the square itself underflows to 0
  where it is below the smallest positive value).
  """
  t, k = _sum_sq(x)
  return jnp.minimum(t * k * k, jnp.finfo(t.dtype).max)


def tensor_rms(x: Any) -> jax.Array:
  """sqrt(mean(x^2)) of a whole tensor (|x| for a scalar; 0 for an empty tensor)."""
  return tensor_norm(x) / np.sqrt(max(np.size(x), 1))


# ------------------------------------------------------------ transformations
def scale_by_rms_normalize(eps: Any = 0.0) -> optax.GradientTransformationExtraArgs:
  """u <- u / (rms(u) + eps) for each tensor, rms(u) = sqrt(mean(u^2)).

  Every tensor leaves with RMS 1 (a scalar becomes sign(u)). A tensor whose
  denominator is 0 (all zero, eps = 0) is returned unchanged; one with a NaN
  entry becomes all NaN (its RMS is NaN), as a plain division would. The
  result is bounded by sqrt(size) element-wise, so it stays finite for any
  finite input.
  """
  V.check_nonneg("scale_by_rms_normalize", "eps", eps)

  def one(u):
    rms = tensor_rms(u)
    denom = rms + eps
    denom = jnp.where(denom <= 0, jnp.ones_like(denom), denom)  # a NaN stays NaN
    return (u / denom).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    del params, extra
    return jax.tree.map(one, updates), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


def scale_by_trust_ratio(min_norm: Any = 0.0, trust_coefficient: Any = 1.0,
                         eps: Any = 0.0) -> optax.GradientTransformationExtraArgs:
  """u <- r u per tensor, trust ratio r = trust_coefficient * ||p|| / (||u|| + eps).

  The layer-wise step size of LARS (arXiv:1708.03888) and LAMB
  (arXiv:1904.00962). As in optax: both norms are first raised to at least
  `min_norm`; r = 1 where either norm is 0 (a zero-initialised tensor still
  moves, a zero update stays zero). Norms are `tensor_norm` (safe at 1e30
  entries), and r is capped at the largest finite value, so that r u is
  finite for any finite u and p (``|u_i| r <= trust_coefficient * ||p||``).
  Needs `params` in update.
  """
  where = "scale_by_trust_ratio"
  V.check_nonneg(where, "min_norm", min_norm)
  V.check_nonneg(where, "trust_coefficient", trust_coefficient)
  V.check_nonneg(where, "eps", eps)

  def one(u, p):
    p_norm = jnp.maximum(tensor_norm(p), min_norm)
    u_norm = jnp.maximum(tensor_norm(u), min_norm)
    dtype = jnp.result_type(p_norm, u_norm)
    zero = (p_norm == 0) | (u_norm == 0)
    ratio = trust_coefficient * p_norm / jnp.where(zero, 1.0, u_norm + eps)
    ratio = jnp.where(zero, 1.0, jnp.minimum(ratio, jnp.finfo(dtype).max))
    return (u * ratio).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params("scale_by_trust_ratio", params)
    return jax.tree.map(one, updates, params), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)
