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

  rho_t = rho_inf - 2 t b2^t / (1 - b2^t), rho_inf = 2 / (1 - b2) - 1; while
  rho_t >= threshold, u = -lr * (r_t m_hat / (sqrt(v_hat + eps_root) + eps) + wd p)
  with the rectification r_t (see `radam_rectification`); before that,
  u = -lr * (m_hat + wd p), SGD with (debiased) momentum.
  Hyperparameters: learning_rate, b1, b2, eps, eps_root, threshold, nesterov
  (NAdam's look-ahead m_hat) as optax.radam, which it matches; plus
  weight_decay (decoupled and multiplied by lr, as in the official code) with
  its mask, and mu_dtype.

  Differences:
    * The paper rectifies while rho_t > 4; the official code and optax while
      rho_t >= 5. This follows optax: ``threshold=5`` with ``>=``.
    * eps is added to sqrt(v_hat) (paper, optax); the official code adds it to
      the un-debiased sqrt(v_t), i.e. uses eps / sqrt(1 - b2^t) here.
    * Before the threshold this takes the un-adapted step lr * m_hat (the
      paper's Algorithm 2, optax, and the first official release). The later
      official code has a ``degenerated_to_sgd`` switch whose default (False)
      skips those steps entirely, weight decay included; that option is not
      offered.
    * A threshold below 4 can select steps where r_t is undefined (2 < rho_t
      < 4): they give a zero update here, NaN in optax.
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

  g <- g + weight_decay * p;  m, v: EMAs of g and g^2{ams};
  eta_t = clip(lr_t sqrt(1 - b2^t) / ((1 - b1^t)(sqrt({v}) + eps)), lower_t, upper_t),
  lower_t = f_t (1 - 1 / (gamma t + 1)), upper_t = f_t (1 + 1 / (gamma t)),
  f_t = final_lr * lr_t / base_lr;  u = -eta_t * m.
  Hyperparameters: learning_rate, b1, b2, eps (optax's names for the official
  betas / eps), final_lr, gamma, weight_decay, mask, mu_dtype, base_lr (the
  learning rate final_lr refers to; default: learning_rate, or a schedule's
  value at step 0 -- pass it for a schedule that starts at 0). Under
  optax.inject_hyperparams the injected learning rate is also the base, so
  changing it there does not move the bounds' target final_lr.

  Differences from the paper, following the official code:
    * the paper's bounds are 0.1 -/+ 0.1 / ((1 - b2) t (+1)) and the step is
      divided by sqrt(t); the code uses final_lr and gamma, bias corrections,
      and no 1 / sqrt(t);
    * final_lr is scaled by lr_t / base_lr, so that the bounds follow a
      learning-rate schedule;
    * weight decay is coupled (an L2 term added to the gradient before the
      moments), and eps is added to the un-debiased sqrt(v_t).
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

  eta_t = lr_t sqrt(1 - b2^t) / ((1 - b1^t)(sqrt(v_t) + eps));
  s_t = beta3 s_{t-1} + (1 - beta3) eta_t (s_0 = 0);
  u = -(min(eta_t, s_t) m_t + lr_t weight_decay p).
  Hyperparameters: learning_rate, b1, b2, eps, beta3 (the official name; its
  docstring says 0.9999 but the default is 0.999, used here), weight_decay
  (decoupled, multiplied by lr, as in the official code), mask, mu_dtype.

  Differences from the paper's Algorithm 1, following the official code: the
  paper averages alpha / (sqrt(v_hat) + eps) and multiplies by m_hat; the code
  puts the 1 / (1 - b1^t) bias correction inside the averaged step size,
  multiplies the raw m_t, and adds eps to the un-debiased sqrt(v_t).
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
