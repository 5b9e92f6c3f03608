"""Methods driven by Hessian information from the loss: Sophia-H / Sophia-G,
AdaHessian (Hessian diagonals, `optlab.primitives.curvature`), M-FAC (inverse
empirical Fisher from a window of gradients) and FOSI (Lanczos eigenspace plus
a base optimizer)."""

from __future__ import annotations

from typing import Any, Optional

import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.curvature import (
    gauss_newton_bartlett, hutchinson, scale_by_adahessian, scale_by_mfac, scale_by_sophia,
    with_fosi)
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.moments import scale_by_adam, scale_by_moments
from optlab.rules import ema
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["sophia_h", "sophia_g", "adahessian", "mfac", "fosi"]


def sophia_h(learning_rate: Any, b1: Any = 0.965, b2: Any = 0.99, eps: Any = 1e-8,
             weight_decay: Any = 1e-4, weight_decay_mask: Any = None, gamma: Any = 0.01,
             clip_threshold: Any = 1.0, update_interval: int = 10, *, n_probes: int = 1,
             seed: int = 0, axis_name: Optional[str] = None, mu_dtype: Any = None):
  """Sophia-H: "Sophia: A Scalable Stochastic Second-order Optimizer for Language
  Model Pre-training" (arXiv:2305.14342), with Hutchinson's Hessian estimate.

  m_hat = EMA_b1(g) / (1 - b1^t);  every k = update_interval steps
  h <- b2 h + (1 - b2) z * (H z);
  u = -lr * (clip(m_hat / max(gamma h, eps), clip_threshold) + weight_decay * p).
  Hyperparameters: optax.contrib.sophia's names and defaults; n_probes
  (Rademacher probes per estimate), seed, axis_name (average the estimate over
  that pmap axis: optax.contrib.sophia does not, so its replicas diverge).
  Needs the extra arg ``obj_fn`` (params -> loss on the current batch).

  The official PyTorch repository has only Sophia-G; Sophia-H's official code
  is levanter's (by the paper's authors), which optax.contrib.sophia follows
  and this matches: m is bias-corrected (the paper's Algorithm 3 is not), h is
  refreshed on steps 1, k+1, ... after the step's update (so each estimate is
  first used on the next step), eps sits in a max as in the paper (the
  official Sophia-G code adds 1e-15 instead). Probes are Rademacher (as optax;
  levanter draws Gaussian ones).
  """
  V.check_learning_rate("sophia_h", learning_rate)
  V.check_nonneg("sophia_h", "weight_decay", weight_decay)
  V.check_range("sophia_h", "n_probes", n_probes, 1)
  V.check_seed("sophia_h", seed)
  return recipe_chain(
      "sophia_h",
      scale_by_sophia(hutchinson(n_probes), b1, b2, gamma, eps, clip_threshold, update_interval,
                      seed=seed, axis_name=axis_name, mu_dtype=mu_dtype),
      add_decayed_weights(weight_decay, weight_decay_mask),
      scale_by_learning_rate(learning_rate))


def sophia_g(learning_rate: Any, b1: Any = 0.965, b2: Any = 0.99, eps: Any = 1e-15,
             weight_decay: Any = 0.1, weight_decay_mask: Any = None, gamma: Any = 0.04,
             clip_threshold: Any = 1.0, update_interval: int = 10, *, seed: int = 0,
             axis_name: Optional[str] = None, mu_dtype: Any = None):
  """Sophia-G: "Sophia: A Scalable Stochastic Second-order Optimizer for Language
  Model Pre-training" (arXiv:2305.14342), with the Gauss-Newton-Bartlett estimate,
  as the official code (Liuhong99/Sophia, SophiaG and train_sophiag.py).

  m = EMA_b1(g) (no bias correction);  on steps k+1, 2k+1, ... (k = update_interval)
  h <- b2 h + (1 - b2) B * grad(CE(logits, y^))^2 with y^ ~ softmax(logits), B the
  number of logit rows, *before* the step's update (the official loop
  refreshes after steps k, 2k, ... at the new params), so steps 1..k run with
  h = 0, i.e. clipped sign-momentum steps, as there;
  u = -lr * (clip(m / max(gamma h, eps), clip_threshold) + weight_decay * p).
  Hyperparameters: as `sophia_h`, defaults from the official code
  (rho = gamma = 0.04, weight_decay = 0.1, eps = 1e-15); seed, axis_name.
  Needs the extra arg ``logits_fn`` (params -> logits of the current batch,
  shape (..., classes)).

  Differences from the official code: eps enters as max(gamma h, eps) (the
  paper's form) instead of gamma h + eps (identical unless gamma h is within a
  few eps of 0); the official ``rho * bs * hess`` is our gamma * h with the
  batch size folded into the estimate (the same product). Under pmap with
  ``axis_name`` the per-replica estimates are averaged; the official DDP run
  averages the sampled gradients before squaring (and multiplies by the global
  batch). Both have the same expectation; ours stays identical to a
  single-device run when every replica sees the same batch.
  """
  V.check_learning_rate("sophia_g", learning_rate)
  V.check_nonneg("sophia_g", "weight_decay", weight_decay)
  V.check_seed("sophia_g", seed)
  return recipe_chain(
      "sophia_g",
      scale_by_sophia(gauss_newton_bartlett(), b1, b2, gamma, eps, clip_threshold,
                      update_interval, debias=False, refresh="before", seed=seed,
                      axis_name=axis_name, mu_dtype=mu_dtype),
      add_decayed_weights(weight_decay, weight_decay_mask),
      scale_by_learning_rate(learning_rate))


def adahessian(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-4,
               weight_decay: Any = 0.0, hessian_power: Any = 1.0, update_interval: int = 1, *,
               n_probes: int = 1, spatial_axes: Optional[tuple[int, ...]] = (0, 1),
               seed: int = 0, axis_name: Optional[str] = None, mu_dtype: Any = None):
  """AdaHessian: "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine
  Learning" (arXiv:2006.00719), as the official code (amirgholami/adahessian).

  D = z * (H z) (for 4-D conv kernels |D| averaged over ``spatial_axes``);
  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) D^2;
  u = -lr * (m / (1 - b1^t) / (sqrt(v_hat)^hessian_power + eps) + weight_decay * p).
  Hyperparameters: the official names and defaults (betas -> b1, b2; eps=1e-4;
  hessian_power=1; weight_decay=0); update_interval (refresh D every k steps;
  the official optimizer refreshes every step, k = 1; v's bias correction
  counts refreshes), n_probes, spatial_axes ((0, 1): the spatial dims of
  flax's HWIO kernels; the official PyTorch code averages dims (2, 3) of
  OIHW), seed, axis_name. Needs the extra arg ``obj_fn``.

  As in the official code (and its fairseq and TF versions) the weight decay is
  added to the bias-corrected step, -lr * (m_hat / denom + weight_decay * p): it
  is scaled by lr but not divided by 1 - b1^t. It stays inside
  `scale_by_adahessian` rather than a separate `add_decayed_weights`.
  """
  V.check_learning_rate("adahessian", learning_rate)
  V.check_nonneg("adahessian", "weight_decay", weight_decay)
  V.check_range("adahessian", "n_probes", n_probes, 1)
  V.check_seed("adahessian", seed)
  return recipe_chain(
      "adahessian",
      scale_by_adahessian(b1, b2, eps, hessian_power, update_interval, weight_decay,
                          n_probes=n_probes, spatial_axes=spatial_axes, seed=seed,
                          axis_name=axis_name, mu_dtype=mu_dtype),
      scale_by_learning_rate(learning_rate))


def mfac(learning_rate: Any, momentum: Any = 0.0, weight_decay: Any = 0.0, ngrads: int = 1024,
         damp: Any = 1e-5):
  """M-FAC: "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information"
  (arXiv:2107.03356), the optimizer of the official code (IST-DASLab/M-FAC, optim.MFAC).

  g <- g + weight_decay * p (coupled, as the official step);  the window keeps
  the last m = ngrads such g (zero rows at first);
  d = (damp I + (1/m) sum_i g_i g_i^T)^{-1} g;  v <- momentum v + (1 - momentum) d;
  u = -lr * v. Hyperparameters: the official names and defaults (lr 1e-3 there,
  momentum 0, weight_decay 0, ngrads 1024, damp 1e-5).

  State: the (m, d) gradient window flattened over all params (one Fisher over
  every parameter, as the official optimizer; a single buffer also keeps the
  state's structure independent of the params tree), its (m, m) Gram matrix,
  updated by one row per step, and the momentum v (param-shaped). The inverse
  product uses the Woodbury identity with an m x m Cholesky solve each step,
  O(dm + m^3) as the official dynamic algorithm (which updates the same Gram
  rows and recomputes its m x m coefficients by an unpivoted LU each step);
  the two agree in exact arithmetic. momentum = 0 keeps v = d (the official
  code skips the buffer then).
  """
  V.check_learning_rate("mfac", learning_rate)
  V.check_range("mfac", "ngrads", ngrads, 1)
  V.check_decay("mfac", "momentum", momentum)
  V.check_nonneg("mfac", "weight_decay", weight_decay)
  return recipe_chain(
      "mfac", add_decayed_weights(weight_decay), scale_by_mfac(ngrads, damp),
      scale_by_moments(ema(momentum, debias=False), None),
      scale_by_learning_rate(learning_rate))


def fosi(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
         weight_decay: Any = 0.0, k: int = 5, num_iters: Optional[int] = None,
         update_interval: int = 100, warmup: Optional[int] = None, alpha: Any = 0.1,
         decay: Any = 0.9, *, base: Optional[optax.GradientTransformation] = None,
         seed: int = 0, axis_name: Optional[str] = None):
  """FOSI: "FOSI: Hybrid First and Second Order Optimization" (arXiv:2302.08484),
  as the official JAX fosi_adam (hsivan/fosi).

  Every T = update_interval steps (from step ``warmup``, default T) Lanczos with
  ``num_iters`` (default 4k) Hessian-vector products finds the top-k eigenpairs;
  the gradient's part in that eigenspace takes a momentum (``decay``) Newton
  step scaled by ``alpha``, the rest goes to the base optimizer, by default
  AdamW(learning_rate, b1, b2, eps, weight_decay) (the official examples'
  optax.adam with an AdamW decay). ``base`` replaces it (it must include its
  learning rate; learning_rate then only validates). seed fixes the Lanczos
  start vector; axis_name averages the HVPs over that pmap axis. Needs the
  extra arg ``obj_fn``. Official defaults: T=100, k=5, alpha=0.1, decay=0.9,
  learning-rate clip 1 (Adam base: the base step is never rescaled).
  """
  V.check_learning_rate("fosi", learning_rate)
  V.check_nonneg("fosi", "eps", eps)
  V.check_nonneg("fosi", "weight_decay", weight_decay)
  V.check_seed("fosi", seed)
  if base is None:
    base = optax.chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay),
                       scale_by_learning_rate(learning_rate))
  return recipe_chain(
      "fosi", with_fosi(base, k, num_iters, update_interval, warmup, alpha, decay, 1.0,
                        seed=seed, axis_name=axis_name))


_SOPHIA = "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training"

RECIPES = (
    Recipe("sophia_h", sophia_h, "second_order", _SOPHIA, "2305.14342",
           needs_extra_args=("obj_fn",),
           notes="Follows levanter / optax.contrib.sophia (bias-corrected m, Hessian "
                 "refreshed after the update on steps 1, k+1, ...), which it matches; plus "
                 "axis_name (pmean of the estimate). The reference problem's Hessian is "
                 "diagonal, so the Hutchinson estimate is exact and the NumPy reference "
                 "reads it from grad_fn.hessian_diag."),
    Recipe("sophia_g", sophia_g, "second_order", _SOPHIA, "2305.14342",
           needs_extra_args=("logits_fn",),
           notes="Follows the official PyTorch code (no bias correction; refresh before the "
                 "update on steps k+1, 2k+1, ...). The labels are random, so the reference "
                 "test relies on the tests' logits_fn (tests/extras.py): each param entry is "
                 "the zero-valued, unit-gradient logit of its own 2-class row, which makes the "
                 "GNB estimate exactly 1/(4d) whatever labels are drawn; the reference uses "
                 "that value. The estimator with real sampled labels is checked in "
                 "tests/test_curvature.py against a NumPy version fed the same labels, and in "
                 "expectation against the exact Gauss-Newton diagonal. No optax version."),
    Recipe("adahessian", adahessian, "second_order",
           "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", "2006.00719",
           needs_extra_args=("obj_fn",),
           notes="Official code's update: lr * (m_hat / denom + weight_decay * p), the decay "
                 "not divided by the bias correction. The "
                 "reference problem's Hessian is diagonal, so the "
                 "Hutchinson estimate is exact (reference reads grad_fn.hessian_diag). No "
                 "optax version."),
    Recipe("mfac", mfac, "second_order",
           "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information",
           "2107.03356",
           notes="Official optimizer (coupled weight decay, momentum after the inverse "
                 "product); window flattened over all params; Woodbury with a Cholesky "
                 "solve instead of the official unpivoted-LU recursion (same maths). The "
                 "reference is a naive Woodbury recursion over the window, as the official "
                 "HInvSlow check. No optax version."),
    Recipe("fosi", fosi, "second_order", "FOSI: Hybrid First and Second Order Optimization",
           "2302.08484", needs_extra_args=("obj_fn",),
           notes="Official fosi_adam with an AdamW base on the complement; top-k only (no "
                 "approx_l). num_iters=103 in the tests: on the reference problem (d=103, "
                 "diagonal Hessian) a full Lanczos run gives the exact eigenpairs, which the "
                 "NumPy reference takes from np.linalg.eigh. No optax version."),
)
