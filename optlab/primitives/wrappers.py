"""Wrappers that change how an inner transformation is applied.

`skip_non_finite` drops bad steps; `with_gradient_noise` adds annealed noise
to the gradient; `switch` hands over from one transformation to another when a
trigger fires (SWATS); `xgrad` predicts the weights the gradient is taken at.
Weight averaging (lookahead, schedule-free) is in `weight_averaging.py`,
gradient grouping (SGG) in `grouping.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.numerics import all_finite, one_minus_power
from optlab._src.random import leaf_normals, new_key, split
from optlab._src.tree import find_state, norms_and_cosine, require_state, unzip_tree
from optlab.primitives.basis import COUNT, INVARIANT_STAT, LINEAR_STAT, NESTED, declare_state
from optlab.primitives.clipping import safe_global_norm
from optlab.primitives.moments import tree_zeros_like
from optlab.primitives.normalize import accumulation_dtype

__all__ = ["SkipNonFiniteState", "skip_non_finite", "find_state", "GradientNoiseState",
           "with_gradient_noise", "SwitchState", "after_steps", "swats_trigger", "switch",
           "XGradState", "xgrad", "xgrad_params"]


@declare_state(inner_state=NESTED, skipped=COUNT, total_skipped=COUNT)
class SkipNonFiniteState(NamedTuple):
  inner_state: Any
  skipped: jax.Array           # [], int32: steps skipped in a row
  total_skipped: jax.Array     # [], int32: steps skipped overall


def skip_non_finite(inner: optax.GradientTransformation,
                    max_consecutive: Optional[int] = None,
                    axis_name: Optional[str] = None) -> optax.GradientTransformationExtraArgs:
  """Skips any step whose gradient (or resulting update) is not finite.

  On a skipped step the update is zero and `inner`'s state is returned
  unchanged, bit for bit; the counters go up. With `max_consecutive`, the
  step after that many skips in a row is applied anyway (as optax's
  apply_if_finite does), so that a run cannot stall silently. Under pmap, give
  `axis_name` so that all replicas skip together.

  Args:
    inner: the transformation whose non-finite steps are skipped.
    max_consecutive: apply the step after this many skips in a row anyway;
      None skips for as long as the steps are not finite.
    axis_name: the pmap axis over which the replicas agree to skip, or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `SkipNonFiniteState`.
  """
  if max_consecutive is not None:
    V.check_range("skip_non_finite", "max_consecutive", max_consecutive, 1)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    zero = jnp.zeros([], jnp.int32)
    return SkipNonFiniteState(inner.init(params), zero, zero)

  def update(updates, state, params=None, **extra):
    new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
    ok = all_finite(updates, new_updates)
    if axis_name is not None:
      ok = jax.lax.pmin(ok.astype(jnp.int32), axis_name).astype(bool)
    if max_consecutive is not None:
      ok = jnp.logical_or(ok, state.skipped >= max_consecutive)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    skipped = jnp.where(ok, 0, optax.safe_increment(state.skipped))
    total = state.total_skipped + jnp.where(ok, 0, 1).astype(jnp.int32)
    return new_updates, SkipNonFiniteState(keep(new_inner, state.inner_state), skipped, total)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------- gradient noise
@declare_state(count=COUNT, key=INVARIANT_STAT, inner_state=NESTED)
class GradientNoiseState(NamedTuple):
  count: jax.Array   # [], int32: steps taken
  key: jax.Array     # [2], uint32: raw PRNG key, split every step
  inner_state: Any   # the wrapped transformation's state


def with_gradient_noise(inner: optax.GradientTransformation, eta: Any = 0.01,
                        gamma: Any = 0.55, seed: int = 0
                        ) -> optax.GradientTransformationExtraArgs:
  """Annealed Gaussian gradient noise, then `inner`.

  "Adding Gradient Noise Improves Learning for Very Deep Networks" (Neelakantan
  et al., arXiv:1511.06807): g_t <- g_t + N(0, sigma_t^2) with
  sigma_t^2 = eta / (1 + t)^gamma, t the 0-based step (the same schedule as
  `optax.add_noise`). The paper uses eta in {0.01, 0.3, 1.0} and gamma = 0.55.
  The key lives in the state (seeded by `seed`), so a run is reproducible and
  all pmap replicas (which hold the same state) add the same noise. The noise
  is drawn in at least float32 and cast to the gradient's dtype.

  Args:
    inner: the transformation that receives the noisy gradient.
    eta: the noise variance at step 0, >= 0.
    gamma: the decay exponent of the variance, >= 0.
    seed: seeds the key kept in the state.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `GradientNoiseState`.
  """
  V.check_nonneg("with_gradient_noise", "eta", eta)
  V.check_nonneg("with_gradient_noise", "gamma", gamma)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return GradientNoiseState(jnp.zeros([], jnp.int32), new_key(seed), inner.init(params))

  def update(updates, state, params=None, **extra):
    key, sub = split(state.key)
    count = optax.safe_increment(state.count)
    std = jnp.sqrt(eta / count.astype(float) ** gamma)  # count = 1 + t
    noise = leaf_normals(sub, updates)
    noisy = jax.tree.map(
        lambda g, n: (g.astype(accumulation_dtype(g.dtype)) + std * n).astype(g.dtype),
        updates, noise)
    new, inner_state = inner.update(noisy, state.inner_state, params, **extra)
    return new, GradientNoiseState(count, key, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------- switch
@declare_state(count=COUNT, switched=INVARIANT_STAT, scale=INVARIANT_STAT,
               trigger_state=NESTED, first_state=NESTED, second_state=NESTED)
class SwitchState(NamedTuple):
  count: jax.Array          # [], int32: steps taken
  switched: jax.Array       # [], bool: True once `second` has taken over
  scale: jax.Array          # [], float32 (float64 for float64 params): factor on `second`'s
                            # updates
  trigger_state: Any        # the trigger rule's state (scalars, floats in scale's dtype)
  first_state: Any          # state of the transformation used before the switch
  second_state: Any         # state of the transformation used after it


@dataclasses.dataclass(frozen=True)
class after_steps:
  """A `switch` trigger that fires on step `steps` (1-based); scale 1."""
  steps: int

  def init(self):
    return ()

  def update(self, state, grads, updates, count):
    del grads, updates
    return state, count >= self.steps, jnp.asarray(1.0)


@dataclasses.dataclass(frozen=True)
class swats_trigger:
  """SWATS's switching rule (Keskar & Socher, arXiv:1712.07628, Algorithm 1).

  With p_k the first transformation's full step (learning rate included) and
  g_k the gradient: where p_k . g_k != 0, gamma_k = p_k . p_k / (-p_k . g_k)
  (the SGD learning rate whose step has the same projection onto g_k as p_k)
  and lambda_k = b2 lambda_{k-1} + (1 - b2) gamma_k; it fires when k > 1 and
  ``|lambda_k / (1 - b2^k) - gamma_k| < tol``, with scale
  Lambda = lambda_k / (1 - b2^k), the learning rate the SGD phase then uses.
  Dot products are taken over the whole tree (the paper's vectors), through
  norms and a cosine, so that they cannot overflow.
  """
  b2: Any = 0.999
  tol: Any = 1e-9

  def init(self):
    return jnp.zeros([], jnp.float32)  # lambda (not bias corrected); `switch` sets the dtype

  def update(self, lam, grads, updates, count):
    npn, ng, cos = norms_and_cosine(updates, grads, safe_global_norm)
    live = (cos != 0) & (ng > 0)
    denom = jnp.where(live, -ng * cos, 1.0)
    gamma = jnp.where(live, npn / denom, 0.0).astype(lam.dtype)
    gamma = jnp.where(jnp.isfinite(gamma), gamma, 0.0)
    new_lam = jnp.where(live, self.b2 * lam + (1 - self.b2) * gamma, lam)
    corrected = new_lam / one_minus_power(self.b2, count, lam.dtype)
    fire = live & (count > 1) & (jnp.abs(corrected - gamma) < self.tol)
    return new_lam, fire, corrected


def switch(first: optax.GradientTransformation, second: optax.GradientTransformation,
           trigger: Any) -> optax.GradientTransformationExtraArgs:
  """Runs `first` until `trigger` fires, then `second` (scaled by the trigger) for good.

  The trigger is a rule with ``init() -> state`` and
  ``update(state, grads, first_updates, count) -> (state, fire, scale)``
  (``count`` the 1-based step), e.g. `after_steps(n)` or `swats_trigger(b2)`.
  The step on which it fires still uses `first`'s update; from the next step
  on the update is ``scale * second(g)``, with the scale frozen at the value
  of the firing step. Only the active branch runs (`lax.cond`); `second`'s
  state stays at its initial value until the switch. SWATS (arXiv:1712.07628)
  is ``switch(adam, sgd_with_momentum, swats_trigger(b2))``.

  Args:
    first: the transformation used until the trigger fires.
    second: the transformation used from the step after it fires on.
    trigger: the switching rule, as above.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `SwitchState`.
  """
  first = optax.with_extra_args_support(first)
  second = optax.with_extra_args_support(second)

  def init(params):
    # The scalars follow the params (float32, or float64 for float64 params), never
    # the x64 default float.
    dt = jnp.result_type(jnp.float32, *jax.tree.leaves(params))
    trig = jax.tree.map(
        lambda x: x.astype(dt) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        trigger.init())
    return SwitchState(jnp.zeros([], jnp.int32), jnp.zeros([], bool), jnp.ones([], dt), trig,
                       first.init(params), second.init(params))

  def update(updates, state, params=None, **extra):
    count = optax.safe_increment(state.count)

    def run_first(_):
      new, first_state = first.update(updates, state.first_state, params, **extra)
      trig, fire, scale = trigger.update(state.trigger_state, updates, new, count)
      scale = jnp.where(fire, jnp.asarray(scale, state.scale.dtype), state.scale)
      return new, first_state, state.second_state, trig, fire, scale

    def run_second(_):
      new, second_state = second.update(updates, state.second_state, params, **extra)
      new = jax.tree.map(lambda u: (u * state.scale.astype(accumulation_dtype(u.dtype))
                                    ).astype(u.dtype), new)
      return new, state.first_state, second_state, state.trigger_state, state.switched, \
          state.scale

    new, first_state, second_state, trig, switched, scale = jax.lax.cond(
        state.switched, run_second, run_first, None)
    return new, SwitchState(count, switched, scale, trig, first_state, second_state)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------- XGrad
@declare_state(previous=LINEAR_STAT, inner_state=NESTED)
class XGradState(NamedTuple):
  previous: Any      # param-shaped, params' dtype: the last update returned
  inner_state: Any   # the wrapped transformation's state


def xgrad(inner: optax.GradientTransformation, steps: Any = 1, *,
          use_obj_fn: bool = False) -> optax.GradientTransformationExtraArgs:
  """Weight prediction, as XGrad ("XGrad: Boosting Gradient-Based Optimizers With
  Weight Prediction", Guan et al., arXiv:2305.18240).

  XGrad evaluates the gradient at predicted future weights
  w_hat = w_t - steps * lr * Delta_t, where Delta_t is the optimizer's current
  update direction (for SGD with momentum the momentum, for Adam
  m_hat_t / (sqrt(v_hat_t) + eps), both from the moments after step t), and
  applies `inner`'s update computed from that gradient to w_t. Here the
  prediction is taken, for any `inner`, as ``w_hat = w + steps * u_prev``,
  with u_prev the last update this wrapper returned: for SGD-momentum, Adam
  and AdamW (up to the decay term, which XGrad also predicts from w_t) with a
  constant learning rate this is exactly XGrad's w_hat. Two ways to get the
  gradient there:

  * evaluate the loss at ``xgrad_params(state, params)`` and pass its gradient
    as usual (the forward pass uses the predicted weights), or
  * ``use_obj_fn=True`` and pass ``obj_fn`` (params -> loss on the batch):
    the wrapper then replaces the incoming gradient by
    ``grad(obj_fn)(w_hat)``.

  On the first step u_prev = 0, so w_hat = w.
  """
  V.check_nonneg("xgrad", "steps", steps)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return XGradState(tree_zeros_like(params), inner.init(params))

  def update(updates, state, params=None, **extra):
    if use_obj_fn:
      obj_fn = V.require_extra_arg("xgrad", extra, "obj_fn",
                                   "the loss on the current batch, params -> scalar")
      V.require_params("xgrad", params)
      predicted = _predict(params, state.previous, steps)
      updates = _cast_tree_like(jax.grad(obj_fn)(predicted), updates)
    new, inner_state = inner.update(updates, state.inner_state, params, **extra)
    previous = _cast_tree_like(new, state.previous)
    return new, XGradState(previous, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def _cast_tree_like(tree: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, y: jnp.asarray(x).astype(y.dtype), tree, like)


def _predict(params: Any, previous: Any, steps: Any) -> Any:
  return jax.tree.map(
      lambda p, u: (p.astype(accumulation_dtype(p.dtype)) + steps * u).astype(p.dtype),
      params, previous)


def xgrad_params(state: Any, params: Any, steps: Any = 1) -> Any:
  """XGrad's predicted weights w + steps * u_prev, for the forward pass.

  `state` is the state of an `xgrad` transformation, or of any chain that
  contains one; `steps` must be the same as given to `xgrad`.
  """
  found = require_state("xgrad_params", state, XGradState)
  return _predict(params, found.previous, steps)
