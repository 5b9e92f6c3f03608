"""Unit tests of optlab.primitives.linalg: blocking, matrix functions, Newton-Schulz."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab.primitives import linalg
from tests.test_slicing import fused_bodies


def _rng(seed=0):
  return np.random.default_rng(seed)


def _spd(n, seed=0, rank=None):
  a = _rng(seed).normal(size=(n, rank or n))
  return a @ a.T


# -------------------------------------------------------------------- blocking
@pytest.mark.parametrize("shape,max_dim,want", [
    ((2, 2, 4), 4, (4, 4)),            # 2*2 = 4 fits, *4 does not
    ((3, 4, 5), 10000, (60,)),
    ((20000, 3), 10000, (20000, 3)),   # too large: stays alone
    ((5, 20000, 3), 10000, (5, 20000, 3)),
    ((1, 1), 10, (1,)),
    ((3, 3, 3, 3), 9, (9, 9)),
])
def test_merge_dims_follows_soap(shape, max_dim, want):
  assert linalg.merge_dims(shape, max_dim) == want


def test_block_plan_round_trip_with_padding():
  x = jnp.asarray(_rng().normal(size=(7, 5)))
  plan = linalg.BlockPlan.make(x.shape, block_size=3)
  assert plan.block == (3, 3) and plan.counts == (3, 2) and plan.nblocks == 6
  blocks = plan.to_blocks(x)
  assert blocks.shape == (6, 3, 3)
  np.testing.assert_array_equal(plan.from_blocks(blocks), x)
  # block (1, 1) holds rows 3:6, columns 3:5 and one column of zero padding
  np.testing.assert_array_equal(blocks[3][:, :2], x[3:6, 3:5])
  np.testing.assert_array_equal(blocks[3][:, 2], 0)
  # statistics of a padded block equal the unpadded block's, padded with zeros
  s = linalg.outer_stats(blocks, [1])[0][5]  # rows 6:7 (one real row), columns 3:5
  np.testing.assert_allclose(s[:2, :2], np.asarray(x[6:, 3:]).T @ np.asarray(x[6:, 3:]),
                             rtol=1e-6)
  assert float(jnp.abs(s[2]).max()) == 0.0


def test_block_plan_rotation_rules():
  soap = lambda shape, **kw: linalg.BlockPlan.make(shape, max_dim=100, **kw)
  assert soap((10,)).rotated == (False,)                       # 1-d: off by default
  assert soap((10,), min_ndim=1).rotated == (True,)
  assert soap((1000,), min_ndim=1).rotated == (False,)         # above max_dim
  assert soap(()).rotated == ()
  assert soap((200, 50)).rotated == (False, True)
  assert soap((4, 5, 6), merge=True).merged == (20, 6)


def test_zero_size_tensors_get_no_factors():
  # Issue 12, item 5: a (0, 3) tensor has nothing to precondition; a factor for
  # its size-3 dimension would hold only zeros (and once crashed outer_stats).
  for kw in ({"max_dim": 100}, {"max_dim": 100, "merge": True}, {"block_size": 2, "min_ndim": 1}):
    plan = linalg.BlockPlan.make((0, 3), **kw)
    assert not plan.any_rotated, kw
  assert linalg.BlockPlan.make((0,), min_ndim=1).rotated == (False,)
  # The helpers themselves accept empty blocks and matrices.
  np.testing.assert_array_equal(linalg.outer_stats(jnp.zeros((1, 0, 3)), [1])[0], np.zeros((1, 3, 3)))
  assert linalg.newton_schulz(jnp.zeros((0, 3))).shape == (0, 3)


def test_outer_stats_matches_numpy_and_saturates():
  x = _rng().normal(size=(2, 4, 3, 5))
  s0, s2 = linalg.outer_stats(jnp.asarray(x), [0, 2])
  for k in range(2):
    u0, u2 = x[k].reshape(4, -1), np.moveaxis(x[k], 2, 0).reshape(5, -1)
    np.testing.assert_allclose(s0[k], u0 @ u0.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2[k], u2 @ u2.T, rtol=1e-5, atol=1e-5)
  big = jnp.asarray([[[1e30, -1e30, 3.0], [2e30, 5.0, -1e30]]], jnp.float32)
  s = linalg.outer_stats(big, [0])[0]
  assert np.all(np.isfinite(np.asarray(s)))
  assert float(s[0, 0, 0]) == np.finfo(np.float32).max  # 2e60 saturates
  small = linalg.outer_stats(jnp.full((1, 2, 2), 1e-18, jnp.float32), [0])[0]
  np.testing.assert_allclose(small, 2e-36, rtol=1e-5)


def test_apply_factors_is_q_transpose_g_q():
  g = _rng().normal(size=(1, 4, 3))
  ql, _ = np.linalg.qr(_rng(1).normal(size=(4, 4)))
  qr, _ = np.linalg.qr(_rng(2).normal(size=(3, 3)))
  mats = [jnp.asarray(ql[None]), jnp.asarray(qr[None])]
  rot = linalg.apply_factors(jnp.asarray(g), mats)
  np.testing.assert_allclose(rot[0], ql.T @ g[0] @ qr, rtol=1e-5, atol=1e-6)
  back = linalg.apply_factors(rot, mats, transpose=True)
  np.testing.assert_allclose(back, g, rtol=1e-5, atol=1e-6)
  only_right = linalg.apply_factors(jnp.asarray(g), [None, mats[1]])
  np.testing.assert_allclose(only_right[0], g[0] @ qr, rtol=1e-5, atol=1e-6)


def test_block_stacks_group_by_shape_and_round_trip():
  rng = np.random.default_rng(0)
  leaves = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(4, 3), (5,), (4, 3), (3, 8)]]
  leaves.append(jnp.ones((4, 3), jnp.float64) if jax.config.jax_enable_x64 else leaves[0])
  plan = lambda shape: linalg.BlockPlan.make(shape, max_dim=10, block_size=4)
  stacks = linalg.BlockStacks(leaves, plan, multiple=3)
  # (4, 3) leaves share a stack (one block each); (3, 8) has 2 blocks of (3, 4); (5,) has none
  by_key = {k[0]: (m, n) for k, m, n in zip(stacks.keys, stacks.members, stacks.n_blocks)}
  assert by_key[(4, 3)][1] == 3 and by_key[(3, 4)] == ([3], 3)  # padded to multiples of 3
  assert stacks.rest == [1]
  blocks = stacks.stack(leaves)
  assert [b.shape[0] for b in blocks] == stacks.n_blocks
  back = stacks.unstack(blocks, leaves)
  for x, y in zip(leaves, back):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  eye = stacks.identity(jnp.float32)
  g = stacks.keys.index(((3, 4), (True, True), jnp.dtype(jnp.float32)))
  np.testing.assert_array_equal(eye[g][1], np.broadcast_to(np.eye(4), (3, 4, 4)))


def test_unstacked_leaves_of_one_shape_share_one_kernel():
  # XLA compiles one kernel per distinct fused computation: the slice of each
  # leaf out of its stack, fused into its consumer, must not differ by a
  # constant offset per leaf (compile time would grow with the leaves).
  leaves = [jnp.full((4, 3), float(i)) for i in range(6)]
  stacks = linalg.BlockStacks(leaves, lambda s: linalg.BlockPlan.make(s, max_dim=10))

  def f(blocks):
    return [x * 2.0 + 1.0 for x in stacks.unstack(blocks, leaves)]

  blocks = stacks.stack(leaves)
  for x, y in zip(leaves, jax.jit(f)(blocks)):
    np.testing.assert_array_equal(np.asarray(y), 2 * np.asarray(x) + 1)
  hlo = jax.jit(f).lower(blocks).compile().as_text()
  per_leaf = [b for b in fused_bodies(hlo) if "f32[6,4,3]" in b and "ROOT % = f32[4,3]" in b]
  assert len(per_leaf) == 1, hlo


def test_canonical_stacks_keep_the_orientation_most_blocks_have():
  # Blocks that match with their axes sorted share a stack; it keeps the
  # orientation most of them have (ties: the sorted one), and a block alone
  # in its stack (an embedding) is never transposed.
  plan = lambda s: linalg.BlockPlan.make(s, max_dim=100, canonical=True)
  cases = {((6, 4), (6, 4), (4, 6)): ((6, 4), [(), (), (1, 0)]),
           ((4, 6), (6, 4)): ((4, 6), [(), (1, 0)]),
           ((200, 8),): ((200, 8), [()]),
           ((3, 5, 2), (3, 5, 2), (5, 2, 3)): ((3, 5, 2), [(), (), (2, 0, 1)])}
  rng = np.random.default_rng(0)
  for shapes, (block, orders) in cases.items():
    leaves = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    stacks = linalg.BlockStacks(leaves, plan)
    assert [stacks.block_shape(g) for g in range(len(stacks.keys))] == [block], shapes
    assert [p.order for p in stacks.plans] == orders, shapes
    for x, y in zip(leaves, stacks.unstack(stacks.stack(leaves), leaves)):
      np.testing.assert_array_equal(y, x)
  # each factor follows its axis: the transposed block's row factor is the
  # stack's column factor
  a = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((6, 4), (6, 4), (4, 6))]
  stacks = linalg.BlockStacks(a, plan)
  left, right = linalg.outer_stats(stacks.stack(a)[0], stacks.dims(0))
  np.testing.assert_allclose(right[2], np.asarray(a[2]) @ np.asarray(a[2]).T, rtol=1e-5)
  np.testing.assert_allclose(left[0], np.asarray(a[0]) @ np.asarray(a[0]).T, rtol=1e-5)


# ------------------------------------------------------------ matrix functions
@pytest.mark.parametrize("groups", [1, 2, 4, 3])  # 3 divides neither stack: end to end
def test_by_size_gives_each_entry_its_own_result(groups):
  # Entries of one size are joined (interleaved in `groups` chunks) for one call,
  # and each gets back the result of its own matrices, in order.
  rng = _rng(4)
  xs = [jnp.asarray(rng.normal(size=s)) for s in [(4, 3, 3), (8, 5, 5), (8, 3, 3), (4, 3, 3)]]
  calls = []

  def fn(x, y):
    calls.append(x.shape)
    return x @ x + y, jnp.trace(x, axis1=1, axis2=2)

  out = linalg.by_size(fn, xs, [2 * x for x in xs], groups=groups)
  assert sorted(calls) == [(8, 5, 5), (16, 3, 3)]
  for x, (a, t) in zip(xs, out):
    np.testing.assert_allclose(np.asarray(a), np.asarray(x @ x + 2 * x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(t), np.trace(np.asarray(x), axis1=1, axis2=2),
                               rtol=1e-6)


def test_inverse_pth_root_matches_numpy():
  s = np.stack([_spd(5, 0), _spd(5, 1, rank=2)])  # the second is rank-deficient
  with jax.enable_x64(True):
    got = linalg.inverse_pth_root(jnp.asarray(s), 4, eps=1e-6)
    for k in range(2):
      w, v = np.linalg.eigh(s[k])
      w = np.maximum(w, 0)
      want = (v * (w + 1e-6 * w.max()) ** -0.25) @ v.T
      np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-8)
    exact = linalg.inverse_pth_root(jnp.asarray(s[0]), 2, eps=0.0, relative=False)
    np.testing.assert_allclose(exact @ exact @ s[0], np.eye(5), atol=1e-8)


@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_by_size_common_pads_to_one_size_with_the_same_roots(eps):
  """Shampoo's roots with ``common``: every size padded to the largest, [[S, 0],
  [0, 1e-6 I]], computed in one call (one decomposition loop) and cut back,
  equal the roots computed at their own size: with a ridge relative to the
  largest eigenvalue (which a padding eigenvalue at the ridge's floor does
  not move), for rank-deficient statistics too and for ones whose largest
  eigenvalue is below the padding's; undamped (eps 0), for full-rank ones
  (zero padding would give inf there, and the fallback). (An undamped
  singular root is ill-posed: it follows the rounding of its zero
  eigenvalues.)"""
  rank = (lambda r: r) if eps else (lambda r: None)
  stacks = [np.stack([_spd(3, 0), 1e-9 * _spd(3, 1, rank=rank(1))]),
            _spd(5, 2, rank=rank(3))[None],
            np.stack([_spd(8, 3), _spd(8, 4), _spd(8, 5, rank=rank(6))])]
  prev = [np.broadcast_to(7 * np.eye(s.shape[-1]), s.shape) for s in stacks]
  calls = []

  def fn(s, r):
    calls.append(s.shape)
    return linalg.inverse_pth_root(s, 4, eps, r)

  with jax.enable_x64(True):
    got = linalg.by_size(fn, [jnp.asarray(s) for s in stacks], [jnp.asarray(r) for r in prev],
                         common=1e-6)
    assert calls == [(6, 8, 8)]
    for s, r, g in zip(stacks, prev, got):
      assert g.shape == s.shape
      want = linalg.inverse_pth_root(jnp.asarray(s), 4, eps, jnp.asarray(r))
      np.testing.assert_allclose(g, want, rtol=1e-7, atol=1e-9)
      assert not np.any(np.all(np.isclose(g, r), axis=(1, 2)))  # no fallback taken


def test_inverse_pth_root_never_nan():
  bad = jnp.stack([jnp.zeros((3, 3)), jnp.full((3, 3), jnp.nan), jnp.full((3, 3), 3e38)])
  prev = jnp.broadcast_to(2 * jnp.eye(3), (3, 3, 3))
  out = linalg.inverse_pth_root(bad, 4, fallback=prev)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_array_equal(out[1], 2 * np.eye(3))  # NaN statistics: previous root kept
  out = linalg.inverse_pth_root(bad[1:2], 4)
  np.testing.assert_array_equal(out[0], np.eye(3))      # no previous root: identity


def test_first_eigenbasis_descending_and_fallback():
  s = _spd(6, 3)
  # the first basis is eigh's, whatever the current basis: the identity permutation
  start = np.linalg.qr(_rng(1).normal(size=(6, 6)))[0]
  q, perm = linalg.refresh_eigenbasis(jnp.asarray(s[None]), jnp.asarray(start[None]), True)
  q = np.asarray(q[0])
  lam = np.diag(q.T @ s @ q)
  assert np.all(np.diff(lam) <= 1e-4 * lam.max())
  np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-5)
  np.testing.assert_allclose(lam, np.sort(np.linalg.eigvalsh(s))[::-1], rtol=1e-5)
  np.testing.assert_array_equal(perm[0], np.eye(6))
  nan, perm = linalg.refresh_eigenbasis(jnp.full((1, 3, 3), jnp.nan), 5 * jnp.ones((1, 3, 3)),
                                        True)
  np.testing.assert_array_equal(nan, 5 * np.ones((1, 3, 3)))
  np.testing.assert_array_equal(perm[0], np.eye(3))


def test_refresh_eigenbasis_orders_and_converges():
  w = np.array([1.0, 5.0, 3.0, 0.5])
  v, _ = np.linalg.qr(_rng(4).normal(size=(4, 4)))
  s = (v * w) @ v.T
  # Start from the true eigenvectors in the stored (unsorted) order: the
  # permutation sorts them by eigenvalue and the QR keeps them (up to sign).
  q, perm = linalg.refresh_eigenbasis(jnp.asarray(s[None]), jnp.asarray(v[None]))
  np.testing.assert_array_equal(perm[0], np.eye(4)[:, [1, 2, 0, 3]])  # Q[:, order] = Q @ perm
  np.testing.assert_allclose(np.abs(np.asarray(q[0])), np.abs(v[:, [1, 2, 0, 3]]), atol=1e-5)
  # Non-finite statistics keep the old basis and the identity permutation.
  q, perm = linalg.refresh_eigenbasis(jnp.full((1, 4, 4), jnp.inf), jnp.asarray(v[None]))
  np.testing.assert_allclose(q[0], v, atol=1e-7)
  np.testing.assert_array_equal(perm[0], np.eye(4))
  q, perm = linalg.refresh_eigenbasis(jnp.zeros((1, 4, 4)), jnp.eye(4)[None])
  assert np.all(np.isfinite(np.asarray(q)))
  # Tied estimates keep their index order (a stable descending sort)
  _, perm = linalg.refresh_eigenbasis(jnp.diag(jnp.asarray([1.0, 3.0, 3.0, 0.5]))[None],
                                      jnp.eye(4)[None])
  np.testing.assert_array_equal(perm[0], np.eye(4)[:, [1, 2, 0, 3]])


def test_permute_reorders_each_block_exactly():
  x = _rng(3).normal(size=(3, 4, 5, 6)).astype(np.float32) * np.float32(1e30)
  for axis in (1, 2, 3):
    n = x.shape[axis]
    perm = np.stack([_rng(10 + k).permutation(n) for k in range(3)])
    shape = [3, 1, 1, 1]
    shape[axis] = n
    want = np.take_along_axis(x, perm.reshape(shape), axis=axis)
    mats = np.stack([np.eye(n)[:, p] for p in perm])  # x @ mats[k] = x[..., perm[k]]
    got = linalg.permute(jnp.asarray(x), jnp.asarray(mats, np.float32), axis)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_cpu_decompositions_take_one_matrix_per_lapack_call():
  # A batched LAPACK call splits its batch over XLA's CPU thread pool and blocks
  # on it, which hung Shampoo's step under pmap over 8 host devices (issue 3);
  # every decomposition is lowered with no batch dimension on CPU instead.
  s = jnp.asarray(np.stack([_spd(5, k) for k in range(3)]), jnp.float32)
  fns = {"inverse_pth_root": lambda x: linalg.inverse_pth_root(x, 4),
         "first eigenbasis": lambda x: linalg.refresh_eigenbasis(x, jnp.eye(5) + 0 * x, True),
         "refresh_eigenbasis": lambda x: linalg.refresh_eigenbasis(x, jnp.eye(5) + 0 * x)}
  for name, fn in fns.items():
    text = jax.jit(fn).lower(s).as_text()
    calls = [line for line in text.splitlines() if "@lapack_" in line]
    assert calls, name
    assert all('num_batch_dims = "0"' in line for line in calls), (name, calls)
  batched = linalg.inverse_pth_root(s, 4)
  for k in range(3):
    np.testing.assert_allclose(batched[k], linalg.inverse_pth_root(s[k], 4), rtol=1e-5,
                               atol=1e-6)


# ---------------------------------------------------------------- Newton-Schulz
def test_newton_schulz_orthogonalises():
  g = _rng(5).normal(size=(6, 10))
  y = np.asarray(linalg.newton_schulz(jnp.asarray(g, jnp.float32)), np.float64)
  s = np.linalg.svd(y, compute_uv=False)
  assert np.all((s > 0.5) & (s < 1.5)), s  # the quintic's fixed band, not exactly 1
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  assert np.sum(y * (u @ vt)) / (np.linalg.norm(y) * np.sqrt(6)) > 0.95  # direction of U V^T
  tall = np.asarray(linalg.newton_schulz(jnp.asarray(g.T, jnp.float32)))
  np.testing.assert_allclose(tall, y.T, rtol=1e-5, atol=1e-5)
  batch = linalg.newton_schulz(jnp.asarray(np.stack([g, 2 * g]), jnp.float32))
  np.testing.assert_allclose(batch[1], y, rtol=1e-4, atol=1e-5)
  batch = linalg.newton_schulz(jnp.asarray(np.stack([g.T, 2 * g.T]), jnp.float32))
  np.testing.assert_allclose(batch[1], y.T, rtol=1e-4, atol=1e-5)


def test_newton_schulz_one_step_by_hand():
  x = np.array([[3.0, 0.0], [0.0, 4.0]])
  a, b, c = 3.4445, -4.7750, 2.0315
  y = x / (5.0 + 1e-7)
  yy = y @ y.T
  want = a * y + (b * yy + c * yy @ yy) @ y
  np.testing.assert_allclose(linalg.newton_schulz(jnp.asarray(x, jnp.float32), steps=1), want,
                             rtol=1e-6)


def test_newton_schulz_compiles_its_iteration_once():
  """One loop body for any int step count: the compiled kernels do not grow with
  the steps (unrolled, a (3, 4, 6) stack compiled 6, 7 and 8 for 1, 2 and 5)."""
  x = jax.ShapeDtypeStruct((3, 4, 6), jnp.float32)
  kernels = [len(fused_bodies(jax.jit(lambda y, n=n: linalg.newton_schulz(y, n))
                              .lower(x).compile().as_text())) for n in (1, 2, 5)]
  assert kernels[0] == kernels[1] == kernels[2], kernels


@pytest.mark.parametrize("x", [np.zeros((3, 4)), np.full((3, 4), 1e30),
                               np.outer(np.arange(1.0, 4), np.ones(4))])
def test_newton_schulz_finite(x):
  y = np.asarray(linalg.newton_schulz(jnp.asarray(x, jnp.float32)))
  assert np.all(np.isfinite(y))
  if not np.any(x):
    assert not np.any(y)
