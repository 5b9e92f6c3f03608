"""Pure matrix helpers for the Kronecker-factored methods (SOAP, Shampoo, Muon).

* Blocking: `merge_dims` merges small dimensions (SOAP's rule), and
  `BlockPlan` splits each dimension of a tensor into blocks of at most a given
  size, so that one batched op (a leading block axis) serves every block of a
  tensor. `FactorLayout` packs the per-dimension factor matrices of a whole
  tree into one flat buffer, grouped by size, so that the expensive matrix
  functions run as one batched call per distinct size (small compile graphs)
  and the optimizer state has a fixed structure (one leaf) that
  `optax.tree_map_params` can tell apart from param-shaped state.
* Matrix functions that never return NaN: `eigenbasis` (eigh, eigenvalues in
  descending order), `refresh_eigenbasis` (one power iteration and a QR, with
  SOAP's eigenvalue-order permutation), `inverse_pth_root` (eigh, damped
  relative to the largest eigenvalue). Each takes a fallback (the previous
  result, or the identity) that replaces any non-finite output, factor by
  factor. Statistics are accumulated with saturation (`outer_stats`), so they
  stay finite for gradients with entries of 1e30.
* `newton_schulz`: the quintic Newton-Schulz orthogonalisation of Muon.

Everything is computed in at least float32 (float64 stays float64) and with
``Precision.HIGHEST`` matrix products. On CPU the decompositions (eigh, QR)
take one matrix per LAPACK call (`_per_matrix`): jaxlib's batched CPU kernels
can deadlock XLA's thread pool when several device programs run at once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optlab.primitives.normalize import tensor_norm
from optlab._src.dtypes import accumulation_dtype

__all__ = ["inverse_pth_root", "newton_schulz"]

HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=HIGHEST)


# -------------------------------------------------------------------- blocking
def merge_dims(shape: Sequence[int], max_dim: int) -> tuple[int, ...]:
  """Merges consecutive dimensions while their product stays <= `max_dim`.

  SOAP's rule (official ``merge_dims``, channels-first order): walk the
  dimensions, multiply them into a running product, and close the product
  when the next dimension would take it above `max_dim`; a dimension larger
  than `max_dim` stays on its own. A shape of size-1 dimensions gives (1,).
  """
  out: list[int] = []
  cur = 1
  for d in shape:
    if cur * d > max_dim:
      if cur > 1:
        out.append(cur)
        cur = d
      else:
        out.append(d)
        cur = 1
    else:
      cur *= d
  if cur > 1 or not out:
    out.append(cur)
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """How one tensor is viewed as a batch of blocks with one factor per dimension.

  The tensor (``shape``) is reshaped to ``merged``; dimension i is zero-padded
  to ``counts[i] * block[i]`` and cut into ``counts[i]`` blocks of size
  ``block[i]``; the blocks are stacked on a leading axis of size
  ``nblocks = prod(counts)``. ``rotated[i]`` says whether dimension i has a
  factor. Zero padding is exact for Kronecker preconditioners: a padded
  block's statistics are block-diagonal with zeros, so the real part of any
  matrix function of them equals that of the unpadded block.
  """
  shape: tuple[int, ...]
  merged: tuple[int, ...]
  block: tuple[int, ...]
  counts: tuple[int, ...]
  rotated: tuple[bool, ...]

  @staticmethod
  def make(shape: Sequence[int], *, max_dim: Optional[int] = None, merge: bool = False,
           merge_limit: Optional[int] = None, block_size: Optional[int] = None,
           min_ndim: int = 2) -> "BlockPlan":
    """A plan for `shape`.

    Args:
      max_dim: dimensions larger than this (after merging, before blocking)
        get no factor; None: no limit.
      merge: merge small dimensions with `merge_dims` (only tensors of rank
        >= 2, as SOAP) up to ``merge_limit`` (default `max_dim`).
      block_size: split dimensions into blocks of at most this size; None:
        one block.
      min_ndim: tensors of lower rank get no factors (SOAP's precondition_1d
        is ``min_ndim=1``). Nor does a tensor without entries.
    """
    shape = tuple(int(d) for d in shape)
    merged = shape
    limit = merge_limit if merge_limit is not None else max_dim
    if merge and len(shape) >= 2 and limit is not None:
      merged = merge_dims(shape, limit)
    # A tensor without entries has nothing to precondition: no factor for any
    # dimension (one of size 3 on a (0, 3) tensor would only hold zeros).
    empty = math.prod(shape) == 0
    rotated = tuple(len(shape) >= max(min_ndim, 1) and (max_dim is None or d <= max_dim)
                    and not empty for d in merged)
    if block_size is None:
      block, counts = merged, (1,) * len(merged)
    else:
      block = tuple(min(d, block_size) if r else d for d, r in zip(merged, rotated))
      counts = tuple(-(-d // b) if b else 1 for d, b in zip(merged, block))
    return BlockPlan(shape, merged, block, counts, rotated)

  @property
  def nblocks(self) -> int:
    return int(np.prod(self.counts, dtype=np.int64))

  @property
  def any_rotated(self) -> bool:
    return any(self.rotated)

  @property
  def padded(self) -> bool:
    return any(c * b != d for c, b, d in zip(self.counts, self.block, self.merged))

  def to_blocks(self, x: jax.Array) -> jax.Array:
    """x (``shape``) -> blocks (nblocks, *block)."""
    x = x.reshape(self.merged)
    if self.padded:
      x = jnp.pad(x, [(0, c * b - d) for c, b, d in zip(self.counts, self.block, self.merged)])
    n = len(self.merged)
    if all(c == 1 for c in self.counts):
      return x.reshape((1,) + self.block)
    x = x.reshape(tuple(v for cb in zip(self.counts, self.block) for v in cb))
    x = x.transpose(tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2)))
    return x.reshape((self.nblocks,) + self.block)

  def from_blocks(self, xb: jax.Array) -> jax.Array:
    """blocks (nblocks, *block) -> x (``shape``)."""
    n = len(self.merged)
    if all(c == 1 for c in self.counts):
      x = xb.reshape(self.block)
    else:
      x = xb.reshape(self.counts + self.block)
      x = x.transpose(tuple(v for i in range(n) for v in (i, n + i)))
      x = x.reshape(tuple(c * b for c, b in zip(self.counts, self.block)))
    if self.padded:
      x = x[tuple(slice(0, d) for d in self.merged)]
    return x.reshape(self.shape)


def outer_stats(blocks: jax.Array, dim: int) -> jax.Array:
  """Per block, the contraction of the block with itself over every axis but `dim`.

  blocks (K, b_0, ..., b_{n-1}) -> (K, b_dim, b_dim); for a matrix block G this
  is G G^T (dim 0) or G^T G (dim 1). Saturated at the dtype's largest finite
  value, so entries of 1e30 give finite statistics.
  """
  x = jnp.moveaxis(blocks, dim + 1, 1)
  x = x.reshape(x.shape[0], x.shape[1], -1)
  # Scaled by each block's largest entry, so that nothing overflows before the
  # result is known to be out of range (then it saturates).
  m = jnp.max(jnp.abs(x), axis=(1, 2), keepdims=True, initial=0)  # 0 for an empty block
  m = jnp.where(m > 0, m, jnp.ones_like(m))
  y = x / m
  s = _mm(y, jnp.swapaxes(y, 1, 2))
  top = jnp.finfo(s.dtype).max
  s = jnp.where(s == 0, s, s * m * m)
  return jnp.clip(s, -top, top)


def apply_factors(blocks: jax.Array, mats: Sequence[Optional[jax.Array]],
                  *, transpose: bool = False) -> jax.Array:
  """Multiplies dimension i of every block by mats[i] (K, b_i, b_i), x_i <- sum_a x_a M[a, i].

  For a matrix block G and factors (Q_L, Q_R) this is Q_L^T G Q_R, or with
  ``transpose`` Q_L G Q_R^T (the way back). A None factor leaves its
  dimension alone.
  """
  x = blocks
  for dim, m in enumerate(mats):
    if m is None:
      continue
    if transpose:
      m = jnp.swapaxes(m, 1, 2)
    y = jnp.moveaxis(x, dim + 1, -1)
    shape = y.shape
    y = _mm(y.reshape(shape[0], -1, shape[-1]), m).reshape(shape)
    x = jnp.moveaxis(y, -1, dim + 1)
  return x


class FactorLayout:
  """The factor matrices of a whole tree, packed in one flat buffer grouped by size.

  Built from the `BlockPlan` of every leaf (in ``jax.tree.leaves`` order).
  Factor (leaf, dim) is a stack of ``nblocks`` matrices of size
  ``block[dim]``; all factors of one size sit next to each other, so
  `split` gives, per size b, one array (N_b, b, b) on which a matrix function
  is a single batched call.
  """

  def __init__(self, plans: Sequence[Optional[BlockPlan]]):
    by_size: dict[int, list[tuple[int, int, int]]] = {}
    for leaf, plan in enumerate(plans):
      if plan is None:
        continue
      for dim, rot in enumerate(plan.rotated):
        if rot:
          by_size.setdefault(plan.block[dim], []).append((leaf, dim, plan.nblocks))
    self.sizes = tuple(sorted(by_size))
    self.where: dict[tuple[int, int], tuple[int, int, int]] = {}  # -> (size, start, count)
    self.counts: dict[int, int] = {}
    for b in self.sizes:
      start = 0
      for leaf, dim, k in by_size[b]:
        self.where[(leaf, dim)] = (b, start, k)
        start += k
      self.counts[b] = start
    self.total = sum(self.counts[b] * b * b for b in self.sizes)

  def split(self, flat: jax.Array) -> dict[int, jax.Array]:
    out, off = {}, 0
    for b in self.sizes:
      n = self.counts[b] * b * b
      out[b] = flat[off:off + n].reshape(self.counts[b], b, b)
      off += n
    return out

  def join(self, groups: dict[int, jax.Array], dtype: Any) -> jax.Array:
    if not self.sizes:
      return jnp.zeros((0,), dtype)
    return jnp.concatenate([groups[b].reshape(-1).astype(dtype) for b in self.sizes])

  def take(self, groups: dict[int, jax.Array], leaf: int, dim: int) -> jax.Array:
    b, start, k = self.where[(leaf, dim)]
    return groups[b][start:start + k]

  def stack(self, per_factor: dict[tuple[int, int], jax.Array]) -> dict[int, jax.Array]:
    """{(leaf, dim): (k, b, b)} -> {b: (N_b, b, b)} in layout order."""
    groups: dict[int, list] = {b: [] for b in self.sizes}
    for key, (b, _, _) in sorted(self.where.items(), key=lambda kv: (kv[1][0], kv[1][1])):
      groups[b].append(per_factor[key])
    return {b: v[0] if len(v) == 1 else jnp.concatenate(v) for b, v in groups.items()}

  def identity(self, dtype: Any) -> jax.Array:
    groups = {b: jnp.broadcast_to(jnp.eye(b, dtype=dtype), (self.counts[b], b, b))
              for b in self.sizes}
    return self.join(groups, dtype)

  def zeros(self, dtype: Any) -> jax.Array:
    return jnp.zeros((self.total,), dtype)


# ------------------------------------------------------------ matrix functions
def _finite(x: jax.Array) -> jax.Array:
  """Per matrix of a batch (N, b, b): True where every entry is finite."""
  return jnp.all(jnp.isfinite(x), axis=(-2, -1))


def _choose(ok: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
  return jnp.where(ok.reshape(ok.shape + (1,) * (new.ndim - ok.ndim)), new, old)


def _eye_like(x: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=x.dtype), x.shape)


def _per_matrix(fn, x: jax.Array):
  """`fn` (a LAPACK-backed decomposition) of every matrix of `x` (..., b, b).

  On CPU, one decomposition per matrix in a `lax.map` loop: jaxlib 0.10's CPU
  kernels of a batched eigh / QR split the batch over the XLA intra-op thread
  pool and block their own pool thread until the pieces are done; with
  several device programs running at once (pmap or sharded jit over host
  devices) every pool thread can end up blocked that way and the step hangs
  for ever. A kernel given one matrix runs inline and never waits. Other
  platforms keep the batched call.
  """
  lead = x.shape[:-2]
  n = int(np.prod(lead, dtype=np.int64))
  if n <= 1:
    return fn(x)
  flat = x.reshape((n,) + x.shape[-2:])
  unflat = lambda out: jax.tree.map(lambda y: y.reshape(lead + y.shape[1:]), out)
  return jax.lax.platform_dependent(
      flat, cpu=lambda a: unflat(jax.lax.map(fn, a)), default=lambda a: unflat(fn(a)))


def eigenbasis(stats: jax.Array, fallback: Optional[jax.Array] = None) -> jax.Array:
  """Eigenvectors of symmetric `stats` (N, b, b), columns by descending eigenvalue.

  As the official SOAP code's first basis (``eigh(GG + 1e-30 I)``, flipped).
  Matrices whose result is not finite get `fallback` (default: identity).
  """
  dt = accumulation_dtype(stats.dtype)
  s = stats.astype(dt)
  s = s + jnp.asarray(1e-30, dt) * _eye_like(s)
  _, v = _per_matrix(jnp.linalg.eigh, s)
  v = v[..., ::-1]
  fb = _eye_like(s) if fallback is None else fallback.astype(dt)
  return _choose(_finite(v), v, fb)


def refresh_eigenbasis(stats: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One power iteration and a QR, as the official SOAP ``get_orthogonal_matrix_QR``.

  For each matrix S with current basis Q: the estimated eigenvalues
  diag(Q^T S Q) give the permutation `perm` that sorts them in descending
  order; the new basis is the Q factor of S Q[:, perm]. Returns
  (new basis, perm), where perm (N, b) is what the second-moment statistics
  kept in the old basis must be re-ordered by. Where the result is not finite
  the old basis is kept with the identity permutation.
  """
  dt = accumulation_dtype(stats.dtype)
  s, q = stats.astype(dt), basis.astype(dt)
  sq = _mm(s, q)
  est = jnp.sum(q * sq, axis=-2)  # diag(Q^T S Q)
  perm = jnp.argsort(-est, axis=-1, stable=True)
  q_sorted = jnp.take_along_axis(q, perm[..., None, :], axis=-1)
  new, _ = _per_matrix(jnp.linalg.qr, _mm(s, q_sorted))
  ok = _finite(new) & jnp.all(jnp.isfinite(est), axis=-1)
  identity = jnp.broadcast_to(jnp.arange(s.shape[-1]), perm.shape)
  return _choose(ok, new, q), jnp.where(ok[..., None], perm, identity)


def inverse_pth_root(stats: jax.Array, p: Any, eps: Any = 1e-6,
                     fallback: Optional[jax.Array] = None, *, relative: bool = True,
                     floor: float = 1e-6) -> jax.Array:
  """(S + damping I)^(-1/p) for symmetric PSD `stats` (N, b, b), via eigh.

  `p` is a number or an array broadcasting against (N, 1) (one exponent per
  matrix). damping = eps * max(lambda_max, floor) when `relative`
  (distributed Shampoo's ``matrix_inverse_pth_root`` ridge, floor 1e-6),
  else eps. Eigenvalues are clipped at
  0 first (round-off can make them slightly negative). Matrices whose result
  is not finite get `fallback` (default: identity).
  """
  dt = accumulation_dtype(stats.dtype)
  s = stats.astype(dt)
  w, v = _per_matrix(jnp.linalg.eigh, s)
  w = jnp.maximum(w, 0)
  if relative:
    damping = eps * jnp.maximum(jnp.max(w, axis=-1, keepdims=True), floor)
  else:
    damping = jnp.asarray(eps, dt)
  scale = jnp.power(w + damping, -1.0 / p).astype(dt)
  root = _mm(v * scale[..., None, :], jnp.swapaxes(v, -1, -2))
  ok = _finite(root) & jnp.all(jnp.isfinite(w), axis=-1)
  fb = _eye_like(s) if fallback is None else fallback.astype(dt)
  return _choose(ok, root, fb)


# ---------------------------------------------------------------- Newton-Schulz
def newton_schulz(x: jax.Array, steps: int = 5,
                  coeffs: Sequence[float] = (3.4445, -4.7750, 2.0315),
                  eps: Any = 1e-7) -> jax.Array:
  """Approximate orthogonalisation U V^T of a matrix (or a batch, leading axes).

  Muon's quintic iteration (Keller Jordan's ``zeropower_via_newtonschulz5``):
  X = G / (||G||_F + eps), transposed to be wide; then `steps` times
  A = X X^T, X <- a X + (b A + c A A) X. Computed in at least float32 (the
  official code uses bfloat16); the Frobenius norm is `tensor_norm`, finite
  for entries of 1e30. Returns the input's dtype.
  """
  if x.size == 0:
    return x  # nothing to orthogonalise
  dt = accumulation_dtype(x.dtype)
  y = x.astype(dt)
  wide = y.shape[-2] <= y.shape[-1]
  if not wide:
    y = jnp.swapaxes(y, -1, -2)
  if y.ndim == 2:
    norm = tensor_norm(y)
  else:
    norm = jax.vmap(tensor_norm)(y.reshape(-1, *y.shape[-2:])).reshape(y.shape[:-2] + (1, 1))
  y = y / (norm + eps)
  a, b, c = coeffs

  def body(_, y):
    g = _mm(y, jnp.swapaxes(y, -1, -2))
    return a * y + _mm(b * g + c * _mm(g, g), y)

  if isinstance(steps, int):
    for i in range(steps):
      y = body(i, y)
  else:  # a traced step count (optax.inject_hyperparams)
    y = jax.lax.fori_loop(0, steps, body, y)
  if not wide:
    y = jnp.swapaxes(y, -1, -2)
  return y.astype(x.dtype)
