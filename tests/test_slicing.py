"""optlab._src.slicing: per-leaf pieces of one array, cut at offsets XLA learns at run time."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optlab._src import slicing


def fused_bodies(hlo: str) -> set:
  """The fused computations of optimized HLO text, with names and metadata removed,
  so that identical kernels compare equal (XLA:CPU compiles one kernel for them)."""
  bodies = set()
  for block in hlo.split("\n\n"):
    if block.startswith("%fused"):
      body = re.sub(r", metadata=\{[^}]*\}", "", block.split("\n", 1)[1])
      bodies.add(re.sub(r"%[\w.\-]+", "%", body))
  return bodies


def test_runtime_ints_keep_their_values():
  probe = jnp.ones((2, 3))
  fn = jax.jit(lambda x: slicing.runtime_ints([0, 3, 7], x))
  for x in (probe, probe.at[0, 0].set(jnp.nan)):  # a NaN first entry runs the loop once
    assert [int(v) for v in fn(x)] == [0, 3, 7]
  assert "stablehlo.while" in fn.lower(probe).as_text()  # on CPU: loop outputs, not constants
  assert slicing.runtime_ints([5], probe) == (5,)


@pytest.mark.parametrize("axis", [0, 1])
def test_split_cuts_consecutive_pieces(axis):
  x = jnp.arange(40.0).reshape(4, 10) if axis else jnp.arange(40.0).reshape(10, 4)
  sizes = [3, 0, 2, 4]  # a tail of one entry stays unused
  want = np.split(np.asarray(x), np.cumsum(sizes), axis=axis)[:-1]
  for got in (slicing.split(x, sizes, axis), jax.jit(lambda x: slicing.split(x, sizes, axis))(x)):
    assert len(got) == len(sizes)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), w)
  assert slicing.split(jnp.zeros([0]), [0, 0])[1].shape == (0,)
  ints = jnp.arange(10, dtype=jnp.int16)
  cut = lambda i, probe=None: slicing.split(i, [4, 6], probe=probe)
  assert "while" not in jax.jit(cut).lower(ints).compile().as_text()  # x != x folds for ints
  with_probe, floats = jax.jit(cut), jnp.ones(2)  # a float argument: known at run time only
  assert "while" in with_probe.lower(ints, floats).compile().as_text()
  np.testing.assert_array_equal(np.asarray(with_probe(ints, floats)[1]), np.arange(4, 10))
  with pytest.raises(ValueError, match="do not fit"):
    slicing.split(x, [5, 6], axis)


def test_split_each_cuts_every_array_with_one_loop():
  a, b = jnp.arange(12.0), jnp.arange(20.0).reshape(10, 2)
  fn = jax.jit(lambda a, b: slicing.split_each([a, b], [[5, 7], [2, 3, 4]]))
  got = fn(a, b)
  for g, w in zip(got[0] + got[1], np.split(np.asarray(a), [5])
                  + np.split(np.asarray(b), [2, 5, 9])[:-1]):
    np.testing.assert_array_equal(np.asarray(g), w)
  assert fn.lower(a, b).compile().as_text().count(" while(") == 1
  # static: the same pieces at constant offsets, no loop
  static = jax.jit(lambda a, b: slicing.split_each([a, b], [[5, 7], [2, 3, 4]], static=True))
  for g, w in zip(sum(static(a, b), []), sum(got, [])):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  assert " while(" not in static.lower(a, b).compile().as_text()
  with pytest.raises(ValueError, match="do not fit"):
    slicing.split_each([a, b], [[5], [11]])


def test_pieces_of_one_shape_share_one_kernel():
  # A static slice bakes its offset into its consumer's kernel: six pieces of one
  # shape would compile six kernels.
  def f(flat):
    return [v.reshape(4, 3) * 2.0 + 1.0 for v in slicing.split(flat, [12] * 6)]

  flat = jnp.arange(72.0)
  for k, y in enumerate(jax.jit(f)(flat)):
    want = 2 * np.arange(12.0 * k, 12.0 * (k + 1)).reshape(4, 3) + 1
    np.testing.assert_array_equal(np.asarray(y), want)
  hlo = jax.jit(f).lower(flat).compile().as_text()
  per_piece = [b for b in fused_bodies(hlo) if "f32[72]" in b and "ROOT % = f32[4,3]" in b]
  assert len(per_piece) == 1, hlo
