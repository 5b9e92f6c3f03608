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
from optlab.primitives.routing import route
from optlab.primitives.moments import (scale_by_adam, scale_by_adopt, scale_by_lion_momentum,
    scale_by_moments)
from optlab.rules import dual_ema, ema, ema_sq, heavy_ball
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
                   precondition_frequency, max_precond_dim, merge_dims, precondition_1d,
                   block_multiple, axis_name, compute_dtype=None):
  """The SOAP chain around `inner`: in_eigenbasis, learning rate, then decay of the
  updated weights (official SOAP: p <- p - lr * u, then p <- p - lr * wd * p)."""
  V.check_learning_rate(where, learning_rate)
  V.check_nonneg(where, "weight_decay", weight_decay)
  max_precond_dim = 10000 if max_precond_dim is None else max_precond_dim
  basis = in_eigenbasis(inner, precondition_frequency, shampoo_beta, max_precond_dim,
                        merge_dims=merge_dims, precondition_1d=precondition_1d,
                        block_multiple=block_multiple, axis_name=axis_name,
                        compute_dtype=compute_dtype, canonical_order=True)
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
         normalize_grads: bool = False, correct_bias: bool = True, mu_dtype: Any = None,
         block_multiple: int = 1, axis_name: Any = None,
         compute_dtype: Any = None):
  """SOAP: "SOAP: Improving and Stabilizing Shampoo using Adam" (arXiv:2409.11321).

  Adam run in the eigenbasis of Shampoo's factors ``L = EMA(G G^T)``,
  ``R = EMA(G^T G)``, with ``Q_L``, ``Q_R`` their eigenvectors::

    G' = Q_L^T G Q_R
    m, v <- EMAs of G', G'^2              (kept in the rotated basis)
    U = Q_L (m / (sqrt(v) + eps)) Q_R^T * sqrt(1 - b2^t) / (1 - b1^t)
    p <- p - lr U, then p <- p - lr * weight_decay * p

  Every ``precondition_frequency`` steps ``Q_L``, ``Q_R`` are refreshed by one
  power iteration and a QR, m is rotated into the new basis and v permuted with
  the eigenvalue order. Here: ``in_eigenbasis(scale_by_adam(b1, b2, eps,
  eps_before_debias=True))``, the learning rate, and the decay. The defaults
  are the official ones.

  Matches the official code, nikhilvyas/SOAP ``soap.py`` at commit a1e5535
  (2024-12, "momentum change"): the first step only accumulates the factors
  and computes their eigenvectors with eigh (no update, no weight decay);
  factors start at zero; eps is added to ``sqrt(v)`` before the bias
  correction; the decay applies to the already-updated weights; 1-d tensors and
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

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (the
      first step is skipped whatever its value).
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    shampoo_beta: decay of the Shampoo factors' EMA, in [0, 1); None: ``b2``.
    eps: added to ``sqrt(v)`` before the bias correction, >= 0.
    weight_decay: decay of the updated weights, ``p <- p - lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    precondition_frequency: refresh the eigenbasis every this many steps, an
      int >= 1.
    max_precond_dim: the largest dimension that is rotated, an int >= 1; None:
      10000.
    merge_dims: merge consecutive small dimensions of tensors of rank >= 2
      while their product is <= max_precond_dim.
    precondition_1d: rotate 1-d tensors too.
    normalize_grads: divide the update by its RMS before the bias correction.
    correct_bias: apply Adam's bias correction ``sqrt(1 - b2^t) / (1 - b1^t)``.
    mu_dtype: the dtype of the first moment; None keeps the params' dtype.
    block_multiple: pad every stack of same-shaped blocks to a multiple of
      this many blocks (the devices `optlab.state_sharding` splits the state
      over), an int >= 1.
    axis_name: under pmap, the axis whose devices share the basis refreshes
      (each computes 1/n of them); under jit, a `jax.sharding.Mesh` (or
      `optlab.mesh_route` of it, for params split over several mesh axes
      jointly): each device refreshes the blocks it holds; None: every
      device computes all.
    compute_dtype: None (float32 rotations at full precision) or e.g.
      ``jnp.bfloat16``: their inputs in that dtype, accumulated in float32
      (the statistics stay float32; updates move by ~1e-2 relative).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321
    (https://arxiv.org/abs/2409.11321).
    Official code: nikhilvyas/SOAP (``soap.py``, commit a1e5535).

  Example:
    The first step only builds the basis, so its update is zero:

    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.soap(3e-3)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.arange(6.0).reshape(3, 2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> bool(jnp.all(updates["w"] == 0))
    True
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["w"].shape, bool(jnp.any(updates["w"] != 0))
    ((3, 2), True)
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
                        precondition_frequency, max_precond_dim, merge_dims, precondition_1d,
                        block_multiple, axis_name, compute_dtype)


def soap_lion(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.99, weight_decay: Any = 0.01,
              mask: Any = None, shampoo_beta: Any = 0.95, precondition_frequency: int = 10,
              max_precond_dim: Optional[int] = None, *, merge_dims: bool = False,
              precondition_1d: bool = False, mu_dtype: Any = None,
              block_multiple: int = 1, axis_name: Any = None,
              compute_dtype: Any = None):
  """Lion (arXiv:2302.06675) in SOAP's eigenbasis (arXiv:2409.11321).

  With ``G' = Q_L^T G Q_R`` and ``m`` kept in the rotated basis::

    U = Q_L sign(b1 m + (1 - b1) G') Q_R^T
    m <- b2 m + (1 - b2) G'

  The basis options (shampoo_beta=0.95, precondition_frequency,
  max_precond_dim, merge_dims, precondition_1d), the skipped first step and
  the decay of the updated weights (weight_decay, mask) are SOAP's (see
  `soap`); no paper or official code defines this combination.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (the
      first step is skipped whatever its value).
    b1: Lion's interpolation weight of the momentum in the sign, in [0, 1).
    b2: decay of Lion's momentum ``m``, in [0, 1).
    weight_decay: decay of the updated weights, ``p <- p - lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    shampoo_beta: decay of the Shampoo factors' EMA, in [0, 1).
    precondition_frequency: refresh the eigenbasis every this many steps, an
      int >= 1.
    max_precond_dim: the largest dimension that is rotated, an int >= 1; None:
      10000.
    merge_dims: merge consecutive small dimensions of tensors of rank >= 2
      while their product is <= max_precond_dim.
    precondition_1d: rotate 1-d tensors too.
    mu_dtype: the dtype of the first moment; None keeps the params' dtype.
    block_multiple: pad every stack of same-shaped blocks to a multiple of
      this many blocks (the devices `optlab.state_sharding` splits the state
      over), an int >= 1.
    axis_name: under pmap, the axis whose devices share the basis refreshes
      (each computes 1/n of them); under jit, a `jax.sharding.Mesh` (or
      `optlab.mesh_route` of it, for params split over several mesh axes
      jointly): each device refreshes the blocks it holds; None: every
      device computes all.
    compute_dtype: None (float32 rotations at full precision) or e.g.
      ``jnp.bfloat16``: their inputs in that dtype, accumulated in float32
      (the statistics stay float32; updates move by ~1e-2 relative).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321
    (https://arxiv.org/abs/2409.11321).
    "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675
    (https://arxiv.org/abs/2302.06675).
  """
  return _in_soap_basis("soap_lion", scale_by_lion_momentum(b1, b2, mu_dtype), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d, block_multiple, axis_name, compute_dtype)  # noqa: E501


def soap_adopt(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6,
               weight_decay: Any = 0.01, mask: Any = None, shampoo_beta: Any = 0.95,
               precondition_frequency: int = 10, max_precond_dim: Optional[int] = None,
               *, merge_dims: bool = False, precondition_1d: bool = False, mu_dtype: Any = None,
               block_multiple: int = 1, axis_name: Any = None,
               compute_dtype: Any = None):
  """ADOPT (arXiv:2411.02853) in SOAP's eigenbasis (arXiv:2409.11321).

  `scale_by_adopt` (with its clipping) on ``G' = Q_L^T G Q_R``, rotated back.

  The basis options (shampoo_beta=0.95, precondition_frequency,
  max_precond_dim, merge_dims, precondition_1d), the skipped first step and
  the decay of the updated weights (weight_decay, mask) are SOAP's (see
  `soap`); no paper or official code defines this combination.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (the
      first step is skipped whatever its value).
    b1: decay of ADOPT's first moment, in [0, 1).
    b2: decay of ADOPT's second moment, in [0, 1).
    eps: floor of ``sqrt(v)`` in ADOPT's normalisation, >= 0.
    weight_decay: decay of the updated weights, ``p <- p - lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    shampoo_beta: decay of the Shampoo factors' EMA, in [0, 1).
    precondition_frequency: refresh the eigenbasis every this many steps, an
      int >= 1.
    max_precond_dim: the largest dimension that is rotated, an int >= 1; None:
      10000.
    merge_dims: merge consecutive small dimensions of tensors of rank >= 2
      while their product is <= max_precond_dim.
    precondition_1d: rotate 1-d tensors too.
    mu_dtype: the dtype of the first moment; None keeps the params' dtype.
    block_multiple: pad every stack of same-shaped blocks to a multiple of
      this many blocks (the devices `optlab.state_sharding` splits the state
      over), an int >= 1.
    axis_name: under pmap, the axis whose devices share the basis refreshes
      (each computes 1/n of them); under jit, a `jax.sharding.Mesh` (or
      `optlab.mesh_route` of it, for params split over several mesh axes
      jointly): each device refreshes the blocks it holds; None: every
      device computes all.
    compute_dtype: None (float32 rotations at full precision) or e.g.
      ``jnp.bfloat16``: their inputs in that dtype, accumulated in float32
      (the statistics stay float32; updates move by ~1e-2 relative).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321
    (https://arxiv.org/abs/2409.11321).
    "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal Rate",
    arXiv:2411.02853 (https://arxiv.org/abs/2411.02853).
  """
  V.check_nonneg("soap_adopt", "eps", eps)
  return _in_soap_basis("soap_adopt", scale_by_adopt(b1, b2, eps, mu_dtype), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d, block_multiple, axis_name, compute_dtype)  # noqa: E501


def soap_ademamix(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999,
                  alpha: Any = 5.0, eps: Any = 1e-8, weight_decay: Any = 0.01, mask: Any = None,
                  shampoo_beta: Any = 0.95, precondition_frequency: int = 10,
                  max_precond_dim: Optional[int] = None, *, merge_dims: bool = False,
                  precondition_1d: bool = False, mu_dtype: Any = None,
                  block_multiple: int = 1, axis_name: Any = None,
                  compute_dtype: Any = None):
  """AdEMAMix (arXiv:2409.03350) in SOAP's eigenbasis (arXiv:2409.11321).

  On ``G' = Q_L^T G Q_R``, rotated back::

    U' = (m1_hat + alpha m2) / (sqrt(v_hat) + eps)

  Both EMAs rotate with the basis, v is permuted.

  The basis options (shampoo_beta=0.95, precondition_frequency,
  max_precond_dim, merge_dims, precondition_1d), the skipped first step and
  the decay of the updated weights (weight_decay, mask) are SOAP's (see
  `soap`); no paper or official code defines this combination.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (the
      first step is skipped whatever its value).
    b1: decay of the fast EMA ``m1`` (debiased), in [0, 1).
    b2: decay of the second moment ``v``, in [0, 1).
    b3: decay of the slow EMA ``m2`` (not debiased), in [0, 1); may be a
      schedule.
    alpha: the weight of the slow EMA, >= 0; may be a schedule.
    eps: added to ``sqrt(v_hat)``, >= 0.
    weight_decay: decay of the updated weights, ``p <- p - lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    shampoo_beta: decay of the Shampoo factors' EMA, in [0, 1).
    precondition_frequency: refresh the eigenbasis every this many steps, an
      int >= 1.
    max_precond_dim: the largest dimension that is rotated, an int >= 1; None:
      10000.
    merge_dims: merge consecutive small dimensions of tensors of rank >= 2
      while their product is <= max_precond_dim.
    precondition_1d: rotate 1-d tensors too.
    mu_dtype: the dtype of the first moment; None keeps the params' dtype.
    block_multiple: pad every stack of same-shaped blocks to a multiple of
      this many blocks (the devices `optlab.state_sharding` splits the state
      over), an int >= 1.
    axis_name: under pmap, the axis whose devices share the basis refreshes
      (each computes 1/n of them); under jit, a `jax.sharding.Mesh` (or
      `optlab.mesh_route` of it, for params split over several mesh axes
      jointly): each device refreshes the blocks it holds; None: every
      device computes all.
    compute_dtype: None (float32 rotations at full precision) or e.g.
      ``jnp.bfloat16``: their inputs in that dtype, accumulated in float32
      (the statistics stay float32; updates move by ~1e-2 relative).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321
    (https://arxiv.org/abs/2409.11321).
    "The AdEMAMix Optimizer: Better, Faster, Older", arXiv:2409.03350
    (https://arxiv.org/abs/2409.03350).
  """
  for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
    V.check_decay("soap_ademamix", name, value)
  V.check_nonneg("soap_ademamix", "eps", eps)
  V.check_nonneg("soap_ademamix", "alpha", alpha)
  return _in_soap_basis("soap_ademamix", scale_by_moments(dual_ema(b1, b3, alpha, dtype=mu_dtype), ema_sq(b2), eps=eps), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d, block_multiple, axis_name, compute_dtype)  # noqa: E501


def soap_laprop(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-15,
                weight_decay: Any = 0.01, mask: Any = None, shampoo_beta: Any = 0.95,
                precondition_frequency: int = 10, max_precond_dim: Optional[int] = None,
                *, merge_dims: bool = False, precondition_1d: bool = False, mu_dtype: Any = None,
                block_multiple: int = 1, axis_name: Any = None,
                compute_dtype: Any = None):
  """LaProp (arXiv:2002.04839) in SOAP's eigenbasis (arXiv:2409.11321).

  With ``G' = Q_L^T G Q_R``::

    m <- b1 m + (1 - b1) G' / (sqrt(v_hat) + eps)
    U = Q_L (m / (1 - b1^t)) Q_R^T

  The basis options (shampoo_beta=0.95, precondition_frequency,
  max_precond_dim, merge_dims, precondition_1d), the skipped first step and
  the decay of the updated weights (weight_decay, mask) are SOAP's (see
  `soap`); no paper or official code defines this combination.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (the
      first step is skipped whatever its value).
    b1: decay of the momentum of the normalised gradient, in [0, 1).
    b2: decay of the second moment ``v``, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0.
    weight_decay: decay of the updated weights, ``p <- p - lr * weight_decay *
      p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    shampoo_beta: decay of the Shampoo factors' EMA, in [0, 1).
    precondition_frequency: refresh the eigenbasis every this many steps, an
      int >= 1.
    max_precond_dim: the largest dimension that is rotated, an int >= 1; None:
      10000.
    merge_dims: merge consecutive small dimensions of tensors of rank >= 2
      while their product is <= max_precond_dim.
    precondition_1d: rotate 1-d tensors too.
    mu_dtype: the dtype of the first moment; None keeps the params' dtype.
    block_multiple: pad every stack of same-shaped blocks to a multiple of
      this many blocks (the devices `optlab.state_sharding` splits the state
      over), an int >= 1.
    axis_name: under pmap, the axis whose devices share the basis refreshes
      (each computes 1/n of them); under jit, a `jax.sharding.Mesh` (or
      `optlab.mesh_route` of it, for params split over several mesh axes
      jointly): each device refreshes the blocks it holds; None: every
      device computes all.
    compute_dtype: None (float32 rotations at full precision) or e.g.
      ``jnp.bfloat16``: their inputs in that dtype, accumulated in float32
      (the statistics stay float32; updates move by ~1e-2 relative).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321
    (https://arxiv.org/abs/2409.11321).
    "LaProp: Separating Momentum and Adaptivity in Adam", arXiv:2002.04839
    (https://arxiv.org/abs/2002.04839).
  """
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay("soap_laprop", name, value)
  V.check_nonneg("soap_laprop", "eps", eps)
  return _in_soap_basis("soap_laprop", scale_by_moments(ema(b1, dtype=mu_dtype), ema_sq(b2), eps=eps, order="laprop"), learning_rate, weight_decay, mask, shampoo_beta, precondition_frequency, max_precond_dim, merge_dims, precondition_1d, block_multiple, axis_name, compute_dtype)  # noqa: E501


# ------------------------------------------------------------------------ Muon
def _route(transforms: dict, matrices: Any) -> optax.GradientTransformationExtraArgs:
  """`route` over {"matrix", "other"}, labelled by `matrices`.

  None: 2-d tensors are matrices. Otherwise a tree of bools (or a prefix of
  the params) or a function of the params returning one, as optax's masks.
  """
  def labels(tree):
    if matrices is None:
      return jax.tree.map(lambda x: "matrix" if jnp.ndim(x) == 2 else "other", tree)
    flags = matrices(tree) if callable(matrices) else matrices
    return jax.tree.map(lambda f: "matrix" if f else "other", flags)

  return route(transforms, labels)


def muon(learning_rate: Any, ns_coeffs: tuple = (3.4445, -4.7750, 2.0315), ns_steps: int = 5,
         beta: Any = 0.95, eps: Any = 1e-7, weight_decay: Any = 0.0,
         weight_decay_mask: Any = None, mu_dtype: Any = None, *, nesterov: bool = True,
         consistent_rms: Any = None, matrices: Any = None, adam_b1: Any = 0.9,
         adam_b2: Any = 0.95, adam_eps: Any = 1e-10, adam_weight_decay: Any = 0.0,
         adam_learning_rate: Any = None, compute_dtype: Any = None, axis_name: Any = None):
  """Muon: MomentUm Orthogonalized by Newton-Schulz (Keller Jordan, 2024; "Muon is
  Scalable for LLM Training", arXiv:2502.16982).

  For matrices, with ``NS5`` the quintic Newton-Schulz orthogonalisation::

    m <- beta m + (1 - beta) g
    x = (1 - beta) g + beta m            (Nesterov; else x = m)
    u = NS5(x) * sqrt(max(1, fan_out / fan_in))
    p <- p - lr * (u + weight_decay * p)

  Every other tensor is trained by Adam (``adam_b1``, ``adam_b2``,
  ``adam_eps``; decoupled ``adam_weight_decay``) with ``adam_learning_rate``
  (None: ``learning_rate``). The hyperparameters are optax.contrib.muon's where
  it has them; ``matrices`` overrides which tensors are orthogonalised. The
  state holds one momentum buffer per matrix entry, as the official code, and
  Adam's two per entry of the other tensors (`route`; those tensors' second
  moment is stored flat, outside the params' sharding).

  Follows Keller Jordan's official code (KellerJordan/Muon, ``muon.py``:
  ``Muon`` / ``MuonWithAuxAdam``): momentum by lerp without bias correction,
  the Nesterov mix ``(1 - beta) g + beta m``, eps=1e-7 in the Frobenius
  normalisation, the ``(rows/cols)^0.5`` scaling, the auxiliary Adam's defaults
  (betas (0.9, 0.95), eps 1e-10). Differences: Newton-Schulz runs in
  float32 (the official code uses bfloat16). optax.contrib.muon differs:
  its momentum is bias-corrected (so its Nesterov mix weighs g and m
  differently), its Adam is NAdam when nesterov=True and shares eps with
  Newton-Schulz; the catalogue's optax adapter feeds optax's Muon
  (beta=0, no Nesterov) with a heavy-ball trace, which orthogonalises to the
  same direction as this recipe.

  Args:
    learning_rate: the step size of the matrices, a float >= 0 or an optax
      schedule.
    ns_coeffs: the coefficients (a, b, c) of the quintic Newton-Schulz
      iteration.
    ns_steps: the number of Newton-Schulz iterations, an int >= 1.
    beta: decay of the matrices' momentum, in [0, 1).
    eps: added to the Frobenius norm that normalises ``x`` before
      Newton-Schulz, >= 0.
    weight_decay: decoupled weight decay of the matrices, multiplied by the
      learning rate, >= 0.
    weight_decay_mask: the leaves that decay (matrices and Adam-trained
      tensors alike): a tree of bools or a function of the params returning
      one, as optax's masks; None decays every leaf.
    mu_dtype: the dtype of the momentum (and of Adam's first moment); None
      keeps the params' dtype.
    nesterov: use the Nesterov mix ``(1 - beta) g + beta m`` instead of ``m``.
    consistent_rms: None keeps the scale ``sqrt(max(1, fan_out / fan_in))``;
      a number r >= 0 scales each orthogonalised matrix by
      ``r * sqrt(max(fan_in, fan_out))`` instead (the arXiv:2502.16982 paper
      uses r = 0.2).
    matrices: which tensors are orthogonalised: None (the 2-d ones), a tree of
      bools (or a prefix of the params) or a function of the params returning
      one; tensors of rank > 2 are flattened to
      ``(prod(shape[:-1]), shape[-1])``.
    adam_b1: decay of Adam's first moment, in [0, 1).
    adam_b2: decay of Adam's second moment, in [0, 1).
    adam_eps: Adam's eps, >= 0.
    adam_weight_decay: decoupled weight decay of the Adam-trained tensors,
      multiplied by their learning rate, >= 0.
    adam_learning_rate: the step size of the Adam-trained tensors, a float >=
      0 or an optax schedule; None: ``learning_rate``.
    compute_dtype: None (float32 Newton-Schulz products at full precision) or e.g.
      ``jnp.bfloat16``: their inputs in that dtype, accumulated in float32
      (as the official code's bfloat16; updates move by ~1e-2 relative).
    axis_name: under pmap, the axis whose devices share the Newton-Schulz
      iterations (each runs 1/n of the matrices); under jit, a
      `jax.sharding.Mesh` (or `optlab.mesh_route` of it, for params split
      over several mesh axes jointly): each device orthogonalises whole
      matrices of its share instead of gathering FSDP-split ones
      (`scale_by_newton_schulz`); None: every device computes all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "Muon is Scalable for LLM Training", arXiv:2502.16982
    (https://arxiv.org/abs/2502.16982).
    Official code: KellerJordan/Muon (``muon.py``).

  Example:
    The 2-d ``w`` is orthogonalised; the vector ``b`` is trained by Adam:

    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> tx = optlab.muon(0.02, adam_learning_rate=3e-4)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["w"].shape, updates["b"].shape
    ((3, 2), (2,))
    >>> bool(jnp.all(jnp.isfinite(updates["w"])))
    True
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
  # Matrices keep one momentum buffer, the other tensors Adam's two (`route`).
  body = _route({
      "matrix": optax.chain(
          scale_by_moments(ema(beta, debias=False, nesterov=nesterov, dtype=mu_dtype), None),
          scale_by_newton_schulz(ns_steps, ns_coeffs, eps, consistent_rms, compute_dtype,
                                 axis_name),
          add_decayed_weights(weight_decay, weight_decay_mask),
          scale_by_learning_rate(learning_rate)),
      "other": optax.chain(
          scale_by_adam(adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype),
          add_decayed_weights(adam_weight_decay, weight_decay_mask),
          scale_by_learning_rate(adam_lr)),
  }, matrices)
  return recipe_chain("muon", body)


# --------------------------------------------------------------------- Shampoo
def _shampoo_body(where, learning_rate, block_size, b1, b2, matrix_eps, diagonal_eps,
                  weight_decay, mask, graft_type, start_preconditioning_step,
                  statistics_compute_steps, preconditioning_compute_steps, max_precond_dim,
                  exponent_override, nesterov, block_multiple=1, axis_name=None,
                  compute_dtype=None):
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
                           preconditioning_compute_steps, max_precond_dim, exponent_override,
                           block_multiple=block_multiple, axis_name=axis_name,
                        compute_dtype=compute_dtype),
          add_decayed_weights(weight_decay, mask),
          scale_by_moments(heavy_ball(b1, nesterov=nesterov), None),
          scale_by_learning_rate(learning_rate))


def shampoo(learning_rate: Any, block_size: Optional[int] = None, b1: Any = 0.9, b2: Any = 0.999,
            matrix_eps: Any = 1e-6, diagonal_eps: Any = 1e-10, weight_decay: Any = 0.0,
            mask: Any = None, graft_type: str = "sgd", start_preconditioning_step: int = 5,
            statistics_compute_steps: int = 1, preconditioning_compute_steps: int = 1,
            max_precond_dim: Optional[int] = None, exponent_override: Any = None,
            *, nesterov: bool = True, block_multiple: int = 1, axis_name: Any = None,
            compute_dtype: Any = None):
  """Shampoo: "Shampoo: Preconditioned Stochastic Tensor Optimization" (arXiv:1802.09568),
  blocked and grafted as in "Scalable Second Order Optimization for Deep Learning"
  (arXiv:2002.09018) and its code, distributed Shampoo (google-research
  ``scalable_shampoo/optax/distributed_shampoo.py``).

  The chain, per block of each tensor and each of its k dimensions::

    L_i <- b2 L_i + (1 - b2) G_(i) G_(i)^T                    (statistics)
    P_i = (L_i + eps I)^(-1/2k)   every preconditioning_compute_steps
    S = G x_i P_i                                             (preconditioning)
    u = S ||D|| / ||S||     (grafting; D: graft_type's direction)
    u <- u + weight_decay * p
    m <- b1 m + u;  u = m, or u + b1 m with Nesterov
    update = -learning_rate * u

  See `scale_by_shampoo` for the blocking and grafting. The defaults are
  distributed Shampoo's (its beta1 / beta2 are b1 / b2 here): it preconditions
  from step 5 (0-based), roots recomputed every step. block_size and
  max_precond_dim default to None (128 and 4096) because they shape the state:
  `optax.inject_hyperparams` would turn an int default into a traced value
  (pass them in its static_args).

  Differences from distributed Shampoo: inverse roots by eigh (exact) instead
  of the coupled Newton iteration (which approximates the same root, and whose
  failures keep the previous root, as the non-finite fallback here does); the
  statistics start at zero; one momentum buffer (distributed Shampoo keeps a
  second, diagonal momentum for the grafting direction when graft_type is not
  sgd and switches buffers at start_preconditioning_step; with sgd grafting it
  shares one buffer, as here); blocks are zero-padded to block_size, which
  gives the same preconditioned values as its smaller last blocks; the
  statistics are padded to one size for the roots as in distributed Shampoo,
  but with eigenvalue 1e-6 instead of 1, so that the padding does not raise
  the ridge of a block whose largest eigenvalue is below 1; no
  moving-average momentum, gradient clipping, quantisation or pjit sharding of
  the statistics.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    block_size: the largest block side, an int >= 1; None: 128.
    b1: the heavy-ball momentum, in [0, 1).
    b2: decay of the statistics, in [0, 1] (1: a running sum); also the decay
      of the rmsprop grafting's second moment.
    matrix_eps: the ridge added to the statistics before the inverse root,
      relative to their largest eigenvalue (``eps = matrix_eps *
      max(lambda_max, 1e-6)``), >= 0.
    diagonal_eps: added to the grafting direction's denominator, >= 0.
    weight_decay: weight decay added to the grafted direction before the
      momentum (then multiplied by the learning rate), >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    graft_type: the direction whose norm is grafted, and the update before
      preconditioning starts: "sgd", "adagrad", "rmsprop" or
      "rmsprop_normalized".
    start_preconditioning_step: the first (0-based) step that preconditions,
      an int >= 0.
    statistics_compute_steps: update the statistics every this many steps, an
      int >= 1.
    preconditioning_compute_steps: recompute the inverse roots every this
      many steps, an int >= 1.
    max_precond_dim: tensors with a larger dimension are not preconditioned
      (distributed Shampoo's skip_preconditioning_dim_size_gt), an int >= 1;
      None: 4096.
    exponent_override: the root p of ``P_i = (L_i + eps I)^(-1/p)``, > 0;
      None: 2k for a k-dimensional tensor.
    nesterov: Nesterov momentum, ``u + b1 m``.
    block_multiple: pad every stack of same-shaped blocks to a multiple of
      this many blocks (the devices `optlab.state_sharding` splits the state
      over), an int >= 1.
    axis_name: under pmap, the axis whose devices share the inverse roots
      (each computes 1/n of them); under jit, a `jax.sharding.Mesh` (or
      `optlab.mesh_route` of it, for params split over several mesh axes
      jointly): each device computes those of the blocks it holds; None:
      every device computes all.
    compute_dtype: None (float32 preconditioning products at full precision) or e.g.
      ``jnp.bfloat16``: their inputs in that dtype, accumulated in float32
      (the statistics stay float32; updates move by ~1e-2 relative).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "Shampoo: Preconditioned Stochastic Tensor Optimization", arXiv:1802.09568
    (https://arxiv.org/abs/1802.09568).
    "Scalable Second Order Optimization for Deep Learning", arXiv:2002.09018
    (https://arxiv.org/abs/2002.09018).
    Official code: google-research ``scalable_shampoo/optax/distributed_shampoo.py``.

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.shampoo(1e-3, start_preconditioning_step=1)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.arange(6.0).reshape(3, 2)}
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool(jnp.all(jnp.isfinite(updates["w"])))
    True
  """
  return recipe_chain("shampoo", *_shampoo_body(
      "shampoo", learning_rate, block_size, b1, b2, matrix_eps, diagonal_eps, weight_decay,
      mask, graft_type, start_preconditioning_step, statistics_compute_steps,
      preconditioning_compute_steps, max_precond_dim, exponent_override, nesterov,
      block_multiple, axis_name, compute_dtype))


# ---------------------------------------------------------------- MARS-Shampoo
def mars_shampoo(learning_rate: Any, b1: Any = 0.95, eps: Any = 1e-8, weight_decay: Any = 0.0,
                 mask: Any = None, gamma: Any = 0.025, max_norm: Any = 1.0,
                 lr_1d_factor: Any = 1.0, b1_1d: Any = 0.9, b2_1d: Any = 0.95,
                 weight_decay_1d: Any = 0.1, ns_steps: int = 5):
  """MARS-Shampoo: "MARS: Unleashing the Power of Variance Reduction for Training Large
  Models" (arXiv:2411.10438), approximate form, as in the official AGI-Arena/MARS code
  (``mars.py``, ``mars_type="mars-shampoo"``).

  For matrices, with ``NS5`` the quintic Newton-Schulz orthogonalisation::

    c = g + gamma * b1 / (1 - b1) * (g - g_prev)   (clipped to norm max_norm per tensor)
    m <- b1 m + (1 - b1) c
    update = -lr * (NS5(m / (1 - b1)) * sqrt(max(1, fan_out / fan_in)) + weight_decay * p)

  The correction is `add_mars_correction`. The paper's Shampoo instance takes
  ``U V^T`` of the SVD of m (Shampoo without accumulation); the official code
  computes it with Newton-Schulz (eps=eps), as here (`scale_by_newton_schulz`,
  with eps scaled by ``1 - b1``, which is the same as dividing m by ``1 - b1``).
  Every tensor that is not 2-d is trained by AdamW exactly as in `mars_adamw`
  (b1_1d, b2_1d, eps, weight_decay_1d, lr_1d_factor); the official
  optimize_1d=True path is not offered (it is not defined for Shampoo). The
  defaults are the official ``MARS`` class's (b2 is unused for matrices, so
  there is none). Newton-Schulz runs in float32 (official: bfloat16). The
  whole-matrix Shampoo with Kronecker statistics fed by MARS's gradient is a
  one-line chain of its own:
  ``optax.chain(add_mars_correction(b1, gamma), shampoo(...))``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the momentum, in [0, 1); also scales the correction by
      ``b1 / (1 - b1)``.
    eps: the Newton-Schulz normalisation's eps (for ``m / (1 - b1)``) and the
      non-2-d AdamW's eps, >= 0.
    weight_decay: decoupled weight decay of the matrices, multiplied by the
      learning rate, applied to the weights before the step; >= 0.
    mask: the leaves that decay (under ``weight_decay`` or
      ``weight_decay_1d``): a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    gamma: strength of the variance-reduction correction, >= 0.
    max_norm: per-tensor norm to which the corrected gradient is clipped, > 0;
      None disables the clipping.
    lr_1d_factor: the non-2-d tensors' learning rate is ``learning_rate *
      lr_1d_factor`` (the official ``lr_1d / lr``), >= 0.
    b1_1d: first-moment decay of the non-2-d tensors' AdamW, in [0, 1).
    b2_1d: second-moment decay of the non-2-d tensors' AdamW, in [0, 1).
    weight_decay_1d: decoupled weight decay of the non-2-d tensors' AdamW,
      multiplied by their learning rate, >= 0.
    ns_steps: the number of Newton-Schulz iterations, an int >= 1.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "MARS: Unleashing the Power of Variance Reduction for Training Large
    Models", arXiv:2411.10438 (https://arxiv.org/abs/2411.10438).
    Official code: AGI-Arena/MARS (``mars.py``, ``mars_type="mars-shampoo"``).
  """
  from optlab.recipes.sign_family import mars_chain
  V.check_decay("mars_shampoo", "b1", b1)
  rule = (scale_by_moments(ema(b1, debias=False), None),
          scale_by_newton_schulz(ns_steps, eps=eps * (1 - b1)))
  return mars_chain("mars_shampoo", learning_rate, rule, b1, gamma, max_norm, weight_decay,
                    mask, False, lr_1d_factor, b1_1d, b2_1d, eps, weight_decay_1d)


# ------------------------------------------------------------------- catalogue
_SOAP_PAPER = "SOAP: Improving and Stabilizing Shampoo using Adam"
_STACKS = ("block_multiple",)  # fixes the stacked state's shapes
RECIPES = (
    Recipe("soap", soap, "second_order", _SOAP_PAPER, "2409.11321", static=_STACKS),
    Recipe("soap_lion", soap_lion, "second_order", _SOAP_PAPER, "2409.11321",
           notes="Lion (arXiv:2302.06675) as the inner rule of SOAP's basis.", static=_STACKS),
    Recipe("soap_adopt", soap_adopt, "second_order", _SOAP_PAPER, "2409.11321",
           notes="ADOPT (arXiv:2411.02853) as the inner rule of SOAP's basis.", static=_STACKS),
    Recipe("soap_ademamix", soap_ademamix, "second_order", _SOAP_PAPER, "2409.11321",
           notes="AdEMAMix (arXiv:2409.03350) as the inner rule of SOAP's basis.", static=_STACKS),
    Recipe("soap_laprop", soap_laprop, "second_order", _SOAP_PAPER, "2409.11321",
           notes="LaProp (arXiv:2002.04839) as the inner rule of SOAP's basis.", static=_STACKS),
    Recipe("muon", muon, "second_order", "Muon is Scalable for LLM Training", "2502.16982",
           notes="Official code: Keller Jordan's KellerJordan/Muon (blog, Dec 2024)."),
    Recipe("shampoo", shampoo, "second_order",
           "Shampoo: Preconditioned Stochastic Tensor Optimization", "1802.09568",
           static=_STACKS),
    Recipe("mars_shampoo", mars_shampoo, "second_order",
           "MARS: Unleashing the Power of Variance Reduction for Training Large Models",
           "2411.10438", notes="Official code: AGI-Arena/MARS, mars_type='mars-shampoo'."),
)
