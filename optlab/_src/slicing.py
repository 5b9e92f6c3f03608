"""Cutting one array into per-leaf pieces without one compiled kernel per leaf.

XLA compiles one kernel per distinct fused computation and reuses it for
identical ones; compile time grows with the number of kernels. A static slice
bakes its offset into the kernel of whatever consumes the piece (the next
link of the chain, ``apply_updates``), so cutting a stack or a flat vector
into N leaves used to compile N kernels even when every leaf has the same
shape: on a 146-leaf transformer-like tree, 114 of Muon's 139 kernels, and
M-FAC compiled in 3.3x AdamW's time. `split` slices at offsets that XLA:CPU
only learns at run time, so the leaves of one shape share their kernels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["runtime_ints", "split", "split_each"]


def runtime_ints(values: Sequence[int], probe: jax.Array) -> tuple:
  """`values` as int32 scalars that XLA:CPU only learns at run time.

  Read from a loop that runs zero times (once for a NaN first entry of
  `probe`, and then leaves them as they are), they are kernel arguments, not
  constants. Other platforms get the constants: a GPU loop would wait on the
  host once per step. Fewer than two values stay constants (nothing to share),
  and so do all for an integer `probe` (XLA folds x != x to false: the same
  values, only without the shared kernels).
  """
  consts = tuple(jnp.int32(v) for v in values)
  if len(consts) < 2:
    return consts
  top = int(max(values))

  def opaque(x):
    x = jnp.ravel(x)[0]
    body = lambda _, vs: tuple(jnp.minimum(v, top) for v in vs)
    return jax.lax.fori_loop(0, (x != x).astype(jnp.int32), body, consts)

  return jax.lax.platform_dependent(probe, cpu=opaque, default=lambda _: consts)


def split(x: jax.Array, sizes: Sequence[int], axis: int = 0,
          probe: Optional[jax.Array] = None) -> list[jax.Array]:
  """Consecutive pieces of `x` along `axis`, of `sizes` entries each, cut at
  offsets from `runtime_ints` (the sizes may leave a tail of `x` unused).
  `probe`: a float array for `runtime_ints` when `x` holds integers (default `x`)."""
  return split_each([x], [sizes], axis, probe)[0]


def split_each(xs: Sequence[jax.Array], sizes: Sequence[Sequence[int]], axis: int = 0,
               probe: Optional[jax.Array] = None, *, static: bool = False
               ) -> list[list[jax.Array]]:
  """`split` of every array of `xs` by its own list of `sizes`, with one
  `runtime_ints` for all their offsets: each call compiles a loop of its own
  (~0.03 s of XLA:CPU compile time). `probe` defaults to the first
  non-empty array of `xs`. With `static`, constant offsets instead (a kernel
  per piece): for arrays split over a device mesh along `axis`, where XLA,
  not knowing which device holds a piece at a run-time offset, gathers the
  whole array onto every device."""
  sizes = [[int(n) for n in ns] for ns in sizes]
  for x, ns in zip(xs, sizes):
    if sum(ns) > x.shape[axis]:
      raise ValueError(f"optlab: pieces of {sum(ns)} entries do not fit in {x.shape[axis]}")
  if probe is None:
    probe = next((x for x in xs if x.size), None)
  offsets = [np.cumsum([0] + ns[:-1]) for ns in sizes]
  if static or probe is None:  # (probe None: nothing to cut)
    return [[jax.lax.slice_in_dim(x, int(a), int(a) + n, axis=axis) for a, n in zip(off, ns)]
            for x, ns, off in zip(xs, sizes, offsets)]
  starts = iter(runtime_ints(np.concatenate(offsets), probe))
  return [[jax.lax.dynamic_slice_in_dim(x, next(starts), n, axis=axis) for n in ns]
          for x, ns in zip(xs, sizes)]
