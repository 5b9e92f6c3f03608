"""Step-size rules: the learning rate, RAdam's rectification, and the
per-coordinate step-size bounds of AdaBound / AMSBound and AdaMod.

The Adam family's *per-coordinate step size* is the factor that multiplies the
first moment, ``lr * bias terms / (sqrt(v) + eps)``. RAdam rescales it by a
scalar rectification term (or drops it while its variance is intractable);
AdaBound clips it into bounds that close in on an SGD learning rate; AdaMod
caps it by an exponential average of its own past values.

Two primitives carry these rules::

    scale_by_rectified_moments(first, second, b2=...)   # any moment rules (moments.py)
    scale_by_bounded_step_size(bound, learning_rate=lr) # Adam's moments, official-code form
        bound = dynamic_bound(final_lr, gamma)          # AdaBound / AMSBound (amsgrad=True)
        bound = momental_bound(beta3)                   # AdaMod

Both emit a descent direction *without* the learning rate, so that a recipe
ends, as every recipe does, with ``scale_by_learning_rate(learning_rate)``.
The bounds need the learning rate all the same (AdaBound's bounds follow it,
AdaMod averages the learning-rate-scaled step sizes), so
`scale_by_bounded_step_size` takes ``learning_rate`` too, evaluates a schedule
at the same step as `scale_by_learning_rate` does, and returns the bounded step
size divided by it: the product is exactly the official update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.numerics import bias_correction, bound_gradient, safe_div, value_at
from optlab._src.tree import cast_like, tree_zeros_like
from optlab.primitives.basis import COUNT, LINEAR_MOMENT, SECOND_MOMENT, SECOND_STAT, declare_state
from optlab.primitives.moments import MomentsState
from optlab.rules import (MaxSecondMomentState, MomentumState, SecondMomentState, ema,
                          ema_sq, max_ema_sq)

__all__ = [
    "ScaleByLearningRateState", "scale_by_learning_rate",
    "radam_rectification", "scale_by_rectified_moments", "scale_by_radam",
    "dynamic_bound", "momental_bound", "ScaleByBoundedStepSizeState",
    "scale_by_bounded_step_size",
]


def _positive_or_one(x: Any) -> jax.Array:
  return jnp.where(x > 0, x, 1.0)


# ---------------------------------------------------------------- learning rate
@declare_state(count=COUNT)
class ScaleByLearningRateState(NamedTuple):
  count: jax.Array  # [], int32: steps taken (the schedule's argument)


def scale_by_learning_rate(learning_rate: Any, *, flip_sign: bool = True
                           ) -> optax.GradientTransformationExtraArgs:
  """u <- -lr * u; `learning_rate` is a number or a schedule ``step -> lr``.

  Only a schedule keeps a step count in its state; a constant (or an array
  injected by `optax.inject_hyperparams`) is stateless, as in optax.

  Args:
    learning_rate: a number, an array or an optax schedule of the 0-based step.
    flip_sign: negate the update (a descent step); False scales only.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  V.check_learning_rate("scale_by_learning_rate", learning_rate)
  sign = -1.0 if flip_sign else 1.0
  scheduled = callable(learning_rate)

  def init(params):
    del params
    return ScaleByLearningRateState(jnp.zeros([], jnp.int32)) if scheduled else optax.EmptyState()

  def update(updates, state, params=None, **extra):
    del params, extra
    lr = learning_rate(state.count) if scheduled else learning_rate
    step = sign * jnp.asarray(lr)
    new = jax.tree.map(lambda u: (step * u).astype(u.dtype), updates)
    if scheduled:
      state = ScaleByLearningRateState(optax.safe_increment(state.count))
    return new, state

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------ RAdam rectification
def radam_rectification(b2: Any, count: jax.Array) -> tuple[jax.Array, jax.Array]:
  """RAdam's (rho_t, r_t) at the 1-based step `count` (arXiv:1908.03265, eqs. 6-8).

  rho_inf = 2 / (1 - b2) - 1 and rho_t = rho_inf - 2 t b2^t / (1 - b2^t) are the
  (approximate) degrees of freedom of the adaptive learning rate;
  r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
  rectifies its variance. Where that root is undefined (2 < rho_t < 4, or b2
  so small that rho_inf <= 4) r_t is returned as 0 instead of NaN; a
  threshold >= 4, as RAdam uses, never selects those steps.
  """
  t = jnp.asarray(count, dtype=float)
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  b2t = b2 ** t
  rho = rho_inf - 2.0 * t * b2t / (1.0 - b2t)
  ratio = ((rho - 4.0) * (rho - 2.0) * rho_inf) / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
  return rho, jnp.sqrt(jnp.where(ratio > 0, ratio, 0.0))


def scale_by_rectified_moments(first: Any, second: Any, *, b2: Any = None, eps: Any = 1e-8,
                               threshold: Any = 5.0) -> optax.GradientTransformationExtraArgs:
  """RAdam's rectified adaptive scaling, for any first- and second-moment rule.

  u = r_t * first(g) / (second(g) + eps)   while rho_t >= threshold,
  u = first(g)                             otherwise (un-adapted momentum step),
  with (rho_t, r_t) from `radam_rectification`. A threshold below 4 can
  select steps where r_t is undefined: they give a zero update here (NaN in
  optax). A zero denominator gives a zero update.

  ``first`` and ``second`` are moment rules from `optlab.rules` (e.g.
  ``ema(b1)``, ``ema_sq(b2)``, or ``belief(b2)`` for a rectified AdaBelief);
  `b2` is the second moment's decay, read from
  ``second.b2`` when not given. The state is a `MomentsState`, so it runs
  inside basis wrappers unchanged. Both rules see g through `bound_gradient`,
  as in `scale_by_moments`. While rho_t < threshold the step is the momentum
  m_hat itself, linear in g by the method's design: a huge gradient entry in
  those first steps gives a huge step.

  Args:
    first: the first-moment rule.
    second: the second-moment rule.
    b2: the second moment's decay in the rectification; None reads
      ``second.b2``.
    eps: added to the second rule's scale in the denominator, >= 0.
    threshold: the smallest rho_t at which the adaptive step is taken.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `MomentsState`.
  """
  if b2 is None:
    b2 = getattr(second, "b2", None)
    if b2 is None:
      raise TypeError("optlab.scale_by_rectified_moments: pass b2= (the second-moment "
                      f"decay); it cannot be read from the rule {second!r}")
  V.check_decay("scale_by_rectified_moments", "b2", b2)
  V.check_nonneg("scale_by_rectified_moments", "eps", eps)
  V.check_range("scale_by_rectified_moments", "threshold", threshold)

  def init(params):
    return MomentsState(jnp.zeros([], jnp.int32), first.init(params), second.init(params))

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    updates = bound_gradient(updates)
    s1, m = first.update(state.first, updates, count)
    s2, s = second.update(state.second, updates, count, s1)
    rho, r = radam_rectification(b2, count)
    rectify = rho >= threshold
    out = jax.tree.map(lambda x, y: jnp.where(rectify, safe_div(r * x, y + eps), x), m, s)
    return cast_like(out, updates), MomentsState(count, s1, s2)

  return optax.GradientTransformationExtraArgs(init, update)


def scale_by_radam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                   threshold: Any = 5.0, mu_dtype: Any = None, *, nesterov: bool = False
                   ) -> optax.GradientTransformationExtraArgs:
  """RAdam's scaling with Adam's moments (arXiv:1908.03265), as optax.scale_by_radam.

  u = r_t * m_hat / (sqrt(v_hat + eps_root) + eps) while rho_t >= threshold,
  else u = m_hat; `nesterov` uses NAdam's look-ahead m_hat.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to the second moment inside the root, >= 0.
    threshold: the smallest rho_t at which the adaptive step is taken.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    nesterov: use NAdam's look-ahead first moment.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `MomentsState`.
  """
  V.check_decay("scale_by_radam", "b1", b1)
  V.check_decay("scale_by_radam", "b2", b2)
  V.check_nonneg("scale_by_radam", "eps_root", eps_root)
  return scale_by_rectified_moments(ema(b1, nesterov=nesterov, dtype=mu_dtype),
                                    ema_sq(b2, eps_root=eps_root), b2=b2, eps=eps,
                                    threshold=threshold)


# ---------------------------------------------------------- step-size bounds
# A bound rule has ``init(params) -> state`` and
# ``update(state, a, count, lr, base_lr) -> (state, a)``, where `a` is the tree
# of per-coordinate step sizes per unit learning rate (the true step size is
# lr * a), `count` the 1-based step, `lr` the learning rate of this step and
# `base_lr` the initial one.

@dataclasses.dataclass(frozen=True)
class dynamic_bound:
  """AdaBound's dynamic bound (arXiv:1902.09843, official Luolc/AdaBound code).

  The true step size lr_t * a is clipped into
  [f_t * (1 - 1 / (gamma t + 1)), f_t * (1 + 1 / (gamma t))], with
  f_t = final_lr * lr_t / base_lr: both bounds follow the learning-rate
  schedule, and tend to f_t (SGD with learning rate f_t) as t grows. Per unit
  learning rate this is a clip of `a` into (final_lr / base_lr) * [...].

  Args:
    final_lr: the SGD learning rate the bounds converge to (at the base lr).
    gamma: convergence speed of the bounds; 0 gives [0, inf) (no bound).
    base_lr: the learning rate `final_lr` refers to. None: the learning rate
      at step 0 (official code: the param group's initial lr).
  """
  final_lr: Any = 0.1
  gamma: Any = 1e-3
  base_lr: Any = None

  def init(self, params):
    del params
    return ()

  def update(self, state, a, count, lr, base_lr):
    del lr
    base = jnp.asarray(base_lr if self.base_lr is None else self.base_lr, dtype=float)
    ratio = jnp.where(base > 0, self.final_lr / _positive_or_one(base), 0.0)
    gt = self.gamma * jnp.asarray(count, dtype=float)
    lower = ratio * (1.0 - 1.0 / (gt + 1.0))
    upper = jnp.where(gt > 0, ratio * (1.0 + 1.0 / _positive_or_one(gt)), jnp.inf)
    return state, jax.tree.map(lambda x: jnp.clip(x, lower, upper), a)


@dataclasses.dataclass(frozen=True)
class momental_bound:
  """AdaMod's momental bound (arXiv:1910.12249, official lancopku/AdaMod code).

  s <- beta3 s + (1 - beta3) lr_t a (an EMA of the true step sizes, from 0, not
  debiased), and the step size becomes min(lr_t a, s). Per unit learning rate:
  min(a, s / lr_t) (and `a` itself where lr_t = 0, where the step is 0 anyway).
  """
  beta3: Any = 0.999

  def init(self, params):
    return tree_zeros_like(params)

  def update(self, state, a, count, lr, base_lr):
    del count, base_lr
    b3 = self.beta3
    s = jax.tree.map(lambda e, x: (b3 * e + (1 - b3) * (lr * x)).astype(e.dtype), state, a)
    live = lr > 0
    out = jax.tree.map(
        lambda x, e: jnp.where(live, jnp.minimum(x, e / _positive_or_one(lr)), x), a, s)
    return s, out


@declare_state(count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT, nu_max=SECOND_MOMENT,
               bound=SECOND_STAT)
class ScaleByBoundedStepSizeState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # params-shaped, mu_dtype or params' dtype: EMA of g (not debiased)
  nu: Any           # params-shaped, params' dtype: EMA of g^2 (not debiased)
  nu_max: Any       # params-shaped running max of nu with amsgrad=True; () otherwise
  bound: Any        # the bound rule's state: params-shaped EMA of step sizes
                    # (momental_bound) or () (dynamic_bound, no bound)


def scale_by_bounded_step_size(bound: Optional[Any], b1: Any = 0.9, b2: Any = 0.999,
                               eps: Any = 1e-8, *, learning_rate: Any, amsgrad: bool = False,
                               mu_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Adam with a bounded per-coordinate step size, in the official codes' form.

  a_t = sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v_t) + eps)   (v_t the raw EMA of g^2,
  or its running max with `amsgrad`; eps outside the root of the *un-debiased*
  v_t, as in the AdaBound / AdaMod code), a_t <- bound(a_t), u = a_t * m_t (m_t
  the raw EMA of g). Follow it by ``scale_by_learning_rate(learning_rate)``:
  the step is then -lr_t * bound(a_t) * m_t, the official update.

  Args:
    bound: a bound rule, `dynamic_bound(...)` or `momental_bound(...)`; None
      gives Adam (with the official codes' eps placement).
    b1, b2, eps: Adam's decays and denominator constant.
    learning_rate: the same number or schedule given to the final
      `scale_by_learning_rate`. The bounds need it: a schedule is evaluated at
      the same (0-based) step, and its value at step 0 is the base learning
      rate of `dynamic_bound`. Under `optax.inject_hyperparams` the injected
      value is both the current and the base learning rate.
    amsgrad: normalise by the running maximum of v_t (AMSBound).
    mu_dtype: storage dtype of the first moment.

  Both moments see g through `bound_gradient` (one huge entry cannot saturate
  v while m follows it). AdaBound's lower bound on a_t makes the step linear
  in m_t once v_t is huge (the bounds converge to SGD by design), so a huge
  gradient entry gives a step ~ lr * final_lr / base_lr * m_t there.
  """
  where = "scale_by_bounded_step_size"
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_learning_rate(where, learning_rate)
  if isinstance(bound, dynamic_bound):
    V.check_nonneg(where, "final_lr", bound.final_lr)
    V.check_range(where, "gamma", bound.gamma, 0.0, 1.0, high_open=True)
    if bound.base_lr is not None:
      V.check_positive(where, "base_lr", bound.base_lr)
    elif callable(learning_rate):
      start = V._concrete(learning_rate(0))
      if start is not None and start <= 0:
        raise ValueError(
            f"optlab.{where}: the learning-rate schedule is {start} at step 0, so the "
            "AdaBound bounds (final_lr scaled by lr / base_lr) have no base; pass "
            "base_lr (e.g. the peak learning rate)")
  if isinstance(bound, momental_bound):
    V.check_decay(where, "beta3", bound.beta3)
  first = ema(b1, debias=False, dtype=mu_dtype)
  second = max_ema_sq(b2, debias=False) if amsgrad else ema_sq(b2, debias=False)

  def init(params):
    s2 = second.init(params)
    return ScaleByBoundedStepSizeState(
        count=jnp.zeros([], jnp.int32), mu=first.init(params).mu, nu=s2.nu,
        nu_max=s2.nu_max if amsgrad else (),
        bound=bound.init(params) if bound is not None else ())

  def update(updates, state, params=None, **extra):
    del params, extra
    lr = value_at(learning_rate, state.count)
    base_lr = value_at(learning_rate, jnp.zeros([], jnp.int32))
    count = optax.safe_increment(state.count)
    updates = bound_gradient(updates)
    s1, m = first.update(MomentumState(state.mu), updates, count)
    if amsgrad:
      s2, s = second.update(MaxSecondMomentState(state.nu, state.nu_max), updates, count)
    else:
      s2, s = second.update(SecondMomentState(state.nu), updates, count)
    c = jnp.sqrt(bias_correction(b2, count)) / bias_correction(b1, count)
    a = jax.tree.map(lambda y: safe_div(c, y + eps), s)
    bound_state = state.bound
    if bound is not None:
      bound_state, a = bound.update(bound_state, a, count, lr, base_lr)
    out = jax.tree.map(lambda x, y: x * y, a, m)
    return cast_like(out, updates), ScaleByBoundedStepSizeState(
        count, s1.mu, s2.nu, s2.nu_max if amsgrad else (), bound_state)

  return optax.GradientTransformationExtraArgs(init, update)
