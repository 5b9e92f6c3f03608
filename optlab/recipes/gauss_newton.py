"""Curvature from beyond the gradient tree: AdaFisher (diagonal block-Kronecker
Fisher from layer statistics) and EGN (exact Gauss-Newton from per-example
output Jacobians, solved in batch space)."""

from __future__ import annotations

from typing import Any

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.gauss_newton import scale_by_gauss_newton, scale_by_kronecker_diagonal
from optlab.primitives.moments import scale_by_moments
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.rules import ema

__all__ = ["adafisher", "egn"]


def adafisher(learning_rate: Any = 1e-3, b1: Any = 0.9, gamma: Any = 0.8, damping: Any = 1e-3,
              weight_decay: Any = 0.0, update_interval: int = 100, *, mask: Any = None,
              decouple_decay: bool = True):
  """AdaFisher / AdaFisherW: "AdaFisher: Adaptive Second Order Optimization via
  Fisher Information" (arXiv:2405.16397), as the official code
  (AtlasAnalyticsLab/AdaFisher, optimizers/AdaFisher.py).

  Adam's step with the square root of the second moment replaced by a diagonal
  block-Kronecker Fisher: for a layer with statistics, its joint
  ``[kernel; bias]`` update is divided entry-wise by ``F = h sᵀ + damping``,
  with h and s the EMAs of the min-max normalised diagonals of its input factor
  ``A = E[a aᵀ]`` and its output-gradient factor ``G = E[g gᵀ]``
  (`scale_by_kronecker_diagonal`)::

    m <- b1 m + (1 - b1) g
    u = -lr * (m / (1 - b1^t) / F + weight_decay * p)     (AdaFisherW, default)
    u = -lr * m' / (1 - b1^t) / F,  m' the EMA of g + weight_decay * p
                                                         (AdaFisher, decouple_decay=False)

  No square root, as the official step divides by F itself. Defaults are the
  official optimizer's (lr 1e-3, beta 0.9, gamma 0.8, Lambda 1e-3, TCov 100,
  weight_decay 0).

  Leaves without statistics (1-D leaves, embeddings, layers that were not
  captured) take the official code's rule for parameters it has no Fisher for:
  F = 1, i.e. bias-corrected momentum SGD, ``u = -lr * m / (1 - b1^t)``. Note
  that F of a captured layer stays close to `damping` (see below), so such
  leaves move about ``1 / damping`` times less than the layers, as in the
  official optimizer.

  Differences from the paper, following the code: the factor diagonals are
  min-max normalised *before* the EMA, and the EMA is the code's
  ``h <- (gamma / 10) h + (gamma / 100) minmax(diag A)`` (from h = 1), which
  keeps h and s near 0.0087 times the normalised diagonals, so F lies within
  about [damping, damping + 7.6e-5] after the first steps. Factors are
  refreshed on steps 1, k + 1, ... (k = update_interval), as the code's hooks
  at ``steps % TCov == 0``, before that step's division. BatchNorm/LayerNorm
  scales, which the code gives factors of their own, take the fallback: a
  `optlab.LayerStats` describes dense (and patch-flattened conv) layers.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the first moment ``m`` (the official beta), in [0, 1).
    gamma: the factor EMA's parameter, in [0, 1).
    damping: the Tikhonov term added to the Kronecker product (the official
      Lambda), > 0.
    weight_decay: weight decay, >= 0: decoupled and multiplied by the learning
      rate (AdaFisherW) or, with ``decouple_decay=False``, added to the gradient
      (AdaFisher).
    update_interval: refresh the factors every this many steps (the official
      TCov), an int >= 1.
    mask: the kernels that may get factors (a bool tree or a function of the
      params returning one); None: every leaf with ndim >= 2 that
      ``layer_stats`` covers.
    decouple_decay: True for AdaFisherW's decoupled weight decay, False for
      AdaFisher's coupled one.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` when weight_decay > 0 and the extra arg ``layer_stats``: a
    mapping from each layer's kernel path (``jax.tree_util.keystr``, e.g.
    ``"['w1']"``) to an `optlab.LayerStats` of its inputs and output gradients,
    as `optlab.capture_layer_stats` returns it.

  References:
    "AdaFisher: Adaptive Second Order Optimization via Fisher Information",
    arXiv:2405.16397 (https://arxiv.org/abs/2405.16397).
    Official code: AtlasAnalyticsLab/AdaFisher (AdaFisher, AdaFisherW).
  """
  V.check_learning_rate("adafisher", learning_rate)
  V.check_decay("adafisher", "b1", b1)
  V.check_nonneg("adafisher", "weight_decay", weight_decay)
  decay = add_decayed_weights(weight_decay)
  return recipe_chain(
      "adafisher", *(() if decouple_decay else (decay,)),
      scale_by_moments(ema(b1), None),
      scale_by_kronecker_diagonal(gamma, damping, update_interval, mask),
      *((decay,) if decouple_decay else ()),
      scale_by_learning_rate(learning_rate))


def egn(learning_rate: Any, regularizer: Any = 1.0, momentum: Any = 0.0, *,
        loss: str = "softmax_cross_entropy"):
  """EGN: "Exact Gauss-Newton Optimization for Training Deep Neural Networks"
  (arXiv:2405.14402), as the official code (cor3bit/somax, EGN).

  The Gauss-Newton direction of the mean loss over the n output rows of
  ``logits_fn``, with J their Jacobian and Q the loss Hessian with respect to
  them (`scale_by_gauss_newton`), then the official bias-corrected momentum::

    d = (JᵀQJ / n + regularizer I)⁻¹ g        (Woodbury: an (n c) x (n c) solve)
    v <- momentum v + (1 - momentum) d
    u = -lr * v / (1 - momentum^t)

  The solve uses only J, Q and the given g (the Duncan-Guttman/Woodbury form
  ``(g - Mᵀ (n λ I + M Mᵀ)⁻¹ M g) / λ`` with M = SᵀJ, Q = S Sᵀ), so g may come
  from another batch than ``logits_fn``, or be noisy or clipped; when g is the
  gradient of the same rows it equals the official ``Jᵀ (n λ I + Q J Jᵀ)⁻¹ r``.
  Defaults are the official solver's (regularizer 1, momentum 0; no learning
  rate default there either).

  Left out: the official Armijo line search (off by default there,
  ``line_search=False``; it needs loss evaluations, use an optax line search
  around this chain) and the adaptive regularization (declared there but
  disabled: it raises NotImplementedError). The learning rate is fixed or an
  optax schedule. Binary (one-logit) cross-entropy is softmax cross-entropy on
  two logits (0, z).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    regularizer: the Levenberg-Marquardt term ``λ`` added to the Gauss-Newton
      matrix of the mean loss, > 0.
    momentum: decay of the bias-corrected momentum of the direction, in [0, 1);
      0 uses the direction itself.
    loss: the loss whose Hessian with respect to the outputs is Q:
      ``"softmax_cross_entropy"`` (``logits_fn`` gives logits) or
      ``"squared_error"`` (``½‖f - y‖²``, ``logits_fn`` gives predictions; a
      residual function ``f - y`` has the same Jacobian and serves as well).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``logits_fn``: a function params -> the
    model's outputs on the current batch, shape (..., c) with one row per
    example (as sophia_g takes it).

  References:
    "Exact Gauss-Newton Optimization for Training Deep Neural Networks",
    arXiv:2405.14402 (https://arxiv.org/abs/2405.14402).
    Official code: cor3bit/somax (somax/gn/egn.py, EGN).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> x = jnp.arange(12.0).reshape(4, 3) / 10
    >>> logits = lambda p: x @ p["w"]
    >>> tx = optlab.egn(0.5)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5)}
    >>> updates, state = tx.update(grads, state, params, logits_fn=logits)
    >>> updates["w"].shape
    (3, 2)
  """
  V.check_learning_rate("egn", learning_rate)
  V.check_decay("egn", "momentum", momentum)
  return recipe_chain(
      "egn", scale_by_gauss_newton(regularizer, loss), scale_by_moments(ema(momentum), None),
      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("adafisher", adafisher, "second_order",
           "AdaFisher: Adaptive Second Order Optimization via Fisher Information", "2405.16397",
           needs_extra_args=("layer_stats",),
           notes="Official code (AdaFisherW by default): factor diagonals min-max normalised "
                 "before the code's EMA (gamma / 10 old, gamma / 100 new); leaves without "
                 "layer statistics take F = 1 (bias-corrected momentum SGD), as the official "
                 "ones_like fallback. Norm layers have no factors here. No optax version."),
    Recipe("egn", egn, "second_order",
           "Exact Gauss-Newton Optimization for Training Deep Neural Networks", "2405.14402",
           needs_extra_args=("logits_fn",),
           notes="Official EGN with constant step (no line search, no adaptive "
                 "regularization: off/disabled in the official code); the Woodbury form takes "
                 "the given gradient instead of residuals, so g need not be Jᵀ∇ℓ. The tests' "
                 "logits_fn makes JᵀQJ = I / 4 (tests/extras.py), and the reference solves "
                 "the dense p x p system. No optax version."),
)
