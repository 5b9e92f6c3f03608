"""How optimizer state is stored: compact dtypes, 8-bit blocks, flat statistics.

* `with_state_dtype(inner, jnp.bfloat16)` keeps the floating leaves of any
  inner chain's state in a narrow dtype, with unbiased stochastic rounding;
* `with_quantized_state(inner, bits=8)` keeps its moments as 8-bit codes of
  the dynamic (tree) map, one absmax scale per block ("8-bit Optimizers via
  Block-wise Quantization", arXiv:2110.02861);
* `state_bytes(tx, params)` counts the bytes of a state with `jax.eval_shape`,
  allocating nothing;
* `pack_flat` / `unpack_flat` keep per-tensor statistics that are not shaped
  like a parameter (Adafactor's row and column means, Adam-mini's block means,
  quantisation scales) in one flat vector. A tree of such arrays would be
  taken for a copy of the params by `optax.tree_map_params` (which would then
  hand a matrix's sharding spec to a row vector); one vector is a single leaf
  whatever the params are, so it is seen as what it is, a non-param leaf. A
  statistic with no entries for the given params is None, not a zero-size
  array (`flat_zeros`, `repack_flat`): checkpointers such as orbax refuse to
  save zero-size arrays.

Sharding. Every wrapper here maps its inner state leaf by leaf, element-wise:
stored leaves (bf16 copies, uint8 codes) are computed from the param-shaped
inner leaves, so they keep the params' layout, and `optax.tree_map_params`
still finds them where the params are. Quantisation blocks are runs of
``block_size`` consecutive entries of the row-major flattened tensor, as in
bitsandbytes; with a sharding of the leading axis (the usual FSDP layout) a
block never straddles two devices when each shard holds a multiple of
``block_size`` entries. The per-block scales (4 bytes per ``block_size``
entries, 0.2 % of an fp32 state at 2048) live in one flat float32 vector,
which is replicated.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.random import new_key
from optlab._src.tree import flat_dtype, flat_zeros, pack_flat, repack_flat, unpack_flat
from optlab.primitives.basis import (INVARIANT_STAT, MOMENT, NESTED, SECOND, StateField,
                                     declare_state, map_fields)

__all__ = ["StateBytes", "state_bytes", "WithStateDtypeState", "with_state_dtype",
    "WithQuantizedState", "with_quantized_state", "quantize_blockwise", "dequantize_blockwise"]


# ---------------------------------------------------------------- state bytes
class StateBytes(NamedTuple):
  total: int        # bytes of the whole optimizer state
  per_param: float  # total / number of parameter entries (AdamW in fp32: 8.0)
  num_params: int   # number of parameter entries
  by_param: Any     # tree like params: bytes of the param-shaped state copies of each
                    # leaf (None where `optax.tree_map_params` cannot map the state)
  other: int        # bytes not attributed to one param (counts, flat statistics, keys)


def _nbytes(x: Any) -> int:
  return int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize


def state_bytes(tx: optax.GradientTransformation, params: Any) -> StateBytes:
  """Bytes of ``tx.init(params)``, from shapes only (`jax.eval_shape`: nothing is
  allocated, so a 10B-parameter tree costs nothing).

  `params` may hold arrays or `jax.ShapeDtypeStruct`s. ``per_param`` divides
  by the number of parameter entries: fp32 AdamW gives 8.0, SGD 0.0.
  """
  params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(jnp.shape(p), jnp.result_type(p)), params)
  state = jax.eval_shape(tx.init, params)
  total = sum(_nbytes(x) for x in jax.tree.leaves(state))
  num = sum(int(np.prod(p.shape, dtype=np.int64)) for p in jax.tree.leaves(params))
  leaves, treedef = jax.tree.flatten(params)
  counts = [0] * len(leaves)
  index = jax.tree.unflatten(treedef, list(range(len(leaves))))

  def record(x, i):
    counts[i] += _nbytes(x)
    return x

  try:
    optax.tree_map_params(tx, record, state, index)
    by_param = jax.tree.unflatten(treedef, counts)
    other = total - sum(counts)
  except Exception:  # a state tree_map_params cannot walk: report the total only
    by_param, other = None, total
  return StateBytes(total, total / max(num, 1), num, by_param, other)


# ------------------------------------------------------------ selecting leaves
def _leaf_fields(state: Any) -> list[StateField]:
  """The field (`basis.StateField`) holding each leaf of `state`, in leaf order;
  kind, role and owner are None for a leaf outside any declared state."""
  records = []

  def index(field):
    records.append(field)
    return jax.tree.map(lambda _: len(records) - 1, field.value)

  return [records[i] for i in jax.tree.leaves(map_fields(index, state, undeclared=True))]


_WHICH = ("moments", "all")


def _selector(where: str, which: Any) -> Callable[[StateField], bool]:
  if callable(which):
    return which
  V.check_choice(where, "which", which, _WHICH)
  if which == "all":
    return lambda field: True
  return lambda field: field.role == MOMENT


def _floating_tensor(x: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating) and jnp.ndim(x) > 0


def _template(inner, updates, params):
  """Shapes and dtypes of inner's state (what the stored leaves decode to)."""
  like = updates if params is None else params
  return jax.eval_shape(inner.init, like)


# --------------------------------------------------------- stochastic rounding
def stochastic_round(x: jax.Array, key: jax.Array, dtype: Any = jnp.bfloat16) -> jax.Array:
  """Rounds `x` to bfloat16 up or down at random, unbiased: E[round(x)] = x.

  In float32 bits: add 16 uniform random bits below bf16's last mantissa bit,
  then truncate. Finite values never round to inf (they saturate at bf16's
  largest value); NaN and inf pass through. `key` is a raw uint32 key.
  """
  if jnp.dtype(dtype) != jnp.dtype(jnp.bfloat16):
    raise ValueError(f"optlab.stochastic_round: only bfloat16 is supported, got {dtype}")
  x32 = x.astype(jnp.float32)
  noise = jax.random.bits(key, x32.shape, jnp.uint32) & jnp.uint32(0xFFFF)
  bits = (jax.lax.bitcast_convert_type(x32, jnp.uint32) + noise) & jnp.uint32(0xFFFF0000)
  y = jax.lax.bitcast_convert_type(bits, jnp.float32)
  top = float(jnp.finfo(jnp.bfloat16).max)
  y = jnp.where(jnp.isinf(y) & jnp.isfinite(x32), jnp.sign(x32) * top, y)
  y = jnp.where(jnp.isfinite(x32), y, x32)
  return y.astype(jnp.bfloat16)


@declare_state(inner_state=NESTED, key=INVARIANT_STAT)
class WithStateDtypeState(NamedTuple):
  inner_state: Any  # inner's state; the selected floating leaves are stored in `dtype`
  key: jax.Array    # [2], uint32: raw key of the stochastic rounding (unused without it)


def with_state_dtype(inner: optax.GradientTransformation, dtype: Any = jnp.bfloat16,
                     *, stochastic_rounding: bool = True, which: Any = "all",
                     seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Stores the state of any `inner` transformation in `dtype` (bfloat16).

  Each step decodes the stored leaves to the dtypes `inner` built them in,
  runs `inner`, and stores the new state again, rounding stochastically
  (bfloat16 only; unbiased, E[stored] = exact, with error below one bf16 ulp,
  2^-8 relative) or to nearest. ``which="all"`` stores every floating tensor
  leaf (ndim >= 1; scalars stay), ``"moments"`` only fields of role MOMENT in
  the state schema (`declare_state`); a callable gets the `StateField` holding
  each leaf (kind, role, path) and decides. Leaves already no wider than
  `dtype` are left alone. The rounding key lives in the state (seeded by
  `seed`), so runs are reproducible and identical across devices.

  Args:
    inner: any transformation whose state is declared with `declare_state`.
    dtype: the storage dtype of the selected leaves.
    stochastic_rounding: round stochastically (bfloat16 only); False rounds to
      nearest.
    which: ``"all"``, ``"moments"`` or a callable of a `StateField`, as above.
    seed: seeds the rounding key kept in the state.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `WithStateDtypeState`.
  """
  inner = optax.with_extra_args_support(inner)
  select = _selector("with_state_dtype", which)
  dtype = jnp.dtype(dtype)
  if stochastic_rounding and dtype != jnp.dtype(jnp.bfloat16):
    raise ValueError(f"optlab.with_state_dtype: stochastic_rounding needs bfloat16, got {dtype}")

  def chosen(template):
    leaves, treedef = jax.tree.flatten(template)
    return jax.tree.unflatten(treedef, [
        bool(_floating_tensor(x) and select(f) and jnp.dtype(x.dtype).itemsize > dtype.itemsize)
        for x, f in zip(leaves, _leaf_fields(template))])

  def store(state, template, key):
    flags = chosen(template)
    leaves, treedef = jax.tree.flatten(state)
    out = []
    for i, (x, f) in enumerate(zip(leaves, jax.tree.leaves(flags))):
      if not f:
        out.append(x)
      elif stochastic_rounding:
        out.append(stochastic_round(x, jax.random.fold_in(key, i), dtype))
      else:
        out.append(x.astype(dtype))
    return jax.tree.unflatten(treedef, out)

  def init(params):
    state = inner.init(params)
    key = new_key(seed)
    # nearest rounding at init: the initial state is usually exact (zeros)
    flags = chosen(state)
    state = jax.tree.map(lambda x, f: x.astype(dtype) if f else x, state, flags)
    return WithStateDtypeState(state, key)

  def update(updates, state, params=None, **extra):
    template = _template(inner, updates, params)
    full = jax.tree.map(lambda x, t: x.astype(t.dtype), state.inner_state, template)
    new_updates, new_inner = inner.update(updates, full, params, **extra)
    key, sub = jax.random.split(state.key)
    return new_updates, WithStateDtypeState(store(new_inner, template, sub), key)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------- blockwise quantisation
@functools.lru_cache(maxsize=None)
def _dynamic_map_np(signed: bool) -> np.ndarray:
  """bitsandbytes' dynamic tree map (``create_dynamic_map``, 8 bits, 7 exponent bits),
  as used in the paper: 256 sorted values in [-1, 1] (signed) or [0, 1]."""
  data = []
  for i in range(7):
    items = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
    bounds = np.linspace(0.1, 1.0, items)
    means = (bounds[:-1] + bounds[1:]) / 2.0
    data += list(10.0 ** (i - 6) * means)
    if signed:
      data += list(-(10.0 ** (i - 6)) * means)
  data += [0.0, 1.0]
  assert len(data) == 256
  return np.sort(np.asarray(data, np.float64))


def dynamic_map(*, signed: bool = True, dtype: Any = jnp.float32) -> jax.Array:
  """The 256 values of the 8-bit dynamic (tree) quantisation map, sorted."""
  return jnp.asarray(_dynamic_map_np(signed), dtype)


def quantization_error_bound(*, signed: bool = True) -> float:
  """Largest |x - dequantize(quantize(x))| / absmax(block) for |x| <= absmax:
  half the widest gap of the map (0.0071 signed: the negative side stops at
  -0.993; 0.0035 unsigned)."""
  m = _dynamic_map_np(signed)
  gaps = np.diff(m).max() / 2
  ends = 1.0 - m[-1], m[0] + 1.0 if signed else 0.0
  return float(max(gaps, *ends))


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
  flat = jnp.reshape(x, [-1])
  n = flat.shape[0]
  nb = -(-n // block_size)
  return jnp.pad(flat, (0, nb * block_size - n)).reshape(nb, block_size)


def _per_entry(scales: jax.Array, block_size: int, shape: tuple[int, ...]) -> jax.Array:
  """Each entry's block scale, shaped like the tensor."""
  n = int(np.prod(shape, dtype=np.int64))
  full = jnp.broadcast_to(scales[:, None], (scales.shape[0], block_size))
  return full.reshape(-1)[:n].reshape(shape)


def quantize_blockwise(x: jax.Array, block_size: int, *, signed: bool = True
                       ) -> tuple[jax.Array, jax.Array]:
  """(codes, scales): uint8 codes shaped like `x`, and one absmax per block of
  `block_size` consecutive entries of the flattened `x` (float32, or float64
  for float64 input). Each entry goes to the nearest map value of x / absmax.

  The codes are an element-wise function of `x` (and its entry's scale), so
  under `jit` they keep `x`'s sharding.
  """
  dt = jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(dt)
  absmax = jnp.max(jnp.abs(_blocks(x, block_size)), axis=1)
  scale = _per_entry(jnp.where(absmax > 0, absmax, jnp.ones_like(absmax)), block_size, x.shape)
  table = dynamic_map(signed=signed, dtype=dt)
  mids = (table[1:] + table[:-1]) / 2
  codes = jnp.searchsorted(mids, x / scale, method="scan_unrolled").astype(jnp.uint8)
  return codes, absmax


def dequantize_blockwise(codes: jax.Array, scales: jax.Array, block_size: int,
                         *, signed: bool = True, dtype: Any = jnp.float32) -> jax.Array:
  """The inverse of `quantize_blockwise`: map[codes] * absmax of the block."""
  dt = jnp.promote_types(jnp.dtype(dtype), scales.dtype)
  table = dynamic_map(signed=signed, dtype=dt)
  return (table[codes.astype(jnp.int32)] * _per_entry(scales, block_size, codes.shape)
          ).astype(dtype)


# The codes keep their fields' declarations; rebase_state refuses them (not floating).
@declare_state(inner_state=NESTED, scales=INVARIANT_STAT)
class WithQuantizedState(NamedTuple):
  inner_state: Any   # inner's state; each quantised leaf holds uint8 codes, param-shaped
  scales: Optional[jax.Array]  # [blocks of all quantised leaves], float32 (float64 under
                               # x64): absmax of each block, leaves in tree order; None
                               # when no leaf is quantised (flat_zeros)


def with_quantized_state(inner: optax.GradientTransformation, bits: int = 8,
                         block_size: int = 2048, *, min_size: int = 4096,
                         which: Any = "moments") -> optax.GradientTransformationExtraArgs:
  """Stores the moments of any `inner` transformation in 8 bits, blockwise.

  "8-bit Optimizers via Block-wise Quantization" (arXiv:2110.02861). Each
  selected state tensor is cut into blocks of `block_size` consecutive
  entries; a block stores its absmax (float32) and, per entry, the uint8 index
  of the nearest value of x / absmax in the dynamic tree map (bitsandbytes'
  ``create_dynamic_map``: signed for first moments, unsigned for non-negative
  second moments). Every step dequantises, runs `inner` in full precision and
  quantises the new state. Error bound: per block,
  ``|x - stored| <= quantization_error_bound * absmax`` (0.0071 signed, 0.0035
  unsigned); entries below ~1e-7 * absmax round to 0.

  Args:
    inner: any transformation (a recipe or a chain).
    bits: 8 (codes are bytes; narrower codes would need packing two per byte,
      which would break the param-shaped layout).
    block_size: entries per block; the paper uses 2048.
    min_size: tensors with fewer entries stay in full precision (bitsandbytes'
      ``min_8bit_size``, 4096).
    which: ``"moments"`` quantises the leaves of fields of role MOMENT in the
      state schema (`declare_state`) -- Adam's m and v, Lion's m, the moments
      inside SOAP -- and leaves everything else (anchors such as DoG's x0,
      SOAP's eigenbases, Adafactor's factors, counts) exact; ``"all"``
      quantises every floating tensor; a callable gets the `StateField`
      holding a leaf (kind, role, path) and decides. The map is unsigned for
      fields of kind SECOND (non-negative), signed for all others.

  Deviation: bitsandbytes fuses dequantise-update-quantise in one kernel; here
  XLA fuses it, with the same arithmetic (nearest rounding, new absmax from
  the new state).
  """
  V.check_choice("with_quantized_state", "bits", bits, (8,))
  V.check_range("with_quantized_state", "block_size", block_size, 1)
  V.check_nonneg("with_quantized_state", "min_size", min_size)
  inner = optax.with_extra_args_support(inner)
  select = _selector("with_quantized_state", which)
  block_size = int(block_size)

  def plan(template):
    """Per leaf of the inner state: None (kept) or signed (bool) if quantised."""
    out = []
    for x, f in zip(jax.tree.leaves(template), _leaf_fields(template)):
      ok = _floating_tensor(x) and x.size >= max(min_size, 1) and select(f)
      out.append((f.kind != SECOND) if ok else None)
    return out

  def scale_shapes(template, signs):
    return [(-(-x.size // block_size),) for x, s in zip(jax.tree.leaves(template), signs)
            if s is not None]

  def store(state, template):
    signs = plan(template)
    leaves, treedef = jax.tree.flatten(state)
    out, scales = [], []
    for x, s in zip(leaves, signs):
      if s is None:
        out.append(x)
        continue
      codes, absmax = quantize_blockwise(x, block_size, signed=s)
      out.append(codes)
      scales.append(absmax)
    return jax.tree.unflatten(treedef, out), scales

  def init(params):
    state = inner.init(params)
    inner_state, scales = store(state, state)
    dt = flat_dtype(jax.tree.leaves(state))
    scales = (pack_flat(scales, dt) if scales else
              flat_zeros(0, dt, jax.tree.leaves(params)))
    return WithQuantizedState(inner_state, scales)

  def update(updates, state, params=None, **extra):
    template = _template(inner, updates, params)
    signs = plan(template)
    scales = iter(unpack_flat(state.scales, scale_shapes(template, signs)))
    leaves, treedef = jax.tree.flatten(state.inner_state)
    full = [x if s is None else dequantize_blockwise(x, next(scales), block_size, signed=s, dtype=t.dtype)
            for x, s, t in zip(leaves, signs, jax.tree.leaves(template))]
    new_updates, new_inner = inner.update(updates, jax.tree.unflatten(treedef, full), params,
                                          **extra)
    new_inner, new_scales = store(new_inner, template)
    return new_updates, WithQuantizedState(new_inner, repack_flat(new_scales, state.scales))

  return optax.GradientTransformationExtraArgs(init, update)
