"""Moment rules and direction primitives for Adam variants that `moments.py`
does not cover: Coupled Adam's vocabulary-averaged second moment, INNAprop's
inertial Newton dynamics with RMSProp scaling, and Gravity's kinematic step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab.primitives.basis import LINEAR, SECOND, declare_basis
from optlab.primitives.moments import (
    _debias, _ema_sq_tree, _value_at, bias_correction, safe_div, safe_square, tree_zeros_like)
from optlab.primitives.normalize import accumulation_dtype, tensor_norm
from optlab.primitives.wrappers import _new_key, leaf_normals, one_minus_power

__all__ = ["coupled_ema_sq", "embedding_paths", "InnapropState", "scale_by_innaprop",
           "GravityState", "scale_by_gravity", "CriticalMomentaState",
           "scale_by_critical_momenta"]


# --------------------------------------------------------------- Coupled Adam
def embedding_paths(tree: Any, pattern: str = "embed") -> Any:
  """A tree of bools: True for 2-D leaves whose path contains `pattern`
  (case-insensitive), e.g. flax's ``params['Embed_0']['embedding']``."""
  def leaf(path, x):
    return jnp.ndim(x) == 2 and pattern.lower() in jax.tree_util.keystr(path).lower()
  return jax.tree_util.tree_map_with_path(leaf, tree)


@dataclasses.dataclass(frozen=True)
class coupled_ema_sq:
  """Coupled Adam's second moment (Stollenwerk & Stollenwerk, arXiv:2502.08441).

  v <- b2 v + (1 - b2) g^2 as Adam; for the leaves selected by `mask`
  (embedding matrices of shape [vocabulary, hidden]) the scale uses the mean of
  v over the vocabulary axis, so that every token's embedding gets the same
  per-dimension step size: scale = sqrt(mean_i v_hat[i, :] + eps_root).
  Other leaves get Adam's sqrt(v_hat + eps_root). `mask` is a tree of bools or
  a function of the gradient tree (same structure as params), e.g.
  `embedding_paths`. Averaging commutes with the EMA, so the stored v is
  Adam's.
  """
  b2: Any = 0.999
  mask: Union[Any, Callable[[Any], Any]] = embedding_paths
  vocab_axis: int = 0
  eps_root: Any = 0.0
  debias: bool = True

  def init(self, params):
    return tree_zeros_like(params)

  def update(self, nu, g, count, mu=None):
    del mu
    nu = _ema_sq_tree(nu, g, self.b2)
    return nu, self.scale(nu, count, g)

  def scale(self, nu, count, like=None):
    keep = self.mask(nu if like is None else like) if callable(self.mask) else self.mask
    hat = _debias(nu, self.b2, count, self.debias)

    def leaf(v, coupled):
      if bool(coupled):
        v = jnp.broadcast_to(jnp.mean(v.astype(accumulation_dtype(v.dtype)), self.vocab_axis,
                                      keepdims=True), v.shape).astype(v.dtype)
      return jnp.sqrt(v + self.eps_root)

    return jax.tree.map(leaf, hat, keep)


# ------------------------------------------------------------------- INNAprop
@declare_basis(nu=SECOND)
class InnapropState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  psi: Any          # param-shaped, params' dtype: INNA's auxiliary variable
  nu: Any           # param-shaped, params' dtype: EMA of g^2 (not debiased)


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
  schedule is evaluated at the 0-based step). Needs `params`.
  """
  where = "scale_by_innaprop"
  V.check_learning_rate(where, learning_rate)
  V.check_nonneg(where, "alpha", alpha)
  V.check_positive(where, "beta", beta)
  V.check_decay(where, "sigma", sigma)
  V.check_nonneg(where, "eps", eps)
  V.check_nonneg(where, "weight_decay", weight_decay)

  def init(params):
    psi = jax.tree.map(lambda p: ((1 - alpha * beta) * p).astype(p.dtype), params)
    return InnapropState(jnp.zeros([], jnp.int32), psi, tree_zeros_like(params))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params(where, params)
    lr = _value_at(learning_rate, state.count)
    count = optax.safe_increment(state.count)
    nu = _ema_sq_tree(state.nu, updates, sigma)
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
    out, psi = jax.tree.transpose(jax.tree.structure(updates), jax.tree.structure((0, 0)), pairs)
    out = jax.tree.map(lambda u, g: u.astype(g.dtype), out, updates)
    return out, InnapropState(count, psi, nu)

  return optax.GradientTransformationExtraArgs(init, update)


# -------------------------------------------------------------------- Gravity
@declare_basis(velocity=LINEAR)
class GravityState(NamedTuple):
  count: jax.Array     # [], int32: steps taken
  key: jax.Array       # [2], uint32: the seed's key (used once, at init)
  velocity: Any        # param-shaped, params' dtype: the velocity V


def scale_by_gravity(learning_rate: Any, alpha: Any = 0.01, beta: Any = 0.9, seed: int = 0
                     ) -> optax.GradientTransformationExtraArgs:
  """Gravity's velocity (Bahrami & Zadeh, arXiv:2101.09192; official Keras code).

  Per tensor, with M = max |g|: zeta = g / (1 + (g M)^2);
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
    key = _new_key(seed)
    lr0 = _value_at(learning_rate, 0)
    std = jnp.where(jnp.asarray(lr0) > 0, alpha / jnp.where(jnp.asarray(lr0) > 0, lr0, 1.0), 0.0)
    noise = leaf_normals(key, params)
    # 0 * p + ... keeps the params' sharding under jit (see moments.full_like).
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
      zeta = jnp.where(jnp.isfinite(gm), g32 / (1.0 + safe_square(gm)), 0.0)
      return (b * v.astype(dt) + (1 - b) * zeta).astype(v.dtype)

    velocity = jax.tree.map(leaf, updates, state.velocity)
    out = jax.tree.map(lambda v, g: v.astype(g.dtype), velocity, updates)
    return out, GravityState(optax.safe_increment(state.count), state.key, velocity)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------- critical momenta (CM)
@declare_basis(mu=LINEAR, nu=SECOND, buffer=LINEAR)
class CriticalMomentaState(NamedTuple):
  count: jax.Array       # [], int32: steps taken
  mu: Any                # param-shaped: EMA of g (not debiased)
  nu: Any                # param-shaped: EMA of the squared aggregated momentum
  buffer: Any            # tuple of `topc` param-shaped trees: the critical momenta
  priorities: jax.Array  # [topc], default float: their (decaying) gradient norms
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
  random FIFO replacement (``critical_test`` > 0) is not offered.
  """
  where = "scale_by_critical_momenta"
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_decay(where, "decay", decay)
  V.check_range(where, "topc", topc, 1)

  def init(params):
    return CriticalMomentaState(
        jnp.zeros([], jnp.int32), tree_zeros_like(params), tree_zeros_like(params),
        tuple(tree_zeros_like(params) for _ in range(topc)), jnp.zeros([topc], float),
        jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, **extra):
    del params, extra
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
    buffer = tuple(jax.tree.map(lambda b, e: jnp.where(insert & (slot == i), e, b), buf, entry)
                   for i, buf in enumerate(state.buffer))
    priorities = jnp.where(insert & (jnp.arange(topc) == slot), gnorm, state.priorities)
    filled = jnp.where(insert & ~full, state.filled + 1, state.filled).astype(jnp.int32)
    used = jax.tree.map(lambda a, m: jnp.where(first, m, a), aggr, mu)  # step 1: m = 0
    nu = _ema_sq_tree(state.nu, used, b2)
    # Accurate 1 - b^t (b2^t in float32 loses 1e-5 relative at small t).
    dt = state.priorities.dtype
    c1, c2 = one_minus_power(b1, count, dt), jnp.sqrt(one_minus_power(b2, count, dt))
    out = jax.tree.map(lambda a, v, g: safe_div(a / c1, jnp.sqrt(v) / c2 + eps).astype(g.dtype),
                       used, nu, updates)
    return out, CriticalMomentaState(count, mu, nu, buffer, priorities * decay, filled)

  return optax.GradientTransformationExtraArgs(init, update)
