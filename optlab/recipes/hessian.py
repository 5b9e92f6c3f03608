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

  The update, with ``k = update_interval`` and ``z`` Rademacher probes::

    m_hat = EMA_b1(g) / (1 - b1^t)
    every k steps:  h <- b2 h + (1 - b2) z * (H z)
    u = -lr * (clip(m_hat / max(gamma h, eps), clip_threshold) + weight_decay * p)

  The hyperparameters take optax.contrib.sophia's names and defaults, plus
  ``n_probes``, ``seed`` and ``axis_name`` (optax.contrib.sophia does not
  average the estimate over replicas, so its replicas diverge).

  The official PyTorch repository has only Sophia-G; Sophia-H's official code
  is levanter's (by the paper's authors), which optax.contrib.sophia follows
  and this matches: m is bias-corrected (the paper's Algorithm 3 is not), h is
  refreshed on steps 1, k+1, ... after the step's update (so each estimate is
  first used on the next step), eps sits in a max as in the paper (the
  official Sophia-G code adds 1e-15 instead). Probes are Rademacher (as optax;
  levanter draws Gaussian ones).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the momentum ``m``, in [0, 1).
    b2: decay of the Hessian EMA ``h``, in [0, 1).
    eps: floor of the denominator ``gamma h``, >= 0.
    weight_decay: decoupled weight decay (multiplied by the learning rate), >= 0.
    weight_decay_mask: the leaves that decay: a tree of bools (or a prefix of
      the params) or a function of the params returning one, as optax's masks;
      None decays every leaf.
    gamma: the paper's rho, the scale of ``h`` in the denominator, >= 0.
    clip_threshold: bound of the element-wise clip of the preconditioned
      momentum, > 0; None disables the clip.
    update_interval: refresh ``h`` every this many steps (k), an int >= 1.
    n_probes: Rademacher probes averaged per Hessian estimate, an int >= 1.
    seed: the int seed of the probes.
    axis_name: a pmap axis over which each fresh estimate is averaged (the
      probes are shared), or None.
    mu_dtype: the dtype of ``m``; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``: a function params -> scalar loss on
    the current batch, whose Hessian-vector products give the estimate.

  References:
    "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", arXiv:2305.14342 (https://arxiv.org/abs/2305.14342).
    Official code: levanter (Sophia-H), followed by optax.contrib.sophia.

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> def loss(p):
    ...   return jnp.sum(p["w"] ** 2)
    >>> tx = optlab.sophia_h(1e-3)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5)}
    >>> updates, state = tx.update(grads, state, params, obj_fn=loss)
    >>> updates["w"].shape
    (3, 2)
    >>> bool(jnp.all(jnp.isfinite(updates["w"])))
    True
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

  The update, with ``k = update_interval``, ``B`` the number of logit rows and
  ``y^ ~ softmax(logits)`` sampled labels::

    m = EMA_b1(g)                               (no bias correction)
    on steps k+1, 2k+1, ...:  h <- b2 h + (1 - b2) B * grad(CE(logits, y^))^2
    u = -lr * (clip(m / max(gamma h, eps), clip_threshold) + weight_decay * p)

  ``h`` is refreshed *before* the step's update (the official loop refreshes
  after steps k, 2k, ... at the new params), so steps 1..k run with ``h = 0``,
  i.e. clipped sign-momentum steps, as there. Defaults come from the official
  code (rho = gamma = 0.04, weight_decay = 0.1, eps = 1e-15).

  Differences from the official code: eps enters as ``max(gamma h, eps)`` (the
  paper's form) instead of ``gamma h + eps`` (identical unless ``gamma h`` is
  within a few eps of 0); the official ``rho * bs * hess`` is our ``gamma * h``
  with the batch size folded into the estimate (the same product). Under pmap
  with ``axis_name`` the per-replica estimates are averaged; the official DDP
  run averages the sampled gradients before squaring (and multiplies by the
  global batch). Both have the same expectation; ours stays identical to a
  single-device run when every replica sees the same batch.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the momentum ``m``, in [0, 1).
    b2: decay of the Hessian EMA ``h``, in [0, 1).
    eps: floor of the denominator ``gamma h``, >= 0.
    weight_decay: decoupled weight decay (multiplied by the learning rate), >= 0.
    weight_decay_mask: the leaves that decay: a tree of bools (or a prefix of
      the params) or a function of the params returning one, as optax's masks;
      None decays every leaf.
    gamma: the paper's rho, the scale of ``h`` in the denominator, >= 0.
    clip_threshold: bound of the element-wise clip of the preconditioned
      momentum, > 0; None disables the clip.
    update_interval: refresh ``h`` every this many steps (k), an int >= 1.
    seed: the int seed of the sampled labels.
    axis_name: a pmap axis over which each fresh estimate is averaged, or None.
    mu_dtype: the dtype of ``m``; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``logits_fn``: a function params -> logits of
    the current batch, of shape (..., classes).

  References:
    "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", arXiv:2305.14342 (https://arxiv.org/abs/2305.14342).
    Official code: Liuhong99/Sophia (SophiaG and train_sophiag.py).
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

  The update, with ``z`` Rademacher probes (for 4-D conv kernels ``abs(D)`` is
  averaged over ``spatial_axes``)::

    D = z * (H z)
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) D^2
    u = -lr * (m / (1 - b1^t) / (sqrt(v_hat)^hessian_power + eps) + weight_decay * p)

  The hyperparameters take the official names and defaults (betas -> b1, b2;
  eps=1e-4; hessian_power=1; weight_decay=0). ``update_interval`` refreshes D
  every k steps (the official optimizer refreshes every step, k = 1); v's bias
  correction counts refreshes.

  As in the official code (and its fairseq and TF versions) the weight decay is
  added to the bias-corrected step, ``-lr * (m_hat / denom + weight_decay * p)``:
  it is scaled by lr but not divided by ``1 - b1^t``. It stays inside
  `scale_by_adahessian` rather than a separate `add_decayed_weights`.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the first moment ``m``, in [0, 1).
    b2: decay of the second moment ``v`` of the Hessian diagonal, in [0, 1).
    eps: added to the denominator, >= 0.
    weight_decay: weight decay added to the step (multiplied by the learning
      rate, not bias-corrected), >= 0.
    hessian_power: the power of ``sqrt(v_hat)`` in the denominator, > 0.
    update_interval: refresh ``D`` every this many steps, an int >= 1.
    n_probes: Rademacher probes averaged per estimate, an int >= 1.
    spatial_axes: the axes of 4-D conv kernels over which ``abs(D)`` is
      averaged: (0, 1), the spatial dims of flax's HWIO kernels (the official
      PyTorch code averages dims (2, 3) of OIHW); None: no averaging.
    seed: the int seed of the probes.
    axis_name: a pmap axis over which each fresh estimate is averaged, or None.
    mu_dtype: the dtype of ``m``; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``: a function params -> scalar loss on
    the current batch, whose Hessian-vector products give ``D``.

  References:
    "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning",
    arXiv:2006.00719 (https://arxiv.org/abs/2006.00719).
    Official code: amirgholami/adahessian.
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

  The update, with ``m = ngrads`` and the window holding the last m gradients
  ``g_i`` (zero rows at first)::

    g <- g + weight_decay * p            (coupled, as the official step)
    d = (damp I + (1/m) sum_i g_i g_i^T)^{-1} g
    v <- momentum v + (1 - momentum) d
    u = -lr * v

  The hyperparameters take the official names and defaults (lr 1e-3 there,
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

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    momentum: decay of the momentum ``v`` of the preconditioned direction, in
      [0, 1); 0 uses ``d`` directly.
    weight_decay: coupled weight decay, added to the gradient before the
      inverse-Fisher product, >= 0.
    ngrads: the number m of past gradients in the window, an int >= 1 (it sets
      the state's shape).
    damp: the dampening added to the empirical Fisher's diagonal, > 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information",
    arXiv:2107.03356 (https://arxiv.org/abs/2107.03356).
    Official code: IST-DASLab/M-FAC (optim.MFAC).
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

  Every ``T = update_interval`` steps (from step ``warmup``, default T) Lanczos
  with ``num_iters`` (default 4k) Hessian-vector products finds the top-k
  eigenpairs; the gradient's part in that eigenspace takes a momentum
  (``decay``) Newton step scaled by ``alpha``, the rest goes to the base
  optimizer, by default ``AdamW(learning_rate, b1, b2, eps, weight_decay)`` (the
  official examples' optax.adam with an AdamW decay). With ``V`` the (k, d)
  matrix of the eigenvectors and ``lambda`` their eigenvalues::

    g1 = V^T V g;  g2 = g - g1
    mom <- decay mom + (1 - decay) g1
    u = base(g2) (its V-part removed) - alpha * V^T (abs(1 / lambda) * V mom)

  Official defaults: T=100, k=5, alpha=0.1, decay=0.9, learning-rate clip 1
  (Adam base: the base step is never rescaled).

  Args:
    learning_rate: the base optimizer's step size, a float >= 0 or an optax
      schedule; with ``base`` given it is only validated.
    b1: the default AdamW base's first-moment decay, in [0, 1).
    b2: the default AdamW base's second-moment decay, in [0, 1).
    eps: the default AdamW base's eps, >= 0.
    weight_decay: the default AdamW base's decoupled weight decay, >= 0.
    k: the number of top eigenpairs, an int >= 1.
    num_iters: Lanczos iterations (Hessian-vector products) per refresh, an int
      >= k; None: 4k.
    update_interval: recompute the eigenpairs every this many steps (T), an int
      >= 1.
    warmup: the first step that computes eigenpairs, an int >= 1; None: T.
    alpha: the scale of the Newton step, >= 0.
    decay: the decay of the Newton part's momentum, in [0, 1).
    base: an optax transformation that replaces the AdamW base on the
      complement; it must include its learning rate (return the final, negated
      step).
    seed: the int seed of the Lanczos start vector (the same at every refresh).
    axis_name: a pmap axis over which the Hessian-vector products are averaged,
      or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``: a function params -> scalar loss on
    the current batch, whose Hessian-vector products feed Lanczos.

  References:
    "FOSI: Hybrid First and Second Order Optimization", arXiv:2302.08484
    (https://arxiv.org/abs/2302.08484).
    Official code: hsivan/fosi (fosi_adam).
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
