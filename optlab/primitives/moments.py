"""Moment estimates: the shared core of the Adam family.

An adaptive method is a *first-moment rule* (how the numerator is tracked), a
*second-moment rule* (how the per-coordinate scale is tracked) and an *order*
(momentum of the raw gradient, as in Adam, or momentum of the already
normalised gradient, as in LaProp). `scale_by_moments` combines one of each:

    scale_by_moments(ema(b1), ema_sq(b2))                 # Adam
    scale_by_moments(ema(b1, nesterov=True), ema_sq(b2))  # NAdam
    scale_by_moments(ema(b1), ema_sq(b2), order="laprop") # LaProp

A rule is a small object with ``init(params) -> tree`` and
``update(state, g, count, ...) -> (new_state, value)``; ``count`` is the 1-based
step number. The combined state, `MomentsState`, declares ``mu`` linear and
``nu`` second-moment-like for the basis protocol, so every combination runs
inside `in_eigenbasis` / `in_subspace` unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab.primitives.basis import LINEAR, SECOND, declare_basis

__all__ = [
    "MomentsState", "scale_by_moments", "scale_by_adam", "ema", "heavy_ball",
    "ema_sq", "lion_interp", "scale_by_lion_momentum", "tree_zeros_like",
    "safe_square", "bias_correction",
]


def tree_zeros_like(params: Any, dtype: Any = None) -> Any:
  """Zeros shaped like `params`, built by mapping over it (keeps sharding)."""
  return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=dtype), params)


def safe_square(g: jax.Array) -> jax.Array:
  """g*g saturated at the dtype's largest finite value (never overflows to inf)."""
  return jnp.minimum(g * g, jnp.finfo(g.dtype).max)


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
  """1 - decay**count (count is the 1-based step), in the default float dtype."""
  return 1.0 - decay ** count


def _cast_like(tree: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


# ---------------------------------------------------------------- first moments
@dataclasses.dataclass(frozen=True)
class ema:
  """EMA of the gradient: m <- b1 m + (1 - b1) g.

  Args:
    b1: decay rate in [0, 1).
    debias: divide by 1 - b1^t (Adam's bias correction).
    nesterov: NAdam's look-ahead, b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t).
    dtype: storage dtype of m (optax's ``mu_dtype``); None keeps the param dtype.
  """
  b1: Any = 0.9
  debias: bool = True
  nesterov: bool = False
  dtype: Any = None

  def init(self, params):
    return tree_zeros_like(params, self.dtype)

  def update(self, mu, g, count):
    b1 = self.b1
    mu = jax.tree.map(lambda m, x: (b1 * m + (1 - b1) * x).astype(m.dtype), mu, g)
    if not self.debias:
      return mu, mu
    c = bias_correction(b1, count)
    if self.nesterov:
      c_next = bias_correction(b1, count + 1)
      out = jax.tree.map(lambda m, x: b1 * m / c_next + (1 - b1) * x / c, mu, g)
    else:
      out = jax.tree.map(lambda m: m / c, mu)
    return mu, out


@dataclasses.dataclass(frozen=True)
class heavy_ball:
  """Heavy-ball trace (SGD momentum): m <- b1 m + g; Nesterov returns g + b1 m."""
  b1: Any = 0.9
  nesterov: bool = False
  dtype: Any = None

  def init(self, params):
    return tree_zeros_like(params, self.dtype)

  def update(self, mu, g, count):
    del count
    mu = jax.tree.map(lambda m, x: (self.b1 * m + x).astype(m.dtype), mu, g)
    if self.nesterov:
      return mu, jax.tree.map(lambda m, x: x + self.b1 * m, mu, g)
    return mu, mu


# --------------------------------------------------------------- second moments
@dataclasses.dataclass(frozen=True)
class ema_sq:
  """EMA of the squared gradient: v <- b2 v + (1 - b2) g^2; scale sqrt(v_hat + eps_root).

  Args:
    b2: decay rate in [0, 1).
    debias: divide v by 1 - b2^t before the root.
    eps_root: added inside the square root.
  """
  b2: Any = 0.999
  debias: bool = True
  eps_root: Any = 0.0

  def init(self, params):
    return tree_zeros_like(params)

  def update(self, nu, g, count, mu=None):
    del mu
    b2 = self.b2
    nu = jax.tree.map(lambda v, x: (b2 * v + (1 - b2) * safe_square(x)).astype(v.dtype), nu, g)
    c = bias_correction(b2, count) if self.debias else 1.0
    return nu, jax.tree.map(lambda v: jnp.sqrt(v / c + self.eps_root), nu)


# ------------------------------------------------------------------ combination
@declare_basis(mu=LINEAR, nu=SECOND)
class MomentsState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # first-moment tree (or tuple of trees); () when unused
  nu: Any           # second-moment tree; () when unused


_ORDERS = ("adam", "laprop")


def scale_by_moments(first: Optional[Any], second: Optional[Any], *, eps: Any = 1e-8,
                     order: str = "adam") -> optax.GradientTransformationExtraArgs:
  """Adaptive scaling from a first- and a second-moment rule.

  ``order="adam"``:   u = first(g) / (second(g) + eps).
  ``order="laprop"``: u = first(g / (second(g) + eps)) -- momentum of the
  normalised gradient (LaProp, arXiv:2002.04839).
  Either rule may be None (pure momentum, or RMSProp-like scaling).
  """
  V.check_choice("scale_by_moments", "order", order, _ORDERS)
  V.check_nonneg("scale_by_moments", "eps", eps)

  def init(params):
    return MomentsState(
        count=jnp.zeros([], jnp.int32),
        mu=first.init(params) if first is not None else (),
        nu=second.init(params) if second is not None else ())

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    g, mu, nu = updates, state.mu, state.nu

    def normalise(x, nu):  # the second moment always sees the raw gradient
      if second is None:
        return nu, x
      nu, scale = second.update(nu, updates, count, mu)
      return nu, jax.tree.map(lambda y, s: y / (s + eps), x, scale)

    if order == "adam":
      if first is not None:
        mu, g = first.update(mu, g, count)
      nu, out = normalise(g, nu)
    else:
      nu, out = normalise(g, nu)
      if first is not None:
        mu, out = first.update(mu, out, count)
    return _cast_like(out, updates), MomentsState(count, mu, nu)

  return optax.GradientTransformationExtraArgs(init, update)


def scale_by_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                  mu_dtype: Any = None, *, nesterov: bool = False):
  """Adam's scaling, m_hat / (sqrt(v_hat + eps_root) + eps) (arXiv:1412.6980)."""
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_adam", name, value)
  V.check_nonneg("scale_by_adam", "eps_root", eps_root)
  return scale_by_moments(ema(b1, nesterov=nesterov, dtype=mu_dtype),
                          ema_sq(b2, eps_root=eps_root), eps=eps)


@dataclasses.dataclass(frozen=True)
class lion_interp:
  """Lion's two-rate momentum: returns b1 m + (1 - b1) g, then m <- b2 m + (1 - b2) g."""
  b1: Any = 0.9
  b2: Any = 0.99
  dtype: Any = None

  def init(self, params):
    return tree_zeros_like(params, self.dtype)

  def update(self, mu, g, count):
    del count
    out = jax.tree.map(lambda m, x: self.b1 * m + (1 - self.b1) * x, mu, g)
    mu = jax.tree.map(lambda m, x: (self.b2 * m + (1 - self.b2) * x).astype(m.dtype), mu, g)
    return mu, out


def scale_by_lion_momentum(b1: Any = 0.9, b2: Any = 0.99, mu_dtype: Any = None):
  """Lion's update direction, sign(b1 m + (1 - b1) g) (arXiv:2302.06675)."""
  from optlab.primitives.normalize import scale_by_sign
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_lion_momentum", name, value)
  return optax.chain(scale_by_moments(lion_interp(b1, b2, mu_dtype), None), scale_by_sign())
