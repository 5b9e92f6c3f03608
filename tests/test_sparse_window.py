"""Unit tests of the top-k sparse gradient window with 4-bit error feedback (MicroAdam)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optlab
from optlab.primitives import sparse_window as S


def test_4bit_quantisation_round_trip_and_packing():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=11), jnp.float32)              # odd length, 3 blocks of 4
  codes, lo, hi = S.quantize_4bit(x, 4)
  assert codes.shape == (6,) and codes.dtype == jnp.uint8 and lo.shape == (3,)
  y = S.dequantize_4bit(codes, lo, hi, 4, 11)
  step = np.repeat((np.asarray(hi) - np.asarray(lo)) / 15, 4)[:11]
  assert np.all(np.abs(np.asarray(y) - np.asarray(x)) <= step / 2 + 1e-6)
  # block minima and maxima are exact; a constant block decodes exactly
  np.testing.assert_allclose(np.asarray(y)[np.argmin(np.asarray(x))], np.min(np.asarray(x)))
  codes, lo, hi = S.quantize_4bit(jnp.full((5,), 2.5), 8)
  np.testing.assert_array_equal(S.dequantize_4bit(codes, lo, hi, 8, 5), np.full(5, 2.5))
  # first entry in the high nibble
  codes, _, _ = S.quantize_4bit(jnp.asarray([0.0, 15.0, 15.0]), 8)
  np.testing.assert_array_equal(codes, [0x0F, 0xF0])


def test_topk_is_per_block():
  plan = S._plan(10, 0.25, 4, 100)                  # blocks 4, 4 and a rest of 2
  assert (plan.full, plan.k_full, plan.k_rest, plan.k) == (2, 1, 1, 3)
  a = jnp.asarray([0.1, -3.0, 0.2, 0.0, 5.0, 0.0, -6.0, 1.0, 0.5, -0.7])
  local = S.topk_blocks(a, plan)
  np.testing.assert_array_equal(local, [1, 2, 1])
  np.testing.assert_array_equal(local + S._offsets(plan), [1, 6, 9])


def test_error_feedback_and_window_statistics():
  b1, b2 = 0.9, 0.99
  tx = S.scale_by_microadam(b1, b2, eps=0.0, m=3, k_init=0.25, quant_block_size=4,
                            topk_block_size=4, values_dtype=None)
  params = {"w": jnp.zeros(4)}
  state = tx.init(params)
  assert state.indices.shape == (3, 1) and state.indices.dtype == jnp.int16
  assert state.error.shape == (2,) and state.error_lo.shape == (1,)
  u, state = tx.update({"w": jnp.asarray([4.0, 1.0, 0.0, 0.0])}, state)
  np.testing.assert_allclose(u["w"], [1.0, 0.0, 0.0, 0.0])   # t = 1: sign of the kept entry
  # the dropped 1.0 is the error (exact in 4 bits here) and wins the next top-k
  u, state = tx.update({"w": jnp.zeros(4)}, state)
  c1, c2 = (1 - b1) / (1 - b1 ** 2), (1 - b2) / (1 - b2 ** 2)
  want = [c1 * b1 * 4 / np.sqrt(c2 * b2 * 16), c1 * 1 / np.sqrt(c2 * 1), 0, 0]
  np.testing.assert_allclose(u["w"], want, rtol=1e-6)
  # after m more steps the first row has been overwritten
  for _ in range(3):
    u, state = tx.update({"w": jnp.zeros(4)}, state)
  assert u["w"][0] == 0.0


@pytest.mark.slow  # four MicroAdam steps run op by op, not jitted (~7 s)
def test_zero_and_huge_gradients_stay_finite():
  params = {"w": jnp.zeros((4, 3)), "s": jnp.zeros(())}
  tx = optlab.microadam(0.1, topk_block_size=4, quant_block_size=5)
  state = tx.init(params)
  u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  assert all(not np.any(x) for x in jax.tree.leaves(u))
  huge = {"w": jnp.full((4, 3), 3e38).at[0, 0].set(-3e38), "s": jnp.asarray(-3e38)}
  for _ in range(3):
    u, state = tx.update(huge, state, params)
    assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves((u, state)))


def test_state_is_a_fraction_of_adamw():
  params = {f"w{i}": jax.ShapeDtypeStruct((1024, 1024), jnp.float32) for i in range(4)}
  micro = optlab.state_bytes(optlab.microadam(1e-3), params)
  n = 4 * 2 ** 20
  # window: 10 rows of 1% (int16 index + bf16 value); error: 4 bits; few min/max pairs
  assert micro.total <= 10 * (n // 100 + 4 * 64) * 4 + n // 2 + 4096
  assert micro.total < 0.12 * optlab.state_bytes(optlab.adamw(1e-3), params).total
