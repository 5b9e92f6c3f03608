"""Weight averaging around any inner chain: Lookahead and Schedule-Free.

Both keep a second copy of the weights in their state and return updates that
move the params to the point where the next gradient should be taken, so they
are ordinary transformations (no special params type, unlike
`optax.lookahead`): ``params = optax.apply_updates(params, updates)`` as usual.
Each has a helper giving the weights to *evaluate* the model at:
`lookahead_params` (the slow weights) and `schedule_free_eval_params` (the
averaged sequence x). Both helpers accept the state of a chain that contains
the wrapper.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.tree import require_state, unzip_tree
from optlab.primitives.basis import ANCHOR_POINT, COUNT, INVARIANT_STAT, NESTED, declare_state

__all__ = ["WithLookaheadState", "with_lookahead", "lookahead_params", "ScheduleFreeState",
           "schedule_free", "schedule_free_eval_params"]


def _copy(params: Any, dtype: Any = None) -> Any:
  """A copy of `params` built by mapping over it (keeps sharding)."""
  return jax.tree.map(lambda p: jnp.asarray(p, dtype or p.dtype) + 0, params)


# ------------------------------------------------------------------ Lookahead
@declare_state(count=COUNT, slow=ANCHOR_POINT, inner_state=NESTED)
class WithLookaheadState(NamedTuple):
  count: jax.Array   # [], int32: steps since the last synchronisation
  slow: Any          # param-shaped, params' dtype: the slow weights phi
  inner_state: Any   # the wrapped (fast) transformation's state


def with_lookahead(inner: optax.GradientTransformation, sync_period: int = 5,
                   slow_step_size: Any = 0.5, *, reset_state: bool = False
                   ) -> optax.GradientTransformationExtraArgs:
  """Lookahead ("Lookahead Optimizer: k steps forward, 1 step back", Zhang et al.,
  arXiv:1907.08610) around any inner transformation.

  The params are the fast weights theta, updated by `inner`. Every
  `sync_period` (k) steps the slow weights move towards them,
  phi <- phi + slow_step_size * (theta - phi) (alpha in the paper), and the
  fast weights are reset to phi: on that step the returned update is
  phi_new - theta_old. Defaults are the paper's k = 5, alpha = 0.5.
  Hyperparameter names are optax's (`optax.lookahead`); the numbers equal
  optax's fast weights, without its `LookaheadParams` (the slow weights live in
  the state: `lookahead_params(state)`). ``reset_state`` re-initialises
  `inner`'s state at every synchronisation (as optax's option). Needs
  `params`.

  Args:
    inner: the fast optimizer, its learning rate included.
    sync_period: k, the number of fast steps between synchronisations.
    slow_step_size: alpha, how far the slow weights move towards the fast ones.
    reset_state: re-initialise `inner`'s state at every synchronisation.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `WithLookaheadState`.
  """
  V.check_range("with_lookahead", "sync_period", sync_period, 1)
  V.check_range("with_lookahead", "slow_step_size", slow_step_size, 0.0, 1.0)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return WithLookaheadState(jnp.zeros([], jnp.int32), _copy(params), inner.init(params))

  def update(updates, state, params=None, **extra):
    V.require_params("with_lookahead", params)
    new, inner_state = inner.update(updates, state.inner_state, params, **extra)
    sync = state.count == sync_period - 1

    def leaf(u, p, s):
      dt = accumulation_dtype(u.dtype)
      fast = p.astype(dt) + u.astype(dt)
      slow = s.astype(dt) + slow_step_size * (fast - s.astype(dt))
      return (slow - p.astype(dt)).astype(u.dtype), slow.astype(s.dtype)

    # Only the synchronising step touches the slow weights (lax.cond: the other
    # steps cost no extra memory traffic).
    out, slow = jax.lax.cond(
        sync, lambda: unzip_tree(params, jax.tree.map(leaf, new, params, state.slow), 2),
        lambda: (new, state.slow))
    if reset_state:
      fresh = inner.init(params)
      inner_state = jax.tree.map(lambda a, b: jnp.where(sync, a, b), fresh, inner_state)
    count = jnp.where(sync, 0, state.count + 1).astype(jnp.int32)
    return out, WithLookaheadState(count, slow, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def lookahead_params(state: Any) -> Any:
  """The slow weights of a `with_lookahead` state (or of a chain containing one)."""
  return require_state("lookahead_params", state, WithLookaheadState).slow


# ------------------------------------------------------------- Schedule-Free
@declare_state(count=COUNT, b1=INVARIANT_STAT, weight_sum=INVARIANT_STAT,
               max_lr=INVARIANT_STAT, z=ANCHOR_POINT, inner_state=NESTED)
class ScheduleFreeState(NamedTuple):
  count: jax.Array         # [], int32: steps taken
  b1: jax.Array            # [], params' dtype: the interpolation weight (for eval)
  weight_sum: jax.Array    # [], params' dtype: sum of the averaging weights so far
  max_lr: jax.Array        # [], params' dtype: largest learning rate seen
  z: Any                   # param-shaped, state_dtype or params' dtype: the base sequence
  inner_state: Any         # the wrapped transformation's state


def _lowest_float(params: Any) -> Any:
  leaves = jax.tree.leaves(params)
  if not leaves:
    return jnp.float32
  dtypes = sorted({jnp.result_type(x) for x in leaves}, key=lambda d: jnp.finfo(d).bits)
  return dtypes[0]


def schedule_free(inner: optax.GradientTransformation, learning_rate: Any, b1: Any = 0.9,
                  weight_lr_power: Any = 2.0, state_dtype: Any = None, *, r: Any = 0.0
                  ) -> optax.GradientTransformationExtraArgs:
  """Schedule-Free ("The Road Less Scheduled", Defazio et al., arXiv:2405.15682)
  around any inner transformation (which must not use momentum itself).

  With y the params (where the gradient is taken), z the base sequence and
  x the average that is evaluated::

      z_{t+1} = z_t + inner(g(y_t))            (inner includes -lr_t)
      x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},
      y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1},
      c_{t+1} = w_t / sum_{i<=t} w_i,  w_t = (t + 1)^r * max_{i<=t}(lr_i)^weight_lr_power.

  x is not stored: x_t = (y_t - (1 - b1) z_t) / b1, as in optax and the
  official memory-saving form. Evaluate the model at
  ``schedule_free_eval_params(state, params)``. `learning_rate` (number or
  schedule) must be the one the inner chain uses; a schedule is evaluated at
  the 0-based step, as `scale_by_learning_rate` does (optax.contrib evaluates
  it at the 1-based step; with a constant learning rate the two agree
  exactly, and the tests compare them). Defaults and names are optax's
  (`optax.contrib.schedule_free`), plus the official code's ``r`` (0 there
  and here). Differences from the official AdamW-ScheduleFree: its warm-up and
  sqrt(1 - b2^t) factor enter the averaging weights through its learning
  rate; here the weights see only `learning_rate`.

  Args:
    inner: the base step, its learning rate included, without momentum.
    learning_rate: the learning rate (number or schedule) `inner` uses.
    b1: the interpolation between x and z at which gradients are taken.
    weight_lr_power: the power of the largest learning rate so far in the
      averaging weights.
    state_dtype: the dtype of the stored z; None keeps the params' dtype.
    r: the power of (t + 1) in the averaging weights.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `ScheduleFreeState`.
  """
  V.check_learning_rate("schedule_free", learning_rate)
  V.check_range("schedule_free", "b1", b1, 0.0, 1.0, low_open=True)
  V.check_nonneg("schedule_free", "weight_lr_power", weight_lr_power)
  V.check_nonneg("schedule_free", "r", r)
  inner = optax.with_extra_args_support(inner)
  scheduled = callable(learning_rate)

  def init(params):
    dt = _lowest_float(params)
    # Separate buffers for the two zeros: a state donated to a jitted step must not
    # hold the same buffer twice.
    return ScheduleFreeState(jnp.zeros([], jnp.int32), jnp.asarray(b1, dt), jnp.zeros([], dt),
                             jnp.zeros([], dt), _copy(params, state_dtype), inner.init(params))

  def update(updates, state, params=None, **extra):
    V.require_params("schedule_free", params)
    dt = state.max_lr.dtype
    lr = jnp.asarray(learning_rate(state.count) if scheduled else learning_rate, dt)
    max_lr = jnp.maximum(state.max_lr, lr)
    count = optax.safe_increment(state.count)
    weight = (count.astype(dt) ** r) * max_lr ** weight_lr_power
    total = state.weight_sum + weight
    ck = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 0.0)
    base, inner_state = inner.update(updates, state.inner_state, params, **extra)

    def leaf(y, z, u):
      at = accumulation_dtype(y.dtype)
      y32, z32 = y.astype(at), z.astype(at)
      z_new = (z32 + u.astype(at)).astype(z.dtype).astype(at)
      x = (y32 - (1.0 - b1) * z32) / b1
      x = (1.0 - ck) * x + ck * z_new
      y_new = b1 * x + (1.0 - b1) * z_new
      return (y_new - y32).astype(u.dtype), z_new.astype(z.dtype)

    out, z = unzip_tree(params, jax.tree.map(leaf, params, state.z, base), 2)
    return out, ScheduleFreeState(count, state.b1, total, max_lr, z, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def schedule_free_eval_params(state: Any, params: Any) -> Any:
  """The averaged weights x = (y - (1 - b1) z) / b1 to evaluate the model at.

  `state` is a `schedule_free` state or the state of a chain containing one;
  `params` are the current params (y).
  """
  found = require_state("schedule_free_eval_params", state, ScheduleFreeState)
  b1 = found.b1
  return jax.tree.map(
      lambda y, z: ((y.astype(accumulation_dtype(y.dtype)) - (1.0 - b1) * z) / b1
                    ).astype(y.dtype), params, found.z)
