"""Step sizes that need no tuning: distance-based and model-based rules.

Distance-based rules estimate how far the solution is and step accordingly:

* `scale_by_dog` -- DoG and layer-wise LDoG
  (arXiv:2302.12022): eta_t = max_i ||x_i - x_0|| / sqrt(sum_i ||g_i||^2),
  globally or per tensor.
* `scale_by_dadapt_sgd`, `scale_by_dadapt_adam`, `scale_by_dadapt_lion` --
  D-Adaptation (arXiv:2301.07733): a growing lower bound d on the distance
  to the solution, d_hat = <weighted sum of steps taken, gradients> / ||sum||,
  shared by the three variants through `dadapt_bound`.

Model-based rules build a model of the loss from the loss *value* (the extra
arg ``value``) and take the step that brings the model to a lower bound:

* `scale_by_momo` -- MoMo and MoMo-Adam (arXiv:2305.07583): a truncated
  model of the loss from averaged values, gradients and <x, g>;
* `scale_by_polyak_step` -- the stochastic Polyak step in a diagonal
  preconditioner's norm, f / ||g||^2_{D^-1} (preconditioned SPS,
  arXiv:2310.02093, with optional slack), or SANIA's quadratic-constraint
  step (arXiv:2312.17369).

The diagonal preconditioners they use are small rules (`adam_diagonal`,
`adagrad_diagonal`, `hutchinson_diagonal_ema`) with one interface, so that
any of them serves MoMo, SPS and SANIA alike.

The D-Adaptation and MoMo rules put the learning rate *inside* the step (it
enters non-linearly: in D-Adaptation's moments and estimate, in MoMo's cap
and proximal weight decay), so those primitives take ``learning_rate`` and
return the final update; no `scale_by_learning_rate` follows them. DoG and
the Polyak steps are linear in the learning rate and end with it as usual.

Every scalar statistic is kept in float32, or float64 for float64 params;
per-tensor statistics (LDoG) are one vector with an entry per leaf, in
`jax.tree.leaves` order (see `layerwise.py` for why not a tree of scalars).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import tree_accumulation_dtype
from optlab._src.numerics import (bound_gradient, one_minus_power, safe_div, safe_square, saturate,
                                  value_at)
from optlab._src.random import new_key
from optlab._src.tree import cast_like, saturating_vdot, tree_choose, tree_zeros_like
from optlab.primitives.basis import (ANCHOR_POINT, COUNT, INVARIANT_STAT, LINEAR_MOMENT,
                                     LINEAR_STAT, SECOND_MOMENT, declare_state)
from optlab.primitives.normalize import tensor_norm, tensor_sq_norm

__all__ = [
    "DistanceOverGradientsState", "scale_by_dog",
    "dadapt_bound", "DAdaptSGDState", "scale_by_dadapt_sgd", "DAdaptAdamState",
    "scale_by_dadapt_adam", "DAdaptLionState", "scale_by_dadapt_lion",
    "adam_diagonal", "adagrad_diagonal", "hutchinson_diagonal_ema",
    "MomoState", "scale_by_momo", "PolyakStepState", "scale_by_polyak_step",
]


# ------------------------------------------------------------------ helpers
def _wide(x: jax.Array, dtype: Any) -> jax.Array:
  return jnp.asarray(x).astype(dtype)


def _saturating_sum(values: list[jax.Array], dtype: Any) -> jax.Array:
  """The sum of non-negative scalars, clamped at the largest finite value."""
  if not values:
    return jnp.zeros([], dtype)
  total = jnp.sum(jnp.stack([v.astype(dtype) for v in values]))
  return jnp.minimum(total, jnp.finfo(dtype).max)


def _global_norm(norms: list[jax.Array], dtype: Any) -> jax.Array:
  """sqrt(sum n_i^2) from per-tensor norms, as m * ||n / m|| (no overflow)."""
  if not norms:
    return jnp.zeros([], dtype)
  n = jnp.stack([x.astype(dtype) for x in norms])
  m = jnp.max(n)
  safe_m = jnp.where(m > 0, m, jnp.ones_like(m))
  return jnp.minimum(safe_m * jnp.sqrt(jnp.sum(jnp.square(n / safe_m))), jnp.finfo(dtype).max)


def _tree_l1(tree: Any, dtype: Any) -> jax.Array:
  parts = [jnp.minimum(jnp.sum(jnp.abs(x.astype(dtype))), jnp.finfo(dtype).max)
           for x in jax.tree.leaves(tree)]
  return _saturating_sum(parts, dtype)


def _scale_tree(tree: Any, factor: jax.Array) -> Any:
  """factor * x for every leaf, in each leaf's dtype."""
  return jax.tree.map(lambda x: (factor * x.astype(factor.dtype)).astype(x.dtype), tree)


# ================================================================ DoG / LDoG
# x0 is a point in parameter space: a rotation of coordinates maps it linearly
# (and leaves the distances ||x - x0|| unchanged).
@declare_state(count=COUNT, x0=ANCHOR_POINT, rbar=INVARIANT_STAT, sum_sq=INVARIANT_STAT)
class DistanceOverGradientsState(NamedTuple):
  count: jax.Array    # [], int32: steps taken
  x0: Any             # params-shaped, params' dtype: the params seen at the first step
  rbar: jax.Array     # [k], float32 (float64 for float64 params): max distance from x0
                      # (k = 1, or one entry per leaf with layerwise=True)
  sum_sq: jax.Array   # [k], as rbar: eps + sum of squared gradient norms so far


_INIT_STEPS = ("heuristic", "distance", "learning_rate")


def scale_by_dog(init_step: tuple[str, Any] = ("heuristic", 1e-6), eps: Any = 1e-8, *,
                 layerwise: bool = False) -> optax.GradientTransformationExtraArgs:
  """DoG's step size (arXiv:2302.12022, official formll/dog code): u = eta_t g.

  eta_t = rbar_t / sqrt(eps + sum_{i<=t} ||g_i||^2),  rbar_t = max(r_eps,
  max_{i<=t} ||x_i - x_0||), with x_0 the params at the first step. Follow it
  by ``scale_by_learning_rate(c)`` (c = 1 recommended).

  Args:
    init_step: how the first step is set, as optax.contrib.dog:
      ``("heuristic", a)``: r_eps = a (1 + ||x_0||) (the official ``reps_rel``);
      ``("distance", r)``: r_eps = r;
      ``("learning_rate", eta)``: the first step size is eta (the official
      ``init_eta``), r_eps = 0.
    eps: added to the sum of squared gradient norms.
    layerwise: LDoG: rbar, the sum and eta per tensor (each leaf a "layer").

  Needs `params` in update. A zero denominator gives a zero step. The gradient
  is taken through `bound_gradient`, so one huge finite entry moves the sum of
  squares and the step g consistently (``|u| <= rbar_t`` per entry); as Adagrad's
  sum, that sum never forgets, and later steps stay small: the method's math.
  """
  where = "scale_by_dog"
  if not (isinstance(init_step, (tuple, list)) and len(init_step) == 2):
    raise ValueError(f"optlab.{where}: init_step must be a pair (tag, value), got {init_step!r}")
  tag, init_value = init_step
  V.check_choice(where, "init_step[0]", tag, _INIT_STEPS)
  V.check_nonneg(where, "init_step[1]", init_value)
  V.check_nonneg(where, "eps", eps)

  def init(params):
    leaves = jax.tree.leaves(params)
    k = len(leaves) if layerwise else 1
    dtype = tree_accumulation_dtype(params)
    return DistanceOverGradientsState(
        count=jnp.zeros([], jnp.int32),
        x0=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
        rbar=jnp.zeros([k], dtype), sum_sq=jnp.zeros([k], dtype))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params(where, params)
    dtype = state.rbar.dtype
    first = state.count == 0
    x0 = jax.tree.map(lambda p, a: jnp.where(first, p, a), params, state.x0)
    g_leaves, treedef = jax.tree.flatten(bound_gradient(updates))
    p_leaves, x0_leaves = jax.tree.leaves(params), jax.tree.leaves(x0)
    dist = [tensor_norm(p.astype(dtype) - a.astype(dtype)) for p, a in zip(p_leaves, x0_leaves)]
    sq = [tensor_sq_norm(g).astype(dtype) for g in g_leaves]
    if layerwise:
      dist = jnp.stack(dist) if dist else jnp.zeros([0], dtype)
      sq = jnp.stack(sq) if sq else jnp.zeros([0], dtype)
      x_norm = (jnp.stack([tensor_norm(p).astype(dtype) for p in p_leaves])
                if p_leaves else jnp.zeros([0], dtype))
    else:
      dist = _global_norm(dist, dtype)[None]
      sq = _saturating_sum(sq, dtype)[None]
      x_norm = _global_norm([tensor_norm(p) for p in p_leaves], dtype)[None]
    if tag == "heuristic":
      r_eps = init_value * (1.0 + x_norm)
    elif tag == "distance":
      r_eps = jnp.full_like(dist, init_value)
    else:
      r_eps = jnp.zeros_like(dist)
    rbar = jnp.maximum(jnp.where(first, r_eps, state.rbar), dist)
    sum_sq = saturate(jnp.where(first, eps, state.sum_sq) + sq)
    eta = safe_div(rbar, jnp.sqrt(sum_sq))
    if tag == "learning_rate":
      eta = jnp.where(first, jnp.asarray(init_value, dtype), eta)
    etas = [eta[i] if layerwise else eta[0] for i in range(len(g_leaves))]
    out = [(e * g.astype(dtype)).astype(g.dtype) for e, g in zip(etas, g_leaves)]
    new_state = DistanceOverGradientsState(optax.safe_increment(state.count), x0,
                                           rbar.astype(dtype), sum_sq.astype(dtype))
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init, update)


# ============================================================ D-Adaptation
def dadapt_bound(d: jax.Array, numerator: jax.Array, s_norm: jax.Array, *, scale: Any = 1.0,
                 growth_rate: Any = math.inf, live: Any = True) -> jax.Array:
  """D-Adaptation's lower bound on the distance to the solution (arXiv:2301.07733).

  d_hat = scale * numerator / s_norm, where `numerator` is the (weighted) sum
  of dlr_k <g_k, s_{k-1}> and s_norm the norm of the (weighted) sum of steps
  s_k; then d <- max(d, min(d_hat, growth_rate * d)). Where `live` is False
  (a zero learning rate, or s_norm = 0: nothing learned yet) d is kept.
  """
  top = jnp.finfo(d.dtype).max
  d_hat = jnp.clip(scale * safe_div(numerator, s_norm), -top, top)
  new = jnp.maximum(d, jnp.minimum(d_hat, growth_rate * d))
  # not (s_norm <= 0), rather than s_norm > 0: a NaN that reached the sums must propagate.
  return jnp.where(jnp.logical_and(live, jnp.logical_not(s_norm <= 0)), new, d).astype(d.dtype)


def _dadapt_learning_rate(learning_rate: Any, count: jax.Array, dtype: Any) -> jax.Array:
  return jnp.asarray(value_at(learning_rate, count)).astype(dtype)


def _check_dadapt(where: str, learning_rate: Any, d0: Any, growth_rate: Any,
                  weight_decay: Any) -> None:
  V.check_learning_rate(where, learning_rate)
  V.check_positive(where, "d0", d0)
  V.check_range(where, "growth_rate", growth_rate, 1.0)
  V.check_nonneg(where, "weight_decay", weight_decay)


# s (the weighted sum of steps) and x0 feed the distance estimate d: a statistic
# and an anchor, which momentum resets and 8-bit storage must keep exact.
@declare_state(count=COUNT, s=LINEAR_STAT, x0=ANCHOR_POINT, g0_norm=INVARIANT_STAT,
               d=INVARIANT_STAT, numerator=INVARIANT_STAT)
class DAdaptSGDState(NamedTuple):
  count: jax.Array      # [], int32: steps taken
  s: Any                # params-shaped, params' dtype: sum of dlr_k g_k
  x0: Any               # params-shaped, params' dtype: the params at the first step
  g0_norm: jax.Array    # [], float32 (float64 for float64 params): ||g|| at the first
                        # step with a non-zero gradient (0 before it)
  d: jax.Array          # [], as g0_norm: the distance estimate
  numerator: jax.Array  # [], as g0_norm: sum of dlr_k <g_k, s_{k-1}>


def scale_by_dadapt_sgd(learning_rate: Any = 1.0, momentum: Any = 0.0, weight_decay: Any = 0.0,
                        d0: Any = 1e-6, growth_rate: Any = math.inf
                        ) -> optax.GradientTransformationExtraArgs:
  """D-Adapted SGD (arXiv:2301.07733, Algorithm 1), as facebookresearch/dadaptation.

  With ``dlr_k = d_k lr_k / ||g_0||`` and g_k the gradient plus
  ``weight_decay * x_k``::

    numerator += dlr_k <g_k, s>,  s <- s + dlr_k g_k,
    d_{k+1} = max(d_k, min(2 numerator / ||s||_2, growth_rate d_k)),
    x_{k+1} = momentum x_k + (1 - momentum) (x_0 - s)   (dual averaging).

  Returns the final update x_{k+1} - x_k (learning rate and sign included: no
  `scale_by_learning_rate` follows). As the official code, ||g_0|| is taken
  from the raw gradient (without the decay term); here it is the first
  *non-zero* gradient norm (the official code divides by zero otherwise).
  While s = 0 the step is zero. Needs `params` in update.
  """
  where = "scale_by_dadapt_sgd"
  _check_dadapt(where, learning_rate, d0, growth_rate, weight_decay)
  V.check_decay(where, "momentum", momentum)

  def init(params):
    dtype = tree_accumulation_dtype(params)
    scalar = lambda v: jnp.asarray(v, dtype)
    return DAdaptSGDState(jnp.zeros([], jnp.int32), tree_zeros_like(params),
                          jax.tree.map(lambda p: jnp.array(p, copy=True), params),
                          scalar(0.0), scalar(d0), scalar(0.0))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params(where, params)
    dtype = state.d.dtype
    first = state.count == 0
    x0 = jax.tree.map(lambda p, a: jnp.where(first, p, a), params, state.x0)
    g_norm = _global_norm([tensor_norm(g) for g in jax.tree.leaves(updates)], dtype)
    g0_norm = jnp.where(state.g0_norm > 0, state.g0_norm, g_norm)
    lr = _dadapt_learning_rate(learning_rate, state.count, dtype)
    dlr = safe_div(state.d * lr, g0_norm)
    g = jax.tree.map(lambda u, p: u + weight_decay * p, updates, params)
    numerator = state.numerator + dlr * saturating_vdot(g, state.s, dtype)
    s = jax.tree.map(lambda a, x: (a + dlr * x).astype(a.dtype), state.s, g)
    s_norm = _global_norm([tensor_norm(x) for x in jax.tree.leaves(s)], dtype)
    d = dadapt_bound(state.d, numerator, s_norm, scale=2.0, growth_rate=growth_rate,
                     live=lr > 0)
    live = jnp.logical_not(s_norm <= 0)  # NaN stays live, so it shows in the update
    out = jax.tree.map(
        lambda p, a, z: jnp.where(live, (1 - momentum) * (a.astype(dtype) - z.astype(dtype)
                                                          - p.astype(dtype)), 0.0),
        params, x0, s)
    numerator = jnp.where(live, numerator, state.numerator).astype(dtype)
    return cast_like(out, updates), DAdaptSGDState(
        optax.safe_increment(state.count), s, x0, g0_norm.astype(dtype), d, numerator)

  return optax.GradientTransformationExtraArgs(init, update)


def _ema_accumulate(s: Any, x: Any, dlr: jax.Array, beta: Any) -> Any:
  """s <- beta s + (1 - beta) dlr x: the weighted sum of steps of D-Adapted Adam / Lion."""
  return jax.tree.map(lambda a, v: (beta * a + (1 - beta) * dlr * v).astype(a.dtype), s, x)


@declare_state(count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT, s=LINEAR_STAT,
               d=INVARIANT_STAT, numerator=INVARIANT_STAT)
class DAdaptAdamState(NamedTuple):
  count: jax.Array      # [], int32: steps taken
  mu: Any               # params-shaped, params' dtype: EMA of dlr_k g_k
  nu: Any               # params-shaped, params' dtype: EMA of g^2 (not debiased)
  s: Any                # params-shaped, params' dtype: EMA (rate sqrt(b2)) of dlr_k g_k
  d: jax.Array          # [], float32 (float64 for float64 params): the distance estimate
  numerator: jax.Array  # [], as d: EMA (rate sqrt(b2)) of dlr_k <g_k, s / (sqrt(nu) + eps)>


def scale_by_dadapt_adam(learning_rate: Any = 1.0, b1: Any = 0.9, b2: Any = 0.999,
                         eps: Any = 1e-8, weight_decay: Any = 0.0, d0: Any = 1e-6,
                         growth_rate: Any = math.inf, *, decouple: bool = False,
                         use_bias_correction: bool = False
                         ) -> optax.GradientTransformationExtraArgs:
  """D-Adapted Adam (arXiv:2301.07733, Algorithm 2), as facebookresearch/dadaptation.

  With beta = sqrt(b2), dlr_k = d_k lr_k c_k (c_k = sqrt(1 - b2^k) / (1 - b1^k)
  with ``use_bias_correction``, else 1) and g_k the gradient (plus
  weight_decay * x_k unless ``decouple``)::

    numerator <- beta numerator + (1 - beta) dlr_k <g_k, s / (sqrt(v) + eps)>
    (s, v before this step's update);
    m <- b1 m + (1 - b1) dlr_k g_k;  v <- b2 v + (1 - b2) g_k^2;
    s <- beta s + (1 - beta) dlr_k g_k;
    d_{k+1} = max(d_k, min(numerator / ((1 - beta) ||s||_1), growth_rate d_k));
    u = -m / (sqrt(v) + eps)  - dlr_k weight_decay x_k  (the latter if decouple).

  Returns the final update (learning rate inside m: no `scale_by_learning_rate`
  follows). A step with ||s||_1 = 0 (all gradients so far zero) is zero and
  leaves d and the numerator as they are, as the official code. Both moments
  see g through `bound_gradient` (one huge entry cannot saturate v while m
  follows it). Needs `params`.
  """
  where = "scale_by_dadapt_adam"
  _check_dadapt(where, learning_rate, d0, growth_rate, weight_decay)
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)

  def init(params):
    dtype = tree_accumulation_dtype(params)
    return DAdaptAdamState(jnp.zeros([], jnp.int32), tree_zeros_like(params),
                           tree_zeros_like(params), tree_zeros_like(params),
                           jnp.asarray(d0, dtype), jnp.zeros([], dtype))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params(where, params)
    dtype = state.d.dtype
    count = optax.safe_increment(state.count)
    beta = math.sqrt(b2) if isinstance(b2, (int, float)) else jnp.sqrt(b2)
    lr = _dadapt_learning_rate(learning_rate, state.count, dtype)
    c = (jnp.sqrt(one_minus_power(b2, count, dtype)) / one_minus_power(b1, count, dtype)
         if use_bias_correction else 1.0)
    dlr = (state.d * lr * c).astype(dtype)
    updates = bound_gradient(updates)
    g = updates if decouple else jax.tree.map(lambda u, p: u + weight_decay * p, updates, params)
    weighted = jax.tree.map(lambda a, v: safe_div(a, jnp.sqrt(v) + eps), state.s, state.nu)
    top = jnp.finfo(dtype).max
    acc = jnp.clip(dlr * saturating_vdot(g, weighted, dtype), -top, top)
    mu = jax.tree.map(lambda m, x: (b1 * m + (1 - b1) * dlr * x).astype(m.dtype), state.mu, g)
    nu = jax.tree.map(lambda v, x: (b2 * v + (1 - b2) * safe_square(x)).astype(v.dtype),
                      state.nu, g)
    s = _ema_accumulate(state.s, g, dlr, beta)
    s_l1 = _tree_l1(s, dtype)
    numerator = beta * state.numerator + (1 - beta) * acc
    d = dadapt_bound(state.d, numerator, (1 - beta) * s_l1, growth_rate=growth_rate,
                     live=lr > 0)
    live = jnp.logical_not(s_l1 <= 0)  # NaN stays live, so it shows in the update

    def step(m, v, p):
      u = -safe_div(m.astype(dtype), jnp.sqrt(v.astype(dtype)) + eps)
      if decouple:
        u = u - weight_decay * dlr * p.astype(dtype)
      return u

    out = tree_choose(live, lambda: jax.tree.map(step, mu, nu, params),
                      lambda: jax.tree.map(lambda m: jnp.zeros(m.shape, dtype), mu))
    numerator = jnp.where(live, numerator, state.numerator).astype(dtype)
    return cast_like(out, updates), DAdaptAdamState(count, mu, nu, s, d, numerator)

  return optax.GradientTransformationExtraArgs(init, update)


@declare_state(count=COUNT, mu=LINEAR_MOMENT, s=LINEAR_STAT, d=INVARIANT_STAT,
               numerator=INVARIANT_STAT)
class DAdaptLionState(NamedTuple):
  count: jax.Array      # [], int32: steps taken
  mu: Any               # params-shaped, params' dtype: Lion's momentum of dlr_k g_k
  s: Any                # params-shaped, params' dtype: EMA (rate sqrt(b2)) of dlr_k u_k
  d: jax.Array          # [], float32 (float64 for float64 params): the distance estimate
  numerator: jax.Array  # [], as d: EMA (rate sqrt(b2)) of dlr_k <u_k, s_{k-1}>


def scale_by_dadapt_lion(learning_rate: Any = 1.0, b1: Any = 0.9, b2: Any = 0.99,
                         weight_decay: Any = 0.0, d0: Any = 1e-6
                         ) -> optax.GradientTransformationExtraArgs:
  """D-Adapted Lion, as facebookresearch/dadaptation's DAdaptLion.

  With beta = sqrt(b2) and dlr_k = d_k lr_k::

    u_k = sign(b1 m + (1 - b1) g_k);  x <- x (1 - dlr_k weight_decay) - dlr_k u_k;
    m <- b2 m + (1 - b2) dlr_k g_k   (the official code keeps dlr in m, so the
    sign mixes a dlr-scaled momentum with the raw gradient; followed here);
    numerator <- beta numerator + (1 - beta) dlr_k <u_k, s>;
    s <- beta s + (1 - beta) dlr_k u_k;
    d_{k+1} = max(d_k, numerator / ((1 - beta) ||s||_1)).

  Returns the final update (no `scale_by_learning_rate` follows). As the
  official code, the step is taken even when ||s||_1 = 0 (d is then kept).
  Needs `params` in update.
  """
  where = "scale_by_dadapt_lion"
  _check_dadapt(where, learning_rate, d0, math.inf, weight_decay)
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)

  def init(params):
    dtype = tree_accumulation_dtype(params)
    return DAdaptLionState(jnp.zeros([], jnp.int32), tree_zeros_like(params),
                           tree_zeros_like(params), jnp.asarray(d0, dtype), jnp.zeros([], dtype))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params(where, params)
    dtype = state.d.dtype
    beta = math.sqrt(b2) if isinstance(b2, (int, float)) else jnp.sqrt(b2)
    lr = _dadapt_learning_rate(learning_rate, state.count, dtype)
    dlr = (state.d * lr).astype(dtype)
    direction = jax.tree.map(lambda m, g: jnp.sign(b1 * m + (1 - b1) * g), state.mu, updates)
    out = jax.tree.map(lambda u, p: -dlr * (u.astype(dtype) + weight_decay * p.astype(dtype)),
                       direction, params)
    mu = jax.tree.map(lambda m, g: (b2 * m + (1 - b2) * dlr * g).astype(m.dtype),
                      state.mu, updates)
    acc = dlr * saturating_vdot(direction, state.s, dtype)
    s = _ema_accumulate(state.s, direction, dlr, beta)
    s_l1 = _tree_l1(s, dtype)
    numerator = beta * state.numerator + (1 - beta) * acc
    d = dadapt_bound(state.d, numerator, (1 - beta) * s_l1, live=lr > 0)
    numerator = jnp.where(jnp.logical_not(s_l1 <= 0), numerator, state.numerator).astype(dtype)
    return cast_like(out, updates), DAdaptLionState(optax.safe_increment(state.count), mu, s,
                                                    d, numerator)

  return optax.GradientTransformationExtraArgs(init, update)


# ================================================== diagonal preconditioners
# A diagonal preconditioner rule has ``init(params) -> state`` and
# ``update(state, g, count, *, params, extra, key) -> (state, D)`` where D is a
# params-shaped tree of non-negative scales (the preconditioned step is g / D;
# a zero scale gives a zero step). `count` is the 1-based step. Each rule
# forms D = max(floor, |S|)^power + eps from its statistic S, which covers the
# conventions of the methods that use them:
#   MoMo-Adam:   sqrt(v_hat) + eps              (power 0.5, eps)
#   PSPS:        max(alpha, |D_t|)              (power 1, floor alpha; for the
#                                                root of a second moment,
#                                                floor alpha^2 and power 0.5)
#   SANIA (SQR): max(eps, v_hat), optionally its root (power 1 or 0.5, floor eps).
# Rules that need randomness set ``needs_key = True`` and get a fresh key.

def _shape_scale(s: jax.Array, floor: Any, power: Any, eps: Any) -> jax.Array:
  s = jnp.abs(s)
  if not (isinstance(floor, (int, float)) and floor == 0):
    s = jnp.maximum(s, floor)
  if isinstance(power, (int, float)) and power == 1:
    out = s
  elif isinstance(power, (int, float)) and power == 0.5:
    out = jnp.sqrt(s)
  else:
    out = jnp.power(s, power)
  return out + eps


@dataclasses.dataclass(frozen=True)
class adam_diagonal:
  """Adam's second moment as a diagonal scale: S = v / (1 - b2^t) (``debias``),
  v <- b2 v + (1 - b2) g^2; D = max(floor, S)^power + eps."""
  b2: Any = 0.999
  eps: Any = 0.0
  floor: Any = 0.0
  power: Any = 0.5
  _: dataclasses.KW_ONLY
  debias: bool = True
  needs_key = False
  extra_arg = None

  def init(self, params):
    return tree_zeros_like(params)

  def update(self, nu, g, count, **ctx):
    del ctx
    nu = jax.tree.map(
        lambda v, x: saturate((self.b2 * v + (1 - self.b2) * safe_square(x)).astype(v.dtype)),
        nu, g)
    c = one_minus_power(self.b2, count) if self.debias else 1.0
    scale = jax.tree.map(
        lambda v: _shape_scale(v / c.astype(v.dtype) if self.debias else v, self.floor,
                               self.power, self.eps), nu)
    return nu, scale


@dataclasses.dataclass(frozen=True)
class adagrad_diagonal:
  """AdaGrad's accumulator as a diagonal scale: S = sum of g^2; D = max(floor, S)^power + eps."""
  eps: Any = 0.0
  floor: Any = 0.0
  power: Any = 0.5
  needs_key = False
  extra_arg = None

  def init(self, params):
    return tree_zeros_like(params)

  def update(self, nu, g, count, **ctx):
    del count, ctx
    nu = jax.tree.map(lambda v, x: saturate((v + safe_square(x)).astype(v.dtype)), nu, g)
    return nu, jax.tree.map(lambda v: _shape_scale(v, self.floor, self.power, self.eps), nu)


@dataclasses.dataclass(frozen=True)
class hutchinson_diagonal_ema:
  """A smoothed Hutchinson estimate of diag(H) as a diagonal scale (PSPS official code).

  At the first step S = the mean of ``init_probes`` Hutchinson samples
  z * (H z); every step (the first included) S <- b2 S + (1 - b2) * (the mean
  of ``n_probes`` samples); ``D = max(floor, |S|)^power + eps``. Needs the extra
  arg ``obj_fn`` (params -> loss on the current batch) and `params`; the HVPs
  come from `optlab.hutchinson_diagonal`. With ``axis_name`` the samples are
  averaged over that pmap axis.
  """
  b2: Any = 0.999
  floor: Any = 0.1
  power: Any = 1.0
  eps: Any = 0.0
  n_probes: int = 1
  init_probes: int = 100
  axis_name: Optional[str] = None
  needs_key = True
  extra_arg = "obj_fn"

  def init(self, params):
    return tree_zeros_like(params)

  def update(self, nu, g, count, *, params=None, extra=None, key=None):
    from optlab.primitives.curvature import hutchinson_diagonal  # a cycle at module level
    where = "hutchinson_diagonal_ema"
    obj_fn = V.require_extra_arg(where, extra or {}, "obj_fn",
                                 "params -> loss on the current batch, differentiable twice")
    V.require_params(where, params)
    k_init, k_step = jax.random.split(key)

    def estimate(k, n):
      est = hutchinson_diagonal(obj_fn, params, k, n)
      est = jax.tree.map(lambda e, v: e.astype(v.dtype), est, nu)
      return jax.lax.pmean(est, self.axis_name) if self.axis_name is not None else est

    start = jax.lax.cond(count == 1, lambda: estimate(k_init, self.init_probes), lambda: nu)
    fresh = estimate(k_step, self.n_probes)
    nu = jax.tree.map(lambda s, e: (self.b2 * s + (1 - self.b2) * e).astype(s.dtype), start, fresh)
    return nu, jax.tree.map(lambda s: _shape_scale(s, self.floor, self.power, self.eps), nu)


def _check_preconditioner(where: str, rule: Any) -> None:
  if rule is not None and not (hasattr(rule, "init") and hasattr(rule, "update")
                               and hasattr(rule, "needs_key")):
    raise TypeError(f"optlab.{where}: preconditioner must be a diagonal rule such as "
                    f"optlab.adam_diagonal(), got {rule!r}")


def _precondition(where, rule, nu, key, g, count, params, extra):
  """(nu, key, D): runs the rule (D = None without one), advancing the key if it has one."""
  if rule is None:
    return nu, key, None
  sub = None
  if rule.needs_key:
    key, sub = jax.random.split(key)
  nu, scale = rule.update(nu, g, count, params=params, extra=extra, key=sub)
  return nu, key, scale


def _divide(tree: Any, scale: Any, dtype: Any) -> Any:
  """tree / scale (zero where the scale is zero), in `dtype`; tree itself without a scale."""
  if scale is None:
    return jax.tree.map(lambda x: x.astype(dtype), tree)
  return jax.tree.map(lambda x, d: safe_div(x.astype(dtype), d.astype(dtype)), tree, scale)


# ==================================================================== MoMo
@declare_state(count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT, barf=INVARIANT_STAT,
               gamma=INVARIANT_STAT, lower_bound=INVARIANT_STAT)
class MomoState(NamedTuple):
  count: jax.Array     # [], int32: steps taken
  mu: Any              # params-shaped, params' dtype: EMA of the gradient (d_k)
  nu: Any              # the preconditioner's params-shaped statistic; () without one
  barf: jax.Array      # [], float32 (float64 for float64 params): EMA of the loss values
  gamma: jax.Array     # [], as barf: EMA of <g_k, x_k>
  lower_bound: jax.Array  # [], as barf: the current lower bound of the loss


def scale_by_momo(learning_rate: Any = 1.0, beta: Any = 0.9, lower_bound: Any = 0.0,
                  weight_decay: Any = 0.0, *, adapt_lower_bound: bool = False,
                  bias_correction: bool = False, preconditioner: Any = None,
                  divide: bool = True) -> optax.GradientTransformationExtraArgs:
  """MoMo's model-based step (arXiv:2305.07583), as the official fabian-sp/MoMo code.

  With EMAs (rate beta) of the loss values f_k (the extra arg ``value``), of
  the gradients d_k and of gamma_k = <g_k, x_k>, rho_k = 1 - beta^k with
  ``bias_correction`` (EMAs from 0) and 1 otherwise (EMAs started at the first
  sample), a diagonal preconditioner D (identity without one), c = 1 + lr_k
  weight_decay::

    tau_k = min(lr_k / rho_k, max(c (fbar_k - rho_k lb) + <x_k, d_k> - c gamma_k, 0)
                / ||d_k||^2_{D^-1}),
    x_{k+1} = (x_k - tau_k D^-1 d_k) / c  (``divide``, MoMo's proximal decay), or
    x_{k+1} = x_k (1 - lr_k weight_decay) - tau_k D^-1 d_k (MoMo-Adam's
    divide=False, AdamW-style).

  With ``adapt_lower_bound`` the bound lb is re-estimated online (the
  official ``use_fstar``), never below ``lower_bound``.

  Returns the final update (learning rate inside: no `scale_by_learning_rate`
  follows). Needs `params` and the extra arg ``value``. Where ||d||_{D^-1} = 0
  the step tau is 0 (the official code divides by zero; optax takes no step
  below float eps).
  """
  where = "scale_by_momo"
  V.check_learning_rate(where, learning_rate)
  V.check_decay(where, "beta", beta)
  V.check_nonneg(where, "weight_decay", weight_decay)
  V.check_range(where, "lower_bound", lower_bound)
  _check_preconditioner(where, preconditioner)
  if preconditioner is not None and preconditioner.needs_key:
    raise ValueError(f"optlab.{where}: {preconditioner!r} needs random keys; MoMo takes "
                     "key-free preconditioners such as adam_diagonal()")

  def init(params):
    dtype = tree_accumulation_dtype(params)
    zero = jnp.zeros([], dtype)
    nu = preconditioner.init(params) if preconditioner is not None else ()
    return MomoState(jnp.zeros([], jnp.int32), tree_zeros_like(params), nu, zero, zero,
                     jnp.asarray(lower_bound, dtype))

  def update(updates, state, params=None, **extra):
    value = V.require_extra_arg(where, extra, "value", "the loss at the current params")
    V.require_params(where, params)
    dtype = state.barf.dtype
    count = optax.safe_increment(state.count)
    if bias_correction:
      bt, rho = jnp.asarray(beta, dtype), one_minus_power(beta, count, dtype)
    else:
      bt, rho = jnp.where(state.count == 0, 0.0, beta).astype(dtype), 1.0
    f = jnp.asarray(value).astype(dtype)
    barf = bt * state.barf + (1 - bt) * f
    mu = jax.tree.map(lambda m, g: (bt * m + (1 - bt) * g).astype(m.dtype), state.mu, updates)
    gamma = bt * state.gamma + (1 - bt) * saturating_vdot(updates, params, dtype)
    nu, _, scale = _precondition(where, preconditioner, state.nu, None, updates, count, params,
                                 extra)
    direction = _divide(mu, scale, dtype)
    norm = saturating_vdot(mu, direction, dtype)
    dot = saturating_vdot(params, mu, dtype)
    lr = jnp.asarray(value_at(learning_rate, state.count)).astype(dtype)
    c = 1.0 + lr * weight_decay
    lb = state.lower_bound
    if adapt_lower_bound:
      cap = c * barf + dot - c * gamma
      lb = jnp.where(cap < c * rho * lb, jnp.maximum(cap / (2 * c * rho), lower_bound), lb)
    t1 = safe_div(jnp.maximum(c * (barf - rho * lb) + dot - c * gamma, 0.0), norm)
    tau = jnp.minimum(lr / rho, t1)
    if adapt_lower_bound:
      lb = jnp.maximum((barf + dot - gamma - 0.5 * tau * norm) / rho, lower_bound)

    def step(dd, p):
      p = p.astype(dtype)
      if divide:
        return (-tau * dd - (c - 1.0) * p) / c
      return -lr * weight_decay * p - tau * dd

    out = jax.tree.map(step, direction, params)
    return cast_like(out, updates), MomoState(count, mu, nu, barf.astype(dtype),
                                              gamma.astype(dtype), lb.astype(dtype))

  return optax.GradientTransformationExtraArgs(init, update)


# ============================================ preconditioned Polyak steps
@declare_state(count=COUNT, nu=SECOND_MOMENT, slack=INVARIANT_STAT, key=INVARIANT_STAT)
class PolyakStepState(NamedTuple):
  count: jax.Array   # [], int32: steps taken
  nu: Any            # the preconditioner's params-shaped statistic; () without one
  slack: jax.Array   # [], float32 (float64 for float64 params): the slack s (SPS with slack)
  key: jax.Array     # [2], uint32: raw key data for a randomised preconditioner (Hutchinson)


_POLYAK_RULES = ("sps", "sania")
_SLACKS = (None, "l1", "l2")


def scale_by_polyak_step(preconditioner: Any = None, lower_bound: Any = 0.0, *,
                         rule: str = "sps", slack: Optional[str] = None, lmd: Any = 0.01,
                         min_norm: Any = 1e-13, seed: int = 0
                         ) -> optax.GradientTransformationExtraArgs:
  """The stochastic Polyak step in a diagonal preconditioner's norm: u = gamma D^-1 g.

  With f the loss value (extra arg ``value``) minus ``lower_bound`` and
  G = <g, D^-1 g> (D from `preconditioner`; identity if None):

  ``rule="sps"`` -- preconditioned SPS (arXiv:2310.02093, official PSPS code):
    gamma = f / G; with ``slack="l1"`` (s from 0, parameter ``lmd``):
    gamma' = max(0, f - s + lmd) / (1 + G), gamma = min(gamma', f / G),
    s <- max(0, s - lmd + gamma'); with ``slack="l2"`` (l = 1 / (1 + lmd)):
    gamma = max(0, f - l s) / (G + l), s <- l (s + gamma).
    Steps with G < ``min_norm`` are skipped (no move, slack kept), as the code.
  ``rule="sania"`` -- SANIA (arXiv:2312.17369, official code): the step to the
    root of the quadratic model f + <g, d> + 1/2 ||d||_D^2 = 0,
    gamma = 1 - sqrt(1 - 2 f / G) where 2 f <= G, else gamma = 1 (the model's
    minimiser, a full preconditioned Newton-type step).

  As the official codes, a loss below ``lower_bound`` (f < 0) gives a negative
  gamma, a step uphill (towards the bound): choose a bound the loss does not
  go below. Follow it by ``scale_by_learning_rate(lr)`` (lr = 1: the method as
  published). Needs the extra arg ``value``, and whatever the preconditioner
  needs (`hutchinson_diagonal_ema`: ``obj_fn`` and `params`). Random keys
  for the preconditioner live in the state, seeded by ``seed``.
  """
  where = "scale_by_polyak_step"
  V.check_choice(where, "rule", rule, _POLYAK_RULES)
  V.check_choice(where, "slack", slack, _SLACKS)
  if slack is not None and rule != "sps":
    raise ValueError(f"optlab.{where}: slack is an option of rule='sps' only")
  V.check_nonneg(where, "lmd", lmd)
  V.check_nonneg(where, "min_norm", min_norm)
  V.check_range(where, "lower_bound", lower_bound)
  _check_preconditioner(where, preconditioner)

  def init(params):
    dtype = tree_accumulation_dtype(params)
    nu = preconditioner.init(params) if preconditioner is not None else ()
    return PolyakStepState(jnp.zeros([], jnp.int32), nu, jnp.zeros([], dtype), new_key(seed))

  def update(updates, state, params=None, **extra):
    value = V.require_extra_arg(where, extra, "value", "the loss at the current params")
    dtype = state.slack.dtype
    count = optax.safe_increment(state.count)
    nu, key, scale = _precondition(where, preconditioner, state.nu, state.key, updates, count,
                                   params, extra)
    direction = _divide(updates, scale, dtype)
    big_g = saturating_vdot(updates, direction, dtype)
    f = jnp.asarray(value).astype(dtype) - lower_bound
    s = state.slack
    if rule == "sania":
      ratio = safe_div(2.0 * f, big_g)
      # 1 - sqrt(1 - r) written as r / (1 + sqrt(1 - r)): no cancellation for small r
      # Comparisons written so that a NaN ratio or G (a NaN gradient) gives a NaN
      # step instead of a full one (1) or none (0), which would hide it.
      gamma = jnp.where(ratio > 1.0, 1.0,
                        ratio / (1.0 + jnp.sqrt(jnp.maximum(1.0 - ratio, 0.0))))
      gamma = jnp.where(big_g <= 0, 0.0, gamma)
    else:
      live = jnp.logical_not(big_g < min_norm)  # NaN stays live, so it shows in the step
      plain = safe_div(f, big_g)
      if slack == "l1":
        temp = jnp.maximum(0.0, f - s + lmd) / (1.0 + big_g)
        gamma = jnp.minimum(temp, plain)
        s = jnp.where(live, jnp.maximum(0.0, s - lmd + temp), s)
      elif slack == "l2":
        l_hat = 1.0 / (1.0 + lmd)
        gamma = jnp.maximum(0.0, f - l_hat * s) / (big_g + l_hat)
        s = jnp.where(live, l_hat * (s + gamma), s)
      else:
        gamma = plain
      gamma = jnp.where(live, gamma, 0.0)
    gamma = jnp.minimum(gamma, jnp.finfo(dtype).max)
    # The step is computed in float32+; where it exceeds the update's dtype (a
    # tiny gradient at a large loss, in float16) it saturates there instead of
    # becoming inf. NaN stays NaN.
    out = jax.tree.map(
        lambda d, g: jnp.clip(gamma * d, -jnp.finfo(g.dtype).max, jnp.finfo(g.dtype).max
                              ).astype(g.dtype), direction, updates)
    return out, PolyakStepState(count, nu, s.astype(dtype), key)

  return optax.GradientTransformationExtraArgs(init, update)
