"""Moment estimates: the shared core of the Adam family.

An adaptive method is a *first-moment rule* (how the numerator is tracked), a
*second-moment rule* (how the per-coordinate scale is tracked), both from
`optlab.rules`, and an *order* (momentum of the raw gradient, as in Adam, or
momentum of the already normalised gradient, as in LaProp and ADOPT).
`scale_by_moments` combines one of each::

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

The combined state is `MomentsState(count, first, second)`; ``first`` and
``second`` hold each rule's own declared state (see `optlab.rules`), so every
combination runs inside `in_eigenbasis` / `in_subspace` and under the state
wrappers unchanged, whatever number of trees a rule keeps.

`scale_by_exadam` and `scale_by_fadam` couple the two moments more tightly
than an order can express; they are their own primitives on the same state.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
# Shared helpers live in optlab/_src; the public ones (`safe_square`, `bias_correction`,
# `bound_gradient`, `tree_zeros_like`) are re-exported here.
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import (bias_correction, bound_gradient, safe_div, safe_square, tree_ema,
                                  tree_ema_sq)
from optlab._src.tree import cast_like, statistics_zeros_like, tree_zeros_like
from optlab.primitives.basis import COUNT, NESTED, declare_state
from optlab.rules import MomentumState, SecondMomentState, ema, ema_sq, lion_interp

__all__ = ["MomentsState", "scale_by_moments", "scale_by_adam", "scale_by_lion_momentum",
    "bound_gradient", "scale_by_adopt", "scale_by_exadam", "scale_by_fadam",
    "ademamix_alpha_warmup", "ademamix_b3_warmup"]


# ------------------------------------------------------------------ combination
@declare_state(count=COUNT, first=NESTED, second=NESTED)
class MomentsState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  first: Any        # the first-moment rule's state (e.g. rules.MomentumState); () when unused
  second: Any       # the second-moment rule's state (e.g. rules.SecondMomentState); () when unused


_ORDERS = ("adam", "laprop", "adopt")


def _check_rule(name: str, rule: Any, needs_scale: bool = False) -> None:
  if rule is None:
    return
  if isinstance(rule, optax.GradientTransformation) or not (
      hasattr(rule, "init") and hasattr(rule, "update")):
    raise TypeError(f"optlab.scale_by_moments: {name} must be a moment rule from "
                    f"optlab.rules (with init and update), got {rule!r}")
  if needs_scale and not hasattr(rule, "scale"):
    raise ValueError(f"optlab.scale_by_moments: order='adopt' needs a {name} rule with a "
                     f"scale() method; {rule!r} has none")


def scale_by_moments(first: Optional[Any], second: Optional[Any], *, eps: Any = 1e-8,
                     order: str = "adam", clip_value_fn: Optional[Callable] = None
                     ) -> optax.GradientTransformationExtraArgs:
  """Adaptive scaling from a first- and a second-moment rule (`optlab.rules`).

  ``order="adam"``:   u = first(g) / (second(g) + eps).
  ``order="laprop"``: u = first(g / (second(g) + eps)) -- momentum of the
  normalised gradient (LaProp, arXiv:2002.04839).
  ``order="adopt"``:  u = first(clip(g / max(second_{t-1}, eps))), where
  second_{t-1} is the scale *before* this step's gradient is added and clip
  bounds each entry by ``clip_value_fn(t - 1)`` (when given). The first step
  only initialises the second moment and returns zeros (ADOPT,
  arXiv:2411.02853).

  Either rule may be None (pure momentum, or RMSProp-like scaling). The state
  is `MomentsState(count, first, second)`, holding each rule's own declared
  state, so every combination runs inside `in_eigenbasis` / `in_subspace`.
  A zero denominator yields a zero update, never NaN; a NaN gradient gives a
  NaN update. With a second rule, both rules see the gradient through
  `bound_gradient` (a no-op for ordinary values); the second rule always sees
  it before the first rule or the normalisation acts on it.

  Args:
    first: the first-moment rule (``rules.ema(b1)``, ...), or None for the raw
      gradient.
    second: the second-moment rule (``rules.ema_sq(b2)``, ...), or None for no
      scaling.
    eps: added to the second rule's scale in the denominator, >= 0.
    order: ``"adam"``, ``"laprop"`` or ``"adopt"``, as above.
    clip_value_fn: for ``order="adopt"``, the 0-based step -> the clip bound of
      the normalised gradient; None does not clip.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `MomentsState`.
  """
  V.check_choice("scale_by_moments", "order", order, _ORDERS)
  V.check_nonneg("scale_by_moments", "eps", eps)
  _check_rule("first", first)
  _check_rule("second", second, needs_scale=order == "adopt")
  if clip_value_fn is not None and order != "adopt":
    raise ValueError("optlab.scale_by_moments: clip_value_fn is only used with order='adopt'")

  def init(params):
    return MomentsState(jnp.zeros([], jnp.int32),
                        first.init(params) if first is not None else (),
                        second.init(params) if second is not None else ())

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    if second is not None:
      updates = bound_gradient(updates)
    g, s1, s2 = updates, state.first, state.second
    # what the second rule tracks: the raw gradient, or e.g. Adan's g + b2 (g - g_prev)
    tracked = first.second_input(s1, g, count) if hasattr(first, "second_input") else g

    def normalise(x, s2, s1):  # the second moment always sees the raw gradient
      if second is None:
        return s2, x
      s2, scale = second.update(s2, tracked, count, s1)
      return s2, jax.tree.map(lambda y, s: safe_div(y, s + eps), x, scale)

    if order == "adam":
      if first is not None:
        s1, g = first.update(s1, g, count)
      s2, out = normalise(g, s2, s1)
    elif order == "laprop":
      s2, out = normalise(g, s2, s1)
      if first is not None:
        s1, out = first.update(s1, out, count)
    else:
      out, s1, s2 = _adopt_step(first, second, g, tracked, s1, s2, count, eps, clip_value_fn)
    return cast_like(out, updates), MomentsState(count, s1, s2)

  return optax.GradientTransformationExtraArgs(init, update)


def _adopt_step(first, second, g, tracked, s1, s2, count, eps, clip_value_fn):
  """ADOPT's order: normalise by the previous second moment, clip, then momentum.

  On the first step the normalised gradient is zeroed, so a zero-initialised
  first moment stays zero (a scalar select, cheaper than masking the state).
  """
  first_step = count == 1
  x = g
  if second is not None:
    prev = second.scale(s2, count - 1)
    x = jax.tree.map(lambda y, s: safe_div(y, jnp.maximum(s, eps)), g, prev)
    s2, _ = second.update(s2, tracked, count, s1)
  if clip_value_fn is not None:
    bound = clip_value_fn(count - 1)
    x = jax.tree.map(lambda y: jnp.clip(y, -bound, bound), x)
  x = jax.tree.map(lambda y: jnp.where(first_step, jnp.zeros_like(y), y), x)
  out = x
  if first is not None:
    s1, out = first.update(s1, x, jnp.maximum(count - 1, 1))
  out = jax.tree.map(lambda y: jnp.where(first_step, jnp.zeros_like(y), y), out)
  return out, s1, s2


def scale_by_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, eps_root: Any = 0.0,
                  mu_dtype: Any = None, *, nesterov: bool = False,
                  eps_before_debias: bool = False):
  """Adam's scaling, m_hat / (sqrt(v_hat + eps_root) + eps) (arXiv:1412.6980).

  With ``eps_before_debias`` eps is added to sqrt(v + eps_root) before the
  bias correction, m_hat / ((sqrt(v + eps_root) + eps) / sqrt(1 - b2^t)), as
  the HF-transformers AdamW (``denom = sqrt(v) + eps``, step size
  ``lr * sqrt(1 - b2^t) / (1 - b1^t)``) that several official codes build on;
  the default is the paper's, torch.optim's and optax's form.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to the second moment inside the root, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    nesterov: use the Nesterov look-ahead first moment (NAdam).
    eps_before_debias: add eps before the bias correction, as above.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (`scale_by_moments` of
    ``rules.ema`` and ``rules.ema_sq``).
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
  """Lion's update direction, sign(b1 m + (1 - b1) g) (arXiv:2302.06675).

  Args:
    b1: the interpolation between momentum and gradient in the sign, in [0, 1).
    b2: decay of the momentum m, in [0, 1).
    mu_dtype: storage dtype of m; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformation``: `scale_by_moments` of
    ``rules.lion_interp`` followed by `scale_by_sign`.
  """
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

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: floor of the root of the previous second moment, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    nesterov: use the Nesterov look-ahead first moment.
    use_clipping: clip the normalised gradient; False does not.
    clip_value_fn: the 0-based step -> the clip bound; None is ``step ** 0.25``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `MomentsState`.
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
  params (`statistics_dtype`: v of a 1e-4 gradient is 1e-11).
  """
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("scale_by_exadam", name, value)
  V.check_nonneg("scale_by_exadam", "eps", eps)

  def init(params):
    zeros = lambda: statistics_zeros_like(params)
    return MomentsState(jnp.zeros([], jnp.int32), MomentumState(zeros()),
                        SecondMomentState(zeros()))

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    wide = jax.tree.map(lambda g: g.astype(accumulation_dtype(g.dtype)), updates)
    mu, nu = tree_ema(state.first.mu, wide, b1), tree_ema_sq(state.second.nu, wide, b2)
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

    return jax.tree.map(leaf, updates, mu, nu), MomentsState(
        count, MomentumState(mu), SecondMomentState(nu))

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
    s2, f_p = second.update(state.second, updates, count)

    def denominator(s, g):
      e = eps * jnp.minimum(1.0, _rms(g)) if adaptive_eps else eps
      return s + e

    den = jax.tree.map(denominator, f_p, updates)
    nat = jax.tree.map(lambda g, d: _clip_rms(safe_div(g, d), clip), updates, den)
    s1, m = first.update(state.first, nat, count)
    decay = jax.tree.map(lambda w, d: _clip_rms(safe_div(w, d), clip), params, den)
    if mask is not None:
      keep = mask(params) if callable(mask) else mask
      decay = jax.tree.map(lambda k, w: jnp.where(k, w, jnp.zeros_like(w)), keep, decay)
    out = jax.tree.map(lambda a, w: a + weight_decay * w, m, decay)
    return cast_like(out, updates), MomentsState(count, s1, s2)

  return optax.GradientTransformationExtraArgs(init, update)
