"""SGD and the Adam family: Adam with every classic and recent moment rule.

Each recipe is one `scale_by_moments` (or a sibling primitive from
`optlab.primitives.moments`) plus decay and the learning rate.
"""

from __future__ import annotations

from typing import Any

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights, add_decayed_weights_after_step
from optlab.primitives.moments import (ademamix_alpha_warmup, ademamix_b3_warmup, scale_by_adam,
    scale_by_adopt, scale_by_exadam, scale_by_fadam, scale_by_moments)
from optlab.rules import (abs_max, adan_momentum, belief, centered_ema_sq, dual_ema, ema, ema_sq,
                          heavy_ball, max_ema_sq, momentum_sq, sum_sq)
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["sgd", "adam", "adamw", "adagrad", "rmsprop", "adamax", "amsgrad", "nadam",
           "adabelief", "laprop", "adopt", "ademamix", "exadam", "fadam", "adamomentum", "adan"]


def sgd(learning_rate: Any, momentum: Any = None, *, nesterov: bool = False,
        weight_decay: Any = None, mask: Any = None):
  """Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

  Paper: "On the importance of initialization and momentum in deep learning"
  (Sutskever et al., ICML 2013; no arXiv id). m <- momentum * m + g;
  u = -lr * m, or -lr * (g + momentum * m) with Nesterov. Matches optax.sgd.
  Hyperparameters: learning_rate, momentum (None: no momentum), nesterov,
  weight_decay (None: none; else coupled L2 added to the gradient before
  momentum), mask.
  """
  V.check_learning_rate("sgd", learning_rate)
  if momentum is not None:
    V.check_decay("sgd", "momentum", momentum)
  steps = [add_decayed_weights(weight_decay, mask)] if weight_decay is not None else []
  if momentum is not None:
    steps.append(scale_by_moments(heavy_ball(momentum, nesterov=nesterov), None))
  return recipe_chain("sgd", *steps, scale_by_learning_rate(learning_rate))


def adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
         eps_root: Any = 0.0, mu_dtype: Any = None, *, nesterov: bool = False):
  """Adam: "Adam: A Method for Stochastic Optimization" (arXiv:1412.6980).

  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
  u = -lr * m_hat / (sqrt(v_hat + eps_root) + eps), with bias-corrected hats.
  Hyperparameters: learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov.
  Matches optax.adam.
  """
  V.check_learning_rate("adam", learning_rate)
  V.check_nonneg("adam", "eps", eps)
  return recipe_chain("adam", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                      scale_by_learning_rate(learning_rate))


def adamw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
          mask: Any = None, *, nesterov: bool = False):
  """AdamW: "Decoupled Weight Decay Regularization" (arXiv:1711.05101).

  Adam's direction plus decoupled decay, u = -lr * (adam_dir + weight_decay * p).
  As in optax and PyTorch, the decay is multiplied by the learning rate (the
  paper's schedule multiplier eta_t is the learning-rate schedule).
  Hyperparameters: as `adam`, plus weight_decay and mask. Matches optax.adamw.
  """
  V.check_learning_rate("adamw", learning_rate)
  V.check_nonneg("adamw", "eps", eps)
  return recipe_chain("adamw", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def _check(where: str, **decays: Any) -> None:
  for name, value in decays.items():
    V.check_decay(where, name, value)


def adagrad(learning_rate: Any, initial_accumulator_value: Any = 0.1, eps: Any = 1e-7):
  """Adagrad: "Adaptive Subgradient Methods for Online Learning and Stochastic
  Optimization" (Duchi, Hazan & Singer, JMLR 2011; no arXiv id).

  G <- G + g^2 (G_0 = initial_accumulator_value);  u = -lr * g / sqrt(G + eps).
  Hyperparameters: learning_rate, initial_accumulator_value, eps. Matches
  optax.adagrad: eps sits inside the root and G starts at 0.1; the paper's
  diagonal variant uses diag(G)^(1/2) + delta with G starting at 0.
  G never forgets: after one huge gradient entry (clamped by `bound_gradient`,
  so the step itself stays below lr per entry) that coordinate barely moves for
  the rest of training. That stall is Adagrad's own math, not an overflow.
  """
  V.check_learning_rate("adagrad", learning_rate)
  V.check_nonneg("adagrad", "initial_accumulator_value", initial_accumulator_value)
  V.check_nonneg("adagrad", "eps", eps)
  return recipe_chain("adagrad",
                      scale_by_moments(None, sum_sq(initial_accumulator_value, eps), eps=0.0),
                      scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: Any, decay: Any = 0.9, eps: Any = 1e-8, initial_scale: Any = 0.0,
            *, eps_in_sqrt: bool = True, centered: bool = False, momentum: Any = None,
            nesterov: bool = False, bias_correction: bool = False):
  """RMSProp: "Lecture 6.5 - rmsprop" (Tieleman & Hinton, Coursera 2012; no arXiv
  id); the centred form is from Graves, arXiv:1308.0850.

  v <- decay v + (1 - decay) g^2 (v_0 = initial_scale);  u = g / sqrt(v + eps)
  (``eps_in_sqrt``) or g / (sqrt(v) + eps); ``centered`` uses v - E[g]^2;
  ``bias_correction`` divides the EMAs by 1 - decay^t; with ``momentum`` a
  heavy-ball (or ``nesterov``) trace follows. Hyperparameters: as optax.rmsprop,
  which this matches. As in optax the trace runs after the learning-rate
  scaling (the same as PyTorch's placement when the learning rate is constant).
  """
  V.check_learning_rate("rmsprop", learning_rate)
  _check("rmsprop", decay=decay)
  V.check_nonneg("rmsprop", "eps", eps)
  V.check_nonneg("rmsprop", "initial_scale", initial_scale)
  if momentum is not None:
    V.check_decay("rmsprop", "momentum", momentum)
  root_eps, outer_eps = (eps, 0.0) if eps_in_sqrt else (0.0, eps)
  kind = centered_ema_sq if centered else ema_sq
  rule = kind(decay, debias=bias_correction, eps_root=root_eps, initial=initial_scale)
  trace = ([scale_by_moments(heavy_ball(momentum, nesterov=nesterov), None)]
           if momentum is not None else [])
  return recipe_chain("rmsprop", scale_by_moments(None, rule, eps=outer_eps),
                      scale_by_learning_rate(learning_rate), *trace)


def adamax(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8):
  """Adamax: "Adam: A Method for Stochastic Optimization" (arXiv:1412.6980, Sec. 7.1).

  m <- b1 m + (1 - b1) g;  u <- max(b2 u, |g| + eps);  step -lr * m_hat / u.
  Hyperparameters: learning_rate, b1, b2, eps. Matches optax.adamax, which adds
  eps inside the max (the paper's Algorithm 2 has no eps).
  """
  V.check_learning_rate("adamax", learning_rate)
  _check("adamax", b1=b1, b2=b2)
  V.check_nonneg("adamax", "eps", eps)
  return recipe_chain("adamax", scale_by_moments(ema(b1), abs_max(b2, eps), eps=0.0),
                      scale_by_learning_rate(learning_rate))


def amsgrad(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
            eps_root: Any = 0.0, mu_dtype: Any = None, *, bias_correction_mu: bool = True,
            bias_correction_nu: bool = True):
  """AMSGrad: "On the Convergence of Adam and Beyond" (arXiv:1904.09237).

  v_max <- max(v_max, v_hat);  u = -lr * m_hat / (sqrt(v_max + eps_root) + eps).
  Hyperparameters: as optax.amsgrad, which this matches (bias corrections on
  by default). The paper's Algorithm 2 corrects neither moment and has no eps:
  bias_correction_mu=False, bias_correction_nu=False, eps -> 0.
  """
  V.check_learning_rate("amsgrad", learning_rate)
  _check("amsgrad", b1=b1, b2=b2)
  V.check_nonneg("amsgrad", "eps", eps)
  V.check_nonneg("amsgrad", "eps_root", eps_root)
  return recipe_chain("amsgrad",
                      scale_by_moments(ema(b1, debias=bias_correction_mu, dtype=mu_dtype),
                                       max_ema_sq(b2, debias=bias_correction_nu,
                                                  eps_root=eps_root), eps=eps),
                      scale_by_learning_rate(learning_rate))


def nadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, mu_dtype: Any = None):
  """NAdam: "Incorporating Nesterov Momentum into Adam" (Dozat, ICLR 2016
  workshop; no arXiv id).

  Adam with the look-ahead m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t).
  Hyperparameters: as `adam`. Matches optax.nadam: a constant momentum (the
  paper's mu_t schedule is not used) and no extra b2 factor on v_hat.
  """
  V.check_learning_rate("nadam", learning_rate)
  V.check_nonneg("nadam", "eps", eps)
  return recipe_chain("nadam", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=True),
                      scale_by_learning_rate(learning_rate))


def adabelief(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-16,
              eps_root: Any = 1e-16, *, nesterov: bool = False):
  """AdaBelief: "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
  Gradients" (arXiv:2010.07468).

  s <- b2 s + (1 - b2) (g - m_t)^2 + eps_root;  u = -lr * m_hat / (sqrt(s_hat) + eps).
  Hyperparameters: learning_rate, b1, b2, eps, eps_root, nesterov. Matches
  optax.adabelief and the official code (eps=1e-16 added both inside s and
  outside the root); the paper's text uses eps=1e-8 for both.
  """
  V.check_learning_rate("adabelief", learning_rate)
  _check("adabelief", b1=b1, b2=b2)
  V.check_nonneg("adabelief", "eps", eps)
  V.check_nonneg("adabelief", "eps_root", eps_root)
  return recipe_chain("adabelief",
                      scale_by_moments(ema(b1, nesterov=nesterov), belief(b2, eps_root), eps=eps),
                      scale_by_learning_rate(learning_rate))


def laprop(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-15,
           weight_decay: Any = 0.0, mask: Any = None, mu_dtype: Any = None):
  """LaProp: "LaProp: Separating Momentum and Adaptivity in Adam" (arXiv:2002.04839).

  Momentum of the normalised gradient: m <- b1 m + (1 - b1) g / (sqrt(v_hat) + eps),
  p <- p - lr * m / (1 - b1^t), then p <- p - weight_decay * p (on the updated
  weights, not scaled by the learning rate). Hyperparameters: learning_rate,
  b1, b2, eps (official default 1e-15), weight_decay, mask, mu_dtype.
  Follows the official code (Z-T-WANG/LaProp-Optimizer ``laprop.py``): eps
  after the bias correction, as in the paper, and its weight decay
  ``p -= wd * p`` after the step (0 by default; the paper does not specify
  a decay). Remaining difference: the official code keeps the learning rate
  inside the momentum and debiases with an EMA of past learning rates, which
  equals this chain for a constant learning rate but not under a schedule;
  its amsgrad / centered options are not offered.
  """
  V.check_learning_rate("laprop", learning_rate)
  _check("laprop", b1=b1, b2=b2)
  V.check_nonneg("laprop", "eps", eps)
  return recipe_chain("laprop",
                      scale_by_moments(ema(b1, dtype=mu_dtype), ema_sq(b2), eps=eps,
                                       order="laprop"),
                      scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, None, mask))


def adopt(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6,
          mu_dtype: Any = None, *, nesterov: bool = False, use_clipping: bool = True,
          clip_value_fn: Any = None):
  """ADOPT: "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
  Rate" (arXiv:2411.02853).

  Step 1 only sets v = g^2. Then x = clip(g / max(sqrt(v_{t-1}), eps), (t-1)^0.25),
  m <- b1 m + (1 - b1) x, u = -lr * m, and only then v <- b2 v + (1 - b2) g^2.
  Hyperparameters: as optax.contrib.adopt, which this matches, and the current
  official code (iShohei220/adopt, clip_lambda = step**0.25 of the 0-based
  step; ``clip_value_fn=None`` means that default, so that
  `optax.inject_hyperparams` does not mistake it for a schedule). The paper's
  Algorithm 1 has no clipping (use_clipping=False); the official code's
  weight_decay / decouple options are not offered (chain `add_decayed_weights`
  for the decoupled form).
  """
  V.check_learning_rate("adopt", learning_rate)
  V.check_nonneg("adopt", "eps", eps)
  return recipe_chain("adopt",
                      scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov,
                                     use_clipping=use_clipping, clip_value_fn=clip_value_fn),
                      scale_by_learning_rate(learning_rate))


def ademamix(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999,
             alpha: Any = 5.0, eps: Any = 1e-8, eps_root: Any = 0.0, mu_dtype: Any = None,
             weight_decay: Any = 0.0, mask: Any = None, *, t_alpha_b3: Any = None):
  """AdEMAMix: "The AdEMAMix Optimizer: Better, Faster, Older" (arXiv:2409.03350).

  m1, m2: EMAs of g with b1 and b3;  u = -lr * ((m1_hat + alpha m2) /
  (sqrt(v_hat + eps_root) + eps) + weight_decay * p). With ``t_alpha_b3`` (the
  paper's T_{alpha,beta3}) alpha warms up linearly and b3 by a linear growth of
  its half-life from b1 (the official schedulers), over that many steps;
  ``alpha`` and ``b3`` may also be schedules of the 0-based step, as in optax.
  Hyperparameters: as optax.contrib.ademamix plus t_alpha_b3. Matches optax,
  except that ``mu_dtype`` here applies to m1 and m2 only (optax also stores v
  in it). Official PyTorch default alpha is 2.0; 5.0 is optax's.
  """
  V.check_learning_rate("ademamix", learning_rate)
  _check("ademamix", b1=b1, b2=b2, b3=b3)
  V.check_nonneg("ademamix", "alpha", alpha)
  V.check_nonneg("ademamix", "eps", eps)
  V.check_nonneg("ademamix", "eps_root", eps_root)
  alpha, b3 = _ademamix_schedules("ademamix", alpha, b3, b1, t_alpha_b3)
  return recipe_chain("ademamix",
                      scale_by_moments(dual_ema(b1, b3, alpha, dtype=mu_dtype),
                                       ema_sq(b2, eps_root=eps_root), eps=eps),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def _ademamix_schedules(where, alpha, b3, b1, t_alpha_b3):
  if t_alpha_b3 is None:
    return alpha, b3
  V.check_positive(where, "t_alpha_b3", t_alpha_b3)
  if callable(alpha) or callable(b3):
    raise ValueError(f"optlab.{where}: give t_alpha_b3 or schedules for alpha / b3, not both")
  return ademamix_alpha_warmup(alpha, t_alpha_b3), ademamix_b3_warmup(b3, b1, t_alpha_b3)


def exadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
           weight_decay: Any = 0.0, mask: Any = None, *, dynamic_step_size: bool = False):
  """EXAdam: "EXAdam: The Power of Adaptive Cross-Moments" (arXiv:2412.20302).

  Cross-moment debiasing d1 = 1 + b2^t v / (v + eps), d2 = 1 + b1^t m^2 / (m^2 + eps);
  gradient acceleration g~ = d1 g / (1 - b1^t) added to m~ = d1 m / (1 - b1^t);
  u = -lr * (s_t (m~ + g~) / (sqrt(d2 v / (1 - b2^t)) + eps) + weight_decay * p),
  with s_t = 1. Hyperparameters: learning_rate, b1, b2, eps, weight_decay
  (decoupled, lr-scaled, not scaled by s_t, as the official code), mask,
  dynamic_step_size. The default follows the current official code
  (AhmedMostafa16/EXAdam) and arXiv v2; arXiv v1 and its code also grow the
  step size, s_t = ln(sqrt(2 (t + 1))): ``dynamic_step_size=True``.
  """
  V.check_learning_rate("exadam", learning_rate)
  V.check_nonneg("exadam", "eps", eps)
  return recipe_chain("exadam", scale_by_exadam(b1, b2, eps, dynamic_step_size=dynamic_step_size),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def fadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          clip: Any = 1.0, p: Any = 0.5, weight_decay: Any = 0.001, mask: Any = None, *,
          adaptive_eps: bool = True, mu_dtype: Any = None):
  """FAdam: "FAdam: Adam is a natural gradient optimizer using diagonal empirical
  Fisher information" (arXiv:2405.12807, Algorithm 1).

  f = debiased EMA of g^2 (the paper's beta2_hat recursion); natural gradient
  g_nat = clip(g / (f^p + eps_t)); m <- b1 m + (1 - b1) g_nat (momentum on the
  natural gradient, not debiased); weight decay through the Fisher as well,
  w_nat = clip(p / (f^p + eps_t)); u = -lr * (m + weight_decay * w_nat), where
  clip(x) = x / max(1, rms(x) / clip) per tensor and eps_t = eps * min(1, rms(g))
  (the later revisions' adaptive epsilon; adaptive_eps=False uses eps).
  Hyperparameters: learning_rate, b1, b2, eps, clip, p, weight_decay, mask,
  adaptive_eps, mu_dtype. There is no official code; the adaptive epsilon's
  exact form follows the public re-implementations and could not be checked
  against the paper's latest text here.
  """
  V.check_learning_rate("fadam", learning_rate)
  return recipe_chain("fadam", scale_by_fadam(b1, b2, eps, clip, p, weight_decay, mask,
                                              adaptive_eps=adaptive_eps, mu_dtype=mu_dtype),
                      scale_by_learning_rate(learning_rate))


def adamomentum(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                mu_dtype: Any = None):
  """AdaMomentum: "Rethinking Adam: A Twofold Exponential Moving Average Approach"
  (arXiv:2106.11514).

  The second moment tracks the momentum, not the gradient:
  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) m^2 + eps;  u = -lr * m_hat / sqrt(v_hat).
  Hyperparameters: learning_rate, b1, b2, eps (accumulated inside v, with no
  eps outside the root, as the paper's Algorithm), mu_dtype. Weight decay is
  not part of the algorithm; chain `add_decayed_weights` for it.
  """
  V.check_learning_rate("adamomentum", learning_rate)
  _check("adamomentum", b1=b1, b2=b2)
  V.check_nonneg("adamomentum", "eps", eps)
  return recipe_chain("adamomentum",
                      scale_by_moments(ema(b1, dtype=mu_dtype), momentum_sq(b2, eps), eps=0.0),
                      scale_by_learning_rate(learning_rate))


def adan(learning_rate: Any, b1: Any = 0.98, b2: Any = 0.92, b3: Any = 0.99, eps: Any = 1e-8,
         eps_root: Any = 0.0, weight_decay: Any = 0.0, mask: Any = None, mu_dtype: Any = None, *,
         no_prox: bool = False):
  """Adan: "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
  Models" (arXiv:2208.06677).

  With d = g - g_prev (0 on the first step): m <- b1 m + (1 - b1) g,
  v <- b2 v + (1 - b2) d, n <- b3 n + (1 - b3) (g + b2 d)^2,
  u = (m_hat + b2 v_hat) / (sqrt(n_hat + eps_root) + eps), then
  p <- (p - lr u) / (1 + lr wd). Hyperparameters: learning_rate, b1, b2, b3
  (decays, as the official code: the paper's beta_i is 1 - b_i), eps, eps_root
  (optax's; 0 in the official code), weight_decay, mask, mu_dtype, no_prox (decay
  p <- p (1 - lr wd) - lr u, as AdamW, instead of the proximal step). Follows the
  official code (sail-sg/Adan), including its bias corrections, which the
  paper's Algorithm 1 omits. optax.adan (0.2.8) weighs the difference terms by
  1 - b2 instead of b2 (optax PR #1715) and decays as AdamW.
  """
  V.check_learning_rate("adan", learning_rate)
  _check("adan", b1=b1, b2=b2, b3=b3)
  V.check_nonneg("adan", "eps", eps)
  V.check_nonneg("adan", "eps_root", eps_root)
  V.check_nonneg("adan", "weight_decay", weight_decay)
  moments = scale_by_moments(adan_momentum(b1, b2, mu_dtype), ema_sq(b3, eps_root=eps_root),
                             eps=eps)
  if no_prox:
    return recipe_chain("adan", moments, add_decayed_weights(weight_decay, mask),
                        scale_by_learning_rate(learning_rate))
  return recipe_chain("adan", moments, scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, learning_rate, mask,
                                                     proximal=True))


RECIPES = (
    Recipe("sgd", sgd, "adam",
           "On the importance of initialization and momentum in deep learning", ""),
    Recipe("adam", adam, "adam", "Adam: A Method for Stochastic Optimization", "1412.6980"),
    Recipe("adamw", adamw, "adam", "Decoupled Weight Decay Regularization", "1711.05101"),
    Recipe("adagrad", adagrad, "adam",
           "Adaptive Subgradient Methods for Online Learning and Stochastic Optimization", "",
           notes="Matches optax: eps inside the root, accumulator starts at 0.1 (the "
                 "paper: delta outside the root, accumulator starts at 0)."),
    Recipe("rmsprop", rmsprop, "adam",
           "Lecture 6.5 - rmsprop: Divide the gradient by a running average of its recent "
           "magnitude", "",
           notes="Matches optax.rmsprop, momentum trace after the learning rate (as optax)."),
    Recipe("adamax", adamax, "adam", "Adam: A Method for Stochastic Optimization", "1412.6980",
           notes="Matches optax: eps inside the max (the paper has none)."),
    Recipe("amsgrad", amsgrad, "adam", "On the Convergence of Adam and Beyond", "1904.09237",
           notes="Matches optax (both bias corrections on by default); the paper's "
                 "Algorithm 2 corrects neither (bias_correction_mu/nu=False)."),
    Recipe("nadam", nadam, "adam", "Incorporating Nesterov Momentum into Adam", "",
           notes="Matches optax.nadam: constant momentum (no mu_t schedule), no extra b2 "
                 "factor on v_hat."),
    Recipe("adabelief", adabelief, "adam",
           "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
           "2010.07468",
           notes="Matches optax and the official code (eps=1e-16 inside s and outside the "
                 "root); the paper's text uses 1e-8."),
    Recipe("laprop", laprop, "adam", "LaProp: Separating Momentum and Adaptivity in Adam",
           "2002.04839",
           notes="Official code keeps lr inside the momentum (same as this chain for a "
                 "constant lr, not under a schedule); weight decay as the official code, "
                 "p -= wd * p after the step (not lr * wd). No optax version."),
    Recipe("adopt", adopt, "adam",
           "ADOPT: Modified Adam Can Converge with Any \u03b2_2 with the Optimal Rate",
           "2411.02853",
           notes="Matches optax.contrib.adopt and the current official code (clipping by "
                 "step**0.25); the paper's Algorithm 1 has no clipping."),
    Recipe("ademamix", ademamix, "adam", "The AdEMAMix Optimizer: Better, Faster, Older",
           "2409.03350",
           notes="Matches optax.contrib.ademamix (t_alpha_b3 builds the official warm-up "
                 "schedulers, which optax accepts as schedules); mu_dtype covers m1, m2 only."),
    Recipe("exadam", exadam, "adam", "EXAdam: The Power of Adaptive Cross-Moments",
           "2412.20302",
           notes="Follows the current official code and arXiv v2 (no growing step "
                 "size); arXiv v1's ln(sqrt(2(t+1))) is dynamic_step_size=True. "
                 "No optax version."),
    Recipe("fadam", fadam, "adam",
           "FAdam: Adam is a natural gradient optimizer using diagonal empirical Fisher "
           "information", "2405.12807",
           notes="Paper's Algorithm 1 (no official code); adaptive eps = eps * min(1, rms(g)) "
                 "as the public re-implementations. No optax version."),
    Recipe("adamomentum", adamomentum, "adam",
           "Rethinking Adam: A Twofold Exponential Moving Average Approach", "2106.11514",
           notes="Paper's algorithm: v tracks m^2 + eps, no eps outside the root. No optax "
                 "version."),
    Recipe("adan", adan, "adam",
           "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models",
           "2208.06677",
           notes="Official code: bias corrections, zero difference on step 1, proximal "
                 "weight decay (no_prox=True: AdamW's). optax.adan (0.2.8) weighs the "
                 "difference terms by 1 - b2 instead of b2 (optax PR #1715); they agree "
                 "at b2 = 0.5."),
)
