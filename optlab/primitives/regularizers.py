"""Ranger21's components as reusable primitives (arXiv:2106.13731, official code).

* `centralize_gradient` -- Gradient Centralization (arXiv:2004.01461);
* `normalize_gradient_std` -- Ranger21's division of a gradient by its std;
* `scale_by_pnm_adam` -- Adam with positive-negative momentum (arXiv:2103.17182)
  and a softplus-smoothed denominator (arXiv:1908.00700);
* `with_stable_weight_decay` -- stable weight decay (arXiv:2011.11152) around
  any Adam-like transformation;
* `add_norm_loss` -- norm loss (arXiv:2103.06583).

Unit-wise adaptive clipping (AGC) is `clipping.clip_by_agc`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import one_minus_power, safe_div, tree_ema_sq
from optlab._src.tree import tree_zeros_like, unzip_tree
from optlab.primitives.basis import COUNT, LINEAR_MOMENT, NESTED, SECOND_MOMENT, declare_state
from optlab.primitives.clipping import find_second_moment, unit_norm

__all__ = ["centralize_gradient", "normalize_gradient_std", "scale_by_pnm_adam", "PnmAdamState",
           "StableWeightDecayState", "with_stable_weight_decay", "add_norm_loss"]


def _stateless(fn):
  def update(updates, state, params=None, **extra):
    del params, extra
    return jax.tree.map(fn, updates), state
  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


def centralize_gradient(*, conv_only: bool = False) -> optax.GradientTransformationExtraArgs:
  """Gradient Centralization: g <- g - mean(g over every axis but the first).

  For tensors with more than one axis (more than three with `conv_only`);
  others pass through. As Ranger21's official ``centralize_gradient``.
  """
  min_ndim = 4 if conv_only else 2

  def leaf(g):
    if jnp.ndim(g) < min_ndim:
      return g
    dt = accumulation_dtype(g.dtype)
    axes = tuple(range(1, jnp.ndim(g)))
    return (g.astype(dt) - jnp.mean(g.astype(dt), axis=axes, keepdims=True)).astype(g.dtype)

  return _stateless(leaf)


def normalize_gradient_std(eps: Any = 1e-8) -> optax.GradientTransformationExtraArgs:
  """g <- g / (std(g) + eps) for tensors with more than two entries.

  The std is PyTorch's default, unbiased (n - 1), over the whole tensor, as
  Ranger21's official ``normalize_gradient`` (``use_channels=False``). Computed
  from g / max|g| so that it cannot overflow.
  """
  V.check_nonneg("normalize_gradient_std", "eps", eps)

  def leaf(g):
    if g.size <= 2:
      return g
    dt = accumulation_dtype(g.dtype)
    x = g.astype(dt)
    top = jnp.max(jnp.abs(x))
    safe = jnp.where(top > 0, top, 1.0)
    y = x / safe
    std = safe * jnp.sqrt(jnp.sum(jnp.square(y - jnp.mean(y))) / (g.size - 1))
    return (x / (std + eps)).astype(g.dtype)

  return _stateless(leaf)


def _softplus(x: jax.Array, beta: Any) -> jax.Array:
  """PyTorch's softplus(x, beta, threshold=20): log1p(exp(beta x)) / beta, or x
  where beta x > 20."""
  z = beta * x
  return jnp.where(z > 20, x, jnp.log1p(jnp.exp(jnp.minimum(z, 20))) / beta)


@declare_state(count=COUNT, mu=LINEAR_MOMENT, mu_b=LINEAR_MOMENT, nu=SECOND_MOMENT)
@declare_state(count=COUNT, mu=LINEAR_MOMENT, mu_b=LINEAR_MOMENT, nu=SECOND_MOMENT)
class PnmAdamState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # param-shaped: m_a, updated on odd steps
  mu_b: Any         # param-shaped: m_b, updated on even steps
  nu: Any           # param-shaped: EMA of g^2


def scale_by_pnm_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                      pnm_momentum: Any = 1.0, softplus_beta: Any = 50.0
                      ) -> optax.GradientTransformationExtraArgs:
  """Ranger21's core: Adam with positive-negative momentum and a softplus denominator.

  Two momenta alternate: on odd steps m_a, on even steps m_b is updated,
  m <- b1^2 m + (1 - b1^2) g, and with m the one just updated and n the other,
  u = ((1 + beta0) m - beta0 n) / sqrt((1 + b2)^2 + b2^2) / (1 - b1^t) / d,
  d = softplus(sqrt(v) / sqrt(1 - b2^t) + eps), v <- b2 v + (1 - b2) g^2.
  beta0 is `pnm_momentum`. Follows the official Ranger21 code, which uses b2
  (not beta0, as the PNM paper) in the noise norm and b1 in the bias
  correction although the momenta decay with b1^2; ``softplus_beta=None``
  turns the softplus off. The state, `PnmAdamState`, declares both momenta and
  v, so `with_stable_weight_decay` and basis wrappers see them.
  """
  where = "scale_by_pnm_adam"
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_nonneg(where, "pnm_momentum", pnm_momentum)

  def init(params):
    zeros = lambda: tree_zeros_like(params)
    return PnmAdamState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros())

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    odd = count % 2 == 1
    nu = tree_ema_sq(state.nu, updates, b2)
    b1sq = b1 * b1
    noise = jnp.sqrt((1 + b2) ** 2 + b2 ** 2)
    c1 = one_minus_power(b1, count, float)  # accurate 1 - b^t (see _src.numerics)
    c2 = jnp.sqrt(one_minus_power(b2, count, float))

    def leaf(g, ma, mb, v):
      dt = accumulation_dtype(g.dtype)
      pos, neg = jnp.where(odd, ma, mb).astype(dt), jnp.where(odd, mb, ma).astype(dt)
      pos = b1sq * pos + (1 - b1sq) * g.astype(dt)
      den = jnp.sqrt(v.astype(dt)) / c2 + eps
      if softplus_beta is not None:
        den = _softplus(den, softplus_beta)
      u = safe_div(((1 + pnm_momentum) * pos - pnm_momentum * neg) / noise / c1, den)
      new_a = jnp.where(odd, pos, ma.astype(dt)).astype(ma.dtype)
      new_b = jnp.where(odd, mb.astype(dt), pos).astype(mb.dtype)
      return u.astype(g.dtype), new_a, new_b

    triples = jax.tree.map(leaf, updates, state.mu, state.mu_b, nu)
    out, mu, mu_b = unzip_tree(updates, triples, 3)
    return out, PnmAdamState(count, mu, mu_b, nu)

  return optax.GradientTransformationExtraArgs(init, update)


@declare_state(count=COUNT, inner_state=NESTED)
class StableWeightDecayState(NamedTuple):
  count: jax.Array   # [], int32: steps taken
  inner_state: Any   # the wrapped transformation's state


def with_stable_weight_decay(inner: optax.GradientTransformation, weight_decay: Any = 1e-4,
                             b2: Any = 0.999) -> optax.GradientTransformationExtraArgs:
  """Stable weight decay ("On the Overlooked Pitfalls of Weight Decay and How to
  Mitigate Them", Xie et al., arXiv:2011.11152), as in Ranger21.

  After `inner` (an Adam-like transform whose state has a field declared
  'second', its EMA v of g^2 with decay `b2`), adds weight_decay * p / s with
  s = sqrt(mean of v / (1 - b2^t) over all entries of all tensors): the decay
  is divided by the root of the mean second moment. Placed before
  `scale_by_learning_rate`, the decay is multiplied by the learning rate.
  Needs `params`. A zero mean gives no decay.
  """
  V.check_nonneg("with_stable_weight_decay", "weight_decay", weight_decay)
  V.check_decay("with_stable_weight_decay", "b2", b2)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return StableWeightDecayState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None, **extra):
    V.require_params("with_stable_weight_decay", params)
    new, inner_state = inner.update(updates, state.inner_state, params, **extra)
    nu = find_second_moment(inner_state, updates)
    if nu is None:
      raise TypeError("optlab.with_stable_weight_decay: the inner transformation has no "
                      "second-moment state (a field declared 'second' shaped like the "
                      "updates); wrap an Adam-like transform")
    count = optax.safe_increment(state.count)
    leaves = jax.tree.leaves(nu)
    size = sum(x.size for x in leaves)
    total = sum((jnp.sum(x.astype(jnp.float32)) for x in leaves), jnp.zeros([], jnp.float32))
    mean = total / one_minus_power(b2, count, jnp.float32) / max(size, 1)
    scale = safe_div(jnp.asarray(weight_decay, jnp.float32), jnp.sqrt(mean))
    out = jax.tree.map(lambda u, p: (u.astype(accumulation_dtype(u.dtype))
                                     + scale * p.astype(accumulation_dtype(u.dtype))
                                     ).astype(u.dtype), new, params)
    return out, StableWeightDecayState(count, inner_state)

  return optax.GradientTransformationExtraArgs(init, update)


def add_norm_loss(factor: Any = 1e-4, eps: Any = 1e-8) -> optax.GradientTransformationExtraArgs:
  """Norm loss ("Constraint-Based Regularization of Neural Networks", Georgiou
  et al., arXiv:2103.06583), as in Ranger21: u <- u + c * p with
  c = 2 * factor * (1 - 1 / (||p||_unit + eps)), the unit norms of
  `clipping.unit_norm`. Before `scale_by_learning_rate`; pulls every unit
  towards norm 1. Needs `params`.
  """
  V.check_nonneg("add_norm_loss", "factor", factor)
  V.check_nonneg("add_norm_loss", "eps", eps)

  def leaf(u, p):
    dt = accumulation_dtype(u.dtype)
    c = 2 * factor * (1 - 1 / (unit_norm(p) + eps))
    return (u.astype(dt) + c * p.astype(dt)).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params("add_norm_loss", params)
    return jax.tree.map(leaf, updates, params), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)
