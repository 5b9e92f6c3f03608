"""Adam variants built from wrappers and extra moment rules: SWATS, Ranger21,
Gravity, CoRe, INNAprop, Adam with critical momenta and Coupled Adam.

All are in the "adam" family: each is a first-order method whose core is an
Adam-like (or RMSProp-like) moment rule; the wrappers they use (`switch`,
`with_lookahead`) apply to any chain.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
import math

from optlab.primitives.clipping import clip_by_agc
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.regularizers import (
    add_norm_loss, centralize_gradient, normalize_gradient_std, scale_by_pnm_adam,
    with_stable_weight_decay)
from optlab.primitives.weight_averaging import with_lookahead
from optlab.primitives.moments import scale_by_adam, scale_by_moments
from optlab.rules import coupled_ema_sq, ema, embedding_paths, heavy_ball
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.primitives.variants import (scale_by_core, scale_by_critical_momenta,
                                        scale_by_gravity, scale_by_innaprop)
from optlab.primitives.wrappers import swats_trigger, switch

__all__ = ["swats", "coupled_adam", "innaprop", "adam_cm", "ranger21",
           "ranger21_schedule", "core", "gravity"]


def swats(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-9,
          switch_tol: Any = 1e-9):
  """SWATS: "Improving Generalization Performance by Switching from Adam to SGD"
  (Keskar & Socher, arXiv:1712.07628, Algorithm 1).

  Adam phase, with the projection ``gamma_k`` and its EMA ``lambda_k``::

    p_k = -lr sqrt(1 - b2^k) / (1 - b1^k) * m_k / (sqrt(a_k) + eps)
    gamma_k = p.p / (-p.g)
    lambda_k = b2 lambda + (1 - b2) gamma_k

  When ``k > 1`` and ``|lambda_k / (1 - b2^k) - gamma_k| < switch_tol``, it
  switches for good to SGD with momentum (the learning rate is no longer
  used)::

    v <- b1 v + g
    step = -(1 - b1) Lambda v,    Lambda = lambda_k / (1 - b2^k)

  The paper has no official code. Follows the paper's Algorithm 1, with the
  projections over all parameters together; the widely used PyTorch port
  (Mrpatekful/swats) estimates gamma per tensor and switches a whole parameter
  group when its first tensor meets the criterion (with a relative tolerance,
  and an SGD buffer started at g), which is order dependent. Built from the
  reusable `switch` wrapper and its `swats_trigger`.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step. Used in the Adam phase only.
    b1: decay of Adam's first moment and the SGD phase's momentum, in [0, 1).
    b2: decay of Adam's second moment and of ``lambda_k``, in [0, 1).
    eps: added to ``sqrt(a_k)``, >= 0 (paper 1e-9).
    switch_tol: the tolerance of the switching test, >= 0 (the paper compares
      with the same epsilon, 1e-9).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Improving Generalization Performance by Switching from Adam to SGD",
    arXiv:1712.07628 (https://arxiv.org/abs/1712.07628).
  """
  V.check_learning_rate("swats", learning_rate)
  V.check_decay("swats", "b1", b1)
  V.check_decay("swats", "b2", b2)
  V.check_nonneg("swats", "eps", eps)
  V.check_nonneg("swats", "switch_tol", switch_tol)
  adam = optax.chain(scale_by_adam(b1, b2, eps, eps_before_debias=True),
                     scale_by_learning_rate(learning_rate))
  sgd = optax.chain(scale_by_moments(heavy_ball(b1), None), scale_by_learning_rate(1 - b1))
  return recipe_chain("swats", switch(adam, sgd, swats_trigger(b2, switch_tol)))


def coupled_adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                 eps_root: Any = 0.0, mu_dtype: Any = None, weight_decay: Any = 0.0,
                 mask: Any = None, embedding_mask: Any = embedding_paths, vocab_axis: Any = None):
  """Coupled Adam: "Better Embeddings with Coupled Adam" (Stollenwerk & Stollenwerk,
  arXiv:2502.08441).

  AdamW (see `adamw`), except that for embedding matrices [vocabulary, hidden]
  the second moment is averaged over the vocabulary::

    v_hat[i, :] <- mean_j v_hat[j, :]

  so the sum of the embedding updates is not distorted by per-token step
  sizes. With no embedding leaf this is AdamW.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to ``v_hat`` inside the root, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    weight_decay: the decoupled decay rate, >= 0 (multiplied by the learning
      rate; 0 by default).
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    embedding_mask: a tree of bools or a function of the params tree marking
      the embedding leaves; the default `embedding_paths` marks 2-D leaves
      whose path contains "embed".
    vocab_axis: the vocabulary axis of the embedding leaves, an int; None means
      0 (None rather than 0 so that `optax.inject_hyperparams` leaves it
      static).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params`` (for the weight decay).

  References:
    "Better Embeddings with Coupled Adam", arXiv:2502.08441
    (https://arxiv.org/abs/2502.08441).
  """
  V.check_learning_rate("coupled_adam", learning_rate)
  V.check_decay("coupled_adam", "b1", b1)
  V.check_decay("coupled_adam", "b2", b2)
  V.check_nonneg("coupled_adam", "eps", eps)
  V.check_nonneg("coupled_adam", "eps_root", eps_root)
  if vocab_axis is not None:
    V.check_int("coupled_adam", "vocab_axis", vocab_axis, "the vocabulary axis of embeddings")
  second = coupled_ema_sq(b2, embedding_mask, 0 if vocab_axis is None else vocab_axis, eps_root)
  return recipe_chain("coupled_adam", scale_by_moments(ema(b1, dtype=mu_dtype), second, eps=eps),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def innaprop(learning_rate: Any, alpha: Any = 0.1, beta: Any = 0.9, sigma: Any = 0.999,
             eps: Any = 1e-8, weight_decay: Any = 0.01):
  """INNAprop: "A second-order-like optimizer with adaptive gradient scaling for
  deep learning" (Bolte, Boustany, Pauwels, Purica, arXiv:2410.10243).

  INNA's inertial Newton dynamics with RMSProp scaling; the official-code step,
  with ``psi_0 = (1 - alpha beta) p_0``::

    p_d = (1 - lr wd) p
    v <- sigma v + (1 - sigma) g^2
    psi <- (1 - lr/beta) psi + lr (1/beta - alpha) p_d
    p <- p_d + lr ((1 - alpha beta) p_d - psi) / (beta - lr)
           - lr beta g / (sqrt(v / (1 - sigma^t)) + eps)

  Follows the official code (innaprop/innaprop): decoupled decay applied first
  and the bias-corrected root with eps outside. The hyperparameters have the
  official names and defaults.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    alpha: INNA's alpha, >= 0.
    beta: INNA's beta, > 0.
    sigma: decay of the squared-gradient EMA v, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    weight_decay: the decoupled decay rate, >= 0, applied first
      (``p_d = (1 - lr wd) p``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params``.

  References:
    "A second-order-like optimizer with adaptive gradient scaling for deep
    learning", arXiv:2410.10243 (https://arxiv.org/abs/2410.10243). Official
    code: innaprop/innaprop.
  """
  V.check_learning_rate("innaprop", learning_rate)
  V.check_nonneg("innaprop", "weight_decay", weight_decay)
  V.check_nonneg("innaprop", "eps", eps)
  return recipe_chain("innaprop",
                      scale_by_innaprop(learning_rate, alpha, beta, sigma, eps, weight_decay),
                      scale_by_learning_rate(learning_rate))


def adam_cm(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
            decay: Any = 0.7, topc: Any = None, weight_decay: Any = 0.0, mask: Any = None):
  """Adam+CM: "Promoting Exploration in Memory-Augmented Adam using Critical
  Momenta" (Malviya et al., arXiv:2307.09638).

  Adam on the aggregated momentum ``a = m + mean(critical momenta buffer)``,
  with v the EMA of ``a^2``; the buffer keeps the ``topc`` momenta stored at the
  largest (decaying) gradient norms; see `scale_by_critical_momenta`. Decoupled
  decay ``p <- p (1 - lr wd)`` as the official code. Follows the official
  chandar-lab/CMOptimizer Adam_CM (synced norms, ``critical_test=0``): its
  first step only fills the buffer and does not move the weights (besides the
  decay). The hyperparameters have the official names and defaults.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment m, in [0, 1).
    b2: decay of the second moment v, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    decay: the factor applied to the buffer's priorities at every step, in
      [0, 1) (official 0.7).
    topc: the buffer size, an int >= 1; None means the official 5 (None so
      that `optax.inject_hyperparams` keeps it static).
    weight_decay: the decoupled decay rate, >= 0 (multiplied by the learning
      rate).
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params`` (for the weight decay).

  References:
    "Promoting Exploration in Memory-Augmented Adam using Critical Momenta",
    arXiv:2307.09638 (https://arxiv.org/abs/2307.09638). Official code:
    chandar-lab/CMOptimizer.
  """
  V.check_learning_rate("adam_cm", learning_rate)
  V.check_nonneg("adam_cm", "weight_decay", weight_decay)
  return recipe_chain("adam_cm", scale_by_critical_momenta(b1, b2, eps, decay, 5 if topc is None else topc),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def ranger21_schedule(learning_rate: float, num_iterations: int, b2: float = 0.999,
                      warmup_iterations: Any = None, warmup_pct_default: float = 0.22,
                      warmdown_start_pct: float = 0.72, warmdown_min_lr: float = 3e-5):
  """Ranger21's learning rate at each 0-based step (official code).

  With ``s = step + 1`` and ``T = num_iterations``: a linear warm-up
  ``lr * min(1, s / W)`` for ``s <= W``, with ``W = ceil(2 / (1 - b2))``
  unless that exceeds 45% of T, then ``int(0.22 T)`` (or
  ``warmup_iterations``); from ``s >= S = int(warmdown_start_pct T)`` a linear
  warm-down ``lr - (lr - min_lr) (s + 1 - S) / (T - S + 1)``, never below
  ``warmdown_min_lr``; the warm-down overrides the warm-up (official order).

  Args:
    learning_rate: the peak learning rate lr, a float.
    num_iterations: the number of training steps T.
    b2: Adam's second-moment decay, which sets the default warm-up length.
    warmup_iterations: the warm-up length W; None uses the rule above, 0 turns
      the warm-up off.
    warmup_pct_default: the fraction of T used for W when ``ceil(2 / (1 - b2))``
      exceeds 45% of T (0.22).
    warmdown_start_pct: the fraction of T at which the warm-down starts; above
      1, none within the T steps.
    warmdown_min_lr: the learning rate at the end of the warm-down (its floor).

  Returns:
    The schedule, a function of the 0-based step that returns the learning rate.
  """
  total = int(num_iterations)
  if warmup_iterations is None:
    w = math.ceil(2 / (1 - b2))
    warmup = int(warmup_pct_default * total) if w / total > 0.45 else w
  else:
    warmup = int(warmup_iterations)
  start = int(warmdown_start_pct * total)

  def schedule(step):
    s = jnp.asarray(step) + 1.0
    lr = learning_rate * jnp.where(s <= warmup, jnp.minimum(1.0, s / max(warmup, 1)), 1.0)
    pct = jnp.minimum((s + 1 - start) / (total - start + 1), 1.0)
    down = jnp.maximum(learning_rate - (learning_rate - warmdown_min_lr) * pct, warmdown_min_lr)
    return jnp.where(s >= start, down, lr)

  return schedule


def ranger21(learning_rate: Any, num_iterations: int = 1000, b1: Any = 0.9, b2: Any = 0.999,
             eps: Any = 1e-8, weight_decay: Any = 1e-4, agc_clipping_value: Any = 1e-2,
             agc_eps: Any = 1e-3, pnm_momentum: Any = 1.0, softplus_beta: Any = 50.0,
             normloss_factor: Any = 1e-4, lookahead_mergetime: int = 5,
             lookahead_blending_alpha: Any = 0.5, *, use_warmup: bool = True,
             warmdown_active: bool = True, warmdown_min_lr: Any = 3e-5):
  """Ranger21: "Ranger21: a synergistic deep learning optimizer" (Wright & Demeure,
  arXiv:2106.13731), official lessw2020/Ranger21 code, AdamW core.

  Per step: AGC (unit-wise, `clip_by_agc`), gradient centralisation and
  division by the gradient's std; Adam with positive-negative momentum and a
  softplus denominator (`scale_by_pnm_adam`); stable weight decay
  (`with_stable_weight_decay`) and norm loss (`add_norm_loss`), both scaled by
  the learning rate; linear warm-up and warm-down over ``num_iterations``
  (`ranger21_schedule`; a schedule given as learning_rate is used as is);
  Lookahead every ``lookahead_mergetime`` steps around all of it. The
  hyperparameters have the official names.

  Deliberate differences from the official code:

  * it applies the stable decay and norm loss only to the *last* parameter of
    each group (they sit outside the parameter loop), here every tensor is
    decayed, as the paper describes;
  * it multiplies the weights by (1 - decay) and (1 - norm loss) one after the
    other before the step, here the three terms are added (they differ by
    products of order ``lr^2 * 1e-8``);
  * it centralises and normalises the gradient twice (the second pass is a
    near no-op), here once.

  MADGRAD core, AdaBelief and Chebyshev options are not offered.

  Args:
    learning_rate: the peak step size, a float >= 0 (then warmed up and down
      as ``use_warmup`` and ``warmdown_active`` say), or an optax schedule of
      the 0-based step, used as is.
    num_iterations: the total number of training steps, >= 1 (official
      ``num_epochs * num_batches_per_epoch``), for the warm-up and warm-down.
    b1: the momentum parameter, in [0, 1) (the two alternating momenta decay
      with ``b1^2``, as in the official code).
    b2: decay of the second moment, in [0, 1); it also sets the warm-up length.
    eps: the denominator constant, >= 0.
    weight_decay: the stable weight decay rate, >= 0 (scaled by the learning
      rate).
    agc_clipping_value: AGC's bound on the unit-wise gradient-to-weight norm
      ratio, > 0.
    agc_eps: AGC's lower bound on the weight norm, >= 0.
    pnm_momentum: the positive-negative momentum factor, >= 0.
    softplus_beta: the beta of the softplus applied to the denominator, > 0;
      None turns the softplus off.
    normloss_factor: the norm-loss coefficient, >= 0 (scaled by the learning
      rate).
    lookahead_mergetime: the Lookahead period in steps, >= 1.
    lookahead_blending_alpha: the Lookahead step toward the fast weights, in
      [0, 1].
    use_warmup: apply the linear warm-up (for a float learning rate).
    warmdown_active: apply the linear warm-down (for a float learning rate).
    warmdown_min_lr: the learning rate at the end of the warm-down, >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params``.

  References:
    "Ranger21: a synergistic deep learning optimizer", arXiv:2106.13731
    (https://arxiv.org/abs/2106.13731). Official code: lessw2020/Ranger21.
  """
  V.check_learning_rate("ranger21", learning_rate)
  V.check_decay("ranger21", "b1", b1)
  V.check_decay("ranger21", "b2", b2)
  V.check_nonneg("ranger21", "eps", eps)
  V.check_nonneg("ranger21", "weight_decay", weight_decay)
  V.check_range("ranger21", "num_iterations", num_iterations, 1)
  for name, value in (("agc_clipping_value", agc_clipping_value),
                      ("softplus_beta", softplus_beta)):
    V.check_positive("ranger21", name, value)
  for name, value in (("agc_eps", agc_eps), ("pnm_momentum", pnm_momentum),
                      ("normloss_factor", normloss_factor), ("warmdown_min_lr", warmdown_min_lr)):
    V.check_nonneg("ranger21", name, value)
  V.check_range("ranger21", "lookahead_blending_alpha", lookahead_blending_alpha, 0.0, 1.0)
  V.check_range("ranger21", "lookahead_mergetime", lookahead_mergetime, 1)
  lr = learning_rate
  if not callable(learning_rate) and (use_warmup or warmdown_active):
    b2v = V._concrete(b2)
    lr = ranger21_schedule(learning_rate, num_iterations, 0.999 if b2v is None else b2v,
                           None if use_warmup else 0,
                           warmdown_start_pct=0.72 if warmdown_active else 2.0,
                           warmdown_min_lr=warmdown_min_lr)
  core = optax.chain(
      clip_by_agc(agc_clipping_value, agc_eps), centralize_gradient(), normalize_gradient_std(),
      with_stable_weight_decay(scale_by_pnm_adam(b1, b2, eps, pnm_momentum, softplus_beta),
                               weight_decay, b2),
      add_norm_loss(normloss_factor, eps), scale_by_learning_rate(lr))
  return recipe_chain("ranger21",
                      with_lookahead(core, lookahead_mergetime, lookahead_blending_alpha))


def core(learning_rate: Any, b1a: Any = 0.7375, b1b: Any = 0.8125, b1c: Any = 250.0,
         b2: Any = 0.99, eps: Any = 1e-8, eta_minus: Any = 0.7375, eta_plus: Any = 1.2,
         step_size_min: Any = 1e-6, step_size_max: Any = 1e-2, weight_decay: Any = 0.1,
         score_history: Any = None, frozen: Any = None, *, adam_like: bool = True):
  """CoRe: "CoRe Optimizer: An All-in-One Solution for Machine Learning"
  (Eckhoff & Reiher, arXiv:2307.15663).

  Adam-like moments with a scheduled ``b1 = b1b + (b1a - b1b) exp(-(t/b1c)^2)``,
  times per-element step sizes s adapted like Rprop (times ``eta_plus`` where
  the momentum keeps its sign, ``eta_minus`` where it flips, clipped to
  ``[step_size_min, step_size_max]``), and plasticity factors P that freeze the
  ``frozen`` fraction of each tensor's most important weights once
  ``score_history`` steps of importance scores exist::

    u = s P m_hat / (sqrt(v_hat) + eps)
    p <- p - u - weight_decay |u| p

  See `scale_by_core`. The defaults are the official ones; the official names
  are given in brackets below.

  Follows the official code (ReiherGroup/CoRe_optimizer, ``core_optimizer.py``,
  which the paper's algorithm matches): the bias correction uses the current
  b1, ``1 - b1_t^t``; the decay scales with ``|u|`` per weight; the scores decay
  only while weights are being frozen. Differences: one weight_decay and one
  frozen fraction for every tensor (the official per-parameter lists: use
  `optax.partition`); no ``maximize`` (negate the loss); b2 must lie in
  [0, 1) (``adam_like=False`` replaces a negative b2); a zero denominator
  (eps=0, v=0) gives a zero step instead of NaN.

  Args:
    learning_rate: [lr] the initial step size ``s_0``, >= 0; a schedule is
      read at step 0 only.
    b1a: [betas] the first-moment decay at step 0, in [0, 1).
    b1b: [betas] the first-moment decay it tends to, in [0, 1).
    b1c: [betas] the width in steps of the b1 schedule, > 0.
    b2: [betas] decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eta_minus: [etas] the step-size factor where the momentum flips sign, in
      (0, 1].
    eta_plus: [etas] the step-size factor where it keeps its sign, >= 1.
    step_size_min: [step_sizes] the smallest step size, > 0.
    step_size_max: [step_sizes] the largest step size, > 0 and not below
      ``step_size_min``; the official advice is 1e-3 for mini-batches, 1.0 for
      full batches.
    weight_decay: the decay rate, >= 0, scaled by ``|u|`` per weight.
    score_history: the number of steps of importance scores before freezing,
      an int >= 0; None means 0, no plasticity.
    frozen: the fraction of each tensor's weights to freeze, in [0, 1]; None
      means 0.0. score_history and frozen shape the computation and default to
      None so that `optax.inject_hyperparams` keeps them static.
    adam_like: False gives the official ``betas[3] < 0`` form,
      ``u = s P sign(m)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params``.

  References:
    "CoRe Optimizer: An All-in-One Solution for Machine Learning",
    arXiv:2307.15663 (https://arxiv.org/abs/2307.15663). Official code:
    ReiherGroup/CoRe_optimizer (``core_optimizer.py``).
  """
  V.check_learning_rate("core", learning_rate)
  V.check_nonneg("core", "weight_decay", weight_decay)
  V.check_nonneg("core", "eps", eps)
  return recipe_chain("core", scale_by_core(
      learning_rate, b1a, b1b, b1c, b2, eps, eta_minus, eta_plus, step_size_min, step_size_max,
      weight_decay, 0 if score_history is None else score_history,
      0.0 if frozen is None else frozen, adam_like=adam_like), scale_by_learning_rate(1.0))


def gravity(learning_rate: Any, alpha: Any = 0.01, beta: Any = 0.9, seed: int = 0):
  """Gravity: "Gravity Optimizer: a Kinematic Approach on Optimization in Deep
  Learning" (Bahrami & Zadeh, arXiv:2101.09192).

  Per tensor, with ``V_0 ~ N(0, (alpha / lr)^2)``::

    zeta = g / (1 + (g max|g|)^2)
    b_t = (beta t + 1) / (t + 2)
    V <- b_t V + (1 - b_t) zeta
    p <- p - lr V

  See `scale_by_gravity`. The hyperparameters have the official names and
  defaults, except the learning rate, whose official default is 0.1. Follows
  the official Keras code (dariush-bahrami/gravity.optimizer), whose t starts
  at 0 (its PyTorch port starts at 1, so its first b_t is ``(beta + 1) / 3``
  instead of 1 / 2).

  Held out of `catalog()`: no learning rate passes all three contract
  convergence problems (``known_failures`` in its catalogue entry).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    alpha: the scale of the initial velocity (its std is ``alpha / lr``), >= 0.
    beta: the decay that ``b_t`` tends to, in [0, 1).
    seed: the integer seed of the initial velocity's key.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Gravity Optimizer: a Kinematic Approach on Optimization in Deep
    Learning", arXiv:2101.09192 (https://arxiv.org/abs/2101.09192). Official
    code: dariush-bahrami/gravity.optimizer.
  """
  V.check_learning_rate("gravity", learning_rate)
  V.check_seed("gravity", seed)
  return recipe_chain("gravity", scale_by_gravity(learning_rate, alpha, beta, seed),
                      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("swats", swats, "adam",
           "Improving Generalization Performance by Switching from Adam to SGD", "1712.07628",
           notes="No official code; follows the paper's Algorithm 1 with whole-model "
                 "projections (the PyTorch port works per tensor)."),
    Recipe("coupled_adam", coupled_adam, "adam", "Better Embeddings with Coupled Adam",
           "2502.08441",
           notes="The default detects paths containing 'embed' (the contract tests, whose "
                 "problems have no embedding, couple every 2-D leaf)."),
    Recipe("innaprop", innaprop, "adam",
           "A second-order-like optimizer with adaptive gradient scaling for deep learning",
           "2410.10243",
           notes="Official-code step (decay first, eps outside the bias-corrected root)."),
    Recipe("adam_cm", adam_cm, "adam",
           "Promoting Exploration in Memory-Augmented Adam using Critical Momenta",
           "2307.09638",
           notes="Official Adam_CM (synced norms = sum of tensor norms, no random FIFO)."),
    Recipe("ranger21", ranger21, "adam", "Ranger21: a synergistic deep learning optimizer",
           "2106.13731",
           notes="Official code, except that stable decay and norm loss reach every tensor "
                 "(the official loop decays only the last one)."),
    Recipe("core", core, "adam", "CoRe Optimizer: An All-in-One Solution for Machine Learning",
           "2307.15663",
           notes="Official ReiherGroup/CoRe_optimizer step; one weight decay and one frozen "
                 "fraction for all tensors."),
    Recipe("gravity", gravity, "adam",
           "Gravity Optimizer: a Kinematic Approach on Optimization in Deep Learning",
           "2101.09192", notes="Official Keras code (t from 0; the PyTorch port starts at 1).",
           known_failures={
               "rosenbrock": "zeta = g / (1 + (g max|g|)^2) shrinks large gradients: at the "
                             "valley's start (|g| ~ 30) a step moves ~lr * 3e-5, so lr 1 ends at "
                             "0.93 of the initial loss (0.3 needed). Rosenbrock needs lr ~ 9-12, "
                             "where the quadratic and the MLP blow up and freeze (beta 0-0.999, "
                             "alpha 0-0.1, lr 0.01-1000 tried; linear warm-ups pass only at "
                             "isolated points)",
           }),
)
