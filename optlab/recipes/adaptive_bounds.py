"""Adam variants that rectify or bound the per-coordinate step size: RAdam,
AdaBound, AMSBound and AdaMod."""

from __future__ import annotations

from typing import Any

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.step_size import (
    dynamic_bound, momental_bound, scale_by_bounded_step_size, scale_by_learning_rate,
    scale_by_radam)

__all__ = ["radam", "adabound", "amsbound", "adamod"]


def _weight_decay(weight_decay: Any, mask: Any) -> list:
  """add_decayed_weights, left out when the decay is the Python number 0 (then
  `update` needs no params, as in optax.radam). Arrays keep it even when 0, so
  that the chain has the same structure at init and at a traced update under
  optax.inject_hyperparams."""
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:
    return []
  return [add_decayed_weights(weight_decay, mask)]


def radam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, threshold: Any = 5.0, weight_decay: Any = 0.0, mask: Any = None,
          mu_dtype: Any = None, *, nesterov: bool = False):
  """RAdam: "On the Variance of the Adaptive Learning Rate and Beyond" (arXiv:1908.03265).

  With ``rho_inf = 2 / (1 - b2) - 1`` and the rectification r_t (see
  `radam_rectification`)::

    rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
    u = -lr * (r_t m_hat / (sqrt(v_hat + eps_root) + eps) + wd p)    while rho_t >= threshold
    u = -lr * (m_hat + wd p)                                         before that

  the second form being SGD with (debiased) momentum. Matches optax.radam,
  whose hyperparameters these are (plus weight_decay, mask and mu_dtype).

  Differences:

  * The paper rectifies while ``rho_t > 4``; the official code and optax while
    ``rho_t >= 5``. This follows optax: ``threshold=5`` with ``>=``.
  * eps is added to ``sqrt(v_hat)`` (paper, optax); the official code adds it
    to the un-debiased ``sqrt(v_t)``, i.e. uses ``eps / sqrt(1 - b2^t)`` here.
  * Before the threshold this takes the un-adapted step ``lr * m_hat`` (the
    paper's Algorithm 2, optax, and the first official release). The later
    official code has a ``degenerated_to_sgd`` switch whose default (False)
    skips those steps entirely, weight decay included; that option is not
    offered.
  * A threshold below 4 can select steps where r_t is undefined
    (``2 < rho_t < 4``): they give a zero update here, NaN in optax.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0.
    eps_root: added to ``v_hat`` inside the root, >= 0.
    threshold: the ``rho_t`` from which the rectified adaptive step is taken
      (compared with ``>=``); 5 as optax and the official code.
    weight_decay: the decoupled decay rate wd, >= 0, multiplied by the
      learning rate, as in the official code. The Python number 0 (the
      default) leaves the decay out of the chain.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    nesterov: use NAdam's look-ahead ``m_hat``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args; it needs ``params`` unless ``weight_decay`` is the Python number 0.

  References:
    "On the Variance of the Adaptive Learning Rate and Beyond",
    arXiv:1908.03265 (https://arxiv.org/abs/1908.03265).
  """
  V.check_learning_rate("radam", learning_rate)
  V.check_nonneg("radam", "eps", eps)
  return recipe_chain(
      "radam", scale_by_radam(b1, b2, eps, eps_root, threshold, mu_dtype, nesterov=nesterov),
      *_weight_decay(weight_decay, mask), scale_by_learning_rate(learning_rate))


def _adabound(where: str, amsgrad: bool, learning_rate: Any, b1: Any, b2: Any, eps: Any,
              final_lr: Any, gamma: Any, weight_decay: Any, mask: Any, mu_dtype: Any,
              base_lr: Any):
  V.check_learning_rate(where, learning_rate)
  V.check_nonneg(where, "final_lr", final_lr)
  V.check_range(where, "gamma", gamma, 0.0, 1.0, high_open=True)
  return recipe_chain(
      where, *_weight_decay(weight_decay, mask),
      scale_by_bounded_step_size(dynamic_bound(final_lr, gamma, base_lr), b1, b2, eps,
                                 learning_rate=learning_rate, amsgrad=amsgrad,
                                 mu_dtype=mu_dtype),
      scale_by_learning_rate(learning_rate))


_ADABOUND_DOC = """{title}: "Adaptive Gradient Methods with Dynamic Bound of Learning Rate"
  (arXiv:1902.09843), as in the official code (Luolc/AdaBound).

  Adam's per-coordinate step size, clipped to bounds that converge to
  ``f_t``, so that the method turns into SGD::

    g <- g + weight_decay * p
    m, v: EMAs of g and g^2{ams}
    eta_t = clip(lr_t sqrt(1 - b2^t) / ((1 - b1^t)(sqrt({v}) + eps)), lower_t, upper_t)
    lower_t = f_t (1 - 1 / (gamma t + 1))
    upper_t = f_t (1 + 1 / (gamma t))
    f_t = final_lr * lr_t / base_lr
    u = -eta_t * m

  Under optax.inject_hyperparams the injected learning rate is also the base,
  so changing it there does not move the bounds' target final_lr.

  Differences from the paper, following the official code:

  * the paper's bounds are ``0.1 -/+ 0.1 / ((1 - b2) t (+1))`` and the step
    is divided by ``sqrt(t)``; the code uses final_lr and gamma, bias
    corrections, and no ``1 / sqrt(t)``;
  * final_lr is scaled by ``lr_t / base_lr``, so that the bounds follow a
    learning-rate schedule;
  * weight decay is coupled (an L2 term added to the gradient before the
    moments), and eps is added to the un-debiased ``sqrt(v_t)``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment (optax's name for the official
      ``betas[0]``), in [0, 1).
    b2: decay of the second moment (the official ``betas[1]``), in [0, 1).
    eps: added to the un-debiased ``sqrt(v_t)``, >= 0.
    final_lr: the SGD learning rate that both bounds converge to, >= 0
      (for the learning rate ``base_lr``).
    gamma: the convergence speed of the bounds, in [0, 1).
    weight_decay: the coupled L2 coefficient, >= 0. The Python number 0 (the
      default) leaves the decay out of the chain.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    base_lr: the learning rate that final_lr refers to, > 0; None (the
      default) uses learning_rate, or a schedule's value at step 0 (pass it
      for a schedule that starts at 0).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no
    extra args; it needs ``params`` unless ``weight_decay`` is the Python
    number 0.

  References:
    "Adaptive Gradient Methods with Dynamic Bound of Learning Rate",
    arXiv:1902.09843 (https://arxiv.org/abs/1902.09843). Official code:
    Luolc/AdaBound.
  """


def adabound(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
             final_lr: Any = 0.1, gamma: Any = 1e-3, weight_decay: Any = 0.0, mask: Any = None,
             mu_dtype: Any = None, *, base_lr: Any = None):
  return _adabound("adabound", False, learning_rate, b1, b2, eps, final_lr, gamma,
                   weight_decay, mask, mu_dtype, base_lr)


def amsbound(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
             final_lr: Any = 0.1, gamma: Any = 1e-3, weight_decay: Any = 0.0, mask: Any = None,
             mu_dtype: Any = None, *, base_lr: Any = None):
  return _adabound("amsbound", True, learning_rate, b1, b2, eps, final_lr, gamma,
                   weight_decay, mask, mu_dtype, base_lr)


adabound.__doc__ = _ADABOUND_DOC.format(title="AdaBound", ams="", v="v_t")
amsbound.__doc__ = _ADABOUND_DOC.format(
    title="AMSBound (AdaBound on AMSGrad's running max)",
    ams="; v_max <- max(v_max, v)", v="v_max")


def adamod(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, beta3: Any = 0.999,
           eps: Any = 1e-8, weight_decay: Any = 0.0, mask: Any = None, mu_dtype: Any = None):
  """AdaMod: "An Adaptive and Momental Bound Method for Stochastic Learning"
  (arXiv:1910.12249), as in the official code (lancopku/AdaMod).

  The step size is bounded by its own EMA s, with ``s_0 = 0``::

    eta_t = lr_t sqrt(1 - b2^t) / ((1 - b1^t)(sqrt(v_t) + eps))
    s_t = beta3 s_{t-1} + (1 - beta3) eta_t
    u = -(min(eta_t, s_t) m_t + lr_t weight_decay p)

  Differences from the paper's Algorithm 1, following the official code: the
  paper averages ``alpha / (sqrt(v_hat) + eps)`` and multiplies by ``m_hat``;
  the code puts the ``1 / (1 - b1^t)`` bias correction inside the averaged step
  size, multiplies the raw m_t, and adds eps to the un-debiased ``sqrt(v_t)``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    beta3: decay of the step-size EMA s, in [0, 1) (the official name; its
      docstring says 0.9999 but the default is 0.999, used here).
    eps: added to the un-debiased ``sqrt(v_t)``, >= 0.
    weight_decay: the decoupled decay rate, >= 0, multiplied by the learning
      rate, as in the official code. The Python number 0 (the default) leaves
      the decay out of the chain.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args; it needs ``params`` unless ``weight_decay`` is the Python number 0.

  References:
    "An Adaptive and Momental Bound Method for Stochastic Learning",
    arXiv:1910.12249 (https://arxiv.org/abs/1910.12249). Official code:
    lancopku/AdaMod.
  """
  V.check_learning_rate("adamod", learning_rate)
  V.check_decay("adamod", "beta3", beta3)
  return recipe_chain(
      "adamod", scale_by_bounded_step_size(momental_bound(beta3), b1, b2, eps,
                                           learning_rate=learning_rate, mu_dtype=mu_dtype),
      *_weight_decay(weight_decay, mask), scale_by_learning_rate(learning_rate))


_BOUND_NOTE = ("Follows the official code where it differs from the paper (bias "
               "corrections, final_lr/gamma bounds scaled by lr/base_lr, no 1/sqrt(t), "
               "coupled weight decay, eps on the raw sqrt(v)). No optax version.")

RECIPES = (
    Recipe("radam", radam, "adam", "On the Variance of the Adaptive Learning Rate and Beyond",
           "1908.03265",
           notes="Matches optax.radam (threshold 5 with >=, eps on sqrt(v_hat)); the paper "
                 "uses rho_t > 4, the official code eps on the raw sqrt(v) and, in its later "
                 "versions, skips steps before the threshold instead of the momentum step."),
    Recipe("adabound", adabound, "adam",
           "Adaptive Gradient Methods with Dynamic Bound of Learning Rate", "1902.09843",
           notes=_BOUND_NOTE),
    Recipe("amsbound", amsbound, "adam",
           "Adaptive Gradient Methods with Dynamic Bound of Learning Rate", "1902.09843",
           notes=_BOUND_NOTE),
    Recipe("adamod", adamod, "adam",
           "An Adaptive and Momental Bound Method for Stochastic Learning", "1910.12249",
           notes="Follows the official code (bias correction inside the averaged step size, "
                 "raw m, eps on the raw sqrt(v), decoupled weight decay times lr). No optax "
                 "version."),
)
