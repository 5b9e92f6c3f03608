"""Square-matricized rank-1 moments (SMMF, arXiv:2412.08894).

Every tensor, whatever its rank, is viewed as the most nearly square matrix
its entry count allows (`square_shape`: n = rows x cols with cols the largest
divisor of n not above sqrt(n)). Both Adam moments of that matrix are kept
as a rank-1 non-negative factorisation, a row vector r and a column vector c
with A ~ r c^T (`nnmf_rank1`: r = row sums, c = column sums / total, the
closed-form rank-1 fit used by the official code). The first moment is signed,
so its signs are kept separately, one bit per entry (`pack_signs`).

Each step decompresses (r c^T, signs applied), takes the EMA with the new
gradient, compresses again and returns m / (sqrt(v) + eps) computed from the
full, freshly updated moments. All factors and sign bits live in flat vectors
(`storage.pack_flat`), one leaf per kind: `optax.tree_map_params` sees them as
non-param state, and they hold O(sqrt(n)) floats and n / 8 bytes per tensor.
A kind that no leaf uses (the first moment's without momentum, element-wise
moments when every tensor is matricized) is None, not an empty vector, which
orbax could not save.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import safe_div, safe_square, saturate
from optlab._src.tree import flat_dtype, flat_zeros, repack_flat, unpack_flat
from optlab.primitives.basis import COUNT, OPAQUE_STAT, declare_state
from optlab.primitives.factored import adafactor_decay_rate

__all__ = ["SmmfState", "scale_by_smmf"]


def square_shape(n: int) -> tuple[int, int]:
  """(n // i, i) with i the largest divisor of n with i <= sqrt(n): the most nearly
  square matrix holding n entries (a prime n gives (n, 1); n = 0 gives (0, 1))."""
  n = int(n)
  for i in range(max(math.isqrt(n), 1), 0, -1):
    if n % i == 0:
      return n // i, i
  return n, 1


def nnmf_rank1(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(r, c) with a ~ r c^T for a non-negative matrix `a`.

  r and c are the row and column sums; the factor along the longer side
  keeps its sums and the other is divided by the total (so r c^T has the sums
  of `a`; exact for a rank-1 `a`). A zero matrix gives zero factors. Sums
  saturate at the dtype's largest value instead of overflowing.
  """
  rows, cols = a.shape
  r = saturate(jnp.sum(a, axis=1))
  c = saturate(jnp.sum(a, axis=0))
  if rows < cols:
    r = safe_div(r, saturate(jnp.sum(r)))
  else:
    c = safe_div(c, saturate(jnp.sum(c)))
  return r, c


def pack_signs(positive: jax.Array) -> jax.Array:
  """A boolean tensor as bits, 8 per uint8 (ceil(n / 8) bytes, row-major order)."""
  return jnp.packbits(jnp.reshape(positive, [-1]))


def unpack_signs(bits: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The inverse of `pack_signs`: a boolean tensor of `shape`."""
  n = int(np.prod(shape, dtype=np.int64))
  return jnp.unpackbits(bits, count=n).astype(bool).reshape(shape)


@declare_state(count=COUNT, m_row=OPAQUE_STAT, m_col=OPAQUE_STAT, sign=OPAQUE_STAT,
               v_row=OPAQUE_STAT, v_col=OPAQUE_STAT, m=OPAQUE_STAT, v=OPAQUE_STAT)
class SmmfState(NamedTuple):
  # Every field but count is None when unused: without momentum (b1=None) for the
  # m fields, with vector_reshape for m and v, or when no leaf has that kind.
  count: jax.Array  # [], int32: steps taken
  m_row: Optional[jax.Array]  # [sum of rows of factored leaves], float32: row factor of |m|
  m_col: Optional[jax.Array]  # [sum of cols of factored leaves], float32: col factor of |m|
  sign: Optional[jax.Array]   # [sum of ceil(n / 8) over factored leaves], uint8: m > 0 bits
  v_row: Optional[jax.Array]  # [sum of rows of factored leaves], float32: row factor of v
  v_col: Optional[jax.Array]  # [sum of cols of factored leaves], float32: col factor of v
  m: Optional[jax.Array]      # [sum of sizes of unfactored leaves], float32: element-wise m
  v: Optional[jax.Array]      # [sum of sizes of unfactored leaves], float32: element-wise v


class _Layout(NamedTuple):
  mats: tuple   # per leaf: (rows, cols) of its square matricization, or None
  rows: tuple   # per leaf: shape of its row factor ((0,) when unfactored)
  cols: tuple   # per leaf: shape of its column factor ((0,) when unfactored)
  signs: tuple  # per leaf: shape of its packed sign bits ((0,) when unfactored)
  full: tuple   # per leaf: shape of its element-wise moments ((0,) when factored)

  @staticmethod
  def of(leaves, vector_reshape: bool, momentum: bool) -> "_Layout":
    mats, rows, cols, signs, full = [], [], [], [], []
    for x in leaves:
      shape = tuple(jnp.shape(x))
      n = int(np.prod(shape, dtype=np.int64))
      squeezed = [s for s in shape if s != 1]
      if len(squeezed) == 1 and not vector_reshape:
        mats.append(None), rows.append((0,)), cols.append((0,)), signs.append((0,))
        full.append((n,))
      else:
        r, c = square_shape(n)
        mats.append((r, c)), rows.append((r,)), cols.append((c,)), full.append((0,))
        signs.append((-(-n // 8) if momentum else 0,))
    return _Layout(*(tuple(x) for x in (mats, rows, cols, signs, full)))


def _sizes(shapes) -> int:
  return int(sum(np.prod(s, dtype=np.int64) for s in shapes))


def scale_by_smmf(b1: Any = 0.9, eps: Any = 1e-8, decay_rate: Any = 0.5,
                  growth_rate: Any = 0.999, *, vector_reshape: bool = True
                  ) -> optax.GradientTransformationExtraArgs:
  """SMMF's direction m / (sqrt(v) + eps) from rank-1 square-matricized moments.

  With t the 1-based step and G the gradient viewed as its `square_shape`
  matrix: M = signs * (r_m c_m^T), M <- b1_t M + (1 - b1_t) G with
  b1_t = b1 * growth_rate^(t-1); V = r_v c_v^T, V <- b2_t V + (1 - b2_t) G^2
  with b2_t = 1 - t^(-decay_rate); out = M / (sqrt(V) + eps) (no bias
  correction); then ``signs <- (M > 0)``, ``(r_m, c_m) <- nnmf(|M|)``,
  (r_v, c_v) <- nnmf(V). ``b1=None`` keeps no first moment
  (out = G / (sqrt(V) + eps)). ``vector_reshape=False`` keeps element-wise
  moments for tensors that are vectors once size-1 dims are dropped.
  ``decay_rate`` is the official code's -decay_rate (0.5 there is -0.5).
  """
  where = "scale_by_smmf"
  if b1 is not None:
    V.check_range(where, "b1", b1, 0.0, 1.0)
  V.check_nonneg(where, "eps", eps)
  V.check_range(where, "decay_rate", decay_rate, 0.0, 1.0)
  V.check_range(where, "growth_rate", growth_rate, 0.0, 1.0)
  momentum = b1 is not None

  def init(params):
    leaves = jax.tree.leaves(params)
    lay = _Layout.of(leaves, vector_reshape, momentum)
    dt = flat_dtype(leaves)
    # Unused kinds are None whatever the params (the placeholder tree of
    # optax.tree_map_params included); used ones are None only without entries.
    z = lambda shapes, used=True, dtype=dt: (
        flat_zeros(_sizes(shapes), dtype, leaves) if used else None)
    return SmmfState(jnp.zeros([], jnp.int32), z(lay.rows, momentum), z(lay.cols, momentum),
                     z(lay.signs, momentum, jnp.uint8), z(lay.rows), z(lay.cols),
                     z(lay.full, momentum and not vector_reshape),
                     z(lay.full, not vector_reshape))

  def update(updates, state, params=None, **extra):
    del params, extra
    leaves, treedef = jax.tree.flatten(updates)
    lay = _Layout.of(leaves, vector_reshape, momentum)
    name = "optlab.scale_by_smmf"
    none = [(0,)] * len(leaves)
    un = lambda flat, shapes, used=True: unpack_flat(flat, shapes if used else none, updates,
                                                     name)
    # Sign bits stay uint8 when the state holds none (None unpacks as float32).
    signs = [s.astype(jnp.uint8) for s in un(state.sign, lay.signs, momentum)]
    parts = zip(un(state.m_row, lay.rows, momentum), un(state.m_col, lay.cols, momentum),
                signs, un(state.v_row, lay.rows),
                un(state.v_col, lay.cols), un(state.m, lay.full, momentum),
                un(state.v, lay.full))
    dt = next((x.dtype for x in (state.v_row, state.v) if x is not None), flat_dtype(leaves))
    b1_t = (jnp.asarray(b1, dt) * jnp.asarray(growth_rate, dt) ** state.count.astype(dt)
            if momentum else None)
    b2_t = adafactor_decay_rate(state.count, decay_rate).astype(dt)
    out, new = [], []
    for g, (mr, mc, sg, vr, vc, mf, vf), mat in zip(leaves, parts, lay.mats):
      g32 = g.astype(accumulation_dtype(g.dtype))
      if mat is None:           # element-wise moments (vector_reshape=False)
        gm = jnp.reshape(g32, [-1]).astype(dt)
        vf = saturate(b2_t * vf + (1 - b2_t) * safe_square(gm))
        if momentum:
          mf = b1_t * mf + (1 - b1_t) * gm
        num = mf if momentum else gm
        u = num / (jnp.sqrt(vf) + eps)
      else:
        gm = jnp.reshape(g32, mat).astype(dt)
        v = saturate(b2_t * jnp.outer(vr, vc) + (1 - b2_t) * safe_square(gm))
        vr, vc = nnmf_rank1(v)
        if momentum:
          m_abs = jnp.outer(mr, mc)
          m = b1_t * jnp.where(unpack_signs(sg, mat), m_abs, -m_abs) + (1 - b1_t) * gm
          sg = pack_signs(m > 0)
          mr, mc = nnmf_rank1(jnp.abs(m))
        num = m if momentum else gm
        u = num / (jnp.sqrt(v) + eps)
      top = jnp.finfo(u.dtype).max
      u = jnp.clip(u, -top, top)  # a huge m over a tiny rank-1 v must not give inf
      out.append(jnp.reshape(u, jnp.shape(g)).astype(g.dtype))
      new.append((mr, mc, sg, vr, vc, mf, vf))
    flat = [repack_flat([p[i] for p in new], like) for i, like in enumerate(state[1:])]
    return (jax.tree.unflatten(treedef, out),
            SmmfState(optax.safe_increment(state.count), *flat))

  return optax.GradientTransformationExtraArgs(init, update)
