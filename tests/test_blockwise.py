"""Unit tests of the block-shared second moments (Adam-mini's partition and state)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optlab
from optlab.primitives import blockwise as B


def _flax_like(d=8, h=2, vocab=11):
  z = lambda *s: jnp.zeros(s, jnp.float32)
  return {"params": {
      "Embed_0": {"embedding": z(vocab, d)},
      "attn": {"query": {"kernel": z(d, h, d // h), "bias": z(h, d // h)},
               "key": {"kernel": z(d, h, d // h)},
               "value": {"kernel": z(d, h, d // h)},
               "out": {"kernel": z(h, d // h, d)}},
      "q_proj": {"kernel": z(d, d)},
      "LayerNorm_0": {"scale": z(d), "bias": z(d)},
      "Dense_0": {"kernel": z(d, 4 * d)},
      "lm_head": {"kernel": z(d, vocab)}}}


def test_default_partition_on_flax_paths():
  part = B.adam_mini_partition(num_heads=2)
  got = {}
  for path, x in jax.tree_util.tree_leaves_with_path(_flax_like()):
    names = B.path_names(path)
    view, axes = B.block_view(part(names, x.shape), x.shape)
    got["/".join(names[1:])] = B.block_stat_shape(view, axes)
  assert got == {
      "Embed_0/embedding": (11,),              # per token
      "attn/query/kernel": (2,),               # per head
      "attn/query/bias": (2, 4),               # bias: element-wise
      "attn/key/kernel": (2,),
      "attn/value/kernel": (2, 4),             # per output neuron
      "attn/out/kernel": (8,),
      "q_proj/kernel": (2,),                   # 2-D kernel split into num_heads
      "LayerNorm_0/scale": (),                 # one per tensor
      "LayerNorm_0/bias": (8,),
      "Dense_0/kernel": (32,),
      "lm_head/kernel": (11,)}


def test_adam_mini_state_is_small_and_update_is_blockwise():
  params = _flax_like()
  tx = optlab.adam_mini(0.1, num_heads=2)
  state = tx.init(params)
  nu = state[0].nu
  assert nu.shape == (11 + 2 + 8 + 2 + 8 + 8 + 2 + 1 + 8 + 32 + 11,)
  n = sum(x.size for x in jax.tree.leaves(params))
  # m is param-shaped, v is one value per block: about half of Adam's state
  assert optlab.state_bytes(tx, params).total < 0.6 * optlab.state_bytes(
      optlab.adamw(0.1), params).total
  # one block shares one scale: a 2-D kernel gets the same |u| down each column
  g = jax.tree.map(lambda x: jnp.ones_like(x), params)
  g["params"]["Dense_0"]["kernel"] = jnp.arange(1.0, 33.0)[None, :] * jnp.arange(
      1.0, 9.0)[:, None]
  u, _ = tx.update(g, state, params)
  k = np.asarray(u["params"]["Dense_0"]["kernel"])
  ratio = k / k[:1]
  np.testing.assert_allclose(ratio, np.arange(1.0, 9.0)[:, None] * np.ones((1, 32)), rtol=1e-5)
  assert n > 0


def test_adam_mini_zero_and_huge_gradients_stay_finite():
  params = {"w": jnp.zeros((4, 3)), "v": jnp.zeros((5,))}
  tx = B.scale_by_adam_mini()
  s = tx.init(params)
  u, s = tx.update(jax.tree.map(jnp.zeros_like, params), s)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  big = {"w": jnp.full((4, 3), 1e30), "v": jnp.full((5,), -3e38)}
  u, s = tx.update(big, s)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((u, s)))


def test_official_weight_decay_mask():
  m = B.adam_mini_mask(_flax_like())
  assert m["params"]["LayerNorm_0"]["scale"] is False
  assert m["params"]["Dense_0"]["kernel"] is True
