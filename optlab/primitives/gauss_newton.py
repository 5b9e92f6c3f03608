"""Fisher and Gauss-Newton curvature from what the gradient does not carry:
layer statistics (AdaFisher) and per-example output Jacobians (EGN).

* `scale_by_kronecker_diagonal` divides each captured layer's update by the
  Kronecker product of the diagonals of its two Fisher factors, ``A = E[a aᵀ]``
  over the layer's inputs and ``G = E[g gᵀ]`` over its output gradients, plus a
  damping: AdaFisher's diagonal block-Kronecker Fisher ("AdaFisher: Adaptive
  Second Order Optimization via Fisher Information", arXiv:2405.16397). The
  statistics arrive as the extra arg ``layer_stats`` (`optlab.layer_stats`).
* `scale_by_gauss_newton` returns ``(JᵀQJ / n + λ I)⁻¹ g`` for the Jacobian J of
  the model outputs given by the extra arg ``logits_fn`` and the loss Hessian Q
  with respect to those outputs, solved in the n·c-dimensional output space by
  the Woodbury identity ("Exact Gauss-Newton Optimization for Training Deep
  Neural Networks", arXiv:2405.14402).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab import layer_stats as LS
from optlab._src.numerics import all_finite, any_nan
from optlab._src.tree import flat_dtype, flat_zeros, pack_flat, repack_flat, unpack_flat
from optlab.primitives.basis import COUNT, OPAQUE_STAT, declare_state

__all__ = ["KroneckerDiagonalState", "scale_by_kronecker_diagonal", "scale_by_gauss_newton"]

_LOGITS_HELP = ("a function params -> the model's outputs on the current batch, shape (..., c): "
                "logits for softmax cross-entropy, predictions for squared error")
GAUSS_NEWTON_LOSSES = ("softmax_cross_entropy", "squared_error")


# ------------------------------------------------------------------ AdaFisher
@declare_state(count=COUNT, h=OPAQUE_STAT, s=OPAQUE_STAT)
class KroneckerDiagonalState(NamedTuple):
  count: jax.Array          # [], int32: steps taken
  h: Optional[jax.Array]    # [sum of d_in + 1 over the kernels], float32 (float64 for float64
                            # params): the EMA of each kernel's normalised input-factor
                            # diagonal, packed in kernel order; None without kernels
  s: Optional[jax.Array]    # [sum of d_out], same dtype: the output-gradient factor's


def _min_max(x: jax.Array) -> jax.Array:
  """(x - min) / (max - min + 1e-6), +inf read as 1 and -inf as 0 (the official
  MinMaxNormalization); a constant vector becomes 0."""
  x = jnp.where(x == jnp.inf, 1.0, jnp.where(x == -jnp.inf, 0.0, x))
  lo, hi = jnp.min(x), jnp.max(x)
  return (x - lo) / (hi - lo + 1e-6)


def _factor_diagonals(layer: LS.Layer, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """diag(A) (d_in + 1,) and diag(G) (d_out,) of one layer, without forming A or G.

  A layer without a bias has no homogeneous coordinate in the official code, so
  its zero entry must not take part in the min-max normalisation: it is
  normalised over the d_in inputs and padded with 0 (the bias row of its update
  is zero and is not written back)."""
  a, g = layer.a.astype(dtype), layer.g.astype(dtype)
  h = jnp.mean(jnp.square(a), 0)
  if layer.bias is None:
    h = jnp.concatenate([_min_max(h[:-1]), jnp.zeros((1,), dtype)])
  else:
    h = _min_max(h)
  return h, _min_max(jnp.mean(jnp.square(g), 0))


def scale_by_kronecker_diagonal(gamma: Any = 0.8, damping: Any = 1e-3,
                                update_interval: int = 100, mask: Any = None
                                ) -> optax.GradientTransformationExtraArgs:
  """AdaFisher's preconditioner (arXiv:2405.16397, the official code
  AtlasAnalyticsLab/AdaFisher): divides each captured layer's update by its
  diagonal block-Kronecker Fisher.

  For a layer with statistics (extra arg ``layer_stats``), its joint
  ``[kernel; bias]`` update U of shape (d_in + 1, d_out) becomes::

    every update_interval steps (steps 1, k + 1, ...), before the division:
      h <- (gamma / 10) h + (gamma / 100) minmax(diag(A))      (h starts at 1)
      s <- (gamma / 10) s + (gamma / 100) minmax(diag(G))      (s starts at 1)
    U <- U / (h sᵀ + damping)

  with ``diag(A) = mean(a²)`` over the inputs (and their homogeneous 1 for the
  bias) and ``diag(G) = mean(g²)`` over the output gradients; min-max
  normalisation makes the scale of g irrelevant. The EMA coefficients are the
  official code's (``update_running_avg``: gamma / 10 on the old value, gamma /
  100 on the new; its first version wrote the same numbers as 1 - 0.92 and
  0.008), so h and s settle near 0.0087 times the normalised diagonals. Leaves
  without statistics (1-D leaves, layers that were not captured) pass through
  unchanged: the official optimizer divides them by ``ones_like(param)``. (It
  gives BatchNorm and LayerNorm scales factors of their own; a ``LayerStats``
  describes dense layers only, so they take that fallback here.)

  Args:
    gamma: the factor EMA's parameter, in [0, 1).
    damping: the Tikhonov term ``lambda`` added to the Kronecker product, > 0.
    update_interval: refresh the factors every this many steps (TCov), an int
      >= 1.
    mask: the kernels that may get factors (a bool tree or a function of the
      params returning one, as optax's masks); None: every leaf with ndim >= 2.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    `KroneckerDiagonalState`; its ``update`` needs the extra arg ``layer_stats``.
  """
  where = "scale_by_kronecker_diagonal"
  V.check_decay(where, "gamma", gamma)
  V.check_positive(where, "damping", damping)
  V.check_range(where, "update_interval", update_interval, 1)

  def init(params):
    leaves = jax.tree.leaves(params)
    shapes = LS.kernel_shapes(params, mask)
    dt = flat_dtype(leaves)
    n_h = sum(d_in1 for d_in1, _ in shapes.values())
    n_s = sum(d_out for _, d_out in shapes.values())
    def ones(n):  # the official factors start at 1
      flat = flat_zeros(n, dt, leaves)
      return None if flat is None else flat + 1

    return KroneckerDiagonalState(jnp.zeros([], jnp.int32), ones(n_h), ones(n_s))

  def update(updates, state, params=None, **extra):
    del params
    shapes = LS.kernel_shapes(updates, mask)
    layers = LS.gather(where, extra.get("layer_stats"), updates, shapes)
    keys = list(shapes)
    hs = unpack_flat(state.h, [(shapes[k][0],) for k in keys], updates, f"optlab.{where}")
    ss = unpack_flat(state.s, [(shapes[k][1],) for k in keys], updates, f"optlab.{where}")
    fresh = state.count % update_interval == 0
    new_h, new_s, out = [], [], {}
    for key, h, s in zip(keys, hs, ss):
      layer = layers.get(key)
      if layer is not None:  # an uncaptured kernel keeps its factors
        dh, ds = _factor_diagonals(layer, h.dtype)
        h = jnp.where(fresh, gamma / 10 * h + gamma / 100 * dh, h)
        s = jnp.where(fresh, gamma / 10 * s + gamma / 100 * ds, s)
        fisher = h[:, None] * s[None, :] + damping
        out[key] = layer.grad.astype(h.dtype) / fisher
      new_h.append(h)
      new_s.append(s)
    state = KroneckerDiagonalState(optax.safe_increment(state.count),
                                   repack_flat(new_h, state.h), repack_flat(new_s, state.s))
    return LS.scatter(updates, layers, out), state

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------------ EGN
def _output_cotangents(outputs: jax.Array, loss: str) -> jax.Array:
  """(m, n, c) cotangents whose vector-Jacobian products are the rows of SᵀJ, for
  Q = S Sᵀ block-diagonal over the n rows (m = n c).

  Softmax cross-entropy: Q_i = diag(p_i) - p_i p_iᵀ = S_i S_iᵀ with
  S_i = diag(√p_i) - p_i √p_iᵀ (as Σ p = 1), so column k of S_i is
  √p_ik (e_k - p_i). Squared error ½‖f - y‖²: Q = S = I."""
  n, c = outputs.shape
  if loss == "squared_error":
    return jnp.eye(n * c, dtype=outputs.dtype).reshape(n * c, n, c)
  p = jax.nn.softmax(outputs, -1)
  cols = jnp.sqrt(p)[:, :, None] * (jnp.eye(c, dtype=p.dtype)[None] - p[:, None, :])  # (n, k, j)
  rows = jnp.eye(n, dtype=p.dtype)[:, None, :, None] * cols[:, :, None, :]  # (n, k, n, j)
  return rows.reshape(n * c, n, c)


def scale_by_gauss_newton(regularizer: Any = 1.0, loss: str = "softmax_cross_entropy"
                          ) -> optax.GradientTransformationExtraArgs:
  """The exact Gauss-Newton direction of EGN (arXiv:2405.14402), solved in batch
  space.

  With ``f = logits_fn(params)`` reshaped to (n, c) rows, J its (n c, p)
  Jacobian and Q the block-diagonal Hessian of the per-row loss with respect to
  f (softmax cross-entropy or squared error, `loss`), the Gauss-Newton matrix of
  the mean loss over the rows is ``JᵀQJ / n``, and the update is::

    d = (JᵀQJ / n + λ I)⁻¹ g = (g - Mᵀ (n λ I + M Mᵀ)⁻¹ M g) / λ,   M = SᵀJ

  (Woodbury, with Q = S Sᵀ factored per row): one (n c, n c) Cholesky solve,
  never a (p, p) matrix. The rows of M are vector-Jacobian products of
  `logits_fn`. This form needs only J, Q and g, so `g` need not be Jᵀ∇ℓ (a
  gradient of another batch, a noisy or clipped one); when it is, d equals the
  official solve ``Jᵀ (n λ I + Q J Jᵀ)⁻¹ r`` on the residuals r. ``n`` is the
  number of output rows, so `regularizer` is the official λ (its
  ``batch_size * regularizer * eye`` term). A solve that is not finite
  (overflowing input) falls back to g / λ for that step; a NaN gradient gives
  a NaN update.

  Args:
    regularizer: the Levenberg-Marquardt term ``λ``, > 0.
    loss: ``"softmax_cross_entropy"`` (f are logits) or ``"squared_error"``
      (f are predictions of ``½‖f - y‖²``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (stateless); its ``update``
    needs ``params`` and the extra arg ``logits_fn``.
  """
  where = "scale_by_gauss_newton"
  V.check_positive(where, "regularizer", regularizer)
  V.check_choice(where, "loss", loss, GAUSS_NEWTON_LOSSES)

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, **extra):
    params = V.require_params(where, params)
    logits_fn = V.require_extra_arg(where, extra, "logits_fn", _LOGITS_HELP)
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, state
    dt = flat_dtype(leaves)

    def outputs_of(p):
      out = logits_fn(p)
      if np.ndim(out) < 2:
        raise ValueError(f"optlab.{where}: the extra arg `logits_fn` must return outputs of "
                         f"shape (..., c), one row per example; got shape {np.shape(out)}")
      return jnp.reshape(out, (-1, np.shape(out)[-1])).astype(dt)

    wide = jax.tree.map(lambda x: jnp.asarray(x).astype(dt), params)
    outputs, vjp = jax.vjp(outputs_of, wide)
    n = outputs.shape[0]
    cotangents = _output_cotangents(jax.lax.stop_gradient(outputs), loss)
    rows = jax.vmap(vjp)(cotangents)[0]
    m = _pack_rows([r for r in jax.tree.leaves(rows)], cotangents.shape[0], dt)
    g = pack_flat(leaves, dt)
    hi = jax.lax.Precision.HIGHEST
    gram = jnp.matmul(m, m.T, precision=hi)
    system = gram + (n * regularizer) * jnp.eye(gram.shape[0], dtype=dt)
    coef = jax.scipy.linalg.solve(system, jnp.matmul(m, g, precision=hi), assume_a="pos")
    d = (g - jnp.matmul(m.T, coef, precision=hi)) / regularizer
    top = jnp.finfo(dt).max
    ok = all_finite(d) | any_nan(g)
    d = jnp.where(ok, d, jnp.clip(g / regularizer, -top, top))
    parts = unpack_flat(d, [np.shape(x) for x in leaves])
    out = [jnp.clip(x, jnp.finfo(u.dtype).min, jnp.finfo(u.dtype).max).astype(u.dtype)
           for x, u in zip(parts, leaves)]
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(init, update)


def _pack_rows(jacobians: list, m: int, dtype: Any) -> jax.Array:
  """The (m, p) matrix of m rows given leaf by leaf as (m, *leaf_shape) arrays."""
  return jnp.concatenate([jnp.reshape(j, (m, -1)).astype(dtype) for j in jacobians], 1)
