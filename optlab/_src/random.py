"""PRNG keys kept in optimizer states.

A state holds a raw ``uint32[2]`` key (serialisable by flax and orbax, unlike
typed keys); the helpers wrap it for `jax.random` and return raw keys again.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import jax.numpy as jnp


def new_key(seed: int) -> jax.Array:
  """The state's raw key: ``key_data(jax.random.key(seed))``, uint32[2]."""
  return jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)


def fold_in(key: jax.Array, data: Any) -> jax.Array:
  """The raw key ``fold_in(key, data)`` of a raw key (a step's or a sample's key)."""
  return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(key), data))


def leaf_id(path: Any) -> int:
  """A leaf's stable 32-bit id: ``zlib.crc32`` of ``jax.tree_util.keystr(path)``.

  Unlike the leaf's index, it does not change when other leaves are added or
  removed, so the noise a leaf draws depends on its path only."""
  return zlib.crc32(jax.tree_util.keystr(path).encode("utf-8"))


def path_key(key: jax.Array, path: Any) -> jax.Array:
  """The typed key of the leaf at `path`: ``fold_in(key, leaf_id(path))``."""
  return jax.random.fold_in(jax.random.wrap_key_data(key), jnp.uint32(leaf_id(path)))


def path_normals(key: jax.Array, like: Any) -> Any:
  """Standard normal noise shaped like each leaf of `like`, keyed by the leaf's
  path (`path_key`), drawn in float32 and cast to the leaf's dtype."""
  def leaf(path, x):
    return jax.random.normal(path_key(key, path), jnp.shape(x),
                             jnp.float32).astype(jnp.result_type(x))

  return jax.tree_util.tree_map_with_path(leaf, like)


def leaf_normals(key: jax.Array, like: Any) -> Any:
  """Standard normal noise shaped like each leaf of `like`, in its dtype.

  Leaf i uses ``fold_in(key, i)`` (leaf order of `jax.tree.leaves`), drawn in
  float32 whatever the leaf's dtype (so float64 runs draw the same numbers),
  then cast. With the default partitionable threefry the numbers do not
  depend on how the leaves are sharded.
  """
  base = jax.random.wrap_key_data(key)
  leaves, treedef = jax.tree.flatten(like)
  out = [jax.random.normal(jax.random.fold_in(base, i), jnp.shape(x),
                           jnp.float32).astype(jnp.result_type(x))
         for i, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def split(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(next, sub): the raw keys of ``jax.random.split(key)``, the state's next key
  and the one this step draws from."""
  new, sub = jax.random.split(jax.random.wrap_key_data(key))
  return jax.random.key_data(new), jax.random.key_data(sub)
