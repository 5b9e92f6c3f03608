"""Lion and the methods that compare the update with the raw gradient or the weights.

Lion, the cautious optimizers, Grams, MARS, SPAM and AdamP / SGDP. The
gradient-aware pieces are wrappers (`cautious`, `with_grams`,
`with_radial_projection`, `clip_spikes`, `with_momentum_reset`) around the
shared moment primitives, and MARS is a pre-transform ahead of them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.clipping import clip_spikes, with_momentum_reset
from optlab.primitives.decay import add_decayed_weights, add_decayed_weights_after_step
from optlab.primitives.masks import (cautious, check_channel_axis, with_grams,
                                     with_radial_projection)
from optlab.primitives.moments import scale_by_adam, scale_by_lion_momentum, scale_by_moments
from optlab.rules import ema, ema_sq, heavy_ball, nesterov_ema
from optlab.primitives.normalize import scale_by_sign
from optlab.primitives.routing import route
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.primitives.variance_reduction import add_mars_correction

__all__ = ["lion", "cautious_adamw", "cautious_lion", "grams", "mars_adamw", "mars_lion",
           "spam", "adamp", "sgdp"]


def _check(where: str, learning_rate: Any, **decays: Any) -> None:
  V.check_learning_rate(where, learning_rate)
  for name, value in decays.items():
    V.check_decay(where, name, value)


# ------------------------------------------------------------------------ Lion
def lion(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.99, mu_dtype: Any = None,
         weight_decay: Any = 1e-3, mask: Any = None):
  """Lion: "Symbolic Discovery of Optimization Algorithms" (arXiv:2302.06675).

  Lion steps along the sign of an interpolation between the momentum and the
  gradient, then refreshes the momentum with a second rate::

    u = -lr * (sign(b1 m + (1 - b1) g) + weight_decay * p)
    m <- b2 m + (1 - b2) g

  Matches ``optax.lion``, including its default ``weight_decay=1e-3`` (the
  paper's code defaults to 0).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: weight of the momentum in the interpolation whose sign is taken, in
      [0, 1).
    b2: decay of the momentum, in [0, 1).
    mu_dtype: dtype of the momentum accumulator; None keeps the params' dtype.
    weight_decay: decoupled weight decay, multiplied by the learning rate;
      >= 0. Default 1e-3, as optax.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args.

  References:
    "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675
    (https://arxiv.org/abs/2302.06675).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.lion(1e-3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool(jnp.allclose(updates["w"], -1e-3 * (1.0 + 1e-3)))  # sign + decay
    True
  """
  _check("lion", learning_rate)
  V.check_nonneg("lion", "weight_decay", weight_decay)
  return recipe_chain("lion", scale_by_lion_momentum(b1, b2, mu_dtype),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


# ------------------------------------------------------------------- cautious
def cautious_adamw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
                   mu_dtype: Any = None, weight_decay: Any = 0.0, mask: Any = None, *,
                   eps_before_debias: bool = False):
  """C-AdamW: "Cautious Optimizers: Improving Training with One Line of Code" (arXiv:2411.16085).

  AdamW whose update is kept only where it agrees in sign with the current
  gradient, rescaled per tensor so that its average size is kept::

    u = m_hat / (sqrt(v_hat) + eps)          (Adam's direction)
    phi = 1[u * g > 0]
    update = -lr * (u * phi / max(mean(phi), 1e-3) + weight_decay * p)

  the mean taken per tensor. Defaults are the official code's (``eps=1e-6``,
  no decay).

  Follows the official kyleliang919/C-Optim ``c_adamw.py`` where it differs
  from the paper's algorithm: strict mask (``> 0``), ``mask / max(mean,
  1e-3)`` instead of the paper's ``n / (nnz + 1)``, decay from the weights
  before the step (AdamW's order). The official file has two paths that place
  eps differently: its default ``foreach=True`` path (since Aug 2025) adds eps
  to ``sqrt(v_hat)``, as the paper and optax do -- the default here; its
  ``foreach=False`` loop (the only path in the code released with the paper,
  copied from HF-transformers' AdamW) adds eps to ``sqrt(v)`` before the bias
  correction, an effective ``eps / sqrt(1 - b2^t)``:
  ``eps_before_debias=True``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator ``sqrt(v_hat)``, >= 0.
    mu_dtype: dtype of the momentum accumulator; None keeps the params' dtype.
    weight_decay: decoupled weight decay, multiplied by the learning rate;
      >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    eps_before_debias: keyword-only; True adds eps to ``sqrt(v)`` before the
      bias correction, as the official ``foreach=False`` loop (see above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args.

  References:
    "Cautious Optimizers: Improving Training with One Line of Code",
    arXiv:2411.16085 (https://arxiv.org/abs/2411.16085).

    Official code: kyleliang919/C-Optim, ``c_adamw.py``.

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.cautious_adamw(1e-3)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([[0.5, -0.5], [0.5, -0.5], [0.5, -0.5]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool(jnp.all(updates["w"] * grads["w"] < 0))  # every entry descends
    True
  """
  _check("cautious_adamw", learning_rate)
  V.check_nonneg("cautious_adamw", "eps", eps)
  adam = scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, eps_before_debias=eps_before_debias)
  return recipe_chain("cautious_adamw", cautious(adam, "mean"),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def cautious_lion(learning_rate: Any, b1: Any = 0.95, b2: Any = 0.98, mu_dtype: Any = None,
                  weight_decay: Any = 0.0, mask: Any = None):
  """C-Lion: "Cautious Optimizers: Improving Training with One Line of Code" (arXiv:2411.16085).

  Lion whose update is kept only where it agrees in sign with the current
  gradient::

    u = sign(b1 m + (1 - b1) g)
    phi = 1[u * g > 0]
    update = -lr * (u * phi * n / (sum(phi) + 1) + weight_decay * p)
    m <- b2 m + (1 - b2) g

  with ``n`` the tensor's size. Defaults are the official ``c_lion.py``'s
  (``b1=0.95``, ``b2=0.98``, no decay), which also gives the
  ``n / (nnz + 1)`` rescaling used here (C-AdamW's code uses the mean
  instead).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: weight of the momentum in the interpolation whose sign is taken, in
      [0, 1).
    b2: decay of the momentum, in [0, 1).
    mu_dtype: dtype of the momentum accumulator; None keeps the params' dtype.
    weight_decay: decoupled weight decay, multiplied by the learning rate;
      >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args.

  References:
    "Cautious Optimizers: Improving Training with One Line of Code",
    arXiv:2411.16085 (https://arxiv.org/abs/2411.16085).

    Official code: kyleliang919/C-Optim, ``c_lion.py``.
  """
  _check("cautious_lion", learning_rate)
  V.check_nonneg("cautious_lion", "weight_decay", weight_decay)
  return recipe_chain("cautious_lion",
                      cautious(scale_by_lion_momentum(b1, b2, mu_dtype), "count"),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def grams(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
          mu_dtype: Any = None, weight_decay: Any = 0.0, mask: Any = None):
  """Grams-Adam: "Grams: Gradient Descent with Adaptive Momentum Scaling" (arXiv:2412.17107).

  Adam's magnitude with the current gradient's sign::

    u = sign(g) * |m_hat| / ((sqrt(v) + eps) / sqrt(1 - b2^t))
    update = -lr * (u + weight_decay * p)

  Defaults are the official code's (``eps=1e-6``, no decay). Follows the
  official Gunale0926/Grams ``grams.py`` (built on HF-transformers' AdamW):
  eps is added to ``sqrt(v)`` before the bias correction (its
  ``denom = sqrt(v) + eps`` with step size
  ``lr * sqrt(1 - b2^t) / (1 - b1^t)``), where the paper's algorithm adds it
  to ``sqrt(v_hat)``; and the decay uses the weights before the step. Its
  ``correct_bias=False`` option is not offered.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0.
    mu_dtype: dtype of the momentum accumulator; None keeps the params' dtype.
    weight_decay: decoupled weight decay, multiplied by the learning rate;
      >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args.

  References:
    "Grams: Gradient Descent with Adaptive Momentum Scaling",
    arXiv:2412.17107 (https://arxiv.org/abs/2412.17107).

    Official code: Gunale0926/Grams, ``grams.py``.
  """
  _check("grams", learning_rate)
  V.check_nonneg("grams", "eps", eps)
  adam = scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, eps_before_debias=True)
  return recipe_chain("grams", with_grams(adam), add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


# ----------------------------------------------------------------------- MARS
def _matrix_label(leaf):
  return "matrix" if jnp.ndim(leaf) == 2 else "other"


def mars_chain(where, learning_rate, matrix_rule, b1, gamma, max_norm, weight_decay, mask,
               optimize_1d, lr_1d_factor, b1_1d, b2_1d, eps, weight_decay_1d):
  """The MARS chain (arXiv:2411.10438) around `matrix_rule`, shared by mars_adamw,
  mars_lion and `recipes.matrix.mars_shampoo` (not exported: a recipe builder)."""
  _check(where, learning_rate, b1=b1, b1_1d=b1_1d, b2_1d=b2_1d)
  for name, value in (("eps", eps), ("weight_decay", weight_decay),
                      ("weight_decay_1d", weight_decay_1d), ("lr_1d_factor", lr_1d_factor)):
    V.check_nonneg(where, name, value)
  correction = add_mars_correction(b1, gamma, max_norm, matrices_only=not optimize_1d)
  if optimize_1d:
    body = optax.chain(*matrix_rule, add_decayed_weights(weight_decay, mask))
  else:  # the official code trains every non-2-d tensor with plain AdamW
    # `route`: each branch keeps only its own state (MARS-Lion's matrices one buffer)
    body = route({
        "matrix": optax.chain(*matrix_rule, add_decayed_weights(weight_decay, mask)),
        "other": optax.chain(scale_by_adam(b1_1d, b2_1d, eps),
                             add_decayed_weights(weight_decay_1d, mask),
                             optax.scale(lr_1d_factor)),
    }, lambda tree: jax.tree.map(_matrix_label, tree))
  return recipe_chain(where, correction, body, scale_by_learning_rate(learning_rate))


def mars_adamw(learning_rate: Any, b1: Any = 0.95, b2: Any = 0.99, eps: Any = 1e-8,
               weight_decay: Any = 0.0, mask: Any = None, gamma: Any = 0.025,
               max_norm: Any = 1.0, *, optimize_1d: bool = False, lr_1d_factor: Any = 1.0,
               b1_1d: Any = 0.9, b2_1d: Any = 0.95, weight_decay_1d: Any = 0.1):
  """MARS-AdamW: "MARS: Unleashing the Power of Variance Reduction for Training Large
  Models" (arXiv:2411.10438), approximate form, as in the official AGI-Arena/MARS code.

  Adam on a variance-reduced gradient ``c``, with ``m`` and ``v`` the EMAs of
  ``c`` and ``c^2``::

    c = g + gamma * b1 / (1 - b1) * (g - g_prev)   (clipped to norm max_norm per tensor)
    u = m_hat / (sqrt(v_hat) + eps)
    update = -lr * (u + weight_decay * p)

  eps is added after the bias correction, as the official ``update_fn``; the
  weights are decayed before the step. Defaults are the official ``MARS``
  class's. As in the official code with ``optimize_1d=False``, every tensor
  that is not 2-d (biases, norms, scalars, also conv kernels) is trained by
  plain AdamW with ``(b1_1d, b2_1d)``, ``weight_decay_1d`` and the learning
  rate times ``lr_1d_factor`` (the official ``lr_1d / lr``, so it follows
  the same schedule); the previous gradient is kept for them but unused.
  amsgrad and the exact (two-gradient) form are not provided.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the first moment, in [0, 1); also scales the correction
      by ``b1 / (1 - b1)``.
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)`` (here and in the non-2-d AdamW), >= 0.
    weight_decay: decoupled weight decay of the tensors MARS trains,
      multiplied by the learning rate, applied to the weights before the
      step; >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    gamma: strength of the variance-reduction correction, >= 0 (0 gives
      back the gradient, clipped).
    max_norm: per-tensor norm to which the corrected gradient is clipped,
      > 0; None disables the clipping.
    optimize_1d: keyword-only; True applies MARS to every tensor. False
      (default, as the official code) applies it to the 2-d tensors only and
      trains all others (biases, norms, scalars, also conv kernels) by plain
      AdamW with ``b1_1d``, ``b2_1d``, ``eps`` and ``weight_decay_1d``.
    lr_1d_factor: keyword-only; the learning rate of the non-2-d tensors is
      ``learning_rate * lr_1d_factor`` (the official ``lr_1d / lr``, so it
      follows the same schedule); >= 0. Unused with ``optimize_1d=True``.
    b1_1d: keyword-only; first-moment decay of the AdamW for non-2-d
      tensors, in [0, 1).
    b2_1d: keyword-only; second-moment decay of the AdamW for non-2-d
      tensors, in [0, 1).
    weight_decay_1d: keyword-only; decoupled weight decay of the non-2-d
      tensors' AdamW, multiplied by their learning rate; >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args.

  References:
    "MARS: Unleashing the Power of Variance Reduction for Training Large
    Models", arXiv:2411.10438 (https://arxiv.org/abs/2411.10438).

    Official code: AGI-Arena/MARS.
  """
  V.check_decay("mars_adamw", "b2", b2)
  return mars_chain("mars_adamw", learning_rate, (scale_by_adam(b1, b2, eps),), b1, gamma,
                    max_norm, weight_decay, mask, optimize_1d, lr_1d_factor, b1_1d, b2_1d, eps,
                    weight_decay_1d)


def mars_lion(learning_rate: Any, b1: Any = 0.95, weight_decay: Any = 0.0, mask: Any = None,
              gamma: Any = 0.025, max_norm: Any = 1.0, *, optimize_1d: bool = False,
              lr_1d_factor: Any = 1.0, b1_1d: Any = 0.9, b2_1d: Any = 0.95, eps: Any = 1e-8,
              weight_decay_1d: Any = 0.1):
  """MARS-Lion: "MARS: Unleashing the Power of Variance Reduction for Training Large
  Models" (arXiv:2411.10438), approximate form, as in the official AGI-Arena/MARS code.

  The sign of the momentum of a variance-reduced gradient ``c``::

    c = g + gamma * b1 / (1 - b1) * (g - g_prev)   (clipped to norm max_norm per tensor)
    m <- b1 m + (1 - b1) c
    update = -lr * (sign(m) + weight_decay * p)

  Unlike Lion, the official MARS-Lion takes the sign of the updated momentum
  itself (one rate, ``b1``; the official ``b2`` is unused, so there is none
  here). The other arguments are as in `mars_adamw`; ``eps`` only serves the
  AdamW that trains the non-2-d tensors when ``optimize_1d=False``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the momentum, in [0, 1); also scales the correction by
      ``b1 / (1 - b1)``.
    weight_decay: decoupled weight decay of the tensors MARS trains,
      multiplied by the learning rate, applied to the weights before the
      step; >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    gamma: strength of the variance-reduction correction, >= 0 (0 gives
      back the gradient, clipped).
    max_norm: per-tensor norm to which the corrected gradient is clipped,
      > 0; None disables the clipping.
    optimize_1d: keyword-only; True applies MARS to every tensor. False
      (default, as the official code) applies it to the 2-d tensors only and
      trains all others (biases, norms, scalars, also conv kernels) by plain
      AdamW with ``b1_1d``, ``b2_1d``, ``eps`` and ``weight_decay_1d``.
    lr_1d_factor: keyword-only; the learning rate of the non-2-d tensors is
      ``learning_rate * lr_1d_factor`` (the official ``lr_1d / lr``, so it
      follows the same schedule); >= 0. Unused with ``optimize_1d=True``.
    b1_1d: keyword-only; first-moment decay of the AdamW for non-2-d
      tensors, in [0, 1).
    b2_1d: keyword-only; second-moment decay of the AdamW for non-2-d
      tensors, in [0, 1).
    eps: keyword-only; eps of the non-2-d tensors' AdamW, >= 0.
    weight_decay_1d: keyword-only; decoupled weight decay of the non-2-d
      tensors' AdamW, multiplied by their learning rate; >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args.

  References:
    "MARS: Unleashing the Power of Variance Reduction for Training Large
    Models", arXiv:2411.10438 (https://arxiv.org/abs/2411.10438).

    Official code: AGI-Arena/MARS.
  """
  rule = (scale_by_moments(ema(b1, debias=False), None), scale_by_sign())
  return mars_chain("mars_lion", learning_rate, rule, b1, gamma, max_norm, weight_decay, mask,
                    optimize_1d, lr_1d_factor, b1_1d, b2_1d, eps, weight_decay_1d)


# ----------------------------------------------------------------------- SPAM
def spam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
         weight_decay: Any = 0.0, mask: Any = None, threshold: Any = 5000.0,
         delta_t: int = 500, warmup_steps: int = 150, clip_delay: int = 20):
  """SPAM: "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training"
  (arXiv:2501.06842), as in the official TianjinYellow/SPAM-Optimizer code
  (``galore_torch/SPAM.py``, its ``AdamW`` class).

  Adam with periodic momentum resets, spike clipping and a warm-up after
  each reset:

  * every ``delta_t`` steps (``t % delta_t == 0``) Adam's ``m`` and ``v``
    are reset to zero (the step count, hence the bias correction, carries
    on);
  * gradient entries with ``g^2 > threshold * v`` are clipped to
    ``sign(g) sqrt(threshold * v)``, except in the first ``clip_delay`` steps
    after a reset;
  * after each reset Adam's step is scaled by a cosine warm-up from 0.01 back
    to 1 over ``warmup_steps`` steps.

  The step, then the decay on the updated weights::

    p <- p - lr * warmup * m_hat / ((sqrt(v) + eps) / sqrt(1 - b2^t))
    p <- p - lr * weight_decay * p

  Follows the official code (built on HF-transformers' AdamW) where the
  paper's Adam differs: eps is added to ``sqrt(v)`` before the bias
  correction (``denom = sqrt(v) + eps``, step size
  ``lr * sqrt(1 - b2^t) / (1 - b1^t)``), not to ``sqrt(v_hat)``; the decay
  is applied after the step, to the updated weights. Its sparse-momentum
  option (``density``) is not provided. Defaults are the official ones.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0 (official
      default 1e-6).
    weight_decay: decay of the updated weights, multiplied by the learning
      rate; >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    threshold: theta, the spike threshold on ``g^2 / v``; >= 0, 0 disables
      the clipping.
    delta_t: Delta T (official ``DeltaT``), the reset period in steps; an
      int >= 0, 0 disables the resets.
    warmup_steps: N, the length of the cosine warm-up after each reset; an
      int >= 0.
    clip_delay: steps after each reset without spike clipping (official
      ``grad_accu_steps``); an int >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args.

  References:
    "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training",
    arXiv:2501.06842 (https://arxiv.org/abs/2501.06842).

    Official code: TianjinYellow/SPAM-Optimizer, ``galore_torch/SPAM.py``.
  """
  _check("spam", learning_rate)
  V.check_nonneg("spam", "eps", eps)
  V.check_nonneg("spam", "weight_decay", weight_decay)
  V.check_range("spam", "delta_t", delta_t, 0)
  V.check_range("spam", "clip_delay", clip_delay, 0)
  adam = clip_spikes(scale_by_adam(b1, b2, eps, eps_before_debias=True), threshold,
                     delay=clip_delay, period=delta_t)
  return recipe_chain("spam", with_momentum_reset(adam, delta_t, warmup_steps),
                      scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, learning_rate, mask))


# --------------------------------------------------------------- AdamP / SGDP
def adamp(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          weight_decay: Any = 0.0, delta: Any = 0.1, wd_ratio: Any = 0.1,
          *, nesterov: bool = False, channel_axis: int = -1):
  """AdamP: "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
  Scale-invariant Weights" (arXiv:2006.08217), as in the official clovaai/AdamP code.

  Adam whose update loses its radial part on weights that look
  scale-invariant::

    u = m_hat / (sqrt(v_hat) + eps)
    update = -lr * (u + weight_decay * ratio * p)

  With ``nesterov``, ``(b1 m + (1 - b1) g) / (1 - b1^t)`` replaces
  ``m_hat``. For tensors whose gradient is nearly orthogonal to the weights
  (``|cos| < delta / sqrt(dim)``, per channel or per tensor) the radial part
  of ``u`` is removed and the decay is scaled by ``ratio = wd_ratio``
  (otherwise ``ratio = 1``). Defaults are the official ones. The decay is
  part of the projection wrapper, so there is no ``mask`` (use
  ``optax.partition``).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``; also bounds the norms in the projection,
      >= 0.
    weight_decay: decoupled weight decay, multiplied by the learning rate
      (and by ``wd_ratio`` on projected tensors); >= 0.
    delta: threshold of the scale-invariance test
      ``|cos(g, p)| < delta / sqrt(dim)``; >= 0.
    wd_ratio: factor of the weight decay on projected tensors; >= 0.
    nesterov: keyword-only; True uses the Nesterov form of the first moment.
    channel_axis: keyword-only; the axis of each weight that indexes output
      channels, for the per-channel cosine, a Python int: -1 (default) for
      JAX / flax kernels, Dense ``(in, out)`` and Conv ``(h, w, in, out)``;
      the official PyTorch code's ``(out, in, ...)`` weights are
      ``channel_axis=0``. With ``optax.inject_hyperparams`` pass it in
      ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the projection and the decay) and no extra args.

  References:
    "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", arXiv:2006.08217
    (https://arxiv.org/abs/2006.08217).

    Official code: clovaai/AdamP.
  """
  _check("adamp", learning_rate)
  V.check_nonneg("adamp", "eps", eps)
  V.check_nonneg("adamp", "weight_decay", weight_decay)
  check_channel_axis("adamp", channel_axis)
  first = nesterov_ema(b1) if nesterov else ema(b1)
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("adamp", name, value)
  inner = scale_by_moments(first, ema_sq(b2), eps=eps)
  return recipe_chain("adamp", with_radial_projection(inner, delta, wd_ratio, weight_decay, eps,
                                                      channel_axis),
                      scale_by_learning_rate(learning_rate))


def sgdp(learning_rate: Any, momentum: Any = 0.0, dampening: Any = 0.0,
         weight_decay: Any = 0.0, *, nesterov: bool = False, eps: Any = 1e-8, delta: Any = 0.1,
         wd_ratio: Any = 0.1, channel_axis: int = -1):
  """SGDP: "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
  Scale-invariant Weights" (arXiv:2006.08217), as in the official clovaai/AdamP code.

  SGD with momentum and AdamP's projection (see `adamp`) of its direction::

    buf <- momentum * buf + (1 - dampening) g
    d = buf                   (with nesterov: d = g + momentum * buf)
    update = -lr * (proj(d) + weight_decay * ratio / (1 - momentum) * p)

  The official code divides the decay by ``1 - momentum``. Defaults are the
  official ones. As in the official code (and unlike ``torch.optim.SGD``),
  nesterov with dampening is allowed; the Nesterov term uses the raw
  gradient.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    momentum: the heavy-ball momentum, in [0, 1).
    dampening: the gradient's weight is ``1 - dampening``, in [0, 1].
    weight_decay: decoupled weight decay, multiplied by the learning rate,
      divided by ``1 - momentum`` (and multiplied by ``wd_ratio`` on
      projected tensors); >= 0.
    nesterov: keyword-only; True uses the Nesterov direction.
    eps: keyword-only; bounds the norms in the projection, >= 0.
    delta: keyword-only; threshold of the scale-invariance test
      ``|cos(g, p)| < delta / sqrt(dim)``; >= 0.
    wd_ratio: keyword-only; factor of the weight decay on projected tensors; >= 0.
    channel_axis: keyword-only; the axis of each weight that indexes output
      channels, for the per-channel cosine, a Python int: -1 (default) for
      JAX / flax kernels, Dense ``(in, out)`` and Conv ``(h, w, in, out)``;
      the official PyTorch code's ``(out, in, ...)`` weights are
      ``channel_axis=0``. With ``optax.inject_hyperparams`` pass it in
      ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the projection and the decay) and no extra args.

  References:
    "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", arXiv:2006.08217
    (https://arxiv.org/abs/2006.08217).

    Official code: clovaai/AdamP.
  """
  _check("sgdp", learning_rate, momentum=momentum)
  V.check_range("sgdp", "dampening", dampening, 0.0, 1.0)
  V.check_nonneg("sgdp", "weight_decay", weight_decay)
  V.check_nonneg("sgdp", "eps", eps)
  check_channel_axis("sgdp", channel_axis)
  inner = scale_by_moments(heavy_ball(momentum, nesterov=nesterov, dampening=dampening), None)
  decay = weight_decay / (1.0 - momentum)
  return recipe_chain("sgdp", with_radial_projection(inner, delta, wd_ratio, decay, eps,
                                                     channel_axis),
                      scale_by_learning_rate(learning_rate))


_CAUTIOUS = "Cautious Optimizers: Improving Training with One Line of Code"
_MARS = "MARS: Unleashing the Power of Variance Reduction for Training Large Models"
_ADAMP = ("AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant "
          "Weights")
_ADAMP_AXIS = ("The per-channel cosine runs over output channels, the last axis of JAX / flax "
               "kernels (Dense (in, out), Conv (h, w, in, out)) by default; the official "
               "PyTorch code's axis 0 of (out, in, ...) weights is channel_axis=0.")
_HF_EPS = ("Official code (HF-transformers AdamW base) adds eps to sqrt(v) before the bias "
           "correction, i.e. an effective eps / sqrt(1 - b2^t); followed here (the paper adds "
           "it to sqrt(v_hat)).")

RECIPES = (
    Recipe("lion", lion, "sign", "Symbolic Discovery of Optimization Algorithms", "2302.06675",
           notes="Default weight_decay is optax's 1e-3 (the paper's code: 0)."),
    Recipe("cautious_adamw", cautious_adamw, "sign", _CAUTIOUS, "2411.16085",
           notes="Official c_adamw.py mask normalisation (1 / max(mean, 1e-3)). eps as its "
                 "default foreach path and the paper (after bias correction); "
                 "eps_before_debias=True gives its loop path (HF-transformers AdamW form)."),
    Recipe("cautious_lion", cautious_lion, "sign", _CAUTIOUS, "2411.16085",
           notes="Official c_lion.py mask normalisation (n / (nnz + 1)) and defaults."),
    Recipe("grams", grams, "sign", "Grams: Gradient Descent with Adaptive Momentum Scaling",
           "2412.17107", notes=_HF_EPS),
    Recipe("mars_adamw", mars_adamw, "sign", _MARS, "2411.10438",
           notes="Non-2-d tensors use AdamW (official optimize_1d=False)."),
    Recipe("mars_lion", mars_lion, "sign", _MARS, "2411.10438",
           notes="Non-2-d tensors use AdamW (official optimize_1d=False); no b2."),
    Recipe("spam", spam, "sign",
           "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", "2501.06842",
           notes=_HF_EPS + " Weight decay applied to the updated weights, after the step, "
                 "as the official code."),
    Recipe("adamp", adamp, "sign", _ADAMP, "2006.08217", static=("channel_axis",),
           notes=_ADAMP_AXIS),
    Recipe("sgdp", sgdp, "sign", _ADAMP, "2006.08217", static=("channel_axis",), notes=_ADAMP_AXIS),
)
