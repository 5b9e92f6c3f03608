"""optlab.layer_stats: captured statistics against factors computed by hand on a
two-layer MLP, the same capture from flax linen and nnx, and the recipes' lookup."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optlab
from optlab import layer_stats as LS

pytestmark = pytest.mark.quick

N, D_IN, D_H, D_OUT = 7, 5, 4, 3


def _data():
  rng = np.random.default_rng(0)
  params = {"w1": rng.normal(size=(D_IN, D_H)), "b1": rng.normal(size=D_H) * 0.1,
            "w2": rng.normal(size=(D_H, D_OUT))}
  x, y = rng.normal(size=(N, D_IN)), rng.integers(0, D_OUT, N)
  return params, x, y


def apply(p, x, tap):
  h = jnp.tanh(tap(x, x @ p["w1"] + p["b1"], "w1", bias="b1"))
  return tap(h, h @ p["w2"], "w2")


def _by_hand(params, x, y):
  """Per-example output gradients of the cross-entropy, backpropagated in NumPy."""
  z1 = x @ params["w1"] + params["b1"]
  h = np.tanh(z1)
  z2 = h @ params["w2"]
  p = np.exp(z2 - z2.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g2 = p - np.eye(D_OUT)[y]  # d loss_i / d z2_i
  g1 = (g2 @ params["w2"].T) * (1 - h ** 2)
  return h, g1, g2, p


def test_capture_matches_factors_by_hand():
  params, x, y = _data()
  h, g1, g2, _ = _by_hand(params, x, y)
  with jax.enable_x64(True):
    loss, grads, stats = jax.jit(lambda p: LS.capture_layer_stats(apply, p, x, targets=y))(params)
    layers = LS.gather("test", stats, grads, LS.kernel_shapes(params))
    factors = {k: LS.covariances(v) for k, v in layers.items()}
  assert sorted(stats) == ["['w1']", "['w2']"]
  assert stats["['w1']"].bias == "['b1']" and stats["['w2']"].bias is None
  np.testing.assert_allclose(stats["['w1']"].out_grads, g1, rtol=1e-10)
  np.testing.assert_allclose(stats["['w2']"].out_grads, g2, rtol=1e-10)
  np.testing.assert_allclose(stats["['w2']"].inputs, h, rtol=1e-12)
  np.testing.assert_allclose(grads["w1"], x.T @ g1 / N, rtol=1e-10)
  # K-FAC factors with the homogeneous coordinate: ones for w1 (bias b1), zeros for w2
  a1 = np.concatenate([x, np.ones((N, 1))], 1)
  a2 = np.concatenate([h, np.zeros((N, 1))], 1)
  np.testing.assert_allclose(factors["['w1']"][0], a1.T @ a1 / N, rtol=1e-10)
  np.testing.assert_allclose(factors["['w1']"][1], g1.T @ g1 / N, rtol=1e-10)
  np.testing.assert_allclose(factors["['w2']"][0], a2.T @ a2 / N, rtol=1e-10, atol=1e-15)
  np.testing.assert_allclose(factors["['w2']"][1], g2.T @ g2 / N, rtol=1e-10)
  # the joint [kernel; bias] gradient is the mean outer product of a and g
  np.testing.assert_allclose(layers["['w1']"].grad, a1.T @ g1 / N, rtol=1e-10)


def test_true_fisher_samples_labels_from_the_model():
  params, x, y = _data()
  _, _, g2_batch, p = _by_hand(params, x, y)
  run = jax.jit(lambda p, key: LS.capture_layer_stats(apply, p, x, targets=y, fisher="true",
                                                      key=key))
  with jax.enable_x64(True):
    _, grads_e, _ = LS.capture_layer_stats(apply, params, x, targets=y)
    draws = [run(params, jax.random.PRNGKey(i)) for i in range(200)]
  # the update's gradient still uses the batch labels
  np.testing.assert_allclose(draws[0][1]["w1"], grads_e["w1"], rtol=1e-12)
  g2 = np.stack([np.asarray(d[2]["['w2']"].out_grads) for d in draws])
  labels = np.argmin(g2 - p, -1)  # each row is p - onehot(sampled label)
  np.testing.assert_allclose(g2, p - np.eye(D_OUT)[labels], atol=1e-12)
  assert not np.allclose(g2[0], g2_batch) or not np.allclose(g2[1], g2_batch)
  # sampled labels follow the model's distribution: the Fisher E[g gᵀ] = diag(p) - p pᵀ
  fisher = np.einsum("sni,snj->nij", g2, g2) / len(draws)
  want = np.einsum("ni,ij->nij", p, np.eye(D_OUT)) - np.einsum("ni,nj->nij", p, p)
  np.testing.assert_allclose(fisher, want, atol=0.08)


class _Linen(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Dense(D_H, name="hidden")(x))
    return nn.Dense(D_OUT, use_bias=False, name="out")(h)


class _Nnx(nnx.Module):
  def __init__(self, params):
    self.hidden = nnx.Linear(D_IN, D_H, rngs=nnx.Rngs(0))
    self.out = nnx.Linear(D_H, D_OUT, use_bias=False, rngs=nnx.Rngs(1))
    self.hidden.kernel[...] = jnp.asarray(params["w1"], jnp.float32)
    self.hidden.bias[...] = jnp.asarray(params["b1"], jnp.float32)
    self.out.kernel[...] = jnp.asarray(params["w2"], jnp.float32)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def test_linen_and_nnx_capture_the_same_statistics():
  params, x, y = _data()
  p32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
  x = jnp.asarray(x, jnp.float32)
  _, _, want = LS.capture_layer_stats(apply, p32, x, targets=y)
  linen_params = {"hidden": {"kernel": p32["w1"], "bias": p32["b1"]}, "out": {"kernel": p32["w2"]}}
  _, linen_grads, linen = LS.capture_linen(_Linen(), linen_params, x, targets=y)
  model = _Nnx(params)
  _, nnx_grads, from_nnx = LS.capture_nnx(model, x, targets=y)
  # init sees nnx Variables, update their pure arrays: both name the kernels alike
  assert sorted(LS.kernel_shapes(nnx.state(model, nnx.Param))) == sorted(from_nnx)
  nnx_grads = nnx.as_pure(nnx_grads)  # as nnx.Optimizer hands them to the transformation
  for got, grads in ((linen, linen_grads), (from_nnx, nnx_grads)):
    assert sorted(got) == ["['hidden']['kernel']", "['out']['kernel']"]
    assert got["['hidden']['kernel']"].bias == "['hidden']['bias']"
    assert got["['out']['kernel']"].bias is None
    for mine, theirs in (("['w1']", "['hidden']['kernel']"), ("['w2']", "['out']['kernel']")):
      np.testing.assert_allclose(got[theirs].inputs, want[mine].inputs, rtol=1e-6)
      np.testing.assert_allclose(got[theirs].out_grads, want[mine].out_grads, rtol=1e-5,
                                 atol=1e-7)
    # the statistics are keyed as the optimizer sees the gradients
    LS.gather("test", got, grads, LS.kernel_shapes(grads))


def test_capture_rejects_bad_options():
  params, x, y = _data()
  with pytest.raises(ValueError, match="fisher"):
    LS.capture_layer_stats(apply, params, x, targets=y, fisher="exact")
  with pytest.raises(ValueError, match="loss must be one of"):
    LS.capture_layer_stats(apply, params, x, targets=y, loss="hinge")
  with pytest.raises(ValueError, match="key="):
    LS.capture_layer_stats(apply, params, x, targets=y, fisher="true")
  with pytest.raises(ValueError, match="named loss"):
    LS.capture_layer_stats(apply, params, x, targets=y, fisher="true", key=jax.random.PRNGKey(0),
                           loss=lambda out, t: jnp.mean(out))
  twice = lambda p, x, tap: tap(x, x @ p["w1"], "w1") @ p["w2"] + tap(x, x @ p["w1"], "w1") @ p["w2"]
  with pytest.raises(ValueError, match=r"\['w1'\] is tapped twice"):
    LS.capture_layer_stats(twice, params, x, targets=y)


def test_squared_error_true_fisher_draws_unit_gaussian_targets():
  params, x, _ = _data()
  targets = np.zeros((N, D_OUT))
  with jax.enable_x64(True):
    out = apply(params, x, lambda a, o, *k, **b: o)
    _, _, stats = LS.capture_layer_stats(apply, params, x, targets=targets, loss="squared_error",
                                         fisher="true", key=jax.random.PRNGKey(3))
    _, _, emp = LS.capture_layer_stats(apply, params, x, targets=targets, loss="squared_error")
  np.testing.assert_allclose(emp["['w2']"].out_grads, np.asarray(out) - targets, rtol=1e-6)
  noise = np.asarray(stats["['w2']"].out_grads)  # outputs - (outputs + noise)
  assert np.all(np.abs(noise) > 0) and np.abs(noise).max() < 6


# ------------------------------------------------------------------- lookup
def _params32():
  return jax.tree.map(lambda v: np.asarray(v, np.float32), _data()[0])


def _stats(params):
  rng = np.random.default_rng(1)
  return {"['w1']": optlab.LayerStats(rng.normal(size=(N, D_IN)), rng.normal(size=(N, D_H)),
                                      "['b1']"),
          "['w2']": optlab.LayerStats(rng.normal(size=(N, D_H)), rng.normal(size=(N, D_OUT)))}


@pytest.mark.parametrize("bad,match", [
    (None, "needs the extra arg layer_stats="),
    ([1, 2], "must be a mapping"),
    ({"['w1']": (1, 2)}, r"layer_stats\[\"\['w1'\]\"\] is a tuple"),
    ({"['w9']": "w1"}, r"\['w9'\] is not a leaf of the params"),
    ({"['b1']": "w1"}, r"\['b1'\] is a leaf without Kronecker factors"),
    ({"['w1']": ("inputs", np.zeros((N, D_IN + 1)))}, r"inputs has shape \(7, 6\).*\(n, 5\)"),
    ({"['w1']": ("out_grads", np.zeros((N, 2)))}, r"out_grads has shape \(7, 2\).*\(n, 4\)"),
    ({"['w1']": ("inputs", np.zeros((3, D_IN)))}, "inputs has 3 rows but out_grads has 7"),
    ({"['w1']": ("bias", "['b9']")}, r"bias is \"\['b9'\]\", which is not a 1-D leaf of size 4"),
    ({"['w2']": ("bias", "['b1']")}, r"which is not a 1-D leaf of size 3"),
])
def test_gather_names_the_argument_and_path(bad, match):
  params = _params32()
  stats = _stats(params)
  if isinstance(bad, dict):
    (key, change), = bad.items()
    if isinstance(change, tuple) and isinstance(change[0], str) and key in stats:
      field, value = change
      bad = {**stats, key: stats[key].__class__(**{**stats[key].__dict__, field: value})}
    elif change == "w1":
      bad = {key: stats["['w1']"]}
    else:
      bad = {key: change}
  with pytest.raises((ValueError, TypeError), match=match) as err:
    LS.gather("kfac", bad, params, LS.kernel_shapes(params))
  assert str(err.value).startswith("optlab.kfac: ")


def test_a_bias_shared_by_two_layers_is_refused():
  params = {"w1": np.ones((3, 4)), "w2": np.ones((2, 4)), "b": np.ones(4)}
  st = optlab.LayerStats(np.ones((5, 3)), np.ones((5, 4)), "['b']")
  with pytest.raises(ValueError, match=r"also the bias of layer_stats\[\"\['w1'\]\"\]"):
    LS.gather("kfac", {"['w1']": st, "['w2']": optlab.LayerStats(np.ones((5, 2)), st.out_grads,
                                                                  "['b']")},
              params, LS.kernel_shapes(params))


def test_scatter_writes_kernel_and_bias_rows_back():
  params = _params32()
  layers = LS.gather("test", _stats(params), params, LS.kernel_shapes(params))
  np.testing.assert_array_equal(layers["['w1']"].grad[-1], params["b1"])
  np.testing.assert_array_equal(layers["['w2']"].grad[-1], 0.0)  # no bias: a zero row
  np.testing.assert_array_equal(layers["['w2']"].a[:, -1], 0.0)
  np.testing.assert_array_equal(layers["['w1']"].a[:, -1], 1.0)
  out = LS.scatter(params, layers, {k: 2 * v.grad for k, v in layers.items()})
  for k in params:
    np.testing.assert_allclose(out[k], 2 * params[k])
  only_w2 = LS.scatter(params, layers, {"['w2']": -layers["['w2']"].grad})
  np.testing.assert_array_equal(only_w2["w1"], params["w1"])
  np.testing.assert_array_equal(only_w2["b1"], params["b1"])
  np.testing.assert_allclose(only_w2["w2"], -params["w2"])


def test_masked_leaves_are_left_to_the_other_optimizer():
  params = _params32()
  stats = _stats(params)
  seen = {}

  def spy_update(updates, state, params=None, layer_stats=None):
    seen.update(LS.gather("spy", layer_stats, updates, LS.kernel_shapes(updates)))
    return updates, state

  spy = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), spy_update)
  for mask in ({"w1": True, "b1": False, "w2": True}, {"w1": False, "b1": True, "w2": True}):
    seen.clear()
    tx = optax.masked(spy, mask)
    tx.update(params, tx.init(params), params, layer_stats=stats)
    assert sorted(seen) == sorted(k for k in ("['w1']", "['w2']") if mask[k[2:4]])
    if mask["w1"]:  # b1 masked out: the layer is one without bias
      assert seen["['w1']"].bias is None
      np.testing.assert_array_equal(seen["['w1']"].a[:, -1], 0.0)


def test_kernel_shapes_select_by_mask_and_size():
  params = {"conv": np.zeros((3, 3, 2, 8)), "emb": np.zeros((1000, 16)), "b": np.zeros(8),
            "w": np.zeros((16, 8))}
  assert LS.kernel_shapes(params) == {"['conv']": (19, 8), "['emb']": (1001, 16),
                                      "['w']": (17, 8)}
  assert LS.kernel_shapes(params, max_dim=512) == {"['conv']": (19, 8), "['w']": (17, 8)}
  mask = lambda p: {k: k != "w" for k in p}
  assert sorted(LS.kernel_shapes(params, mask=mask)) == ["['conv']", "['emb']"]


def test_conv_layers_are_dense_layers_on_their_patches():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 2))

  class LinenConv(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Conv(4, (3, 2), strides=(2, 1), padding="VALID", kernel_dilation=(1, 2))(x)
      return jnp.mean(nn.Conv(4, (2, 2), padding=((1, 0), (0, 1)), use_bias=False)(h), (1, 2))

  params = LinenConv().init(jax.random.PRNGKey(0), x)["params"]
  _, grads, stats = LS.capture_linen(LinenConv(), params, x, targets=y)
  assert sorted(stats) == ["['Conv_0']['kernel']", "['Conv_1']['kernel']"]
  for key, st in stats.items():
    kernel = params[key[2:8]]["kernel"]
    assert st.inputs.shape[1] == kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
  # patches @ kernel is the convolution; mean outer products give the kernel gradient
  a, g = stats["['Conv_0']['kernel']"].inputs, stats["['Conv_0']['kernel']"].out_grads
  h = jax.lax.conv_general_dilated(x, params["Conv_0"]["kernel"], (2, 1), "VALID",
                                   rhs_dilation=(1, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(a @ params["Conv_0"]["kernel"].reshape(-1, 4), h.reshape(-1, 4),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose((a.T @ g / 2).reshape(grads["Conv_0"]["kernel"].shape),
                             grads["Conv_0"]["kernel"], rtol=1e-4, atol=1e-6)
  assert stats["['Conv_1']['kernel']"].bias is None

  class NnxConv(nnx.Module):
    def __init__(self):
      self.conv = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))

    def __call__(self, x):
      return jnp.mean(self.conv(x), (1, 2))

  model = NnxConv()
  _, grads, stats = LS.capture_nnx(model, x, targets=y)
  st = stats["['conv']['kernel']"]
  assert st.inputs.shape == (2 * 6 * 5, 27) and st.bias == "['conv']['bias']"
  np.testing.assert_allclose(st.inputs @ model.conv.kernel[...].reshape(-1, 4) + model.conv.bias[...],
                             model.conv(x).reshape(-1, 4), rtol=1e-5, atol=1e-5)
  with pytest.raises(NotImplementedError, match="feature_group_count=3"):
    LS.capture_nnx(type("G", (nnx.Module,), {
        "__init__": lambda self: setattr(self, "c", nnx.Conv(3, 3, (2, 2), feature_group_count=3,
                                                             rngs=nnx.Rngs(0))),
        "__call__": lambda self, x: jnp.mean(self.c(x), (1, 2))})(), x, targets=y)
