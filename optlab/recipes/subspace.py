"""Low-rank subspace methods: GaLore, Natural GaLore, APOLLO, Fira, FRUGAL, Online
Subspace Descent, GWT.

Each recipe is `in_subspace` around an Adam with the method's projector and
residual rule, then the learning rate and the decay. GaLore, Online Subspace
Descent, Fira and APOLLO follow their official codes, which all build on the
transformers AdamW (eps added to sqrt(v) before the bias correction, weight
decay of the already-updated weights, ``p -= lr * wd * p`` after the step);
FRUGAL's official code uses torch-style Adam and decays before the step, and
GWT (no official code checked) uses optax's Adam and AdamW's decay. Leaves
that are not matrices, or whose smaller side is at most the rank, are trained
by the same Adam unprojected (the official codes' "regular" parameter group).
"""

from __future__ import annotations

from typing import Any

import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights, add_decayed_weights_after_step
from optlab.primitives.moments import scale_by_adam, scale_by_moments
from optlab.rules import ema, ema_sq
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.primitives.subspace import (haar_projector, in_subspace, online_pca_projector,
                                        random_projector, scale_by_bias_correction,
                                        scale_by_natural_gradient, svd_projector)

__all__ = ["galore_adamw", "natural_galore", "apollo", "apollo_mini", "fira", "frugal",
           "online_subspace_descent", "gwt_adam"]


def _check(where: str, learning_rate: Any, b1: Any, b2: Any, eps: Any, weight_decay: Any):
  V.check_learning_rate(where, learning_rate)
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_nonneg(where, "weight_decay", weight_decay)


def _hf_adam(b1, b2, eps):
  """The transformers AdamW direction the official codes use: eps added to sqrt(v)
  before the bias correction."""
  return scale_by_adam(b1, b2, eps, eps_before_debias=True)


def _raw_hf_adam(b1, b2, eps):
  """m / (sqrt(v) + eps) without bias correction: the direction whose norms APOLLO
  and Fira compare; `scale_by_bias_correction` after `in_subspace` completes it."""
  return scale_by_moments(ema(b1, debias=False), ema_sq(b2, debias=False), eps=eps)


def _finish(name, subspace, learning_rate, weight_decay, mask, *pre):
  return recipe_chain(name, subspace, *pre, scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, learning_rate, mask))


# ---------------------------------------------------------------------- GaLore
def galore_adamw(learning_rate: Any, rank: int = 128, update_proj_gap: int = 200,
                 scale: Any = 0.25, proj_type: str = "std", b1: Any = 0.9, b2: Any = 0.999,
                 eps: Any = 1e-6, weight_decay: Any = 0.0, mask: Any = None):
  """GaLore-AdamW: "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
  Projection" (arXiv:2403.03507).

  With ``P`` the top-``rank`` singular vectors of G, refreshed every
  ``update_proj_gap`` steps::

    R = P^T G   (or G P^T)
    u = -lr * scale * P adam(R)     (projected back)
    p -= lr * weight_decay * p      (on the updated weights)

  Follows the official code (jiaweizzhao/GaLore) where it differs from the
  paper: ``proj_type="std"`` projects a tall matrix (m >= n) on the right,
  keeping moments at (m, r); Adam is transformers' AdamW (eps added before the
  bias correction); the moments are kept unchanged when P is refreshed; the
  weight decay acts on the already-updated weights. Deliberate differences:
  the SVD runs in at least float32 for every param dtype and its signs are
  aligned with the previous projector (LAPACK's are arbitrary; see
  `svd_projector`); matrices with min(m, n) <= rank are not projected.
  optax.contrib.galore projects like ``proj_type="reverse_std"``, uses
  optax's eps placement and decays the weights before the step.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    rank: the rank r of the projection, an int >= 1; matrices with
      ``min(m, n) <= rank``, and tensors that are not matrices, are trained by
      the same Adam unprojected.
    update_proj_gap: refresh the projector every this many steps, an int >= 1.
    scale: the paper's alpha, multiplying the projected-back update, >= 0
      (default 0.25 as the official README).
    proj_type: the side choice (see `subspace_side`): "std", "reverse_std",
      "left" or "right".
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0 (official
      default 1e-6).
    weight_decay: decay of the updated weights, ``p -= lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
    arXiv:2403.03507 (https://arxiv.org/abs/2403.03507).
    Official code: jiaweizzhao/GaLore.

  Example:
    The (8, 4) matrix is projected to rank 2; the vector is trained by the
    same Adam unprojected:

    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    >>> tx = optlab.galore_adamw(1e-3, rank=2)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.arange(32.0).reshape(8, 4) / 32, "b": jnp.ones(4)}
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["w"].shape, updates["b"].shape
    ((8, 4), (4,))
    >>> bool(jnp.all(jnp.isfinite(updates["w"])))
    True
  """
  _check("galore_adamw", learning_rate, b1, b2, eps, weight_decay)
  V.check_range("galore_adamw", "update_proj_gap", update_proj_gap, 1)
  sub = in_subspace(_hf_adam(b1, b2, eps), svd_projector(), rank, update_proj_gap,
                    scale=scale, proj_type=proj_type)
  return _finish("galore_adamw", sub, learning_rate, weight_decay, mask)


# -------------------------------------------------------------- Natural GaLore
def natural_galore(learning_rate: Any, rank: int = 128, update_proj_gap: int = 200,
                   scale: Any = 0.25, natural_history: int = 20, damping: Any = 1e-3,
                   proj_type: str = "both", b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
                   weight_decay: Any = 0.0, mask: Any = None):
  """Natural GaLore: "Natural GaLore: Accelerating GaLore for memory-efficient LLM
  Training and Fine-tuning" (arXiv:2410.16029).

  GaLore whose low-rank gradient is first multiplied by the inverse empirical
  Fisher of a window of the last ``s = natural_history`` low-rank gradients
  (`scale_by_natural_gradient`, a Woodbury s x s solve), then fed to Adam::

    R = U^T G V   (r x r: U, V the top-r singular vectors of G)
    G_s = [vec R_t, ..., vec R_{t-s+1}]
    R~ = (damping I + G_s G_s^T)^{-1} vec R
    u = -lr * scale * U adam(R~) V^T     (projected back)
    p -= lr * weight_decay * p           (on the updated weights)

  Adam sees the natural gradient, so its second moment normalises it: the
  Fisher supplies the directions, Adam the step size. Leaves that are not
  projected get plain AdamW without the Fisher (the official code's "regular"
  parameter group).

  Follows the official code (selfsupervised-ai/Natural-GaLore, SubSpaceAdamW
  with proj_type "natural_galore"): it projects with a Tucker decomposition
  (tensorly), so a matrix is projected on both sides into an r x r core, and
  the window and Adam's moments live on that core (the paper writes GaLore's
  one-sided P^T G; ``proj_type="std"`` gives that). For a matrix the Tucker
  factors (HOOI from an SVD start, which converges at once) are the top-r
  singular vectors, refreshed every ``update_proj_gap`` steps. One window per
  projected matrix, the current gradient included, the plain sum G G^T (the
  paper defines the empirical Fisher with 1/s but its Woodbury formula and the
  code do not), damping 1e-3, window 20; the window and the moments are kept
  when the projector is refreshed; transformers-AdamW (eps added before the
  bias correction) and the decay of the updated weights, as `galore_adamw`.
  Deliberate differences: the singular vectors' signs are aligned with the
  previous projector's (tensorly flips them by its own convention, on which
  the kept moments would then depend), and matrices with min(m, n) <= rank
  are trained by plain AdamW. The solve uses the push-through form of the
  Woodbury identity (see `scale_by_natural_gradient`).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    rank: the rank r of the projection, an int >= 1; matrices with
      ``min(m, n) <= rank``, and tensors that are not matrices, are trained by
      plain AdamW.
    update_proj_gap: refresh the projector every this many steps, an int >= 1.
    scale: GaLore's alpha, multiplying the projected-back update, >= 0
      (0.25, the official scripts).
    natural_history: s, the number of low-rank gradients in the Fisher's
      window, an int >= 1 (20).
    damping: lambda > 0, the Fisher's Tikhonov damping (1e-3).
    proj_type: the side choice (see `subspace_side`): "both" (the official
      code's Tucker core), or one side as the paper writes: "std",
      "reverse_std", "left" or "right".
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0 (1e-6).
    weight_decay: decay of the updated weights, ``p -= lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args. Its state holds, per
    projected (m, n) matrix, the (m + n) x r projector, s low-rank gradients
    and Adam's two moments, each r x r.

  References:
    "Natural GaLore: Accelerating GaLore for memory-efficient LLM Training and
    Fine-tuning", arXiv:2410.16029 (https://arxiv.org/abs/2410.16029).
    Official code: selfsupervised-ai/Natural-GaLore.
  """
  _check("natural_galore", learning_rate, b1, b2, eps, weight_decay)
  V.check_range("natural_galore", "update_proj_gap", update_proj_gap, 1)
  V.check_int("natural_galore", "natural_history", natural_history, "the window length")
  V.check_range("natural_galore", "natural_history", natural_history, 1)
  V.check_positive("natural_galore", "damping", damping)
  adam = _hf_adam(b1, b2, eps)
  natural = optax.chain(scale_by_natural_gradient(natural_history, damping), adam)
  sub = in_subspace(natural, svd_projector(), rank, update_proj_gap, scale=scale,
                    proj_type=proj_type, regular=adam)
  return _finish("natural_galore", sub, learning_rate, weight_decay, mask)


# ---------------------------------------------------------------------- APOLLO
_PROJS = ("random", "svd")


def apollo(learning_rate: Any, rank: int = 256, update_proj_gap: int = 200, scale: Any = 1.0,
           scale_type: str = "channel", proj: str = "random", proj_type: str = "std",
           b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6, weight_decay: Any = 0.0,
           mask: Any = None, *, scale_front: bool = False, norm_growth_limiter: bool = True,
           seed: int = 0):
  """APOLLO: "APOLLO: SGD-like Memory, AdamW-level Performance" (arXiv:2412.05270).

  R = G P^T (or P^T G) with a random Gaussian P (entries N(0, 1/r)), redrawn
  every ``update_proj_gap`` steps; Adam on R gives U; the update is the *full*
  gradient scaled per channel, passed through Fira's norm-growth limiter
  (gamma 1.01) and multiplied by ``sqrt(scale)``::

    s_j = ||U_j|| / (||R_j|| + 1e-8)    (norms over the rank axis; one factor
                                        per tensor with scale_type="tensor")
    u = -lr * sqrt(scale) * limit(s * G)
    p -= lr * weight_decay * p          (on the updated weights)

  Follows the official code (zhuhanqing/APOLLO): ``sqrt(scale)``, not scale, is
  applied; the norms compare the transformers-AdamW direction *before* bias
  correction, which then multiplies the whole update through the step size
  (`scale_by_bias_correction`); the limiter works on the scaled gradient;
  moments kept when P is redrawn. Deliberate differences: the random matrices
  come from jax.random keyed by ``seed`` (not torch's generator; see
  `random_projector`), and are kept in at least float32.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    rank: the rank r of the projection, an int >= 1 (official 256); matrices
      with ``min(m, n) <= rank``, and tensors that are not matrices, are
      trained by the same Adam unprojected.
    update_proj_gap: redraw the projector every this many steps, an int >= 1.
    scale: the scale of the update, >= 0; ``sqrt(scale)`` is applied.
    scale_type: "channel" (one factor per channel) or "tensor" (one per
      tensor).
    proj: the projector, "random" or "svd".
    proj_type: the side choice (see `subspace_side`): "std", "reverse_std",
      "left" or "right".
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0 (1e-6).
    weight_decay: decay of the updated weights, ``p -= lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    scale_front: apply the limiter after the scale instead of before.
    norm_growth_limiter: use the norm-growth limiter (the official
      ``disable_nl`` negated).
    seed: the int seed of the random projectors.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270
    (https://arxiv.org/abs/2412.05270).
    Official code: zhuhanqing/APOLLO.
  """
  _check("apollo", learning_rate, b1, b2, eps, weight_decay)
  V.check_range("apollo", "update_proj_gap", update_proj_gap, 1)
  V.check_nonneg("apollo", "scale", scale)
  V.check_choice("apollo", "scale_type", scale_type, ("channel", "tensor"))
  V.check_choice("apollo", "proj", proj, _PROJS)
  V.check_seed("apollo", seed)
  projector = random_projector() if proj == "random" else svd_projector()
  sub = in_subspace(_raw_hf_adam(b1, b2, eps), projector, rank, update_proj_gap,
                    scale=scale ** 0.5, proj_type=proj_type, gradient_scaling=scale_type,
                    norm_growth=1.01 if norm_growth_limiter else None,
                    limit_before_scale=not scale_front, seed=seed)
  return _finish("apollo", sub, learning_rate, weight_decay, mask,
                 scale_by_bias_correction(b1, b2))


def apollo_mini(learning_rate: Any, rank: int = 1, update_proj_gap: int = 200,
                scale: Any = 128.0, proj: str = "random", proj_type: str = "std",
                b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6, weight_decay: Any = 0.0,
                mask: Any = None, *, scale_front: bool = False, norm_growth_limiter: bool = True,
                seed: int = 0):
  """APOLLO-Mini (arXiv:2412.05270): `apollo` with a rank-1 random subspace and one
  scaling factor per tensor, s = ||U|| / (||R|| + 1e-8), and the official
  README's scale 128 (sqrt(128) is applied). Its state per (m, n) matrix is
  two moments of m or n entries plus the projector: SGD-level memory.
  Hyperparameters and differences: as `apollo`.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    rank: the rank r of the projection, an int >= 1 (1: APOLLO-Mini).
    update_proj_gap: redraw the projector every this many steps, an int >= 1.
    scale: the scale of the update, >= 0; ``sqrt(scale)`` is applied.
    proj: the projector, "random" or "svd".
    proj_type: the side choice (see `subspace_side`): "std", "reverse_std",
      "left" or "right".
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0.
    weight_decay: decay of the updated weights, ``p -= lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    scale_front: apply the limiter after the scale instead of before.
    norm_growth_limiter: use the norm-growth limiter (the official
      ``disable_nl`` negated).
    seed: the int seed of the random projectors.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270
    (https://arxiv.org/abs/2412.05270).
    Official code: zhuhanqing/APOLLO.
  """
  _check("apollo_mini", learning_rate, b1, b2, eps, weight_decay)
  V.check_range("apollo_mini", "update_proj_gap", update_proj_gap, 1)
  V.check_nonneg("apollo_mini", "scale", scale)
  V.check_choice("apollo_mini", "proj", proj, _PROJS)
  V.check_seed("apollo_mini", seed)
  projector = random_projector() if proj == "random" else svd_projector()
  sub = in_subspace(_raw_hf_adam(b1, b2, eps), projector, rank, update_proj_gap,
                    scale=scale ** 0.5, proj_type=proj_type, gradient_scaling="tensor",
                    norm_growth=1.01 if norm_growth_limiter else None,
                    limit_before_scale=not scale_front, seed=seed)
  return _finish("apollo_mini", sub, learning_rate, weight_decay, mask,
                 scale_by_bias_correction(b1, b2))


# ------------------------------------------------------------------------ Fira
def fira(learning_rate: Any, rank: int = 128, update_proj_gap: int = 200, alpha: Any = 0.25,
         proj_type: str = "std", b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
         weight_decay: Any = 0.0, mask: Any = None):
  """Fira: "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank
  Constraint?" (arXiv:2410.01623).

  GaLore's SVD subspace plus the residual. With R the projected gradient,
  ``back`` the projection back and ``limit`` the norm-growth limiter (gamma
  1.01)::

    N = adam(R)
    phi_j = ||N_j|| / (||R_j|| + 1e-8)      (per channel, norms over the rank axis)
    u = alpha * back(N) + limit(phi * (G - alpha * back(R)))
    update = -lr * u;  p -= lr * weight_decay * p

  Follows the official code (xichen-fy/Fira, fira_adamw.py): phi and the
  limiter see the transformers-AdamW direction *before* bias correction, which
  then multiplies the whole update (`scale_by_bias_correction`); the
  subtracted projection includes alpha; moments are kept across refreshes.
  Deliberate differences: as `galore_adamw` (float32+ SVD, aligned signs).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    rank: the rank r of the projection, an int >= 1 (128).
    update_proj_gap: refresh the projector every this many steps, an int >= 1
      (200).
    alpha: the scale of the low-rank part, >= 0 (0.25, the official scripts).
    proj_type: the side choice (see `subspace_side`): "std", "reverse_std",
      "left" or "right".
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0 (1e-6).
    weight_decay: decay of the updated weights, ``p -= lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank
    Constraint?", arXiv:2410.01623 (https://arxiv.org/abs/2410.01623).
    Official code: xichen-fy/Fira (fira_adamw.py).
  """
  _check("fira", learning_rate, b1, b2, eps, weight_decay)
  V.check_range("fira", "update_proj_gap", update_proj_gap, 1)
  V.check_nonneg("fira", "alpha", alpha)
  sub = in_subspace(_raw_hf_adam(b1, b2, eps), svd_projector(), rank, update_proj_gap,
                    scale=alpha, proj_type=proj_type, residual="norm_scaled", norm_growth=1.01)
  return _finish("fira", sub, learning_rate, weight_decay, mask,
                 scale_by_bias_correction(b1, b2))


# ---------------------------------------------------------------------- FRUGAL
def frugal(learning_rate: Any, rank: int = 128, update_gap: int = 200,
           proj_params_lr_scale: Any = 1.0, inactive_lr_scale: Any = 1.0,
           proj_type: str = "std", *, reset_statistics: bool = True, b1: Any = 0.9,
           b2: Any = 0.999, eps: Any = 1e-8, weight_decay: Any = 0.01, mask: Any = None):
  """FRUGAL: "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for
  Scalable Training" (arXiv:2411.07837).

  The gradient is split by GaLore's SVD projector: Adam (state-full) runs on
  ``R = proj(G)`` and signSGD (state-free) on the rest; with
  ``s = proj_params_lr_scale`` and ``s_in = inactive_lr_scale``::

    p <- p * (1 - lr * weight_decay)        (before the step)
    u = -lr * (s * back(adam(R)) + s * s_in * sign(G - back(R)))

  Every ``update_gap`` steps the projector is refreshed and, with
  ``reset_statistics``, the Adam state of the projected leaves (its step count
  included) starts afresh.

  Follows the official code's GaloreAdamW (proj_optimizer_templates.py /
  adamw.py): torch-style Adam (eps after the bias correction), decay before
  the step. Deliberate difference: a fixed ``rank`` instead of the official
  ``density`` (rank = density * dimension); only the SVD projector (the
  official RandK and block projectors are not built).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    rank: the rank r of the projection, an int >= 1.
    update_gap: refresh the projector every this many steps, an int >= 1 (200).
    proj_params_lr_scale: s, the scale of the whole update, >= 0.
    inactive_lr_scale: s_in, the further scale of the signSGD part, >= 0.
    proj_type: the side choice (see `subspace_side`): "std", "reverse_std",
      "left" or "right".
    reset_statistics: restart the projected leaves' Adam state on each refresh.
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0 (1e-8).
    weight_decay: decoupled weight decay before the step, multiplied by the
      learning rate, >= 0 (0.01).
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for
    Scalable Training", arXiv:2411.07837 (https://arxiv.org/abs/2411.07837).
  """
  _check("frugal", learning_rate, b1, b2, eps, weight_decay)
  V.check_range("frugal", "update_gap", update_gap, 1)
  V.check_nonneg("frugal", "proj_params_lr_scale", proj_params_lr_scale)
  V.check_nonneg("frugal", "inactive_lr_scale", inactive_lr_scale)
  sub = in_subspace(scale_by_adam(b1, b2, eps), svd_projector(), rank, update_gap,
                    scale=proj_params_lr_scale, proj_type=proj_type, residual="sign",
                    sign_scale=proj_params_lr_scale * inactive_lr_scale,
                    on_refresh="reset" if reset_statistics else "keep")
  return recipe_chain("frugal", sub, add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


# ------------------------------------------------------ Online Subspace Descent
def online_subspace_descent(learning_rate: Any, rank: int = 128, update_proj_gap: int = 200,
                            scale: Any = 1.0, proj_type: str = "std", b1: Any = 0.9,
                            b2: Any = 0.999, eps: Any = 1e-6, weight_decay: Any = 0.0,
                            mask: Any = None):
  """Online Subspace Descent: "Memory-Efficient LLM Training with Online Subspace
  Descent" (arXiv:2408.12857).

  GaLore with the SVD projector replaced by online PCA: P starts as the SVD
  projector of the first gradient and then takes one AdamW step per step (lr
  ``1 / update_proj_gap``) on a PCA loss (`online_pca_projector`)::

    Gn = G / ||G||;  P <- AdamW step on ||Gn P^T P - Gn||^2
    u = -lr * scale * back(adam(proj(G)))
    p -= lr * weight_decay * p          (on the updated weights)

  Follows the official code (kyleliang919/Online-Subspace-Descent, proj_type
  "continuous"): transformers-AdamW for the weights, torch AdamW defaults for
  P, P used for this step's projection and back-projection before its own
  update. Deliberate difference: the projector's step size stays
  ``1 / update_proj_gap`` (the official code multiplies it by the ratio of the
  current to the initial learning rate of the schedule).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    rank: the rank r of the projection, an int >= 1.
    update_proj_gap: sets the projector's step size ``1 / update_proj_gap``,
      an int >= 1.
    scale: multiplies the projected-back update, >= 0.
    proj_type: the side choice (see `subspace_side`): "std", "reverse_std",
      "left" or "right".
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0 (1e-6).
    weight_decay: decay of the updated weights, ``p -= lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "Memory-Efficient LLM Training with Online Subspace Descent",
    arXiv:2408.12857 (https://arxiv.org/abs/2408.12857).
    Official code: kyleliang919/Online-Subspace-Descent.
  """
  _check("online_subspace_descent", learning_rate, b1, b2, eps, weight_decay)
  V.check_range("online_subspace_descent", "update_proj_gap", update_proj_gap, 1)
  sub = in_subspace(_hf_adam(b1, b2, eps), online_pca_projector(), rank, update_proj_gap,
                    scale=scale, proj_type=proj_type)
  return _finish("online_subspace_descent", sub, learning_rate, weight_decay, mask)


# ------------------------------------------------------------------------- GWT
def gwt_adam(learning_rate: Any, level: int = 2, scale: Any = 1.0, proj_type: str = "std",
             b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, weight_decay: Any = 0.0,
             mask: Any = None):
  """GWT-Adam: "Breaking Memory Limits: Gradient Wavelet Transform Enhances LLMs
  Training" (arXiv:2501.07237).

  A ``level``-level orthonormal Haar transform H along one axis of each matrix
  gradient (the axis ``proj_type`` picks, as GaLore's side rule); Adam keeps
  its moments for the approximation coefficients only (a 2^level smaller
  state) and its output is mapped back by the inverse transform::

    u = -lr * (scale * H^T adam(H G) + weight_decay * p)

  A matrix whose axis is not divisible by 2^level is trained unprojected.

  No official code was available to us; this follows our reading of the
  paper and is therefore a projection method: the detail coefficients are
  dropped (GaLore-style). If the paper's algorithm also passes the detail
  coefficients through (normalised by the approximation's second moment), that
  part is missing here. Adam is optax's (eps after the bias correction) and
  the decay is AdamW's.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    level: the number of Haar levels, an int >= 1 (2).
    scale: multiplies the transformed-back update, >= 0.
    proj_type: the side choice (see `subspace_side`): "std", "reverse_std",
      "left" or "right".
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0.
    weight_decay: decoupled weight decay, multiplied by the learning rate,
      >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "Breaking Memory Limits: Gradient Wavelet Transform Enhances LLMs
    Training", arXiv:2501.07237 (https://arxiv.org/abs/2501.07237).
  """
  _check("gwt_adam", learning_rate, b1, b2, eps, weight_decay)
  sub = in_subspace(scale_by_adam(b1, b2, eps), haar_projector(level), 1, 1 << 30,
                    scale=scale, proj_type=proj_type)
  return recipe_chain("gwt_adam", sub, add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("galore_adamw", galore_adamw, "memory_efficient",
           "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
           "2403.03507",
           notes="Official-code side choice ('std') by default; the contract tests use "
                 "'reverse_std', the side optax.contrib.galore projects on; 'std' is checked "
                 "against the reference in tests/test_subspace.py. The contract has no optax "
                 "comparison, as optax.contrib.galore computes the SVD in float32 even for "
                 "float64 params (agreement ~1e-7 absolute, not rtol 1e-5 on near-zero "
                 "entries); tests/test_subspace.py compares with it at atol 1e-6. "
                 "Refreshed projectors are sign-aligned with the previous ones."),
    Recipe("natural_galore", natural_galore, "memory_efficient",
           "Natural GaLore: Accelerating GaLore for memory-efficient LLM Training and "
           "Fine-tuning", "2410.16029",
           notes="Two-sided projection into an r x r core, as the official code's Tucker "
                 "decomposition (the paper writes one side: proj_type='std'); singular vectors "
                 "sign-aligned across refreshes; per-matrix window of low-rank gradients, kept "
                 "across refreshes; Woodbury in push-through form."),
    Recipe("apollo", apollo, "memory_efficient",
           "APOLLO: SGD-like Memory, AdamW-level Performance", "2412.05270",
           notes="Random projections from jax.random (key schedule in random_projector); "
                 "the reference draws the same matrices from that documented schedule."),
    Recipe("apollo_mini", apollo_mini, "memory_efficient",
           "APOLLO: SGD-like Memory, AdamW-level Performance", "2412.05270"),
    Recipe("fira", fira, "memory_efficient",
           "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?",
           "2410.01623"),
    Recipe("frugal", frugal, "memory_efficient",
           "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable "
           "Training", "2411.07837",
           notes="A fixed rank instead of the official density; SVD projector only."),
    Recipe("online_subspace_descent", online_subspace_descent, "memory_efficient",
           "Memory-Efficient LLM Training with Online Subspace Descent", "2408.12857"),
    Recipe("gwt_adam", gwt_adam, "memory_efficient",
           "Breaking Memory Limits: Gradient Wavelet Transform Enhances LLMs Training",
           "2501.07237",
           notes="Detail coefficients dropped (projection form); no official code checked."),
)
