"""Moment rules: how an adaptive method tracks its numerator and its scale.

A rule is not a transformation; `optlab.scale_by_moments` combines a
first-moment rule (the numerator) with a second-moment rule (the
per-coordinate scale) and an order::

    scale_by_moments(rules.ema(b1), rules.ema_sq(b2))                 # Adam
    scale_by_moments(rules.ema(b1), rules.belief(b2), eps=1e-16)      # AdaBelief
    scale_by_moments(rules.dual_ema(b1, b3, alpha), rules.ema_sq(b2)) # AdEMAMix

A rule is a small frozen dataclass that validates its hyperparameters when it
is built and owns a NamedTuple state, declared with `declare_state` like every
other optimizer state (so basis changes, momentum resets and 8-bit storage see
each of its trees with the right kind and role). Its methods:

* ``init(params) -> state``;
* first-moment rules: ``update(state, g, count) -> (state, numerator)``, and
  optionally ``second_input(state, g, count)``: what the second rule of the
  pair tracks instead of g (Adan's Nesterov gradient), from the state before
  this step;
* second-moment rules: ``update(state, g, count, first=None) -> (state, scale)``,
  where ``first`` is the first rule's updated state (AdaBelief needs its EMA),
  and ``scale(state, count)``, the scale of a state without updating it (the
  ADOPT order needs it). The scale is the denominator before ``eps``.

``count`` is the 1-based step number. A rule may hold any number of trees: a
new rule declares a state with as many fields as it needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import (bias_correction, debias, safe_square, saturate, tree_ema,
                                  tree_ema_sq, value_at)
from optlab._src.tree import tree_full_like, tree_zeros_like
from optlab.primitives.basis import LINEAR_MOMENT, LINEAR_STAT, SECOND_MOMENT, declare_state

__all__ = [
    "MomentumState", "DualMomentumState", "AdanMomentumState", "SecondMomentState",
    "MaxSecondMomentState", "CenteredSecondMomentState",
    "ema", "heavy_ball", "dual_ema", "lion_interp", "adan_momentum",
    "ema_sq", "max_ema_sq", "belief", "momentum_sq", "abs_max", "sum_sq", "centered_ema_sq",
    "yogi_sq", "coupled_ema_sq", "embedding_paths", "nesterov_ema", "unit_scale",
]


# ------------------------------------------------------------------- states
@declare_state(mu=LINEAR_MOMENT)
class MomentumState(NamedTuple):
  """One trace of the gradient (`ema`, `heavy_ball`, `lion_interp`)."""
  mu: Any  # param-shaped, the rule's dtype or the params'


@declare_state(mu=LINEAR_MOMENT, mu_slow=LINEAR_MOMENT)
class DualMomentumState(NamedTuple):
  """AdEMAMix's fast and slow EMAs (`dual_ema`)."""
  mu: Any       # param-shaped: the fast EMA
  mu_slow: Any  # param-shaped: the slow EMA


@declare_state(mu=LINEAR_MOMENT, mu_diff=LINEAR_MOMENT, prev_grad=LINEAR_STAT)
class AdanMomentumState(NamedTuple):
  """Adan's EMAs of g and of g - g_prev, and the previous gradient (`adan_momentum`)."""
  mu: Any         # param-shaped: EMA of g
  mu_diff: Any    # param-shaped: EMA of g - g_prev
  prev_grad: Any  # param-shaped, the params' dtype: the last gradient


@declare_state(nu=SECOND_MOMENT)
class SecondMomentState(NamedTuple):
  """One non-negative per-coordinate statistic (`ema_sq`, `belief`, `sum_sq`, ...)."""
  nu: Any  # param-shaped


@declare_state(nu=SECOND_MOMENT, nu_max=SECOND_MOMENT)
class MaxSecondMomentState(NamedTuple):
  """AMSGrad's EMA of g^2 and its running maximum (`max_ema_sq`)."""
  nu: Any      # param-shaped: EMA of g^2
  nu_max: Any  # param-shaped: running max of the (debiased) EMA


@declare_state(nu=SECOND_MOMENT, mean=LINEAR_MOMENT)
class CenteredSecondMomentState(NamedTuple):
  """Centred RMSProp's EMAs of g^2 and of g (`centered_ema_sq`)."""
  nu: Any    # param-shaped: EMA of g^2
  mean: Any  # param-shaped: EMA of g


def _check(rule: Any, decays: tuple[str, ...] = (), nonneg: tuple[str, ...] = ()) -> None:
  """Validates a rule's hyperparameters as the recipes do (schedules pass)."""
  where = f"rules.{type(rule).__name__}"
  for name in decays:
    V.check_decay(where, name, getattr(rule, name))
  for name in nonneg:
    V.check_nonneg(where, name, getattr(rule, name))


class _Trace:
  """Shared by the first-moment rules that keep one trace (`MomentumState`)."""
  _decays = ("b1",)

  def __post_init__(self):
    _check(self, decays=self._decays)

  def init(self, params):
    return MomentumState(tree_zeros_like(params, self.dtype))


# ------------------------------------------------------------- first moments
@dataclasses.dataclass(frozen=True)
class ema(_Trace):
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
  _: dataclasses.KW_ONLY
  debias: bool = True
  nesterov: bool = False
  dtype: Any = None


  def update(self, state, g, count):
    b1 = self.b1
    mu = tree_ema(state.mu, g, b1)
    if not self.debias:
      if self.nesterov:
        return MomentumState(mu), jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, mu, g)
      return MomentumState(mu), mu
    c = bias_correction(b1, count)
    if self.nesterov:
      c_next = bias_correction(b1, count + 1)
      out = jax.tree.map(lambda m, x: b1 * m / c_next + (1 - b1) * x / c, mu, g)
    else:
      out = jax.tree.map(lambda m: m / c, mu)
    return MomentumState(mu), out


@dataclasses.dataclass(frozen=True)
class heavy_ball(_Trace):
  """Heavy-ball trace (PyTorch-style SGD momentum).

  m <- b1 m + (1 - dampening) g; returns m, or g + b1 m with Nesterov (the raw
  g, not dampened: SGDP's official code allows Nesterov with dampening, unlike
  torch.optim.SGD). With dampening=0 (the default) this is optax.trace.
  """
  b1: Any = 0.9
  _: dataclasses.KW_ONLY
  nesterov: bool = False
  dtype: Any = None
  dampening: Any = 0.0

  def __post_init__(self):
    super().__post_init__()
    V.check_range("rules.heavy_ball", "dampening", self.dampening, 0.0, 1.0)

  def update(self, state, g, count):
    del count
    b1, keep = self.b1, 1 - self.dampening
    mu = jax.tree.map(lambda m, x: (b1 * m + keep * x).astype(m.dtype), state.mu, g)
    if self.nesterov:
      return MomentumState(mu), jax.tree.map(lambda m, x: x + b1 * m, mu, g)
    return MomentumState(mu), mu


@dataclasses.dataclass(frozen=True)
class dual_ema:
  """AdEMAMix's mixture of a fast and a slow EMA (arXiv:2409.03350).

  m1 <- b1 m1 + (1 - b1) g;  m2 <- b3 m2 + (1 - b3) g;
  returns m1 / (1 - b1^t) + alpha * m2 (the slow EMA is not debiased, so it
  fills in slowly). ``b3`` and ``alpha`` may be schedules of the 0-based step
  (see `ademamix_b3_warmup`, `ademamix_alpha_warmup`).
  """
  b1: Any = 0.9
  b3: Any = 0.9999
  alpha: Any = 5.0
  _: dataclasses.KW_ONLY
  debias: bool = True
  dtype: Any = None

  def __post_init__(self):
    _check(self, decays=("b1", "b3"), nonneg=("alpha",))

  def init(self, params):
    zeros = lambda: tree_zeros_like(params, self.dtype)
    return DualMomentumState(zeros(), zeros())

  def update(self, state, g, count):
    b3, alpha = value_at(self.b3, count - 1), value_at(self.alpha, count - 1)
    fast, slow = tree_ema(state.mu, g, self.b1), tree_ema(state.mu_slow, g, b3)
    out = debias(fast, self.b1, count, self.debias)
    return DualMomentumState(fast, slow), jax.tree.map(lambda a, b: a + alpha * b, out, slow)


@dataclasses.dataclass(frozen=True)
class lion_interp(_Trace):
  """Lion's two-rate momentum: returns b1 m + (1 - b1) g, then m <- b2 m + (1 - b2) g."""
  b1: Any = 0.9
  b2: Any = 0.99
  dtype: Any = None

  _decays = ("b1", "b2")

  def update(self, state, g, count):
    del count
    b1, b2 = self.b1, self.b2
    out = jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, state.mu, g)
    mu = jax.tree.map(lambda m, x: (b2 * m + (1 - b2) * x).astype(m.dtype), state.mu, g)
    return MomentumState(mu), out


@dataclasses.dataclass(frozen=True)
class adan_momentum:
  """Adan's Nesterov momentum estimate (arXiv:2208.06677, Algorithm 1; official code).

  With d = g - g_prev (0 on the first step): m <- b1 m + (1 - b1) g,
  v <- b2 v + (1 - b2) d; returns m / (1 - b1^t) + b2 v / (1 - b2^t). The
  second rule of the pair tracks the Nesterov gradient g + b2 d
  (`second_input`), e.g. ``ema_sq(b3)`` for Adan's n. The decays are the
  official code's (the paper's beta_i is 1 - b_i here).
  """
  b1: Any = 0.98
  b2: Any = 0.92
  dtype: Any = None

  def __post_init__(self):
    _check(self, decays=("b1", "b2"))

  def init(self, params):
    zeros = lambda: tree_zeros_like(params, self.dtype)
    return AdanMomentumState(zeros(), zeros(), tree_zeros_like(params))

  def _diff(self, state, g, count):
    first = jnp.asarray(count) == 1
    return jax.tree.map(lambda x, p: jnp.where(first, jnp.zeros_like(x), x - p.astype(x.dtype)),
                        g, state.prev_grad)

  def second_input(self, state, g, count):
    """What the second rule tracks: the Nesterov gradient g + b2 (g - g_prev)."""
    return jax.tree.map(lambda x, d: x + self.b2 * d, g, self._diff(state, g, count))

  def update(self, state, g, count):
    b2 = self.b2
    mu = tree_ema(state.mu, g, self.b1)
    mu_diff = tree_ema(state.mu_diff, self._diff(state, g, count), b2)
    prev = jax.tree.map(lambda p, x: x.astype(p.dtype), state.prev_grad, g)
    out = jax.tree.map(lambda m, v: m + b2 * v, debias(mu, self.b1, count),
                       debias(mu_diff, b2, count))
    return AdanMomentumState(mu, mu_diff, prev), out


# ------------------------------------------------------------ second moments
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
  _: dataclasses.KW_ONLY
  debias: bool = True
  eps_root: Any = 0.0
  initial: Any = 0.0
  init_first: bool = False
  power: Any = 0.5
  eps_before_debias: Any = None

  def __post_init__(self):
    _check(self, decays=("b2",), nonneg=("eps_root", "initial", "eps_before_debias"))
    V.check_positive("rules.ema_sq", "power", self.power)

  def init(self, params):
    if isinstance(self.initial, (int, float)) and self.initial == 0:
      return SecondMomentState(tree_zeros_like(params))
    return SecondMomentState(tree_full_like(params, self.initial))

  def scale(self, state, count):
    if self.eps_before_debias is not None:
      return self._scale_eps_before_debias(state.nu, count)
    nu = debias(state.nu, self.b2, count, self.debias)
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

  def update(self, state, g, count, first=None):
    del first
    b2 = jnp.where(count == 1, 0.0, self.b2) if self.init_first else self.b2
    state = SecondMomentState(tree_ema_sq(state.nu, g, b2))
    return state, self.scale(state, count)


@dataclasses.dataclass(frozen=True)
class max_ema_sq:
  """AMSGrad's running maximum of the EMA of g^2 (arXiv:1904.09237).

  v <- b2 v + (1 - b2) g^2;  v_max <- max(v_max, v_hat);  scale sqrt(v_max + eps_root),
  where v_hat = v / (1 - b2^t) with ``debias`` (optax's ``bias_correction_nu``)
  and v otherwise (the paper).
  """
  b2: Any = 0.999
  _: dataclasses.KW_ONLY
  debias: bool = True
  eps_root: Any = 0.0

  def __post_init__(self):
    _check(self, decays=("b2",), nonneg=("eps_root",))

  def init(self, params):
    return MaxSecondMomentState(tree_zeros_like(params), tree_zeros_like(params))

  def scale(self, state, count):
    del count
    return jax.tree.map(lambda v: jnp.sqrt(v + self.eps_root), state.nu_max)

  def update(self, state, g, count, first=None):
    del first
    nu = tree_ema_sq(state.nu, g, self.b2)
    nu_hat = debias(nu, self.b2, count, self.debias)
    nu_max = jax.tree.map(lambda a, b: jnp.maximum(a, b).astype(a.dtype), state.nu_max, nu_hat)
    state = MaxSecondMomentState(nu, nu_max)
    return state, self.scale(state, count)


class _ema_sq_of_moment:
  """Shared by rules tracking v <- b2 v + (1 - b2) x^2 + eps_root, where x is
  computed from the gradient and the first rule's updated EMA m_t (`source`);
  scale sqrt(v / (1 - b2^t)). Needs a first-moment rule with a `MomentumState`."""

  def __post_init__(self):
    _check(self, decays=("b2",), nonneg=("eps_root",))

  def init(self, params):
    return SecondMomentState(tree_zeros_like(params))

  def scale(self, state, count):
    return jax.tree.map(jnp.sqrt, debias(state.nu, self.b2, count, self.debias))

  def update(self, state, g, count, first=None):
    if not isinstance(first, MomentumState):
      raise ValueError(f"optlab.rules.{type(self).__name__}: needs a first-moment rule "
                       "that keeps one EMA (such as rules.ema) in scale_by_moments")
    state = SecondMomentState(tree_ema_sq(state.nu, self.source(g, first.mu), self.b2,
                                          self.eps_root))
    return state, self.scale(state, count)


@dataclasses.dataclass(frozen=True)
class belief(_ema_sq_of_moment):
  """AdaBelief's second moment (arXiv:2010.07468): the EMA of (g - m)^2.

  s <- b2 s + (1 - b2) (g - m_t)^2 + eps_root (eps_root accumulates in s, as in
  the paper and optax); scale sqrt(s / (1 - b2^t)). ``m_t`` is the first
  rule's updated EMA, so it needs a first-moment rule such as `ema`.
  """
  b2: Any = 0.999
  eps_root: Any = 1e-16
  _: dataclasses.KW_ONLY
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
  _: dataclasses.KW_ONLY
  debias: bool = True

  def source(self, g, mu):
    del g
    return mu


@dataclasses.dataclass(frozen=True)
class abs_max:
  """Adamax's infinity-norm moment (arXiv:1412.6980, Sec. 7.1), as optax.

  ``u <- max(b2 u, |g| + eps)``; the scale is u itself (use ``eps=0`` in
  `scale_by_moments`: the paper has no eps, optax adds it inside the max).
  """
  b2: Any = 0.999
  eps: Any = 1e-8

  def __post_init__(self):
    _check(self, decays=("b2",), nonneg=("eps",))

  def init(self, params):
    return SecondMomentState(tree_zeros_like(params))

  def scale(self, state, count):
    del count
    return state.nu

  def update(self, state, g, count, first=None):
    del first, count
    nu = jax.tree.map(
        lambda u, x: jnp.maximum(self.b2 * u, jnp.abs(x) + self.eps).astype(u.dtype), state.nu, g)
    return SecondMomentState(nu), nu


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

  def __post_init__(self):
    _check(self, nonneg=("initial_accumulator_value", "eps_root"))

  def init(self, params):
    return SecondMomentState(tree_full_like(params, self.initial_accumulator_value))

  def scale(self, state, count):
    del count
    return jax.tree.map(lambda v: jnp.sqrt(v + self.eps_root), state.nu)

  def update(self, state, g, count, first=None):
    del first
    nu = jax.tree.map(lambda v, x: saturate((v + safe_square(x)).astype(v.dtype)), state.nu, g)
    state = SecondMomentState(nu)
    return state, self.scale(state, count)


@dataclasses.dataclass(frozen=True)
class centered_ema_sq:
  """Centred RMSProp's scale (Graves 2013): sqrt(E[g^2] - E[g]^2 + eps_root).

  Both EMAs use ``decay``; with ``debias`` both are divided by 1 - decay^t
  (optax's ``bias_correction``). A variance that rounds below zero is taken as
  zero.
  """
  decay: Any = 0.9
  _: dataclasses.KW_ONLY
  debias: bool = False
  eps_root: Any = 0.0
  initial: Any = 0.0

  def __post_init__(self):
    _check(self, decays=("decay",), nonneg=("eps_root", "initial"))

  def init(self, params):
    return CenteredSecondMomentState(tree_full_like(params, self.initial),
                                     tree_zeros_like(params))

  def scale(self, state, count):
    nu = debias(state.nu, self.decay, count, self.debias)
    mean = debias(state.mean, self.decay, count, self.debias)
    return jax.tree.map(
        lambda v, m: jnp.sqrt(jnp.maximum(v - safe_square(m), 0) + self.eps_root), nu, mean)

  def update(self, state, g, count, first=None):
    del first
    state = CenteredSecondMomentState(tree_ema_sq(state.nu, g, self.decay),
                                      tree_ema(state.mean, g, self.decay))
    return state, self.scale(state, count)


@dataclasses.dataclass(frozen=True)
class yogi_sq:
  """Yogi's second moment (Zaheer et al., "Adaptive Methods for Nonconvex
  Optimization", NeurIPS 2018): v <- v - (1 - b2) g^2 sign(v - g^2); scale
  sqrt(v + eps_root). Starts at ``initial`` (FedYogi: tau^2). No bias correction.
  """
  b2: Any = 0.99
  initial: Any = 1e-6
  eps_root: Any = 0.0

  def __post_init__(self):
    _check(self, decays=("b2",), nonneg=("initial", "eps_root"))

  def init(self, params):
    return SecondMomentState(tree_full_like(params, self.initial))

  def scale(self, state, count):
    del count
    return jax.tree.map(lambda v: jnp.sqrt(v + self.eps_root), state.nu)

  def update(self, state, g, count, first=None):
    del first

    def leaf(v, x):
      x2 = safe_square(x).astype(v.dtype)
      return saturate(v - (1 - self.b2) * x2 * jnp.sign(v - x2)).astype(v.dtype)

    state = SecondMomentState(jax.tree.map(leaf, state.nu, g))
    return state, self.scale(state, count)


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
  mask: Any = embedding_paths
  vocab_axis: int = 0
  eps_root: Any = 0.0
  _: dataclasses.KW_ONLY
  debias: bool = True

  def __post_init__(self):
    _check(self, decays=("b2",), nonneg=("eps_root",))

  def init(self, params):
    return SecondMomentState(tree_zeros_like(params))

  def update(self, state, g, count, first=None):
    del first
    state = SecondMomentState(tree_ema_sq(state.nu, g, self.b2))
    return state, self.scale(state, count, g)

  def scale(self, state, count, like=None):
    nu = state.nu
    keep = self.mask(nu if like is None else like) if callable(self.mask) else self.mask
    hat = debias(nu, self.b2, count, self.debias)

    def leaf(v, coupled):
      if bool(coupled):
        v = jnp.broadcast_to(jnp.mean(v.astype(accumulation_dtype(v.dtype)), self.vocab_axis,
                                      keepdims=True), v.shape).astype(v.dtype)
      return jnp.sqrt(v + self.eps_root)

    return jax.tree.map(leaf, hat, keep)


@dataclasses.dataclass(frozen=True)
class nesterov_ema(_Trace):
  """AdamP's Nesterov option as a first-moment rule (official clovaai/AdamP).

  m <- b1 m + (1 - b1) g, returns (b1 m + (1 - b1) g) / (1 - b1^t) with the
  new m. This differs from NAdam's look-ahead in `ema(nesterov=True)`, which
  corrects the two terms with 1 - b1^(t+1) and 1 - b1^t separately.
  """
  b1: Any = 0.9
  dtype: Any = None


  def update(self, state, g, count):
    b1 = self.b1
    mu = jax.tree.map(lambda m, x: (b1 * m + (1 - b1) * x).astype(m.dtype), state.mu, g)
    c = bias_correction(b1, count)
    return MomentumState(mu), jax.tree.map(lambda m, x: (b1 * m + (1 - b1) * x) / c, mu, g)


@dataclasses.dataclass(frozen=True)
class unit_scale:
  """A second-moment rule that scales by 1 and keeps an all-zero tree.

  Gives a first-moment-only transformation the state layout of an Adam-like
  one, so that both can share a state under `with_leaf_labels`, which needs
  one layout. `route` keeps each branch's own state and needs no such
  padding (the catalogue's Muon and MARS recipes use it).
  """

  def init(self, params):
    # The tree is never written, so it keeps its initial sharding (zeros
    # computed from the params follow the params' sharding under jit).
    return SecondMomentState(tree_zeros_like(params))

  def scale(self, state, count):
    del count
    return jax.tree.map(jnp.ones_like, state.nu)

  def update(self, state, g, count, first=None):
    del g, first
    return state, self.scale(state, count)
