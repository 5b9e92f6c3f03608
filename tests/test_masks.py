"""Unit tests of optlab.primitives.masks (cautious, Grams, AdamP projection) and the
cautious weight decay, with values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


def _const(out):
  """An inner transformation that returns `out` whatever it is given (stateless)."""
  return optax.GradientTransformation(lambda p: optax.EmptyState(),
                                      lambda u, s, p=None: (out, s))


def _close(a, b, rtol=1e-6, atol=0.0):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             rtol=rtol, atol=atol)


def _apply(tx, grads, params=None):
  return jax.jit(tx.update)(grads, tx.init(grads), params)[0]


# ----------------------------------------------------------------- cautious
G = {"x": jnp.array([1.0, -2.0, 3.0, 0.0])}
U = {"x": jnp.array([2.0, 1.0, -1.0, 5.0])}   # agrees with G only at index 0


@pytest.mark.parametrize("rescale,want", [
    ("mean", [8.0, 0, 0, 0]),      # phi / mean(phi) = [1,0,0,0] / 0.25
    ("count", [4.0, 0, 0, 0]),     # phi * n / (nnz + 1) = [1,0,0,0] * 4 / 2
    (None, [2.0, 0, 0, 0]),
])
def test_cautious_rescalings(rescale, want):
  _close(_apply(optlab.cautious(_const(U), rescale), G)["x"], want)


def test_cautious_is_per_tensor_and_handles_scalars():
  g = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([1.0, -1.0]), "s": jnp.array(1.0)}
  u = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([1.0, 2.0]), "s": jnp.array(3.0)}
  out = _apply(optlab.cautious(_const(u), "mean"), g)
  _close(out["a"], [1.0, 2.0])        # all agree: mean 1
  _close(out["b"], [2.0, 0.0])        # half agree: mean 0.5
  _close(out["s"], 3.0)
  out = _apply(optlab.cautious(_const(u), "count"), g)
  _close(out["s"], 1.5)               # n / (nnz + 1) = 1 / 2 for a scalar


def test_cautious_zero_gradient_and_extreme_values():
  out = _apply(optlab.cautious(_const(U), "mean"), {"x": jnp.zeros(4)})
  assert np.all(np.asarray(out["x"]) == 0)   # mean clamped at 1e-3: no NaN
  # Products that overflow or underflow in float32 still compare by sign.
  g = {"x": jnp.array([1e30, 1e-30, -1e30], jnp.float32)}
  u = {"x": jnp.array([1e30, 1e-30, 1e30], jnp.float32)}
  out = _apply(optlab.cautious(_const(u), None), g)
  _close(out["x"], [1e30, 1e-30, 0.0])


def test_cautious_wraps_a_real_transform_and_keeps_its_state():
  inner = optlab.scale_by_adam()
  tx = optlab.cautious(inner)
  p = {"x": jnp.zeros(3)}
  assert jax.tree.structure(tx.init(p)) == jax.tree.structure(inner.init(p))
  # first Adam step: u = g / (|g| + eps) agrees with g everywhere -> unchanged
  g = {"x": jnp.array([1.0, -2.0, 0.5])}
  u, _ = tx.update(g, tx.init(p))
  _close(u["x"], np.sign([1.0, -2.0, 0.5]), rtol=1e-4)  # f32 rounding of 1 - b2


def test_cautious_bf16_dtype_and_bad_rescale():
  g = {"x": jnp.array([1.0, -1.0], jnp.bfloat16)}
  out = _apply(optlab.cautious(_const({"x": jnp.array([1.0, 1.0], jnp.bfloat16)})), g)
  assert out["x"].dtype == jnp.bfloat16
  _close(out["x"], [2.0, 0.0])
  with pytest.raises(ValueError, match="rescale"):
    optlab.cautious(optax.identity(), "median")


# -------------------------------------------------------------------- Grams
def test_grams_magnitude_of_update_sign_of_gradient():
  g = {"x": jnp.array([-1.0, 1.0, 0.0, 2.0])}
  u = {"x": jnp.array([2.0, -1.0, -3.0, 5.0])}
  _close(_apply(optlab.with_grams(_const(u)), g)["x"], [-2.0, 1.0, 0.0, 5.0])


# --------------------------------------------------------- radial projection
U2 = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}


def _project(p, g, u=U2, **kw):
  tx = optlab.with_radial_projection(_const(u), **kw)
  return jax.jit(tx.update)(g, tx.init(p), p)[0]


def test_radial_projection_channel_view():
  # Every row of g is orthogonal to the row of p: the channel view fires.
  p = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
  g = {"w": jnp.array([[0.0, 1.0], [1.0, 0.0]])}
  out = _project(p, g, weight_decay=0.5, wd_ratio=0.1)
  # rows: [1,2] - [1,0]*1 = [0,2]; [3,4] - [0,1]*4 = [3,0]; decay 0.5 * 0.1 * p.
  _close(out["w"], [[0.05, 2.0], [3.0, 0.05]], rtol=1e-6, atol=1e-7)


def test_radial_projection_layer_view():
  # Each row of g is parallel to its row of p (channel test fails), but over
  # the whole tensor g is orthogonal to p: the layer view fires.
  p = {"w": jnp.array([[1.0, 0.0], [1.0, 0.0]])}
  g = {"w": jnp.array([[1.0, 0.0], [-1.0, 0.0]])}
  out = _project(p, g, delta=0.5, weight_decay=1.0, wd_ratio=0.5)
  # p_n = p / sqrt(2); <p_n, u> = 4 / sqrt(2); u - 2 p = [[-1,2],[1,4]]; + 0.5 p.
  _close(out["w"], [[-0.5, 2.0], [1.5, 4.0]], rtol=1e-6)


def test_radial_projection_not_fired_and_low_rank_tensors():
  p = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([1.0, -1.0]),
       "s": jnp.array(2.0)}
  u = {"w": U2["w"], "b": jnp.array([1.0, 1.0]), "s": jnp.array(1.0)}
  out = _project(p, p, u, weight_decay=0.5)     # g = p: cosine 1, no projection
  _close(out["w"], U2["w"] + 0.5 * p["w"])
  _close(out["b"], [1.5, 0.5])                  # 1-d and 0-d: never projected
  _close(out["s"], 2.0)


def test_radial_projection_result_is_orthogonal_and_finite_for_huge_weights():
  p = {"w": jnp.array([[1e30, 0.0], [0.0, 1e30]], jnp.float32)}
  g = {"w": jnp.array([[0.0, 1e30], [1e30, 0.0]], jnp.float32)}
  out = _project(p, g)
  _close(out["w"], [[0.0, 2.0], [3.0, 0.0]], atol=1e-6)
  rng = np.random.default_rng(0)
  p = {"w": jnp.asarray(rng.normal(size=(3, 5)))}
  g = {"w": jnp.asarray(rng.normal(size=(3, 5)))}
  u = {"w": jnp.asarray(rng.normal(size=(3, 5)))}
  out = _project(p, g, u, delta=10.0)            # forces the channel view
  rows = np.sum(np.asarray(out["w"]) * np.asarray(p["w"]), axis=1)
  _close(rows, np.zeros(3), atol=1e-5)


def test_radial_projection_needs_params():
  tx = optlab.with_radial_projection(optax.identity())
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones((2, 2))}, tx.init({"w": jnp.ones((2, 2))}))


# --------------------------------------------------------------- decay
def test_cautious_weight_decay_by_hand():
  u = {"x": jnp.array([1.0, -1.0, 0.0, 2.0])}
  p = {"x": jnp.array([2.0, 3.0, -1.0, -4.0])}
  tx = optlab.add_cautious_decayed_weights(0.5)
  out, _ = tx.update(u, tx.init(p), p)
  # u * p >= 0 at indices 0 and 2 (u = 0 counts as agreeing).
  _close(out["x"], [2.0, -1.0, -0.5, 2.0])
  masked = optlab.add_cautious_decayed_weights(0.5, mask={"x": False})
  out, _ = masked.update(u, masked.init(p), p)
  _close(out["x"], u["x"])
  plain = optlab.add_decayed_weights(0.5)
  out, _ = plain.update(u, plain.init(p), p)
  _close(out["x"], [2.0, 0.5, -0.5, 0.0])
  with pytest.raises(ValueError, match="params"):
    tx.update(u, tx.init(p))


# ---------------------------------------------------------- with_leaf_labels
def _labels_tx():
  return optlab.with_leaf_labels(
      {"matrix": optax.chain(optax.trace(0.5), optax.scale(2.0)),
       "other": optax.chain(optax.trace(0.0), optax.scale(-1.0))},
      lambda x: "matrix" if x.ndim == 2 else "other")


def test_leaf_labels_pick_update_and_state_per_leaf():
  tx = _labels_tx()
  p = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
  g = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  state = tx.init(p)
  step = jax.jit(tx.update)
  u, state = step(g, state)
  u, state = step(g, state)
  # matrix: trace 1 + 0.5 * 1 = 1.5, scaled by 2; other: trace 1, scaled by -1.
  _close(u["w"], np.full((2, 2), 3.0))
  _close(u["b"], [-1.0, -1.0])
  _close(state[0].trace["w"], np.full((2, 2), 1.5))
  _close(state[0].trace["b"], [1.0, 1.0])


def test_leaf_labels_state_works_with_tree_map_params_and_extra_trees():
  tx = _labels_tx()
  p = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
  state = tx.init(p)
  specs = {"w": "W", "b": "B"}
  mapped = optax.tree_map_params(tx, lambda _, s: s, state, specs,
                                 transform_non_params=lambda _: "N")
  assert mapped[0].trace == {"w": "W", "b": "B"}


def test_leaf_labels_rejects_mismatched_layouts_and_unknown_labels():
  bad = optlab.with_leaf_labels({"a": optax.trace(0.5), "b": optax.scale_by_adam()},
                                lambda x: "a")
  with pytest.raises(ValueError, match="one layout"):
    bad.init({"w": jnp.zeros(2)})
  tx = optlab.with_leaf_labels({"a": optax.identity()}, lambda x: "zzz")
  with pytest.raises(ValueError, match="zzz"):
    tx.update({"w": jnp.zeros(2)}, tx.init({"w": jnp.zeros(2)}))
