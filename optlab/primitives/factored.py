"""Factored second moments: Adafactor's row/column estimate and what builds on it.

A matrix's second moment V (m x n) is replaced by its row means R (m) and
column means C (n), and reconstructed as the rank-1 V_hat = R C^T / mean(R)
(the I-divergence-optimal rank-1 fit). `scale_by_factored_rms` is Adafactor's
scaling; CAME and AdaLomo reuse its factorisation (`factored_ema`).

Tensors with more than two dims are factored over their two largest dims
(optax's rule); tensors without two dims of at least `min_dim_size_to_factor`
keep an element-wise second moment. Row, column and unfactored statistics
are stored in flat float32 vectors (`storage.pack_flat`): one leaf each,
whatever the params, so `optax.tree_map_params` sees them as non-param state
(they are replicated under sharding; they hold O(m + n) entries per matrix).
A kind of statistic that no leaf has (no factored leaf, or no unfactored one)
is None rather than an empty vector (`storage.flat_zeros`), which orbax could
not save.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import safe_div, safe_square, saturate
from optlab._src.tree import flat_dtype, flat_zeros, repack_flat, unpack_flat, zeros_like
from optlab.primitives.basis import COUNT, LINEAR_MOMENT, OPAQUE_STAT, declare_state
from optlab.primitives.normalize import tensor_rms

__all__ = ["FactoredRmsState", "scale_by_factored_rms", "clip_by_block_rms",
    "scale_by_param_block_rms", "adafactor_decay_rate", "relative_step_size", "CameState",
    "scale_by_came"]


def factored_dims(shape: tuple[int, ...], *, factored: bool = True,
                  min_dim_size_to_factor: int = 128) -> Optional[tuple[int, int]]:
  """(d_col, d_row): the second-largest and largest dims to factor over, or None.

  As optax: None when ``factored`` is False, for tensors with fewer than two
  dims, or when the second-largest dim is below ``min_dim_size_to_factor``.
  The row statistic averages over d_row, the column statistic over d_col.
  """
  if not factored or len(shape) < 2:
    return None
  order = np.argsort(shape, kind="stable")
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


class FactoredLayout(NamedTuple):
  """Static shapes of the flat statistics of one tree of leaves."""
  dims: tuple     # per leaf: (d_col, d_row) or None
  rows: tuple     # per leaf: shape of the row statistic ((0,) when unfactored)
  cols: tuple     # per leaf: shape of the column statistic ((0,) when unfactored)
  full: tuple     # per leaf: shape of the element-wise statistic ((0,) when factored)

  @staticmethod
  def of(leaves, factored: bool, min_dim: int = 0, dims_fn=None) -> "FactoredLayout":
    """`dims_fn(shape)` picks the dims (default: `factored_dims`)."""
    dims, rows, cols, full = [], [], [], []
    for x in leaves:
      shape = tuple(jnp.shape(x))
      d = (dims_fn(shape) if dims_fn is not None else
           factored_dims(shape, factored=factored, min_dim_size_to_factor=min_dim))
      dims.append(d)
      if d is None:
        rows.append((0,)), cols.append((0,)), full.append(shape)
      else:
        rows.append(tuple(s for i, s in enumerate(shape) if i != d[1]))
        cols.append(tuple(s for i, s in enumerate(shape) if i != d[0]))
        full.append((0,))
    return FactoredLayout(tuple(dims), tuple(rows), tuple(cols), tuple(full))

  def sizes(self) -> tuple[int, int, int]:
    n = lambda shapes: int(sum(np.prod(s, dtype=np.int64) for s in shapes))
    return n(self.rows), n(self.cols), n(self.full)


def last_two_dims(shape: tuple[int, ...]) -> Optional[tuple[int, int]]:
  """The last two dims, (ndim - 2, ndim - 1), for any tensor with ndim >= 2 (the
  rule of the official T2T Adafactor, CAME and AdaLomo codes), else None."""
  return (len(shape) - 2, len(shape) - 1) if len(shape) >= 2 else None


def factored_ema(stat: tuple[jax.Array, jax.Array, jax.Array], x: jax.Array,
                 dims: Optional[tuple[int, int]], decay: Any
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """EMA of a non-negative statistic `x`: (row means, column means) when factored,
  else element-wise. `stat` is (row, col, full); unused entries pass through."""
  row, col, full = stat
  # decay in the statistic's dtype, so that 1 - decay rounds the same whether
  # decay is a Python float or an array injected by optax.inject_hyperparams
  decay = jnp.asarray(decay, x.dtype)
  ema = lambda s, v: saturate(decay * s + (1 - decay) * v).astype(s.dtype)
  if dims is None:
    return row, col, ema(full, x)
  d_col, d_row = dims
  return ema(row, safe_mean(x, d_row)), ema(col, safe_mean(x, d_col)), full


def safe_mean(x: jax.Array, axis: Any = None, *, keepdims: bool = False) -> jax.Array:
  """mean(x) as a sum of x / n: no overflow for entries near the largest finite value."""
  n = np.prod([x.shape[a] for a in np.atleast_1d(axis)]) if axis is not None else x.size
  return jnp.sum(x * (1.0 / max(int(n), 1)), axis=axis, keepdims=keepdims)


def factored_reconstruct(stat: tuple[jax.Array, jax.Array, jax.Array],
                         dims: Optional[tuple[int, int]]) -> jax.Array:
  """V_hat = R C^T / mean(R) (factored; 0 where mean(R) = 0), else the full statistic."""
  row, col, full = stat
  if dims is None:
    return full
  d_col, d_row = dims
  reduced = d_col - 1 if d_col > d_row else d_col  # d_col's index once d_row is gone
  row_mean = safe_mean(row, reduced, keepdims=True)
  r = safe_div(row, row_mean)
  return jnp.expand_dims(r, d_row) * jnp.expand_dims(col, d_col)


def _rsqrt0(x: jax.Array) -> jax.Array:
  """1 / sqrt(x) where x > 0, else 0 (a zero statistic gives a zero update)."""
  ok = x > 0
  return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, x, 1.0)), 0.0)


def adafactor_decay_rate(count: jax.Array, exponent: Any = 0.8, offset: Any = 0) -> jax.Array:
  """Adafactor's beta2_t = 1 - t^(-exponent), t = count + 1 - offset (1-based)."""
  t = jnp.asarray(count - offset + 1).astype(jnp.result_type(float))
  return 1.0 - t ** (-exponent)


def relative_step_size(step: jax.Array) -> jax.Array:
  """Adafactor's relative step size rho_t = min(1e-2, 1 / sqrt(t)), a schedule of the
  0-based step (t = step + 1)."""
  return jnp.minimum(1e-2, jax.lax.rsqrt(jnp.asarray(step, jnp.float32) + 1.0))


# The factored statistics are packed flat (storage.pack_flat): OPAQUE, and
# statistics rather than moments, so momentum resets and 8-bit storage keep them.
@declare_state(count=COUNT, v_row=OPAQUE_STAT, v_col=OPAQUE_STAT, v=OPAQUE_STAT)
class FactoredRmsState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  v_row: Optional[jax.Array]  # [sum of row-statistic sizes], float32: EMA of row means of
                              # g^2 (None without factored leaves, see storage.flat_zeros)
  v_col: Optional[jax.Array]  # [sum of column-statistic sizes], float32: EMA of column
                              # means of g^2 (None without factored leaves)
  v: Optional[jax.Array]      # [sum of unfactored leaf sizes], float32: element-wise EMA
                              # of g^2 (None without unfactored leaves)


def scale_by_factored_rms(*, factored: bool = True, decay_rate: Any = 0.8,
                          step_offset: Any = 0, min_dim_size_to_factor: int = 128,
                          epsilon: Any = 1e-30, dims_fn: Any = None
                          ) -> optax.GradientTransformationExtraArgs:
  """Adafactor's scaling, u = g / sqrt(V_hat) (arXiv:1804.04235, Alg. 4-5).

  V_hat is the factored (row x column / mean row) or, for small or 1-D
  tensors, element-wise EMA of g^2 + epsilon, with beta2_t = 1 - t^-decay_rate.
  Same arguments and numbers as `optax.scale_by_factored_rms`, except that the
  statistics are float32 flat vectors (optax keeps them in the param dtype, as
  trees of non-param shapes). ``dims_fn(shape) -> (d_col, d_row) | None``
  replaces the factoring rule (e.g. `last_two_dims`, as T2T and AdaLomo).
  """
  where = "scale_by_factored_rms"
  V.check_nonneg(where, "decay_rate", decay_rate)
  V.check_nonneg(where, "epsilon", epsilon)
  V.check_range(where, "min_dim_size_to_factor", min_dim_size_to_factor, 0)

  def init(params):
    leaves = jax.tree.leaves(params)
    layout = FactoredLayout.of(leaves, factored, min_dim_size_to_factor, dims_fn)
    dt = flat_dtype(leaves)
    return FactoredRmsState(jnp.zeros([], jnp.int32),
                            *(flat_zeros(n, dt, leaves) for n in layout.sizes()))

  def update(updates, state, params=None, **extra):
    del params, extra
    leaves, treedef = jax.tree.flatten(updates)
    layout = FactoredLayout.of(leaves, factored, min_dim_size_to_factor, dims_fn)
    decay = adafactor_decay_rate(state.count, decay_rate, step_offset)
    where = "optlab.scale_by_factored_rms"
    stats = zip(unpack_flat(state.v_row, layout.rows, updates, where),
                unpack_flat(state.v_col, layout.cols, updates, where),
                unpack_flat(state.v, layout.full, updates, where))
    out, new = [], []
    for g, stat, dims in zip(leaves, stats, layout.dims):
      g32 = g.astype(accumulation_dtype(g.dtype))
      stat = factored_ema(stat, saturate(safe_square(g32) + epsilon), dims, decay)
      out.append((g32 * _rsqrt0(factored_reconstruct(stat, dims))).astype(g.dtype))
      new.append(stat)
    flat = [repack_flat([s[i] for s in new], like)
            for i, like in enumerate((state.v_row, state.v_col, state.v))]
    return (jax.tree.unflatten(treedef, out),
            FactoredRmsState(optax.safe_increment(state.count), *flat))

  return optax.GradientTransformationExtraArgs(init, update)


def clip_by_block_rms(threshold: Any = 1.0) -> optax.GradientTransformationExtraArgs:
  """u <- u / max(1, rms(u) / threshold), per tensor (Adafactor's update clipping, d)."""
  V.check_positive("clip_by_block_rms", "threshold", threshold)

  def one(u):
    scale = jnp.maximum(1.0, tensor_rms(u) / threshold)
    return (u / scale).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    del params, extra
    return jax.tree.map(one, updates), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


def scale_by_param_block_rms(min_scale: Any = 1e-3) -> optax.GradientTransformationExtraArgs:
  """u <- u * max(rms(p), min_scale), per tensor (Adafactor's relative step,
  eps2 = min_scale). Needs `params`."""
  V.check_nonneg("scale_by_param_block_rms", "min_scale", min_scale)

  def one(u, p):
    top = jnp.finfo(u.dtype).max  # huge u times huge params saturates, never inf
    return jnp.clip(u * jnp.maximum(tensor_rms(p), min_scale), -top, top).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params("scale_by_param_block_rms", params)
    return jax.tree.map(one, updates, params), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


# ----------------------------------------------------------------------- CAME
@declare_state(count=COUNT, mu=LINEAR_MOMENT, v_row=OPAQUE_STAT, v_col=OPAQUE_STAT,
               v=OPAQUE_STAT, r_row=OPAQUE_STAT, r_col=OPAQUE_STAT)
class CameState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # EMA of the clipped Adafactor update, param-shaped
  # The flat statistics are None when no leaf has them (storage.flat_zeros):
  v_row: Optional[jax.Array]  # [sum of row sizes], float32: EMA of row means of g^2 + eps1
  v_col: Optional[jax.Array]  # [sum of column sizes], float32: EMA of column means of same
  v: Optional[jax.Array]      # [sum of 0-/1-D leaf sizes], float32: element-wise EMA of same
  r_row: Optional[jax.Array]  # [sum of row sizes], float32: EMA of row means of the
                              # instability
  r_col: Optional[jax.Array]  # [sum of column sizes], float32: same, column means


def scale_by_came(b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999, eps1: Any = 1e-30,
                  eps2: Any = 1e-16, clip_threshold: Any = 1.0, mu_dtype: Any = None
                  ) -> optax.GradientTransformationExtraArgs:
  """CAME's direction (arXiv:2307.02047, Alg. 1 and the official code).

  u = g / sqrt(V_hat) with V_hat the factored EMA (b2) of g^2 + eps1;
  u <- u / max(1, rms(u) / clip_threshold);  m <- b1 m + (1 - b1) u;
  U = (u - m)^2 + eps2, factored EMA (b3) -> S_hat; out = m / sqrt(S_hat).
  Tensors with ndim >= 2 are factored over their last two dims; others keep
  an element-wise V and return m (no confidence term), as the official code.
  """
  where = "scale_by_came"
  for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
    V.check_decay(where, name, value)
  V.check_nonneg(where, "eps1", eps1)
  V.check_nonneg(where, "eps2", eps2)
  V.check_positive(where, "clip_threshold", clip_threshold)

  def layout(leaves):
    return FactoredLayout.of(leaves, True, dims_fn=last_two_dims)

  def init(params):
    leaves = jax.tree.leaves(params)
    nr, nc, nf = layout(leaves).sizes()
    z = lambda n: flat_zeros(n, flat_dtype(leaves), leaves)
    mu = jax.tree.map(lambda p: zeros_like(p, mu_dtype), params)
    return CameState(jnp.zeros([], jnp.int32), mu, z(nr), z(nc), z(nf), z(nr), z(nc))

  def update(updates, state, params=None, **extra):
    del params, extra
    leaves, treedef = jax.tree.flatten(updates)
    lay = layout(leaves)
    stats = zip(unpack_flat(state.v_row, lay.rows), unpack_flat(state.v_col, lay.cols),
                unpack_flat(state.v, lay.full))
    res = zip(unpack_flat(state.r_row, lay.rows), unpack_flat(state.r_col, lay.cols))
    out, mus, new_v, new_r = [], [], [], []
    for g, m, stat, (rr, rc), dims in zip(leaves, jax.tree.leaves(state.mu), stats, res,
                                          lay.dims):
      g32 = g.astype(accumulation_dtype(g.dtype))
      stat = factored_ema(stat, saturate(safe_square(g32) + eps1), dims, b2)
      u = g32 * _rsqrt0(factored_reconstruct(stat, dims))
      u = u / jnp.maximum(1.0, tensor_rms(u) / clip_threshold)
      m32 = b1 * m.astype(u.dtype) + (1 - b1) * u
      if dims is not None:
        rr, rc, _ = factored_ema((rr, rc, None), saturate(safe_square(u - m32) + eps2), dims, b3)
        o = m32 * _rsqrt0(factored_reconstruct((rr, rc, None), dims))
      else:
        o = m32
      out.append(o.astype(g.dtype))
      mus.append(m32.astype(m.dtype))
      new_v.append(stat)
      new_r.append((rr, rc))
    flat = [repack_flat([s[i] for s in new_v], like)
            for i, like in enumerate((state.v_row, state.v_col, state.v))]
    rflat = [repack_flat([s[i] for s in new_r], like)
             for i, like in enumerate((state.r_row, state.r_col))]
    return (jax.tree.unflatten(treedef, out),
            CameState(optax.safe_increment(state.count), jax.tree.unflatten(treedef, mus),
                      *flat, *rflat))

  return optax.GradientTransformationExtraArgs(init, update)
