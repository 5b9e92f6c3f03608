"""Saturating arithmetic, bias corrections and the gradient bound.

Every param-shaped statistic is saturated with a select (`saturate`), never
with `jnp.minimum`: see `saturate` for why.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from optlab import _validate as V


# ------------------------------------------------------------ finiteness tests
def finite_sum(x: jax.Array, axis: Any = None) -> jax.Array:
  """The sum of x * 0 over `axis` (all by default): 0 where every entry is
  finite, NaN where one is an inf or a NaN.

  The finiteness tests below are built on it instead of boolean reductions
  (``jnp.all(jnp.isfinite(x))``): XLA:CPU compiles a boolean all-reduction
  into reduce-window kernels, ~0.05 s of compile time per shape (a third of
  SOAP's decomposition code), and a float sum into far less.
  """
  return jnp.sum(x * 0, axis=axis)


def all_finite(*trees: Any) -> jax.Array:
  """Whether every entry of every leaf of `trees` is finite (a scalar bool)."""
  sums = [finite_sum(x).astype(jnp.float32) for x in jax.tree.leaves(trees)]
  return sum(sums, jnp.float32(0)) == 0


def any_nan(x: jax.Array) -> jax.Array:
  """Whether any entry of x is NaN (a scalar bool), as a float count (see `finite_sum`)."""
  return jnp.sum(jnp.isnan(x), dtype=jnp.float32) > 0


# ------------------------------------------------------------------ saturation
def saturate(x: jax.Array) -> jax.Array:
  """Clamps a non-negative statistic at the dtype's largest finite value (NaN stays).

  Written as a select, not `jnp.minimum`: with `minimum` XLA:CPU recomputes the
  new statistic inside the parameter-update fusion and has to snapshot the old,
  donated state buffer with an extra copy of every leaf (3x slower steps).
  Only the upper end is clamped (-inf stays -inf): the statistic is >= 0.
  """
  top = jnp.finfo(x.dtype).max
  return jnp.where(x > top, top, x)


def clip_finite(x: jax.Array, dtype: Any = None) -> jax.Array:
  """x clipped to the finite range of `dtype` (default: x's) at both ends, for
  signed values (a norm ratio of up to 1e8 times a huge gradient, a basis
  factor): +-inf becomes +-max, NaN stays NaN. Non-negative statistics use
  `saturate`."""
  top = jnp.finfo(x.dtype if dtype is None else dtype).max
  return jnp.clip(x, -top, top)


def safe_square(g: jax.Array) -> jax.Array:
  """g*g saturated at the dtype's largest finite value (never overflows to inf).

  A select (`saturate`), not `jnp.minimum`, for the reason given there. NaN stays NaN.
  """
  return saturate(g * g)


def safe_div(y: jax.Array, d: jax.Array) -> jax.Array:
  """y / d, but 0 where d <= 0, so a zero scale never yields NaN or inf.

  A NaN in d is not <= 0 and stays NaN: a NaN gradient that reached a moment must
  show in the update (as in optax), not turn that coordinate's step silently into
  0 for ever.
  """
  d = jnp.asarray(d)
  ok = jnp.logical_not(d <= 0)
  return jnp.where(ok, y / jnp.where(ok, d, jnp.ones_like(d)), jnp.zeros_like(y))


def bound_gradient(g: Any) -> Any:
  """Clamps every entry of a gradient tree at +-2^((maxexp - 2) // 2) of its dtype.

  Applied once, before both moments, by methods that divide a first moment by
  the root of a second: then g^2 and every EMA of it stay finite (2^126 < float32
  max / 4), so a single huge finite entry (1e30) moves m and v consistently and
  the step keeps the method's bound,
  ``|m_hat| / sqrt(v_hat) <= (1 - b1) / sqrt(1 - b2)`` for Adam. Without it v
  saturates at the float maximum while m does not, and the step is ~1e10 times
  too large. Ordinary gradients (``|g| < 9e18`` in float32 and bfloat16,
  ``< 128`` in float16) are unchanged. NaN stays NaN, so it shows in
  the update; +-inf is clamped like any huge entry (use `skip_non_finite` to skip
  such steps instead).

  A plain clamp: XLA:CPU fuses it into every consumer of g, while a select that
  kept +-inf costs Adagrad and RMSProp one more pass over g per leaf (41 -> 61
  kernels per step on 20 leaves). (g is the incoming gradient, not a donated
  state buffer, so the `saturate` rule does not apply.)
  """
  def leaf(x):
    top = 2.0 ** ((jnp.finfo(x.dtype).maxexp - 2) // 2)
    return jnp.clip(x, -top, top)

  return jax.tree.map(leaf, g)


# ------------------------------------------------------------- bias correction
def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
  """1 - decay**count (count is the 1-based step), in the default float dtype.

  The plain formula, as optax's: methods whose reference is optax (Adam and its
  family) match it to the last bit. `one_minus_power` is the accurate form.
  """
  return 1.0 - decay ** count


def one_minus_power(b: Any, count: jax.Array, dtype: Any = None) -> jax.Array:
  """1 - b^count as -expm1(count log b), accurate in float32 too: no cancellation
  for b near 1, and log(b) in double precision when b is a Python number
  (float32(0.999) alone would be off by 1e-5 relative). dtype: default float."""
  dtype = dtype or jnp.result_type(float)
  v = V._concrete(b)
  log_b = math.log(v) if v is not None and v > 0 else jnp.log(jnp.asarray(b, dtype))
  return -jnp.expm1(jnp.asarray(count).astype(dtype) * jnp.asarray(log_b, dtype))


def debias(tree: Any, decay: Any, count: jax.Array, enabled: bool = True) -> Any:
  """tree / (1 - decay^t) (`bias_correction`, t = max(count, 1)), kept finite (a
  saturated moment divided by 1 - b would overflow); `tree` itself when not
  `enabled`."""
  if not enabled:
    return tree
  c = bias_correction(decay, jnp.maximum(count, 1))

  def leaf(v):
    top = jnp.finfo(v.dtype).max
    return jnp.clip(v / c, -top, top).astype(v.dtype)

  return jax.tree.map(leaf, tree)


# ------------------------------------------------------------------- EMA trees
def tree_ema(state: Any, x: Any, decay: Any) -> Any:
  """decay * state + (1 - decay) * x, stored in the state's dtype."""
  return jax.tree.map(lambda s, v: (decay * s + (1 - decay) * v).astype(s.dtype), state, x)


def tree_ema_sq(state: Any, x: Any, decay: Any, add: Any = 0.0) -> Any:
  """decay * state + (1 - decay) * x^2 + add, saturated, in the state's dtype."""
  return jax.tree.map(
      lambda s, v: saturate((decay * s + (1 - decay) * safe_square(v) + add).astype(s.dtype)),
      state, x)


# ------------------------------------------------------------- hyperparameters
def value_at(value: Any, step: jax.Array) -> Any:
  """A hyperparameter at a 0-based step: calls a schedule, passes a number through."""
  return value(step) if callable(value) else value
