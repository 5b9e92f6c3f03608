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
  # each output channel (a column: the last axis) is orthogonal to its weights
  cols = np.sum(np.asarray(out["w"]) * np.asarray(p["w"]), axis=0)
  _close(cols, np.zeros(5), atol=1e-5)
  out = _project(p, g, u, delta=10.0, channel_axis=0)  # PyTorch's layout: rows
  rows = np.sum(np.asarray(out["w"]) * np.asarray(p["w"]), axis=1)
  _close(rows, np.zeros(3), atol=1e-5)


def test_radial_projection_needs_params():
  tx = optlab.with_radial_projection(optax.identity())
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones((2, 2))}, tx.init({"w": jnp.ones((2, 2))}))


# ------------------------------------------- AdamP / SGDP on flax kernels
# flax kernels and their PyTorch layout (the official clovaai/AdamP code's):
# Dense (in, out) <-> (out, in); Conv (h, w, in, out) <-> (out, in, h, w).
_TO_TORCH = {"dense": (1, 0), "conv": (3, 2, 0, 1), "bias": (0,)}


def _to_torch(tree):
  return {k: np.transpose(np.asarray(v), _TO_TORCH[k]) for k, v in tree.items()}


def _from_torch(tree):
  return {k: np.transpose(np.asarray(v), np.argsort(_TO_TORCH[k])) for k, v in tree.items()}


def _weight_normed_problem():
  """Flax-layout params of a layer whose kernels are normalised per output channel
  (weight normalisation, the scale-invariant weights AdamP is made for): the
  gradient of each output channel is orthogonal to its weights, so the per-channel
  cosine is ~0 and AdamP's channel view fires."""
  rng = np.random.default_rng(3)
  params = {"dense": rng.normal(size=(6, 4)), "conv": rng.normal(size=(3, 3, 2, 4)),
            "bias": rng.normal(size=(4,))}
  x_dense, x_conv = rng.normal(size=(16, 6)), rng.normal(size=(16, 18))
  target = rng.normal(size=(16, 4))

  def loss(p):
    dense = p["dense"] / jnp.linalg.norm(p["dense"], axis=0)
    conv = p["conv"].reshape(18, 4)
    conv = conv / jnp.linalg.norm(conv, axis=0)
    y = jnp.tanh(x_dense @ dense) + jnp.tanh(x_conv @ conv) + p["bias"]
    return jnp.mean((y - target) ** 2)

  return params, jax.jit(jax.grad(loss))


@pytest.mark.parametrize("name,kwargs", [
    ("adamp", {"learning_rate": 0.05, "weight_decay": 0.1, "wd_ratio": 0.2}),
    ("sgdp", {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.1, "wd_ratio": 0.2}),
])
def test_adamp_sgdp_flax_kernels_match_official_algorithm(name, kwargs):
  """On flax kernels, AdamP / SGDP (arXiv:2006.08217) equal the official
  algorithm run on the same weights in PyTorch's layout: the per-channel cosine
  and projection are over output channels (flax's last axis), not flax's axis 0."""
  from tests.reference import sign_family as ref
  steps, delta = 5, 0.1
  params, grad = _weight_normed_problem()
  with jax.enable_x64(True):
    grad_np = lambda p: {k: np.asarray(v) for k, v in grad(
        {k: jnp.asarray(v) for k, v in p.items()}).items()}
    # The projection fires in the channel view at the start: every output
    # channel's |cos(g, p)| is below delta / sqrt(channel length).
    g0 = grad_np(params)
    for k in ("dense", "conv"):
      pt, gt = _to_torch(params)[k], _to_torch(g0)[k]
      pr, gr = pt.reshape(4, -1), gt.reshape(4, -1)
      cos = np.abs(np.sum(pr * gr, 1)) / np.linalg.norm(pr, axis=1) / np.linalg.norm(gr, axis=1)
      assert cos.max() < delta / np.sqrt(pr.shape[1]), (k, cos)

    # The official algorithm (channel = axis 0) on the PyTorch layout, mapped back.
    want = ref.__dict__[name](_to_torch(params), lambda p, t: _to_torch(grad_np(_from_torch(p))),
                              steps, channel_axis=0, delta=delta, **kwargs)
    want = [_from_torch(p) for p in want]

    def trajectory(**over):
      tx = getattr(optlab, name)(**{**kwargs, "delta": delta, **over})
      p = {k: jnp.asarray(v) for k, v in params.items()}
      state, out = tx.init(p), []
      step = jax.jit(lambda p, s: tx.update(grad(p), s, p))
      for _ in range(steps):
        u, state = step(p, state)
        p = optax.apply_updates(p, u)
        out.append({k: np.asarray(v) for k, v in p.items()})
      return out

    got = trajectory()
    for t in range(steps):
      for k in params:
        _close(got[t][k], want[t][k], rtol=1e-9, atol=1e-12)
    # It fired: each output channel's first update is orthogonal to its weights
    # (the radial part is gone) and the decay was scaled by wd_ratio.
    # (SGDP's official decay is divided by 1 - momentum; the residual is of order eps.)
    decay = kwargs["learning_rate"] * kwargs["weight_decay"] * kwargs["wd_ratio"] / (
        1 - kwargs.get("momentum", 0.0) if name == "sgdp" else 1.0)
    u0 = got[0]["dense"] - params["dense"]
    radial = np.sum((u0 + decay * params["dense"]) * params["dense"], axis=0)
    assert np.abs(np.sum(u0 * params["dense"], axis=0)).min() > 1e-4  # the decay is there
    _close(radial, np.zeros(4), atol=1e-8)
    # The old layout (flax's input axis taken as the channel) is a different method here.
    old = trajectory(channel_axis=0)
    assert max(np.abs(old[-1][k] - want[-1][k]).max() for k in ("dense", "conv")) > 1e-3


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_adamp_sgdp_zero_size_leaves_and_empty_tree(name):
  tx = getattr(optlab, name)(0.1, weight_decay=0.1)
  params = {"w": jnp.zeros((0, 3)), "k": jnp.zeros((2, 0, 3)), "e": jnp.zeros((4, 0)),
            "b": jnp.ones(3)}
  grads = jax.tree.map(jnp.ones_like, params)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert jax.tree.map(jnp.shape, u) == jax.tree.map(jnp.shape, params)
  assert np.all(np.isfinite(np.asarray(u["b"]))) and np.any(np.asarray(u["b"]) != 0)
  u, _ = tx.update({}, tx.init({}), {})
  assert u == {}


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_adamp_sgdp_channel_axis_is_checked(name):
  for bad in (1.5, "last", True, None):
    with pytest.raises(TypeError, match=f"{name}: channel_axis must be an int"):
      getattr(optlab, name)(0.1, channel_axis=bad)
  tx = getattr(optlab, name)(0.1, channel_axis=2)
  # 0-d and 1-d leaves are never projected: no axis needed; a matrix has no axis 2.
  tx.init({"b": jnp.ones(3), "s": jnp.ones(())})
  with pytest.raises(ValueError, match=r"channel_axis=2 is out of range for params\['w'\]"):
    tx.init({"b": jnp.ones(3), "w": jnp.ones((3, 4))})
  tx = getattr(optlab, name)(0.1, channel_axis=-3)
  p = {"k": jnp.ones((2, 3, 4))}
  tx.init(p)
  with pytest.raises(ValueError, match=r"params\['w'\] of shape \(3, 4\)"):
    bad = {"k": jnp.ones((2, 3, 4)), "w": jnp.ones((3, 4))}
    tx.update(bad, tx.init(p), bad)


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
