"""Moment estimates: the shared core of the Adam family.

An adaptive method is a *first-moment rule* (how the numerator is tracked), a
*second-moment rule* (how the per-coordinate scale is tracked) and an *order*
(momentum of the raw gradient, as in Adam, or momentum of the already
normalised gradient, as in LaProp and ADOPT). `scale_by_moments` combines one
of each:

    scale_by_moments(ema(b1), ema_sq(b2))                    # Adam
    scale_by_moments(ema(b1, nesterov=True), ema_sq(b2))     # NAdam
    scale_by_moments(ema(b1), ema_sq(b2), order="laprop")    # LaProp
    scale_by_moments(ema(b1), max_ema_sq(b2))                # AMSGrad
    scale_by_moments(ema(b1), belief(b2), eps=1e-16)         # AdaBelief
    scale_by_moments(ema(b1), abs_max(b2), eps=0.0)          # Adamax
    scale_by_moments(None, sum_sq(0.1), eps=0.0)             # Adagrad
    scale_by_moments(dual_ema(b1, b3, alpha), ema_sq(b2))    # AdEMAMix
    scale_by_moments(ema(b1, debias=False),                  # ADOPT
                     ema_sq(b2, debias=False, init_first=True), order="adopt")

A rule is a small frozen dataclass with ``init(params) -> state`` and
``update(state, g, count, ...) -> (new_state, value)``; ``count`` is the 1-based
step number. First-moment rules return the numerator; second-moment rules
return the per-coordinate scale (the denominator before ``eps``), take the
first rule's (updated) state as ``mu`` and also offer ``scale(state, count)``,
the scale of a state without updating it (the ADOPT order needs it).

The combined state, `MomentsState(count, mu, nu)`, declares ``mu`` linear and
``nu`` second-moment-like for the basis protocol. A rule uses the slot ``mu``
(first rules) or ``nu`` (second rules) unless it names others in a ``slots``
attribute, in which case its state is a tuple with one tree per slot and the
state is a `WideMomentsState`, which adds a linear slot ``mu2`` and a
second-moment slot ``nu2`` (AdEMAMix's fast and slow EMAs use ``mu`` and
``mu2``; AMSGrad's EMA and running max use ``nu`` and ``nu2``). Every
combination therefore runs inside `in_eigenbasis` / `in_subspace` unchanged.

`scale_by_exadam` and `scale_by_fadam` couple the two moments more tightly
than an order can express; they are their own primitives on the same state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab.primitives.basis import LINEAR, SECOND, declare_basis

__all__ = [
    "MomentsState", "WideMomentsState", "scale_by_moments", "scale_by_adam", "ema", "heavy_ball",
    "ema_sq", "lion_interp", "scale_by_lion_momentum", "tree_zeros_like",
    "safe_square", "bias_correction", "bound_gradient",
    # rules added for the Adam family
    "dual_ema", "max_ema_sq", "belief", "momentum_sq", "abs_max", "sum_sq",
    "centered_ema_sq",
    # primitives built on them
    "scale_by_adopt", "scale_by_exadam", "scale_by_fadam",
    "ademamix_alpha_warmup", "ademamix_b3_warmup",
]


def full_like(p: jax.Array, value: Any, dtype: Any = None) -> jax.Array:
  """A constant array shaped like `p` that keeps `p`'s sharding, also under jit.

  Inside `jit`, ``jnp.full_like(p, v)`` is a bare constant that XLA places
  unsharded (one device holds the whole optimizer state); computing it from
  `p` (0 * finite(p) + v) lets sharding propagation give it `p`'s layout.
  The extra read of `p` happens once, at init.
  """
  dtype = p.dtype if dtype is None else dtype
  zero = jnp.where(jnp.isfinite(p), p, 0).astype(dtype) * 0
  return zero + jnp.asarray(value, dtype)


def zeros_like(p: jax.Array, dtype: Any = None) -> jax.Array:
  """Zeros shaped like `p`, keeping its sharding (see `full_like`)."""
  return full_like(p, 0, dtype)


def tree_zeros_like(params: Any, dtype: Any = None) -> Any:
  """Zeros shaped like `params`, built by mapping over it (keeps sharding)."""
  return jax.tree.map(lambda p: zeros_like(p, dtype), params)


def _tree_full_like(params: Any, value: Any, dtype: Any = None) -> Any:
  return jax.tree.map(lambda p: full_like(p, value, dtype), params)


def safe_square(g: jax.Array) -> jax.Array:
  """g*g saturated at the dtype's largest finite value (never overflows to inf)."""
  return jnp.minimum(g * g, jnp.finfo(g.dtype).max)


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
  """1 - decay**count (count is the 1-based step), in the default float dtype."""
  return 1.0 - decay ** count


def _cast_like(tree: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def _saturate(x: jax.Array) -> jax.Array:
  """Clamps a non-negative statistic at the dtype's largest finite value (NaN stays).

  Written as a select, not `jnp.minimum`: with `minimum` XLA:CPU recomputes the
  new statistic inside the parameter-update fusion and has to snapshot the old,
  donated state buffer with an extra copy of every leaf (3x slower steps).
  """
  top = jnp.finfo(x.dtype).max
  return jnp.where(x > top, top, x)


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
  the step keeps the method's bound, |m_hat| / sqrt(v_hat) <= (1 - b1) / sqrt(1 - b2)
  for Adam. Without it v saturates at the float maximum while m does not, and
  the step is ~1e10 times too large. Ordinary gradients (|g| < 9e18 in float32
  and bfloat16, < 128 in float16) are unchanged. NaN stays NaN, so it shows in
  the update; +-inf is clamped like any huge entry (use `skip_non_finite` to skip
  such steps instead).

  A plain clamp: XLA:CPU fuses it into every consumer of g, while a select that
  kept +-inf costs Adagrad and RMSProp one more pass over g per leaf (41 -> 61
  kernels per step on 20 leaves).
  """
  def leaf(x):
    top = 2.0 ** ((jnp.finfo(x.dtype).maxexp - 2) // 2)
    return jnp.clip(x, -top, top)

  return jax.tree.map(leaf, g)


def _value_at(value: Any, step: jax.Array) -> Any:
  """A hyperparameter at a 0-based step: calls a schedule, passes a number through."""
  return value(step) if callable(value) else value


def _ema_tree(state: Any, x: Any, decay: Any) -> Any:
  """decay * state + (1 - decay) * x, stored in the state's dtype."""
  return jax.tree.map(lambda s, v: (decay * s + (1 - decay) * v).astype(s.dtype), state, x)


def _ema_sq_tree(state: Any, x: Any, decay: Any, add: Any = 0.0) -> Any:
  """decay * state + (1 - decay) * x^2 + add, saturated, in the state's dtype."""
  return jax.tree.map(
      lambda s, v: _saturate((decay * s + (1 - decay) * safe_square(v) + add).astype(s.dtype)),
      state, x)


def _debias(tree: Any, decay: Any, count: jax.Array, debias: bool) -> Any:
  """tree / (1 - decay^t), kept finite (a saturated moment divided by 1 - b would
  overflow)."""
  if not debias:
    return tree
  c = bias_correction(decay, jnp.maximum(count, 1))

  def leaf(v):
    top = jnp.finfo(v.dtype).max
    return jnp.clip(v / c, -top, top).astype(v.dtype)

  return jax.tree.map(leaf, tree)


# ---------------------------------------------------------------- first moments
@dataclasses.dataclass(frozen=True)
class ema:
  """EMA of the gradient: m <- b1 m + (1 - b1) g.

  Args:
    b1: decay rate in [0, 1).
    debias: divide by 1 - b1^t (Adam's bias correction).
    nesterov: look-ahead. With ``debias``, NAdam's
      b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t); without, the plain
      b1 m_t + (1 - b1) g (as optax's ADOPT).
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
    mu = _ema_tree(mu, g, b1)
    if not self.debias:
      if self.nesterov:
        return mu, jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, mu, g)
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
  """Heavy-ball trace (PyTorch-style SGD momentum).

  m <- b1 m + (1 - dampening) g; returns m, or g + b1 m with Nesterov (the raw
  g, not dampened: SGDP's official code allows Nesterov with dampening, unlike
  torch.optim.SGD). With dampening=0 (the default) this is optax.trace.
  """
  b1: Any = 0.9
  nesterov: bool = False
  dtype: Any = None
  dampening: Any = 0.0

  def init(self, params):
    return tree_zeros_like(params, self.dtype)

  def update(self, mu, g, count):
    del count
    b1, keep = self.b1, 1 - self.dampening
    mu = jax.tree.map(lambda m, x: (b1 * m + keep * x).astype(m.dtype), mu, g)
    if self.nesterov:
      return mu, jax.tree.map(lambda m, x: x + b1 * m, mu, g)
    return mu, mu


@dataclasses.dataclass(frozen=True)
class dual_ema:
  """AdEMAMix's mixture of a fast and a slow EMA (arXiv:2409.03350).

  m1 <- b1 m1 + (1 - b1) g;  m2 <- b3 m2 + (1 - b3) g;
  returns m1 / (1 - b1^t) + alpha * m2 (the slow EMA is not debiased, so it
  fills in slowly). ``b3`` and ``alpha`` may be schedules of the 0-based step
  (see `ademamix_b3_warmup`, `ademamix_alpha_warmup`). Uses the slots
  ``mu`` (m1) and ``mu2`` (m2).
  """
  b1: Any = 0.9
  b3: Any = 0.9999
  alpha: Any = 5.0
  debias: bool = True
  dtype: Any = None
  slots = ("mu", "mu2")

  def init(self, params):
    return tree_zeros_like(params, self.dtype), tree_zeros_like(params, self.dtype)

  def update(self, state, g, count):
    m1, m2 = state
    b3, alpha = _value_at(self.b3, count - 1), _value_at(self.alpha, count - 1)
    m1, m2 = _ema_tree(m1, g, self.b1), _ema_tree(m2, g, b3)
    fast = _debias(m1, self.b1, count, self.debias)
    return (m1, m2), jax.tree.map(lambda a, b: a + alpha * b, fast, m2)


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


# --------------------------------------------------------------- second moments
def _root(v: jax.Array, power: Any) -> jax.Array:
  if isinstance(power, (int, float)) and power == 0.5:
    return jnp.sqrt(v)
  return jnp.power(v, power)


@dataclasses.dataclass(frozen=True)
class ema_sq:
  """EMA of the squared gradient: v <- b2 v + (1 - b2) g^2; scale (v_hat + eps_root)^power.

  Args:
    b2: decay rate in [0, 1).
    debias: divide v by 1 - b2^t before the root.
    eps_root: added inside the root.
    initial: initial value of v (optax's ``initial_scale`` for RMSProp).
    init_first: start the EMA at the first sample, v_1 = g_1^2, instead of
      at ``initial`` (ADOPT); then no debiasing is needed.
    power: the root taken (1/2: Adam; FAdam's ``p``).
    eps_before_debias: None (the default) or an eps added to the root of the
      raw v *before* the bias correction: the scale becomes
      ((v + eps_root)^power + eps_before_debias) / (1 - b2^t)^power. With
      ``eps=0`` in `scale_by_moments` this is the HF-transformers AdamW form
      used by several official codes (``denom = sqrt(v) + eps`` with
      ``step_size = lr * sqrt(1 - b2^t) / (1 - b1^t)``), i.e. Adam with an
      effective eps of eps / sqrt(1 - b2^t); see `scale_by_adam`.
  """
  b2: Any = 0.999
  debias: bool = True
  eps_root: Any = 0.0
  initial: Any = 0.0
  init_first: bool = False
  power: Any = 0.5
  eps_before_debias: Any = None

  def init(self, params):
    if isinstance(self.initial, (int, float)) and self.initial == 0:
      return tree_zeros_like(params)
    return _tree_full_like(params, self.initial)

  def scale(self, nu, count):
    if self.eps_before_debias is not None:
      return self._scale_eps_before_debias(nu, count)
    nu = _debias(nu, self.b2, count, self.debias)
    return jax.tree.map(lambda v: _root(v + self.eps_root, self.power), nu)

  def _scale_eps_before_debias(self, nu, count):
    """((v + eps_root)^power + eps) / (1 - b2^t)^power, kept finite."""
    if self.debias:
      c = _root(bias_correction(self.b2, jnp.maximum(count, 1)), self.power)
    else:
      c = 1.0

    def leaf(v):
      top = jnp.finfo(v.dtype).max
      s = (_root(v + self.eps_root, self.power) + self.eps_before_debias) / c
      return jnp.clip(s, 0, top).astype(v.dtype)

    return jax.tree.map(leaf, nu)

  def update(self, nu, g, count, mu=None):
    del mu
    b2 = jnp.where(count == 1, 0.0, self.b2) if self.init_first else self.b2
    nu = _ema_sq_tree(nu, g, b2)
    return nu, self.scale(nu, count)


@dataclasses.dataclass(frozen=True)
class max_ema_sq:
  """AMSGrad's running maximum of the EMA of g^2 (arXiv:1904.09237).

  v <- b2 v + (1 - b2) g^2;  v_max <- max(v_max, v_hat);  scale sqrt(v_max + eps_root),
  where v_hat = v / (1 - b2^t) with ``debias`` (optax's ``bias_correction_nu``)
  and v otherwise (the paper). Uses the slots ``nu`` (v) and ``nu2`` (v_max).
  """
  b2: Any = 0.999
  debias: bool = True
  eps_root: Any = 0.0
  slots = ("nu", "nu2")

  def init(self, params):
    return tree_zeros_like(params), tree_zeros_like(params)

  def scale(self, state, count):
    del count
    return jax.tree.map(lambda v: jnp.sqrt(v + self.eps_root), state[1])

  def update(self, state, g, count, mu=None):
    del mu
    nu = _ema_sq_tree(state[0], g, self.b2)
    nu_hat = _debias(nu, self.b2, count, self.debias)
    nu_max = jax.tree.map(lambda a, b: jnp.maximum(a, b).astype(a.dtype), state[1], nu_hat)
    return (nu, nu_max), self.scale((nu, nu_max), count)


def _require_mu(where: str, mu: Any) -> Any:
  if mu is None or isinstance(mu, tuple):
    raise ValueError(f"optlab.{where}: this second-moment rule needs a single-tree "
                     "first-moment rule (such as ema) in scale_by_moments")
  return mu


class _ema_sq_of_moment:
  """Shared by rules tracking v <- b2 v + (1 - b2) x^2 + eps_root, where x is
  computed from the gradient and the first rule's updated EMA m_t (`source`);
  scale sqrt(v / (1 - b2^t)). Needs a single-tree first-moment rule."""

  def init(self, params):
    return tree_zeros_like(params)

  def scale(self, nu, count):
    return jax.tree.map(jnp.sqrt, _debias(nu, self.b2, count, self.debias))

  def update(self, nu, g, count, mu=None):
    x = self.source(g, _require_mu(type(self).__name__, mu))
    nu = _ema_sq_tree(nu, x, self.b2, self.eps_root)
    return nu, self.scale(nu, count)


@dataclasses.dataclass(frozen=True)
class belief(_ema_sq_of_moment):
  """AdaBelief's second moment (arXiv:2010.07468): the EMA of (g - m)^2.

  s <- b2 s + (1 - b2) (g - m_t)^2 + eps_root (eps_root accumulates in s, as in
  the paper and optax); scale sqrt(s / (1 - b2^t)). ``m_t`` is the first
  rule's updated EMA, so it needs a first-moment rule such as `ema`.
  """
  b2: Any = 0.999
  eps_root: Any = 1e-16
  debias: bool = True

  def source(self, g, mu):
    return jax.tree.map(lambda x, m: x - m.astype(x.dtype), g, mu)


@dataclasses.dataclass(frozen=True)
class momentum_sq(_ema_sq_of_moment):
  """AdaMomentum's second moment (arXiv:2106.11514): the EMA of m^2, not of g^2.

  v <- b2 v + (1 - b2) m_t^2 + eps_root (eps_root accumulates in v, as in the
  paper); scale sqrt(v / (1 - b2^t)). ``m_t`` is the first rule's updated EMA.
  """
  b2: Any = 0.999
  eps_root: Any = 1e-8
  debias: bool = True

  def source(self, g, mu):
    del g
    return mu


@dataclasses.dataclass(frozen=True)
class abs_max:
  """Adamax's infinity-norm moment (arXiv:1412.6980, Sec. 7.1), as optax.

  u <- max(b2 u, |g| + eps); the scale is u itself (use ``eps=0`` in
  `scale_by_moments`: the paper has no eps, optax adds it inside the max).
  """
  b2: Any = 0.999
  eps: Any = 1e-8

  def init(self, params):
    return tree_zeros_like(params)

  def scale(self, nu, count):
    del count
    return nu

  def update(self, nu, g, count, mu=None):
    del mu, count
    nu = jax.tree.map(
        lambda u, x: jnp.maximum(self.b2 * u, jnp.abs(x) + self.eps).astype(u.dtype), nu, g)
    return nu, nu


@dataclasses.dataclass(frozen=True)
class sum_sq:
  """Adagrad's running sum of squares (Duchi et al., JMLR 2011), as optax.

  G <- G + g^2 (starting at ``initial_accumulator_value``); scale sqrt(G + eps_root).
  G never forgets: after one huge gradient entry (up to `bound_gradient`'s clamp)
  that coordinate's steps stay tiny for the rest of training. That stall is the
  method's own math; G saturates at the float maximum rather than overflowing.
  """
  initial_accumulator_value: Any = 0.1
  eps_root: Any = 1e-7

  def init(self, params):
    return _tree_full_like(params, self.initial_accumulator_value)

  def scale(self, nu, count):
    del count
    return jax.tree.map(lambda v: jnp.sqrt(v + self.eps_root), nu)

  def update(self, nu, g, count, mu=None):
    del mu
    nu = jax.tree.map(lambda v, x: _saturate((v + safe_square(x)).astype(v.dtype)), nu, g)
    return nu, self.scale(nu, count)


@dataclasses.dataclass(frozen=True)
class centered_ema_sq:
  """Centred RMSProp's scale (Graves 2013): sqrt(E[g^2] - E[g]^2 + eps_root).

  Both EMAs use ``decay``; with ``debias`` both are divided by 1 - decay^t
  (optax's ``bias_correction``). A variance that rounds below zero is taken as
  zero. Uses the slots ``nu`` (E[g^2], second-moment) and ``mu2`` (E[g], linear).
  """
  decay: Any = 0.9
  debias: bool = False
  eps_root: Any = 0.0
  initial: Any = 0.0
  slots = ("nu", "mu2")

  def init(self, params):
    return _tree_full_like(params, self.initial), tree_zeros_like(params)

  def scale(self, state, count):
    nu = _debias(state[0], self.decay, count, self.debias)
    mean = _debias(state[1], self.decay, count, self.debias)
    return jax.tree.map(
        lambda v, m: jnp.sqrt(jnp.maximum(v - safe_square(m), 0) + self.eps_root), nu, mean)

  def update(self, state, g, count, mu=None):
    del mu
    state = (_ema_sq_tree(state[0], g, self.decay), _ema_tree(state[1], g, self.decay))
    return state, self.scale(state, count)


# ------------------------------------------------------------------ combination
@declare_basis(mu=LINEAR, nu=SECOND)
class MomentsState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # first-moment tree, param-shaped; () when unused
  nu: Any           # second-moment tree, param-shaped; () when unused


@declare_basis(mu=LINEAR, nu=SECOND, mu2=LINEAR, nu2=SECOND)
class WideMomentsState(NamedTuple):
  """`MomentsState` with two more slots, for rules that keep two trees."""
  count: jax.Array  # [], int32: steps taken
  mu: Any           # first-moment tree, param-shaped; () when unused
  nu: Any           # second-moment tree, param-shaped; () when unused
  mu2: Any          # a second linear tree, param-shaped (AdEMAMix's slow EMA,
                    # centred RMSProp's mean gradient); () when unused
  nu2: Any          # a second second-moment tree, param-shaped (AMSGrad's
                    # running max); () when unused


_ORDERS = ("adam", "laprop", "adopt")
_SLOTS = ("mu", "nu", "mu2", "nu2")


def _slots_of(where: str, rule: Any, default: tuple[str, ...]) -> tuple[str, ...]:
  if rule is None:
    return ()
  slots = tuple(getattr(rule, "slots", default))
  bad = [s for s in slots if s not in _SLOTS]
  if bad or not slots:
    raise ValueError(f"optlab.{where}: rule {rule!r} names unknown state slots {bad}; "
                     f"expected some of {_SLOTS}")
  return slots


def _get_slots(state: MomentsState, slots: tuple[str, ...]) -> Any:
  values = tuple(getattr(state, s) for s in slots)
  return values[0] if len(values) == 1 else values


def _put_slots(fields: dict, slots: tuple[str, ...], value: Any) -> None:
  fields.update(zip(slots, (value,) if len(slots) == 1 else value))


def scale_by_moments(first: Optional[Any], second: Optional[Any], *, eps: Any = 1e-8,
                     order: str = "adam", clip_value_fn: Optional[Callable] = None
                     ) -> optax.GradientTransformationExtraArgs:
  """Adaptive scaling from a first- and a second-moment rule.

  ``order="adam"``:   u = first(g) / (second(g) + eps).
  ``order="laprop"``: u = first(g / (second(g) + eps)) -- momentum of the
  normalised gradient (LaProp, arXiv:2002.04839).
  ``order="adopt"``:  u = first(clip(g / max(second_{t-1}, eps))), where
  second_{t-1} is the scale *before* this step's gradient is added and clip
  bounds each entry by ``clip_value_fn(t - 1)`` (when given). The first step
  only initialises the second moment and returns zeros (ADOPT,
  arXiv:2411.02853).

  Either rule may be None (pure momentum, or RMSProp-like scaling). A zero
  denominator yields a zero update, never NaN; a NaN gradient gives a NaN update.
  With a second rule, both rules see the gradient through `bound_gradient` (a
  no-op for ordinary values); the second rule always sees it before the first
  rule or the normalisation acts on it.
  """
  V.check_choice("scale_by_moments", "order", order, _ORDERS)
  V.check_nonneg("scale_by_moments", "eps", eps)
  s1 = _slots_of("scale_by_moments", first, ("mu",))
  s2 = _slots_of("scale_by_moments", second, ("nu",))
  if set(s1) & set(s2):
    raise ValueError(f"optlab.scale_by_moments: the rules {first!r} and {second!r} both "
                     f"use the state slots {sorted(set(s1) & set(s2))}")
  if clip_value_fn is not None and order != "adopt":
    raise ValueError("optlab.scale_by_moments: clip_value_fn is only used with order='adopt'")
  if order == "adopt" and second is not None and not hasattr(second, "scale"):
    raise ValueError(f"optlab.scale_by_moments: order='adopt' needs a second-moment rule "
                     f"with a scale() method; {second!r} has none")

  state_type = MomentsState if set(s1 + s2) <= {"mu", "nu"} else WideMomentsState

  def init(params):
    fields = dict.fromkeys(state_type._fields[1:], ())
    if first is not None:
      _put_slots(fields, s1, first.init(params))
    if second is not None:
      _put_slots(fields, s2, second.init(params))
    return state_type(jnp.zeros([], jnp.int32), **fields)

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    if second is not None:
      updates = bound_gradient(updates)
    g = updates
    mu = _get_slots(state, s1) if first is not None else None
    nu = _get_slots(state, s2) if second is not None else None

    def normalise(x, nu, mu):  # the second moment always sees the raw gradient
      if second is None:
        return nu, x
      nu, scale = second.update(nu, updates, count, mu)
      return nu, jax.tree.map(lambda y, s: safe_div(y, s + eps), x, scale)

    if order == "adam":
      if first is not None:
        mu, g = first.update(mu, g, count)
      nu, out = normalise(g, nu, mu)
    elif order == "laprop":
      nu, out = normalise(g, nu, mu)
      if first is not None:
        mu, out = first.update(mu, out, count)
    else:
      out, mu, nu = _adopt_step(first, second, g, mu, nu, count, eps, clip_value_fn)

    fields = dict.fromkeys(state_type._fields[1:], ())
    if first is not None:
      _put_slots(fields, s1, mu)
    if second is not None:
      _put_slots(fields, s2, nu)
    return _cast_like(out, updates), state_type(count, **fields)

  return optax.GradientTransformationExtraArgs(init, update)


def _adopt_step(first, second, g, mu, nu, count, eps, clip_value_fn):
  """ADOPT's order: normalise by the previous second moment, clip, then momentum.

  On the first step the normalised gradient is zeroed, so a zero-initialised
  first moment stays zero (a scalar select, cheaper than masking the state).
  """
  first_step = count == 1
  x = g
  if second is not None:
    prev = second.scale(nu, count - 1)
    x = jax.tree.map(lambda y, s: safe_div(y, jnp.maximum(s, eps)), g, prev)
    nu, _ = second.update(nu, g, count, mu)
  if clip_value_fn is not None:
    bound = clip_value_fn(count - 1)
    x = jax.tree.map(lambda y: jnp.clip(y, -bound, bound), x)
  x = jax.tree.map(lambda y: jnp.where(first_step, jnp.zeros_like(y), y), x)
  new_mu, out = mu, x
  if first is not None:
    new_mu, out = first.update(mu, x, jnp.maximum(count - 1, 1))
  out = jax.tree.map(lambda y: jnp.where(first_step, jnp.zeros_like(y), y), out)
  return out, new_mu, nu


def scale_by_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                  mu_dtype: Any = None, *, nesterov: bool = False,
                  eps_before_debias: bool = False):
  """Adam's scaling, m_hat / (sqrt(v_hat + eps_root) + eps) (arXiv:1412.6980).

  With ``eps_before_debias`` eps is added to sqrt(v + eps_root) before the
  bias correction, m_hat / ((sqrt(v + eps_root) + eps) / sqrt(1 - b2^t)), as
  the HF-transformers AdamW (``denom = sqrt(v) + eps``, step size
  ``lr * sqrt(1 - b2^t) / (1 - b1^t)``) that several official codes build on;
  the default is the paper's, torch.optim's and optax's form.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_adam", name, value)
  V.check_nonneg("scale_by_adam", "eps_root", eps_root)
  first = ema(b1, nesterov=nesterov, dtype=mu_dtype)
  if eps_before_debias:
    V.check_nonneg("scale_by_adam", "eps", eps)
    return scale_by_moments(first, ema_sq(b2, eps_root=eps_root, eps_before_debias=eps),
                            eps=0.0)
  return scale_by_moments(first, ema_sq(b2, eps_root=eps_root), eps=eps)


def scale_by_lion_momentum(b1: Any = 0.9, b2: Any = 0.99, mu_dtype: Any = None):
  """Lion's update direction, sign(b1 m + (1 - b1) g) (arXiv:2302.06675)."""
  from optlab.primitives.normalize import scale_by_sign
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_lion_momentum", name, value)
  return optax.chain(scale_by_moments(lion_interp(b1, b2, mu_dtype), None), scale_by_sign())


def scale_by_adopt(b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6, mu_dtype: Any = None, *,
                   nesterov: bool = False, use_clipping: bool = True,
                   clip_value_fn: Optional[Callable] = None):
  """ADOPT's scaling (arXiv:2411.02853), as the official code and optax.contrib.

  v_1 = g_1^2 and u_1 = 0; then x_t = clip(g_t / max(sqrt(v_{t-1}), eps),
  clip_value_fn(t - 1)), m_t = b1 m_{t-1} + (1 - b1) x_t, u_t = m_t, and
  v_t = b2 v_{t-1} + (1 - b2) g_t^2. ``clip_value_fn=None`` means step ** 0.25.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_adopt", name, value)
  V.check_nonneg("scale_by_adopt", "eps", eps)
  return scale_by_moments(
      ema(b1, debias=False, nesterov=nesterov, dtype=mu_dtype),
      ema_sq(b2, debias=False, init_first=True), eps=eps, order="adopt",
      clip_value_fn=(clip_value_fn or _quarter_power) if use_clipping else None)


def _quarter_power(step):
  return step ** 0.25


# ------------------------------------------------------------ AdEMAMix warm-up
def ademamix_alpha_warmup(alpha: Any, warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
  """AdEMAMix's alpha scheduler: alpha * min(t / T, 1), t the 1-based step.

  Returns a schedule of the 0-based step, as `dual_ema` and optax expect.
  """
  V.check_range("ademamix_alpha_warmup", "warmup_steps", warmup_steps, 0, low_open=True)

  def schedule(step):
    t = jnp.asarray(step) + 1.0  # a float: int / int would round to float32
    return alpha * jnp.minimum(t / warmup_steps, 1.0)

  return schedule


def ademamix_b3_warmup(b3: Any, b_start: Any, warmup_steps: int
                       ) -> Callable[[jax.Array], jax.Array]:
  """AdEMAMix's beta3 scheduler: the EMA's half-life grows linearly from
  ``b_start``'s (the paper uses b1) to ``b3``'s over T steps, then stays at b3.

  With h(b) = ln(1/2) / ln(b + 1e-8) - 1 (the official code's half-life; the
  1e-8 guards b = 0) and a = t / T: b3_t = 0.5 ** (1 / ((1-a) h(b_start) +
  a h(b3) + 1)) for t < T. Returns a schedule of the 0-based step.
  """
  V.check_range("ademamix_b3_warmup", "warmup_steps", warmup_steps, 0, low_open=True)
  half_life = lambda b: math.log(0.5) / jnp.log(b + 1e-8) - 1.0

  def schedule(step):
    t = jnp.asarray(step) + 1.0  # a float: int / int would round to float32
    a = jnp.minimum(t / warmup_steps, 1.0)
    h = (1.0 - a) * half_life(b_start) + a * half_life(b3)
    return jnp.where(t < warmup_steps, 0.5 ** (1.0 / (h + 1.0)), b3)

  return schedule


# -------------------------------------------------------------------- EXAdam
def scale_by_exadam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, *,
                    dynamic_step_size: bool = False) -> optax.GradientTransformationExtraArgs:
  """EXAdam's scaling (arXiv:2412.20302, v1 and official code of v1).

  With raw EMAs m, v: d1 = 1 + b2^t v / (v + eps), d2 = 1 + b1^t m^2 / (m^2 + eps),
  m~ = d1 m / (1 - b1^t), g~ = d1 g / (1 - b1^t), v~ = d2 v / (1 - b2^t),
  u = s_t (m~ + g~) / (sqrt(v~) + eps), with s_t = ln(sqrt(2 (t + 1))) when
  ``dynamic_step_size`` (v1's growing step size) and 1 otherwise (v2).
  Computed in float32 (or wider); m and v are kept in float32 for float16
  params (`normalize.statistics_dtype`: v of a 1e-4 gradient is 1e-11).
  """
  # Local: moments does not import normalize at module level.
  from optlab.primitives.normalize import accumulation_dtype, statistics_dtype
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_exadam", name, value)
  V.check_nonneg("scale_by_exadam", "eps", eps)

  def init(params):
    zeros = lambda: jax.tree.map(lambda p: zeros_like(p, statistics_dtype(p.dtype)), params)
    return MomentsState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    wide = jax.tree.map(lambda g: g.astype(accumulation_dtype(g.dtype)), updates)
    mu, nu = _ema_tree(state.mu, wide, b1), _ema_sq_tree(state.nu, wide, b2)
    b1t, b2t = b1 ** count, b2 ** count
    step = 0.5 * jnp.log(2.0 * (count + 1.0)) if dynamic_step_size else 1.0

    def leaf(g, m, v):
      dt = accumulation_dtype(m.dtype)
      out_dtype, g, m, v = g.dtype, g.astype(dt), m.astype(dt), v.astype(dt)
      m_sq = safe_square(m)
      d1 = 1.0 + safe_div(v, v + eps) * b2t
      d2 = 1.0 + safe_div(m_sq, m_sq + eps) * b1t
      num = (m + g) * d1 / (1.0 - b1t)
      den = jnp.sqrt(v / (1.0 - b2t) * d2) + eps
      return (step * safe_div(num, den)).astype(out_dtype)

    return jax.tree.map(leaf, updates, mu, nu), MomentsState(count, mu, nu)

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------- FAdam
def _rms(x: jax.Array) -> jax.Array:
  """sqrt(mean(x^2)) in at least float32, scaled by max|x| so it cannot overflow."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if x.size == 0:
    return jnp.zeros([], x.dtype)
  top = jnp.max(jnp.abs(x))
  safe_top = jnp.where(top > 0, top, 1.0)
  return top * jnp.sqrt(jnp.mean(jnp.square(x / safe_top)))


def _clip_rms(x: jax.Array, bound: Any) -> jax.Array:
  """x / max(1, rms(x) / bound)  (FAdam's per-tensor clipping)."""
  return (x / jnp.maximum(1.0, _rms(x) / bound)).astype(x.dtype)


def scale_by_fadam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, clip: Any = 1.0,
                   p: Any = 0.5, weight_decay: Any = 0.001, mask: Any = None, *,
                   adaptive_eps: bool = True, mu_dtype: Any = None
                   ) -> optax.GradientTransformationExtraArgs:
  """FAdam's direction (arXiv:2405.12807, Algorithm 1), before the learning rate.

  f_t = bias-corrected EMA of g^2 (the paper's beta2_hat recursion);
  eps_t = eps * min(1, rms(g)) with ``adaptive_eps`` (else eps);
  g_nat = clip(g / (f_t^p + eps_t));  m <- b1 m + (1 - b1) g_nat (no debiasing);
  w_nat = clip(theta / (f_t^p + eps_t));  u = m + weight_decay * w_nat,
  where clip(x) = x / max(1, rms(x) / clip) per tensor. ``mask`` (a tree of
  bools or a function of params, as optax) selects the leaves that decay.
  Needs ``params`` in update.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_fadam", name, value)
  V.check_nonneg("scale_by_fadam", "eps", eps)
  V.check_positive("scale_by_fadam", "clip", clip)
  V.check_positive("scale_by_fadam", "p", p)
  V.check_nonneg("scale_by_fadam", "weight_decay", weight_decay)
  first, second = ema(b1, debias=False, dtype=mu_dtype), ema_sq(b2, power=p)

  def init(params):
    return MomentsState(jnp.zeros([], jnp.int32), first.init(params), second.init(params))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params("scale_by_fadam", params)  # for FAdam's weight decay
    count = optax.safe_increment(state.count)
    updates = bound_gradient(updates)  # before both moments, as in scale_by_moments
    nu, f_p = second.update(state.nu, updates, count)

    def denominator(s, g):
      e = eps * jnp.minimum(1.0, _rms(g)) if adaptive_eps else eps
      return s + e

    den = jax.tree.map(denominator, f_p, updates)
    nat = jax.tree.map(lambda g, d: _clip_rms(safe_div(g, d), clip), updates, den)
    mu, m = first.update(state.mu, nat, count)
    decay = jax.tree.map(lambda w, d: _clip_rms(safe_div(w, d), clip), params, den)
    if mask is not None:
      keep = mask(params) if callable(mask) else mask
      decay = jax.tree.map(lambda k, w: jnp.where(k, w, jnp.zeros_like(w)), keep, decay)
    out = jax.tree.map(lambda a, w: a + weight_decay * w, m, decay)
    return _cast_like(out, updates), MomentsState(count, mu, nu)

  return optax.GradientTransformationExtraArgs(init, update)
