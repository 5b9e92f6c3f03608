"""A window of top-k sparse gradients with quantised error feedback (MicroAdam,
arXiv:2405.15593).

Instead of Adam's dense moments, the state keeps the last `m` gradients, each
sparsified to its largest-magnitude entries (a fraction `k_init` of every
block of `topk_block_size` entries), in a ring buffer of (index, value)
pairs. What top-k drops is not lost: it is kept as an error buffer, quantised
to 4 bits per entry (asymmetric min/max per block of `quant_block_size`
entries), and added to the next gradient before its top-k. Adam's moments
are recomputed from the window at every step as weighted sums of the stored
rows::

    m = (1 - b1) / (1 - b1^t) * sum_i b1^age_i s_i
    v = (1 - b2) / (1 - b2^t) * sum_i b2^age_i s_i^2

All buffers are flat, one leaf per kind (leaves concatenated), so
`optax.tree_map_params` sees them as non-param state. Per parameter entry
they hold m * k_init * (2 + value bytes) bytes for the window and half a byte
for the error.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src import slicing
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import bias_correction, clip_finite, safe_div
from optlab._src.tree import flat_dtype, pack_flat, unpack_flat
from optlab.primitives.basis import COUNT, OPAQUE_STAT, declare_state

__all__ = ["MicroAdamState", "scale_by_microadam"]

_MAX_TOPK_BLOCK = 2 ** 15  # block-local indices are stored as int16


class _LeafPlan(NamedTuple):
  d: int       # entries of the leaf
  block: int   # top-k block size (min(d, topk_block_size))
  full: int    # number of full top-k blocks
  k_full: int  # entries kept per full block
  k_rest: int  # entries kept in the last, partial block (0 if none)
  k: int       # entries kept per gradient
  q_blocks: int  # quantisation blocks


def _plan(d: int, k_init: float, topk_block_size: int, quant_block_size: int) -> _LeafPlan:
  block = max(min(d, topk_block_size), 1)
  full, rest = d // block, d % block
  k_full = int(math.ceil(block * k_init)) if full else 0
  k_rest = int(math.ceil(rest * k_init))
  return _LeafPlan(d, block, full, k_full, k_rest, full * k_full + k_rest,
                   -(-d // quant_block_size))


def _offsets(plan: _LeafPlan) -> np.ndarray:
  """Each kept slot's block start, to turn block-local indices into flat ones."""
  return np.concatenate([np.repeat(np.arange(plan.full) * plan.block, plan.k_full),
                         np.full(plan.k_rest, plan.full * plan.block)]).astype(np.int32)


def topk_blocks(a: jax.Array, plan: _LeafPlan) -> jax.Array:
  """Block-local indices (int32, [plan.k]) of the largest |a| in each top-k block
  of the flat `a` (ties: the lower index first)."""
  mag = jnp.abs(a)
  parts = []
  if plan.k_full:
    head = mag[:plan.full * plan.block].reshape(plan.full, plan.block)
    parts.append(jax.lax.top_k(head, plan.k_full)[1].reshape(-1))
  if plan.k_rest:
    parts.append(jax.lax.top_k(mag[plan.full * plan.block:], plan.k_rest)[1])
  if not parts:
    return jnp.zeros([0], jnp.int32)
  return jnp.concatenate(parts).astype(jnp.int32)


def _per_entry(x: jax.Array, block: int, d: int) -> jax.Array:
  """Each of the d entries' block value (x has one value per block)."""
  if x.shape[0] == 1:
    return jnp.broadcast_to(x, (d,))
  return x[np.arange(d) // block]


def quantize_4bit(a: jax.Array, block: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(codes, lo, hi): 4-bit asymmetric quantisation of the flat `a` per block of
  `block` entries, code = floor((a - lo) / u + 1/2) with u = (hi - lo) / 15;
  two codes per uint8 (first entry in the high nibble), ceil(d / 2) bytes."""
  d = a.shape[0]
  nb = -(-d // block)
  if nb == 1:
    lo, hi = jnp.min(a, keepdims=True), jnp.max(a, keepdims=True)
  else:
    padded = jnp.pad(a, (0, nb * block - d), mode="edge").reshape(nb, block)
    lo, hi = jnp.min(padded, axis=1), jnp.max(padded, axis=1)
  u = _per_entry(hi / 15 - lo / 15, block, d)
  ok = u > 0
  codes = jnp.floor(safe_div(a - _per_entry(lo, block, d), u) + 0.5)
  codes = jnp.where(ok, jnp.clip(codes, 0, 15), 0).astype(jnp.uint8)
  codes = jnp.pad(codes, (0, d % 2)).reshape(-1, 2)
  return (codes[:, 0] << 4) | codes[:, 1], lo, hi


def dequantize_4bit(packed: jax.Array, lo: jax.Array, hi: jax.Array, block: int, d: int
                    ) -> jax.Array:
  """The inverse of `quantize_4bit`: code * u + lo, a flat vector of d entries."""
  codes = jnp.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:d]
  u = _per_entry(hi / 15 - lo / 15, block, d)
  return codes.astype(lo.dtype) * u + _per_entry(lo, block, d)


@declare_state(count=COUNT, indices=OPAQUE_STAT, values=OPAQUE_STAT, error=OPAQUE_STAT,
               error_lo=OPAQUE_STAT, error_hi=OPAQUE_STAT)
class MicroAdamState(NamedTuple):
  count: jax.Array    # [], int32: steps taken (the ring row written next is count % m)
  indices: jax.Array  # [m, sum of k over leaves], int16: block-local top-k indices
  values: jax.Array   # [m, sum of k over leaves], values_dtype: the kept entries
  error: jax.Array    # [sum of ceil(d / 2) over leaves], uint8: 4-bit error codes
  error_lo: jax.Array  # [sum of quantisation blocks], float32: each block's minimum
  error_hi: jax.Array  # [sum of quantisation blocks], float32: each block's maximum


def scale_by_microadam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8, m: int = 10,
                       k_init: Any = None, quant_block_size: int = 100_000,
                       topk_block_size: int = 16_384, values_dtype: Any = jnp.bfloat16
                       ) -> optax.GradientTransformationExtraArgs:
  """MicroAdam's direction (arXiv:2405.15593, Algorithm 1 and the official code).

  Per tensor (flattened), at step t: a = g + Q^-1(e); keep the top
  ceil(k_init * block) entries of ``|a|`` in every block of `topk_block_size`;
  zero them in a and store e = Q(a) (4 bits, per `quant_block_size` block);
  write the kept (index, value) pairs into ring row (t - 1) % m; out =
  m_hat / (sqrt(v_hat) + eps) with m_hat, v_hat the debiased Adam moments of
  the window (the row written j steps ago weighs b1^j, b2^j). Entries absent
  from the window get 0. ``values_dtype=None`` stores values in the
  statistics' dtype (float32, float64 under x64); the default bfloat16 is
  the official code's. ``k_init=None`` is the official 0.01; k_init sets the
  state's shapes, so under `optax.inject_hyperparams` it must be a static arg
  (None, the default, is static by itself).
  """
  where = "scale_by_microadam"
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_range(where, "m", m, 1)
  k_init = 0.01 if k_init is None else k_init
  V.check_range(where, "k_init", k_init, 0.0, 1.0, low_open=True)
  V.check_range(where, "quant_block_size", quant_block_size, 1)
  V.check_range(where, "topk_block_size", topk_block_size, 1, _MAX_TOPK_BLOCK)
  m, qb, tb = int(m), int(quant_block_size), int(topk_block_size)

  def plans(leaves):
    if isinstance(k_init, jax.core.Tracer):
      raise TypeError(f"optlab.{where}: k_init sets the state's shapes and cannot be traced; "
                      "pass it in static_args of optax.inject_hyperparams")
    return [_plan(int(np.prod(jnp.shape(x), dtype=np.int64)), k_init, tb, qb) for x in leaves]

  def vdtype(leaves):
    return flat_dtype(leaves) if values_dtype is None else jnp.dtype(values_dtype)

  def init(params):
    leaves = jax.tree.leaves(params)
    ps, dt = plans(leaves), flat_dtype(leaves)
    k = sum(p.k for p in ps)
    return MicroAdamState(jnp.zeros([], jnp.int32), jnp.zeros([m, k], jnp.int16),
                          jnp.zeros([m, k], vdtype(leaves)),
                          jnp.zeros([sum(-(-p.d // 2) for p in ps)], jnp.uint8),
                          jnp.zeros([sum(p.q_blocks for p in ps)], dt),
                          jnp.zeros([sum(p.q_blocks for p in ps)], dt))

  def update(updates, state, params=None, **extra):
    del params, extra
    leaves, treedef = jax.tree.flatten(updates)
    ps = plans(leaves)
    name = "optlab.scale_by_microadam"
    dt = state.error_lo.dtype
    ks = [(p.k,) for p in ps]
    codes = unpack_flat(state.error, [(-(-p.d // 2),) for p in ps], updates, name)
    los = unpack_flat(state.error_lo, [(p.q_blocks,) for p in ps], updates, name)
    his = unpack_flat(state.error_hi, [(p.q_blocks,) for p in ps], updates, name)
    if state.indices.shape[1] != sum(p.k for p in ps):
      unpack_flat(state.indices[0], ks, updates, name)  # raises, naming the leaves
    count = state.count
    row = count % m
    ages = jnp.mod(count - jnp.arange(m), m).astype(dt)   # steps since each row was written
    w1, w2 = jnp.asarray(b1, dt) ** ages, jnp.asarray(b2, dt) ** ages
    t = (count + 1).astype(dt)
    c1 = (1 - jnp.asarray(b1, dt)) / bias_correction(jnp.asarray(b1, dt), t)
    c2 = (1 - jnp.asarray(b2, dt)) / bias_correction(jnp.asarray(b2, dt), t)
    new_idx, new_val, new_codes, new_lo, new_hi = [], [], [], [], []
    for g, p, e, lo, hi in zip(leaves, ps, codes, los, his):
      if p.d == 0:
        new_idx.append(jnp.zeros([0], jnp.int16)), new_val.append(jnp.zeros([0], dt))
        new_codes.append(e), new_lo.append(lo), new_hi.append(hi)
        continue
      a = g.astype(accumulation_dtype(g.dtype)).astype(dt).reshape(-1)
      a = clip_finite(a + dequantize_4bit(e, lo, hi, qb, p.d))
      local = topk_blocks(a, p)
      flat = local + jnp.asarray(_offsets(p))
      new_idx.append(local.astype(jnp.int16))
      new_val.append(a[flat])
      e, lo, hi = quantize_4bit(a.at[flat].set(0), qb)
      new_codes.append(e), new_lo.append(lo), new_hi.append(hi)
    indices = jax.lax.dynamic_update_index_in_dim(
        state.indices, pack_flat(new_idx, jnp.int16), row, 0)
    vtop = float(jnp.finfo(state.values.dtype).max)  # saturate, not inf, in bfloat16
    values = jax.lax.dynamic_update_index_in_dim(
        state.values, pack_flat([jnp.clip(v, -vtop, vtop) for v in new_val],
                                state.values.dtype), row, 0)
    out = []
    widths = [p.k for p in ps]
    for g, p, idx, val in zip(leaves, ps, slicing.split(indices, widths, axis=1, probe=values),
                              slicing.split(values, widths, axis=1)):
      idx = idx.astype(jnp.int32) + jnp.asarray(_offsets(p))
      val = val.astype(dt)
      # Each coordinate in units of its own largest |value| in the window: v cannot
      # overflow, and one huge value elsewhere cannot underflow this coordinate's
      # v to 0 while its m stays non-zero (a window-wide scale did: 1e8 x steps).
      flat_idx = idx.reshape(-1)
      top = jnp.zeros([p.d], dt).at[flat_idx].max(jnp.abs(val).reshape(-1))
      val = safe_div(val, top[idx])
      mu = jnp.zeros([p.d], dt).at[flat_idx].add((w1[:, None] * val).reshape(-1))
      nu = jnp.zeros([p.d], dt).at[flat_idx].add((w2[:, None] * val * val).reshape(-1))
      u = safe_div(c1 * mu, jnp.sqrt(c2 * nu) + safe_div(jnp.asarray(eps, dt), top))
      out.append(clip_finite(u).reshape(jnp.shape(g)).astype(g.dtype))
    return (jax.tree.unflatten(treedef, out),
            MicroAdamState(optax.safe_increment(count), indices, values,
                           pack_flat(new_codes, jnp.uint8), pack_flat(new_lo, dt),
                           pack_flat(new_hi, dt)))

  return optax.GradientTransformationExtraArgs(init, update)
