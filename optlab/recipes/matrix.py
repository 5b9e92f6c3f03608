"""Matrix-preconditioned methods: SOAP and its variants, Shampoo, MARS-Shampoo, Muon.

SOAP is `in_eigenbasis` around Adam's moments; each SOAP variant swaps the
inner rule and nothing else. Shampoo is the chain statistics -> inverse roots
-> preconditioning -> grafting -> momentum -> learning rate
(`scale_by_shampoo`); Muon orthogonalises the momentum of matrices with
Newton-Schulz and trains every other tensor with AdamW.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.bases import in_eigenbasis, scale_by_newton_schulz, scale_by_shampoo
from optlab.primitives.decay import add_decayed_weights, add_decayed_weights_after_step
from optlab.primitives.masks import with_leaf_labels
from optlab.primitives.moments import (scale_by_adam, scale_by_adopt, scale_by_lion_momentum,
    scale_by_moments)
from optlab.rules import dual_ema, ema, ema_sq, heavy_ball, unit_scale
from optlab.primitives.normalize import scale_by_rms_normalize
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["soap", "soap_lion", "soap_adopt", "soap_ademamix", "soap_laprop", "muon", "shampoo",
           "mars_shampoo"]


# ------------------------------------------------------------------------ SOAP
def _skip_first(learning_rate: Any):
  """The learning rate as a schedule of the 0-based call that is 0 on the first call.

  SOAP's first call only builds the basis; the official code then skips the
  whole step, weight decay included.
  """
  return lambda step: jnp.where(step == 0, 0.0,
                                learning_rate(step) if callable(learning_rate) else learning_rate)


def _in_soap_basis(where: str, inner, learning_rate, weight_decay, mask, shampoo_beta,
                   precondition_frequency, max_precond_dim, merge_dims, precondition_1d):
  """The SOAP chain around `inner`: in_eigenbasis, learning rate, then decay of the
  updated weights (official SOAP: p <- p - lr * u, then p <- p - lr * wd * p)."""
  V.check_learning_rate(where, learning_rate)
  V.check_nonneg(where, "weight_decay", weight_decay)
  max_precond_dim = 10000 if max_precond_dim is None else max_precond_dim
  basis = in_eigenbasis(inner, precondition_frequency, shampoo_beta, max_precond_dim,
                        merge_dims=merge_dims, precondition_1d=precondition_1d)
  return recipe_chain(where, basis, scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, _skip_first(learning_rate),
                                                     mask))


def _bias_factor(b1: Any, b2: Any):
  """sqrt(1 - b2^t) / (1 - b1^t) as a schedule of the 0-based step (t = step + 1)."""
  return lambda count: jnp.sqrt(1.0 - b2 ** (count + 1.0)) / (1.0 - b1 ** (count + 1.0))


def soap(learning_rate: Any, b1: Any = 0.95, b2: Any = 0.95, shampoo_beta: Any = None,
         eps: Any = 1e-8, weight_decay: Any = 0.01, mask: Any = None,
         precondition_frequency: int = 10, max_precond_dim: Optional[int] = None,
         *, merge_dims: bool = False, precondition_1d: bool = False,
         normalize_grads: bool = False, correct_bias: bool = True, mu_dtype: Any = None):
  """SOAP: "SOAP: Improving and Stabilizing Shampoo using Adam" (arXiv:2409.11321).

  Adam run in the eigenbasis of Shampoo's factors L = EMA(G G^T), R = EMA(G^T G):
  G' = Q_L^T G Q_R;  m, v <- EMAs of G', G'^2 (kept in the rotated basis);
  U = Q_L (m / (sqrt(v) + eps)) Q_R^T * sqrt(1 - b2^t) / (1 - b1^t);
  p <- p - lr U, then p <- p - lr * weight_decay * p. Every
  precondition_frequency steps Q_L, Q_R are refreshed by one power iteration
  and a QR, m is rotated into the new basis and v permuted with the
  eigenvalue order. Here: ``in_eigenbasis(scale_by_adam(b1, b2, eps,
  eps_before_debias=True))``, the learning rate, and the decay.

  Hyperparameters (the official defaults): learning_rate, b1=0.95, b2=0.95,
  shampoo_beta (None: b2), eps, weight_decay=0.01, mask (leaves that decay),
  precondition_frequency=10, max_precond_dim (None: 10000), merge_dims,
  precondition_1d, normalize_grads, correct_bias, mu_dtype.

  Matches the official code, nikhilvyas/SOAP ``soap.py`` at commit a1e5535
  (2024-12, "momentum change"): the first step only accumulates the factors
  and computes their eigenvectors with eigh (no update, no weight decay);
  factors start at zero; eps is added to sqrt(v) before the bias correction;
  the decay applies to the already-updated weights; 1-d tensors and
  dimensions above max_precond_dim are not rotated; ``normalize_grads``
  divides the rotated-back update by its RMS (+1e-30) before the bias
  correction (done here inside the basis: the RMS is rotation-invariant).
  Differences: ``merge_dims`` merges in the array's own axis order (the
  official channels_first behaviour; its ``data_format="channels_last"``
  permutation is not offered); the official code projects m back and forth
  on every step, which changes it only by round-off between refreshes, while
  here it is re-expressed only when the basis changes; the matrix functions
  run in float32 (float64 for float64 params) and fall back to the previous
  basis instead of retrying in float64 when they fail; the power iteration's
  ordering of tied eigenvalues is stable (torch's argsort is not).
  """
  V.check_nonneg("soap", "eps", eps)
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("soap", name, value)
  if correct_bias and not normalize_grads:
    inner = scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, eps_before_debias=True)
  else:
    inner = optax.chain(
        scale_by_moments(ema(b1, debias=False, dtype=mu_dtype), ema_sq(b2, debias=False),
                         eps=eps),
        *([scale_by_rms_normalize(1e-30)] if normalize_grads else []),
        *([optax.scale_by_schedule(_bias_factor(b1, b2))] if correct_bias else []))
  beta = b2 if shampoo_beta is None else shampoo_beta
  return _in_soap_basis("soap", inner, learning_rate, weight_decay, mask, beta,
                        precondition_frequency, max_precond_dim, merge_dims, precondition_1d)


_BASIS_DOC = """
  The basis options (shampoo_beta=0.95, precondition_frequency,
  max_precond_dim, merge_dims, precondition_1d), the skipped first step and
  the decay of the updated weights (weight_decay, mask) are SOAP's (see
  `soap`); no paper or official code defines this combination."""


def soap_lion(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.99, weight_decay: Any = 0.01,
              mask: Any = None, shampoo_beta: Any = 0.95, precondition_frequency: int = 10,
              max_precond_dim: Optional[int] = None, *, merge_dims: bool = False,
              precondition_1d: bool = False, mu_dtype: Any = None):
  """Lion (arXiv:2302.06675) in SOAP's eigenbasis (arXiv:2409.11321).

  U = Q_L sign(b1 m + (1 - b1) G') Q_R^T with G' = Q_L^T G Q_R and
  m <- b2 m + (1 - b2) G' kept in the rotated basis; hyperparameters b1, b2,
  mu_dtype as `lion`."""
  return _in_soap_basis("soap_lion", scale_by_lion_momentum(b1, b2, mu_dtype), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d)  # noqa: E501


def soap_adopt(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6,
               weight_decay: Any = 0.01, mask: Any = None, shampoo_beta: Any = 0.95,
               precondition_frequency: int = 10, max_precond_dim: Optional[int] = None,
               *, merge_dims: bool = False, precondition_1d: bool = False, mu_dtype: Any = None):
  """ADOPT (arXiv:2411.02853) in SOAP's eigenbasis (arXiv:2409.11321).

  `scale_by_adopt` on G' = Q_L^T G Q_R, rotated back; hyperparameters b1, b2,
  eps, mu_dtype as `adopt` (with its clipping)."""
  V.check_nonneg("soap_adopt", "eps", eps)
  return _in_soap_basis("soap_adopt", scale_by_adopt(b1, b2, eps, mu_dtype), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d)  # noqa: E501


def soap_ademamix(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999,
                  alpha: Any = 5.0, eps: Any = 1e-8, weight_decay: Any = 0.01, mask: Any = None,
                  shampoo_beta: Any = 0.95, precondition_frequency: int = 10,
                  max_precond_dim: Optional[int] = None, *, merge_dims: bool = False,
                  precondition_1d: bool = False, mu_dtype: Any = None):
  """AdEMAMix (arXiv:2409.03350) in SOAP's eigenbasis (arXiv:2409.11321).

  (m1_hat + alpha m2) / (sqrt(v_hat) + eps) on G' = Q_L^T G Q_R, rotated back;
  both EMAs rotate with the basis, v is permuted; hyperparameters b1, b2, b3,
  alpha, eps, mu_dtype as `ademamix` (b3 and alpha may be schedules)."""
  for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
    V.check_decay("soap_ademamix", name, value)
  V.check_nonneg("soap_ademamix", "eps", eps)
  V.check_nonneg("soap_ademamix", "alpha", alpha)
  return _in_soap_basis("soap_ademamix", scale_by_moments(dual_ema(b1, b3, alpha, dtype=mu_dtype), ema_sq(b2), eps=eps), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d)  # noqa: E501


def soap_laprop(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-15,
                weight_decay: Any = 0.01, mask: Any = None, shampoo_beta: Any = 0.95,
                precondition_frequency: int = 10, max_precond_dim: Optional[int] = None,
                *, merge_dims: bool = False, precondition_1d: bool = False, mu_dtype: Any = None):
  """LaProp (arXiv:2002.04839) in SOAP's eigenbasis (arXiv:2409.11321).

  m <- b1 m + (1 - b1) G' / (sqrt(v_hat) + eps), U = Q_L (m / (1 - b1^t)) Q_R^T
  with G' = Q_L^T G Q_R; hyperparameters b1, b2, eps, mu_dtype as `laprop`."""
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("soap_laprop", name, value)
  V.check_nonneg("soap_laprop", "eps", eps)
  return _in_soap_basis("soap_laprop", scale_by_moments(ema(b1, dtype=mu_dtype), ema_sq(b2), eps=eps, order="laprop"), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d)  # noqa: E501


for _variant in (soap_lion, soap_adopt, soap_ademamix, soap_laprop):
  if _variant.__doc__:  # None under python -OO
    _variant.__doc__ += _BASIS_DOC


# ------------------------------------------------------------------------ Muon
def _route(transforms: dict, matrices: Any) -> optax.GradientTransformationExtraArgs:
  """`with_leaf_labels` over {"matrix", "other"}, labelled by `matrices`.

  None: 2-d tensors are matrices. Otherwise a tree of bools (or a prefix of
  the params) or a function of the params returning one, as optax's masks.
  """
  if matrices is None:
    return with_leaf_labels(transforms, lambda x: "matrix" if jnp.ndim(x) == 2 else "other")
  init = with_leaf_labels(transforms, lambda x: "other").init

  def update(updates, state, params=None, **extra):
    flags = matrices(updates) if callable(matrices) else matrices
    flags = jax.tree.map(lambda f, sub: jax.tree.map(lambda _: bool(f), sub), flags, updates)
    labels = iter(["matrix" if f else "other" for f in jax.tree.leaves(flags)])
    # with_leaf_labels asks for one label per leaf, in flatten order.
    tx = with_leaf_labels(transforms, lambda x: next(labels))
    return tx.update(updates, state, params, **extra)

  return optax.GradientTransformationExtraArgs(init, update)


def muon(learning_rate: Any, ns_coeffs: tuple = (3.4445, -4.7750, 2.0315), ns_steps: int = 5,
         beta: Any = 0.95, eps: Any = 1e-7, weight_decay: Any = 0.0,
         weight_decay_mask: Any = None, mu_dtype: Any = None, *, nesterov: bool = True,
         consistent_rms: Any = None, matrices: Any = None, adam_b1: Any = 0.9,
         adam_b2: Any = 0.95, adam_eps: Any = 1e-10, adam_weight_decay: Any = 0.0,
         adam_learning_rate: Any = None):
  """Muon: MomentUm Orthogonalized by Newton-Schulz (Keller Jordan, 2024; "Muon is
  Scalable for LLM Training", arXiv:2502.16982).

  For matrices: m <- beta m + (1 - beta) g;  x = (1 - beta) g + beta m (Nesterov,
  else m);  u = NS5(x) * sqrt(max(1, fan_out / fan_in));
  p <- p - lr * (u + weight_decay * p). Every other tensor is trained by
  Adam (adam_b1, adam_b2, adam_eps; decoupled adam_weight_decay) with
  adam_learning_rate (None: learning_rate).
  Hyperparameters: as optax.contrib.muon where it has them (ns_coeffs,
  ns_steps, beta, eps, weight_decay, weight_decay_mask, mu_dtype, nesterov,
  consistent_rms, adam_*); ``matrices`` overrides which tensors are
  orthogonalised: None (the 2-d ones), a tree of bools or a function of the
  params returning one (tensors of rank > 2 are flattened to
  (prod(shape[:-1]), shape[-1])). learning_rate and adam_learning_rate must
  both be numbers or both schedules (one shared state layout).

  Follows Keller Jordan's official code (KellerJordan/Muon, ``muon.py``:
  ``Muon`` / ``MuonWithAuxAdam``): momentum by lerp without bias correction,
  the Nesterov mix (1 - beta) g + beta m, eps=1e-7 in the Frobenius
  normalisation, the (rows/cols)^0.5 scaling, the auxiliary Adam's defaults
  (betas (0.9, 0.95), eps 1e-10). Differences: Newton-Schulz runs in
  float32 (the official code uses bfloat16). optax.contrib.muon differs:
  its momentum is bias-corrected (so its Nesterov mix weighs g and m
  differently), its Adam is NAdam when nesterov=True and shares eps with
  Newton-Schulz; the catalogue's optax adapter feeds optax's Muon
  (beta=0, no Nesterov) with a heavy-ball trace, which orthogonalises to the
  same direction as this recipe.
  """
  V.check_learning_rate("muon", learning_rate)
  if adam_learning_rate is not None:
    V.check_nonneg("muon", "adam_learning_rate", adam_learning_rate)
  for name, value in (("beta", beta), ("adam_b1", adam_b1), ("adam_b2", adam_b2)):
    V.check_decay("muon", name, value)
  for name, value in (("eps", eps), ("adam_eps", adam_eps), ("weight_decay", weight_decay),
                      ("adam_weight_decay", adam_weight_decay), ("consistent_rms", consistent_rms)):
    V.check_nonneg("muon", name, value)
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
  # unit_scale: no second moment for matrices, but Adam's state layout.
  body = _route({
      "matrix": optax.chain(
          scale_by_moments(ema(beta, debias=False, nesterov=nesterov, dtype=mu_dtype),
                           unit_scale()),
          scale_by_newton_schulz(ns_steps, ns_coeffs, eps, consistent_rms),
          add_decayed_weights(weight_decay, weight_decay_mask),
          scale_by_learning_rate(learning_rate)),
      "other": optax.chain(
          scale_by_adam(adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype), optax.identity(),
          add_decayed_weights(adam_weight_decay, weight_decay_mask),
          scale_by_learning_rate(adam_lr)),
  }, matrices)
  return recipe_chain("muon", body)


# --------------------------------------------------------------------- Shampoo
def _shampoo_body(where, learning_rate, block_size, b1, b2, matrix_eps, diagonal_eps,
                  weight_decay, mask, graft_type, start_preconditioning_step,
                  statistics_compute_steps, preconditioning_compute_steps, max_precond_dim,
                  exponent_override, nesterov):
  V.check_learning_rate(where, learning_rate)
  V.check_decay(where, "b1", b1)
  V.check_range(where, "b2", b2, 0.0, 1.0)
  V.check_nonneg(where, "weight_decay", weight_decay)
  V.check_range(where, "start_preconditioning_step", start_preconditioning_step, 0)
  V.check_range(where, "max_precond_dim", max_precond_dim, 1)
  V.check_positive(where, "exponent_override", exponent_override)
  block_size = 128 if block_size is None else block_size
  max_precond_dim = 4096 if max_precond_dim is None else max_precond_dim
  return (scale_by_shampoo(block_size, b2, matrix_eps, diagonal_eps, graft_type,
                           start_preconditioning_step, statistics_compute_steps,
                           preconditioning_compute_steps, max_precond_dim, exponent_override),
          add_decayed_weights(weight_decay, mask),
          scale_by_moments(heavy_ball(b1, nesterov=nesterov), None),
          scale_by_learning_rate(learning_rate))


def shampoo(learning_rate: Any, block_size: Optional[int] = None, b1: Any = 0.9, b2: Any = 0.999,
            matrix_eps: Any = 1e-6, diagonal_eps: Any = 1e-10, weight_decay: Any = 0.0,
            mask: Any = None, graft_type: str = "sgd", start_preconditioning_step: int = 5,
            statistics_compute_steps: int = 1, preconditioning_compute_steps: int = 1,
            max_precond_dim: Optional[int] = None, exponent_override: Any = None,
            *, nesterov: bool = True):
  """Shampoo: "Shampoo: Preconditioned Stochastic Tensor Optimization" (arXiv:1802.09568),
  blocked and grafted as in "Scalable Second Order Optimization for Deep Learning"
  (arXiv:2002.09018) and its code, distributed Shampoo (google-research
  ``scalable_shampoo/optax/distributed_shampoo.py``).

  statistics L_i <- b2 L_i + (1 - b2) G_(i) G_(i)^T per block -> inverse roots
  P_i = (L_i + eps I)^(-1/2k) every preconditioning_compute_steps ->
  S = G x_i P_i -> grafting S ||D|| / ||S|| (D: graft_type's direction) ->
  + weight_decay * p -> momentum m <- b1 m + u, u + b1 m with Nesterov ->
  -learning_rate. See `scale_by_shampoo` for the blocking and grafting.
  Hyperparameters (distributed Shampoo's defaults; its beta1 / beta2 are b1 /
  b2 here): learning_rate, block_size, b1, b2, matrix_eps, diagonal_eps,
  weight_decay, mask, graft_type ("sgd", "adagrad", "rmsprop",
  "rmsprop_normalized"), start_preconditioning_step, statistics_compute_steps,
  preconditioning_compute_steps, max_precond_dim (its
  skip_preconditioning_dim_size_gt), exponent_override, nesterov.
  Preconditions by default: from step 5 (0-based), roots recomputed every
  step. block_size and max_precond_dim default to None (128 and 4096) because
  they shape the state: `optax.inject_hyperparams` would turn an int default
  into a traced value (pass them in its static_args).

  Differences from distributed Shampoo: inverse roots by eigh (exact) instead
  of the coupled Newton iteration (which approximates the same root, and whose
  failures keep the previous root, as the non-finite fallback here does); the
  statistics start at zero; one momentum buffer (distributed Shampoo keeps a
  second, diagonal momentum for the grafting direction when graft_type is not
  sgd and switches buffers at start_preconditioning_step; with sgd grafting it
  shares one buffer, as here); blocks are zero-padded to block_size, which
  gives the same preconditioned values as its smaller last blocks; no
  moving-average momentum, gradient clipping, quantisation or pjit sharding of
  the statistics.
  """
  return recipe_chain("shampoo", *_shampoo_body(
      "shampoo", learning_rate, block_size, b1, b2, matrix_eps, diagonal_eps, weight_decay,
      mask, graft_type, start_preconditioning_step, statistics_compute_steps,
      preconditioning_compute_steps, max_precond_dim, exponent_override, nesterov))


# ---------------------------------------------------------------- MARS-Shampoo
def mars_shampoo(learning_rate: Any, b1: Any = 0.95, eps: Any = 1e-8, weight_decay: Any = 0.0,
                 mask: Any = None, gamma: Any = 0.025, max_norm: Any = 1.0,
                 lr_1d_factor: Any = 1.0, b1_1d: Any = 0.9, b2_1d: Any = 0.95,
                 weight_decay_1d: Any = 0.1, ns_steps: int = 5):
  """MARS-Shampoo: "MARS: Unleashing the Power of Variance Reduction for Training Large
  Models" (arXiv:2411.10438), approximate form, as in the official AGI-Arena/MARS code
  (``mars.py``, ``mars_type="mars-shampoo"``).

  c = g + gamma * b1 / (1 - b1) * (g - g_prev), clipped to norm max_norm per
  tensor (`add_mars_correction`); m <- b1 m + (1 - b1) c;
  update = -lr * (NS5(m / (1 - b1)) * sqrt(max(1, fan_out / fan_in)) +
  weight_decay * p). The paper's Shampoo instance takes U V^T of the SVD of
  m (Shampoo without accumulation); the official code computes it with
  Newton-Schulz (eps=eps), as here (`scale_by_newton_schulz`, with eps
  scaled by 1 - b1, which is the same as dividing m by 1 - b1). Every tensor
  that is not 2-d is trained by AdamW exactly as in `mars_adamw`
  (b1_1d, b2_1d, eps, weight_decay_1d, lr_1d_factor); the official
  optimize_1d=True path is not offered (it is not defined for Shampoo).
  Hyperparameters: the official ``MARS`` defaults (b2 is unused for
  matrices, so there is none). Newton-Schulz runs in float32 (official:
  bfloat16). The whole-matrix Shampoo with Kronecker statistics fed by MARS's
  gradient is a one-line chain of its own:
  ``optax.chain(add_mars_correction(b1, gamma), shampoo(...))``.
  """
  from optlab.recipes.sign_family import mars_chain
  V.check_decay("mars_shampoo", "b1", b1)
  rule = (scale_by_moments(ema(b1, debias=False), unit_scale()),
          scale_by_newton_schulz(ns_steps, eps=eps * (1 - b1)))
  return mars_chain("mars_shampoo", learning_rate, rule, b1, gamma, max_norm, weight_decay,
                    mask, False, lr_1d_factor, b1_1d, b2_1d, eps, weight_decay_1d)


# ------------------------------------------------------------------- catalogue
_SOAP_PAPER = "SOAP: Improving and Stabilizing Shampoo using Adam"
RECIPES = (
    Recipe("soap", soap, "second_order", _SOAP_PAPER, "2409.11321"),
    Recipe("soap_lion", soap_lion, "second_order", _SOAP_PAPER, "2409.11321",
           notes="Lion (arXiv:2302.06675) as the inner rule of SOAP's basis."),
    Recipe("soap_adopt", soap_adopt, "second_order", _SOAP_PAPER, "2409.11321",
           notes="ADOPT (arXiv:2411.02853) as the inner rule of SOAP's basis."),
    Recipe("soap_ademamix", soap_ademamix, "second_order", _SOAP_PAPER, "2409.11321",
           notes="AdEMAMix (arXiv:2409.03350) as the inner rule of SOAP's basis."),
    Recipe("soap_laprop", soap_laprop, "second_order", _SOAP_PAPER, "2409.11321",
           notes="LaProp (arXiv:2002.04839) as the inner rule of SOAP's basis."),
    Recipe("muon", muon, "second_order", "Muon is Scalable for LLM Training", "2502.16982",
           notes="Official code: Keller Jordan's KellerJordan/Muon (blog, Dec 2024)."),
    Recipe("shampoo", shampoo, "second_order",
           "Shampoo: Preconditioned Stochastic Tensor Optimization", "1802.09568"),
    Recipe("mars_shampoo", mars_shampoo, "second_order",
           "MARS: Unleashing the Power of Variance Reduction for Training Large Models",
           "2411.10438", notes="Official code: AGI-Arena/MARS, mars_type='mars-shampoo'."),
)
