"""Moment rules and direction primitives for Adam variants that `moments.py`
does not cover: Coupled Adam's vocabulary-averaged second moment, INNAprop's
inertial Newton dynamics with RMSProp scaling, Gravity's kinematic step and
CoRe's Rprop-like per-element step sizes with plasticity factors.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype, statistics_dtype
from optlab._src.numerics import (bias_correction, one_minus_power, safe_div, safe_square,
                                  saturate, tree_ema_sq, value_at)
from optlab._src.random import leaf_normals, new_key
from optlab._src.tree import (full_like, statistics_zeros_like, tree_choose, unzip_tree,
                              zeros_like)
from optlab.primitives.basis import (ANCHOR_POINT, COUNT, INVARIANT_STAT, LINEAR_MOMENT,
                                     SECOND_MOMENT, SECOND_STAT, declare_state)
from optlab.primitives.normalize import tensor_norm

__all__ = ["InnapropState", "scale_by_innaprop",
           "GravityState", "scale_by_gravity", "CriticalMomentaState",
           "scale_by_critical_momenta", "CoreState", "scale_by_core"]


def _widen(tree: Any) -> Any:
  """The leaves in float32 or wider, so that squares of float16 entries neither
  underflow nor overflow (a no-op for float32 and float64)."""
  return jax.tree.map(lambda x: x.astype(accumulation_dtype(x.dtype)), tree)


# ------------------------------------------------------------------- INNAprop
# psi is a point in parameter space (psi_0 = (1 - alpha beta) p_0, then mixed with
# the params p_d each step), so it transforms like the params and the gradient
# (LINEAR); it is an anchor, not a moment: zeroing it would jump the iterate.
@declare_state(count=COUNT, psi=ANCHOR_POINT, nu=SECOND_MOMENT)
class InnapropState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  psi: Any          # param-shaped, params' dtype (float32 for float16): INNA's auxiliary
                    # variable
  nu: Any           # param-shaped, same dtype: EMA of g^2 (not debiased)


def scale_by_innaprop(learning_rate: Any, alpha: Any = 0.1, beta: Any = 0.9,
                      sigma: Any = 0.999, eps: Any = 1e-8, weight_decay: Any = 0.01
                      ) -> optax.GradientTransformationExtraArgs:
  """INNAprop's direction (arXiv:2410.10243, official innaprop code), per unit lr.

  With lr the learning rate of this step, p_d = (1 - lr wd) p,
  v <- sigma v + (1 - sigma) g^2, D = sqrt(v / (1 - sigma^t)) + eps,
  psi <- (1 - lr / beta) psi + lr (1 / beta - alpha) p_d (psi_0 = (1 - alpha beta) p_0),
  p_new = p_d + lr [ ((1 - alpha beta) p_d - psi) / (beta - lr) - beta g / D ].
  Emits u = -(p_new - p) / lr, so that a following
  ``scale_by_learning_rate(learning_rate)`` gives exactly p_new (the official
  step is not linear in lr; lr must be the same number or schedule, a
  schedule is evaluated at the 0-based step). Needs `params`. Computed in
  float32 (or wider); psi and v are kept in float32 for float16 params
  (`normalize.statistics_dtype`).
  """
  where = "scale_by_innaprop"
  V.check_learning_rate(where, learning_rate)
  V.check_nonneg(where, "alpha", alpha)
  V.check_positive(where, "beta", beta)
  V.check_decay(where, "sigma", sigma)
  V.check_nonneg(where, "eps", eps)
  V.check_nonneg(where, "weight_decay", weight_decay)

  def init(params):
    psi = jax.tree.map(lambda p: ((1 - alpha * beta) * p).astype(statistics_dtype(p.dtype)),
                       params)
    return InnapropState(jnp.zeros([], jnp.int32), psi, statistics_zeros_like(params))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params(where, params)
    lr = value_at(learning_rate, state.count)
    count = optax.safe_increment(state.count)
    nu = tree_ema_sq(state.nu, _widen(updates), sigma)
    corr = jnp.sqrt(bias_correction(sigma, count))

    def leaf(g, p, psi, v):
      dt = accumulation_dtype(g.dtype)
      g, p, psi32, v = g.astype(dt), p.astype(dt), psi.astype(dt), v.astype(dt)
      pd = p * (1 - lr * weight_decay)
      psi_new = (1 - lr / beta) * psi32 + lr * (1 / beta - alpha) * pd
      denom = jnp.sqrt(v) / corr + eps
      direction = ((1 - alpha * beta) * pd - psi_new) / (beta - lr) - beta * safe_div(g, denom)
      u = -(direction - weight_decay * p)
      return u, psi_new.astype(psi.dtype)

    pairs = jax.tree.map(leaf, updates, params, state.psi, nu)
    out, psi = unzip_tree(updates, pairs, 2)
    out = jax.tree.map(lambda u, g: u.astype(g.dtype), out, updates)
    return out, InnapropState(count, psi, nu)

  return optax.GradientTransformationExtraArgs(init, update)


# -------------------------------------------------------------------- Gravity
@declare_state(count=COUNT, key=INVARIANT_STAT, velocity=LINEAR_MOMENT)
class GravityState(NamedTuple):
  count: jax.Array     # [], int32: steps taken
  key: jax.Array       # [2], uint32: the seed's key (used once, at init)
  velocity: Any        # param-shaped, params' dtype: the velocity V


def scale_by_gravity(learning_rate: Any, alpha: Any = 0.01, beta: Any = 0.9, seed: int = 0
                     ) -> optax.GradientTransformationExtraArgs:
  """Gravity's velocity (Bahrami & Zadeh, arXiv:2101.09192; official Keras code).

  Per tensor, with ``M = max |g|``: zeta = g / (1 + (g M)^2);
  beta_t = (beta t + 1) / (t + 2) (t the 0-based step);
  V <- beta_t V + (1 - beta_t) zeta; emits V (the step is -lr V).
  V_0 ~ N(0, (alpha / lr)^2), drawn at init from `seed` (lr: the learning
  rate at step 0). g M stays finite-safe: a product that overflows gives
  zeta = 0, the limit of the formula.
  """
  where = "scale_by_gravity"
  V.check_learning_rate(where, learning_rate)
  V.check_nonneg(where, "alpha", alpha)
  V.check_decay(where, "beta", beta)

  def init(params):
    key = new_key(seed)
    lr0 = value_at(learning_rate, 0)
    std = jnp.where(jnp.asarray(lr0) > 0, alpha / jnp.where(jnp.asarray(lr0) > 0, lr0, 1.0), 0.0)
    noise = leaf_normals(key, params)
    # 0 * p + ... keeps the params' sharding under jit (see _src.tree.full_like).
    velocity = jax.tree.map(
        lambda p, n: (jnp.where(jnp.isfinite(p), p, 0) * 0 + std * n).astype(p.dtype),
        params, noise)
    return GravityState(jnp.zeros([], jnp.int32), key, velocity)

  def update(updates, state, params=None, **extra):
    del params, extra
    t = state.count.astype(float)
    b = (beta * t + 1.0) / (t + 2.0)

    def leaf(g, v):
      dt = accumulation_dtype(g.dtype)
      g32 = g.astype(dt)
      big = jnp.max(jnp.abs(g32)) if g32.size else jnp.zeros([], dt)
      gm = g32 * big
      # g / (1 + (g M)^2) -> 0 as g M overflows; a NaN gradient stays NaN.
      zeta = jnp.where(jnp.isinf(gm), 0.0, g32 / (1.0 + safe_square(gm)))
      return (b * v.astype(dt) + (1 - b) * zeta).astype(v.dtype)

    velocity = jax.tree.map(leaf, updates, state.velocity)
    out = jax.tree.map(lambda v, g: v.astype(g.dtype), velocity, updates)
    return out, GravityState(optax.safe_increment(state.count), state.key, velocity)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------- critical momenta (CM)
@declare_state(count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT, buffer=LINEAR_MOMENT,
               priorities=INVARIANT_STAT, filled=COUNT)
class CriticalMomentaState(NamedTuple):
  count: jax.Array       # [], int32: steps taken
  mu: Any                # param-shaped, params' dtype (float32 for float16): EMA of g (not
                         # debiased)
  nu: Any                # param-shaped, same dtype: EMA of the squared aggregated momentum
  buffer: Any            # tuple of `topc` param-shaped trees, same dtype: the critical momenta
  priorities: jax.Array  # [topc], float32 (float64 for float64 params): their (decaying)
                         # gradient norms
  filled: jax.Array      # [], int32: number of buffer slots in use


def scale_by_critical_momenta(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                              decay: Any = 0.7, topc: int = 5
                              ) -> optax.GradientTransformationExtraArgs:
  """Adam with critical momenta (Malviya et al., arXiv:2307.09638), official Adam_CM.

  A buffer keeps up to `topc` past momenta, each with a priority (the gradient
  norm when it was stored, times `decay` every step). Step 1 only stores the
  gradient in the buffer (no move). Later: m <- b1 m + (1 - b1) g;
  a = m + mean(buffer); m enters the buffer (in a free slot, or replacing the
  lowest-priority one if ||g|| exceeds its priority); v <- b2 v + (1 - b2) a^2;
  u = a / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps). The norm is the official
  ``synced`` one: the sum of the per-tensor 2-norms. The official code's
  random FIFO replacement (``critical_test`` > 0) is not offered. The
  gradient enters in float32 (or wider) and the moments are kept in float32
  for float16 params (`normalize.statistics_dtype`).
  """
  where = "scale_by_critical_momenta"
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_decay(where, "decay", decay)
  V.check_range(where, "topc", topc, 1)

  def init(params):
    dt = jnp.result_type(jnp.float32, *jax.tree.leaves(params))  # never the x64 default
    return CriticalMomentaState(
        jnp.zeros([], jnp.int32), statistics_zeros_like(params), statistics_zeros_like(params),
        tuple(statistics_zeros_like(params) for _ in range(topc)), jnp.zeros([topc], dt),
        jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, **extra):
    del params, extra
    out_dtypes = updates
    updates = _widen(updates)  # computed in float32 or wider
    count = optax.safe_increment(state.count)
    first = count == 1
    norms = [tensor_norm(g) for g in jax.tree.leaves(updates)]
    gnorm = sum(norms, jnp.zeros([], state.priorities.dtype)).astype(state.priorities.dtype)
    mu = jax.tree.map(lambda m, g: jnp.where(first, m, b1 * m + (1 - b1) * g).astype(m.dtype),
                      state.mu, updates)
    size = jnp.maximum(state.filled, 1).astype(float)
    mean = jax.tree.map(lambda *bs: sum(bs[1:], bs[0]) / size.astype(bs[0].dtype),
                        *state.buffer)
    aggr = jax.tree.map(lambda m, c: m + c, mu, mean)
    full = state.filled >= topc
    lowest = jnp.argmin(state.priorities)
    slot = jnp.where(full, lowest, state.filled)
    insert = ~full | (gnorm > state.priorities[lowest])
    entry = jax.tree.map(lambda m, g: jnp.where(first, g.astype(m.dtype), m), mu, updates)
    put = lambda: tuple(jax.tree.map(lambda b, e: jnp.where(slot == i, e, b), buf, entry)
                        for i, buf in enumerate(state.buffer))
    buffer = tree_choose(insert, put, lambda: state.buffer)
    priorities = jnp.where(insert & (jnp.arange(topc) == slot), gnorm, state.priorities)
    filled = jnp.where(insert & ~full, state.filled + 1, state.filled).astype(jnp.int32)
    used = jax.tree.map(lambda a, m: jnp.where(first, m, a), aggr, mu)  # step 1: m = 0
    nu = tree_ema_sq(state.nu, used, b2)
    # Accurate 1 - b^t (b2^t in float32 loses 1e-5 relative at small t).
    dt = state.priorities.dtype
    c1, c2 = one_minus_power(b1, count, dt), jnp.sqrt(one_minus_power(b2, count, dt))
    out = jax.tree.map(lambda a, v, g: safe_div(a / c1, jnp.sqrt(v) / c2 + eps).astype(g.dtype),
                       _widen(used), _widen(nu), out_dtypes)
    return out, CriticalMomentaState(count, mu, nu, buffer, priorities * decay, filled)

  return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------- CoRe
@declare_state(count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT, step_size=SECOND_STAT,
               score=SECOND_STAT)
class CoreState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # param-shaped, float32+: EMA of g with the scheduled b1 (not debiased)
  nu: Any           # param-shaped, float32+: EMA of g^2 (not debiased); () when not adam_like
  step_size: Any    # param-shaped, float32+: the per-element step sizes s
  score: Any        # param-shaped, float32+: importance scores; () when score_history == 0


def _core_b1(b1a: Any, b1b: Any, b1c: Any, step: jax.Array) -> jax.Array:
  """CoRe's b1 at the 0-based `step`: b1b + (b1a - b1b) exp(-(step / b1c)^2)."""
  t = jnp.asarray(step, float)
  return b1b + (b1a - b1b) * jnp.exp(-jnp.square(t / b1c))


def scale_by_core(learning_rate: Any = 1e-3, b1a: Any = 0.7375, b1b: Any = 0.8125,
                  b1c: Any = 250.0, b2: Any = 0.99, eps: Any = 1e-8, eta_minus: Any = 0.7375,
                  eta_plus: Any = 1.2, step_size_min: Any = 1e-6, step_size_max: Any = 1e-2,
                  weight_decay: Any = 0.0, score_history: int = 0, frozen: float = 0.0,
                  *, adam_like: bool = True) -> optax.GradientTransformationExtraArgs:
  """CoRe's step (Eckhoff & Reiher, arXiv:2307.15663; official ReiherGroup/CoRe_optimizer).

  With t the 0-based step and b1 = b1b + (b1a - b1b) exp(-(t / b1c)^2):
  v <- b2 v + (1 - b2) g^2;  m' = b1 m + (1 - b1) g;
  plasticity P = 0 where the importance score is among the top `frozen`
  fraction of its tensor (from t >= score_history, when score_history > 0;
  the scores then decay by 1 - 1/score_history), else 1;
  s <- clip(s * (eta_plus if m' m P > 0, eta_minus if < 0, else 1),
  step_size_min, step_size_max)  (s_0 = learning_rate at step 0);
  u = s P m' / (1 - b1^(t+1)) / (sqrt(v / (1 - b2^(t+1))) + eps)  (adam_like;
  else u = s P sign(m'));  score <- score + m' u / score_history;
  emits the descent step ``u + weight_decay |u| p`` (the official decay scales
  with the step of each weight), to be negated by the chain. Needs `params`
  when weight_decay is not 0. score_history and frozen set the shapes of the
  computation (top-k): pass them as Python numbers (``static_args`` of
  `optax.inject_hyperparams`). Division by a zero denominator gives 0.
  """
  where = "scale_by_core"
  V.check_learning_rate(where, learning_rate)
  V.check_decay(where, "b1a", b1a)
  V.check_decay(where, "b1b", b1b)
  V.check_positive(where, "b1c", b1c)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_range(where, "eta_minus", eta_minus, 0.0, 1.0, low_open=True)
  V.check_range(where, "eta_plus", eta_plus, 1.0)
  V.check_positive(where, "step_size_min", step_size_min)
  V.check_positive(where, "step_size_max", step_size_max)
  lo, hi = V._concrete(step_size_min), V._concrete(step_size_max)
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(f"optlab.{where}: step_size_min ({lo}) must not exceed "
                     f"step_size_max ({hi})")
  V.check_nonneg(where, "weight_decay", weight_decay)
  hist, frac = V._concrete(score_history), V._concrete(frozen)
  if hist is None or frac is None:
    raise TypeError(f"optlab.{where}: score_history and frozen must be Python numbers "
                    "(they shape the computation; pass them in static_args of "
                    "optax.inject_hyperparams)")
  V.check_range(where, "score_history", hist, 0.0)
  V.check_range(where, "frozen", frac, 0.0, 1.0)
  hist = int(hist)
  wd = V._concrete(weight_decay)
  decays = wd is None or wd != 0.0

  def init(params):
    dt = lambda p: accumulation_dtype(p.dtype)
    lr0 = value_at(learning_rate, 0)
    zeros = lambda: jax.tree.map(lambda p: zeros_like(p, dt(p)), params)
    return CoreState(jnp.zeros([], jnp.int32), zeros(), zeros() if adam_like else (),
                     jax.tree.map(lambda p: full_like(p, lr0, dt(p)), params),
                     zeros() if hist > 0 else ())

  def update(updates, state, params=None, **extra):
    del extra
    if decays:
      V.require_params(where, params)
    t = state.count
    b1 = _core_b1(b1a, b1b, b1c, t)
    tf = jnp.asarray(t, float) + 1.0
    c1, c2 = bias_correction(b1, tf), bias_correction(b2, tf)

    def leaf(g, p, m, v, s, score):
      dt = m.dtype
      g = g.astype(dt)
      m_new = (b1 * m + (1 - b1) * g).astype(dt)
      plastic = jnp.ones_like(g)
      if hist > 0:
        k = int(frac * g.size)
        if k > 0:
          active = t >= hist
          top = jax.lax.top_k(score.reshape(-1), k)[0][k - 1]
          plastic = jnp.where(active & (score >= 0.999999 * top), 0.0, 1.0).astype(dt)
          score = jnp.where(active, score * (1.0 - 1.0 / hist), score).astype(dt)
      agree = jnp.sign(m_new) * jnp.sign(m) * plastic  # the sign of m' m P, overflow-free
      factor = jnp.where(agree > 0, eta_plus, jnp.where(agree < 0, eta_minus, 1.0))
      s_new = jnp.clip(s * factor, step_size_min, step_size_max).astype(dt)
      if adam_like:
        v = saturate(b2 * v + (1 - b2) * safe_square(g)).astype(dt)
        u = safe_div(m_new / c1, jnp.sqrt(v) / jnp.sqrt(c2) + eps)
      else:
        u = jnp.sign(m_new)
      u = (u * s_new * plastic).astype(dt)
      if hist > 0:
        score = (score + m_new * u / hist).astype(dt)
      d = u if not decays else u + weight_decay * jnp.abs(u) * p.astype(dt)
      return d, m_new, v, s_new, score

    treedef = jax.tree.structure(updates)
    flat = lambda tree: treedef.flatten_up_to(tree)
    ps = flat(params) if decays else [None] * treedef.num_leaves
    vs = flat(state.nu) if adam_like else [None] * treedef.num_leaves
    scores = flat(state.score) if hist > 0 else [None] * treedef.num_leaves
    rows = [leaf(*a) for a in zip(flat(updates), ps, flat(state.mu), vs, flat(state.step_size),
                                  scores)]
    col = lambda i: jax.tree.unflatten(treedef, [r[i] for r in rows])
    out = jax.tree.map(lambda d, g: d.astype(g.dtype), col(0), updates)
    return out, CoreState(optax.safe_increment(t), col(1), col(2) if adam_like else (), col(3),
                          col(4) if hist > 0 else ())

  return optax.GradientTransformationExtraArgs(init, update)
