"""Communication primitives and distributed recipes.

The key check (issue 7): on 8 host devices with a DIFFERENT gradient on every
device, each recipe keeps every replica's parameters bit-identical, and the
result matches the NumPy reference simulating the same algorithm over 8
workers on one device (tests/reference/distributed.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab import federated
from optlab.primitives import communication as C
from tests import problems
from tests.reference import distributed as ref

N = 8


# ------------------------------------------------------ 8 different workers
def _worker_grad_fns(grad_fn):
  """Worker i's gradient: the reference gradient plus its own noise (differs per worker)."""
  rng = np.random.default_rng(7)
  noise = [[{k: rng.normal(size=s) for k, s in problems.SHAPES.items()} for _ in range(8)]
           for _ in range(N)]

  def make(i):
    return lambda p, t: {k: g + 0.5 * noise[i][t % 8][k] for k, g in grad_fn(p, t).items()}

  return [make(i) for i in range(N)]


CASES = [
    ("distributed_lion", {"learning_rate": 0.01}),
    ("distributed_lion", {"learning_rate": 0.01, "aggregate": "average", "abstain_zeros": False,
                          "weight_decay": 0.1}),
    ("onebit_adam", {"learning_rate": 0.01, "b2": 0.9, "warmup_steps": 2, "weight_decay": 0.1}),
    ("fedadam", {"learning_rate": 0.05}),
    ("fedyogi", {"learning_rate": 0.05}),
    ("fedadagrad", {"learning_rate": 0.05}),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_eight_workers_stay_identical_and_match_simulation(name, kwargs):
  steps = 5
  params, grad_fn, _ = problems.reference_problem()
  fns = _worker_grad_fns(grad_fn)
  want = getattr(ref, name)(params, grad_fn, steps, worker_grad_fns=fns, **kwargs)
  with jax.enable_x64(True):
    tx = optlab.get_recipe(name).factory(axis_name="batch", **kwargs)

    def step(g, s, p):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    pstep = jax.pmap(step, axis_name="batch")
    rep = lambda tree: jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * N), tree)
    p_rep = rep(params)
    s_rep = jax.pmap(tx.init)(p_rep)
    for t in range(steps):
      p0 = jax.tree.map(lambda x: np.asarray(x[0]), p_rep)
      grads = [f(p0, t) for f in fns]
      g_rep = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *grads)
      p_rep, s_rep = pstep(g_rep, s_rep, p_rep)
      for k, leaf in p_rep.items():
        arr = np.asarray(leaf)
        assert all(np.array_equal(arr[0], arr[i]) for i in range(1, N)), (
            f"{name}: replicas' params[{k!r}] differ after step {t + 1}")
      for k in want[t]:
        np.testing.assert_allclose(np.asarray(p_rep[k][0]), want[t][k], rtol=1e-9, atol=1e-12,
                                   err_msg=f"{name}: params[{k!r}] at step {t + 1}")


# ------------------------------------------------------------- primitives
def _pmapped(fn, *trees):
  return jax.pmap(fn, axis_name="w")(*trees)


def test_sign_vote_by_hand():
  d = jnp.array([[1., -1., 0., 1.], [1., 1., 0., -1.], [-1., 1., 0., -1.], [1., 1., 1., 1.],
                 [1., -1., 0., 1.], [1., 1., 0., -1.], [-1., 1., 0., -1.], [1., 1., 1., 1.]])
  tx = C.scale_by_sign_vote("w")
  out = _pmapped(lambda x: tx.update(x, optax.EmptyState())[0], d)
  # column sums: 4, 4, 2 (zeros abstain), 0 (tie)
  np.testing.assert_array_equal(np.asarray(out), np.tile([1., 1., 1., 0.], (N, 1)))
  avg = C.scale_by_sign_vote("w", "average")
  out = _pmapped(lambda x: avg.update(x, optax.EmptyState())[0], d)
  np.testing.assert_allclose(np.asarray(out[0]), [0.5, 0.5, 0.25, 0.0])
  one_bit = C.scale_by_sign_vote("w", abstain_zeros=False)
  out = _pmapped(lambda x: one_bit.update(x, optax.EmptyState())[0], d)
  np.testing.assert_array_equal(np.asarray(out[0]), [1., 1., 1., 0.])  # zeros vote +1: 8


def test_sign_vote_single_worker_is_identity_on_signs():
  d = jnp.array([1., -1., 0., 1.])
  out, _ = C.scale_by_sign_vote().update(d, optax.EmptyState())
  np.testing.assert_array_equal(np.asarray(out), [1., -1., 0., 1.])
  out, _ = C.scale_by_sign_vote(abstain_zeros=False).update(d, optax.EmptyState())
  np.testing.assert_array_equal(np.asarray(out), [1., -1., 1., 1.])


def test_onebit_compressed_mean_by_hand():
  # One worker, n = 4: b = x, s = rms(b), e_w = b - s sign(b); the server chunk
  # input c = s sign(b) has equal magnitudes, so it passes exactly (e_s = 0).
  x = jnp.array([3., -1., 0., 2.])
  z = jnp.zeros(4)
  out, we, se = C.onebit_compressed_mean(x, z, z)
  s = np.sqrt((9 + 1 + 0 + 4) / 4)
  np.testing.assert_allclose(np.asarray(out), s * np.array([1, -1, 1, 1]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(we), np.array([3, -1, 0, 2]) - s * np.array([1, -1, 1, 1]),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(se), 0.0, atol=1e-6)
  # Error feedback: the next call compresses x + e_w.
  out2, _, _ = C.onebit_compressed_mean(x, we, se)
  b = np.array([3., -1., 0., 2.]) + np.asarray(we)
  np.testing.assert_allclose(np.asarray(out2), np.sqrt(np.mean(b * b)) * np.where(b >= 0, 1, -1),
                             rtol=1e-5)


def test_onebit_compressed_mean_huge_and_zero_inputs_stay_finite():
  z = jnp.zeros(5)
  for x in (jnp.zeros(5), jnp.array([1e30, -1e30, 3e29, 0., 1.])):
    out = C.onebit_compressed_mean(x, z, z)
    for leaf in out:
      assert np.all(np.isfinite(np.asarray(leaf)))
  out, we, se = C.onebit_compressed_mean(jnp.zeros(5), z, z)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_onebit_compressed_mean_of_a_zero_size_tensor_is_zero_size():
  z = jnp.zeros((0, 3))
  for leaf in C.onebit_compressed_mean(z, z, z):
    assert leaf.shape == (0, 3) and leaf.dtype == z.dtype


def test_onebit_compressed_mean_eight_workers_matches_reference():
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(N, 13))  # 13 entries: uneven server chunks (2,2,2,2,2,2,1,0)
  we = rng.normal(size=(N, 13)) * 0.1
  se = rng.normal(size=13) * 0.1
  with jax.enable_x64(True):
    out, new_we, new_se = jax.pmap(C.onebit_compressed_mean, axis_name="w",
                                   in_axes=(0, 0, None, None), static_broadcasted_argnums=(3,))(
        jnp.asarray(xs), jnp.asarray(we), jnp.asarray(se), "w")
  errs = [e.copy() for e in we]
  want, want_se = ref._compressed_allreduce(list(xs), errs, se.copy())
  for i in range(N):
    np.testing.assert_allclose(np.asarray(out[i]), want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(new_we[i]), errs[i], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(new_se[i]), want_se, rtol=1e-12, atol=1e-15)


def test_yogi_rule_by_hand():
  rule = optlab.rules.yogi_sq(b2=0.9, initial=0.25)
  nu = rule.init({"a": jnp.zeros(2)})
  np.testing.assert_allclose(np.asarray(nu.nu["a"]), [0.25, 0.25])
  nu, scale = rule.update(nu, {"a": jnp.array([1.0, 0.1])}, 1)
  # v - 0.1 g^2 sign(v - g^2): [0.25 + 0.1, 0.25 - 0.001]
  np.testing.assert_allclose(np.asarray(nu.nu["a"]), [0.35, 0.249], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(scale["a"]), np.sqrt([0.35, 0.249]), rtol=1e-6)


def test_bytes_per_step():
  params = {"w": jnp.zeros((100, 10)), "b": jnp.zeros(3)}
  n_entries, packed = 1003, 125 + 1
  ring = 7 / 8
  assert C.bytes_per_step("allreduce_f32", params, N) == pytest.approx(2 * ring * 4 * n_entries)
  assert C.bytes_per_step("sign_vote_1bit", params, N) == 7 * packed
  assert C.bytes_per_step("sign_vote", params, N) == 14 * packed
  assert C.bytes_per_step("onebit_adam", params, N) == 7 * (packed + 8)
  assert C.bytes_per_step("federated", params, N, local_steps=5) == pytest.approx(
      2 * ring * 4 * n_entries / 5)
  assert C.bytes_per_step("allreduce_f32", params, 1) == 0.0
  assert C.bytes_per_step("onebit_adam_deepspeed", params, N) < C.bytes_per_step(
      "onebit_adam", params, N)
  with pytest.raises(ValueError, match="scheme"):
    C.bytes_per_step("nope", params, N)


def test_mean_over_workers():
  x = jnp.arange(8.0)
  tx = C.mean_over_workers("w")
  out = _pmapped(lambda v: tx.update(v, optax.EmptyState())[0], x)
  np.testing.assert_allclose(np.asarray(out), 3.5)
  assert C.mean_over_workers().update(x, optax.EmptyState())[0] is x


def test_onebit_adam_warmup_is_adam_without_bias_correction():
  tx = C.scale_by_onebit_adam(b1=0.5, b2=0.5, eps=0.0, warmup_steps=5)
  g = {"a": jnp.array([2.0, -4.0])}
  s = tx.init(g)
  u, s = tx.update(g, s)
  # m = 0.5 g, v = 0.5 g^2: u = 0.5 g / (sqrt(0.5) |g|) = sign(g) / sqrt(2)
  np.testing.assert_allclose(np.asarray(u["a"]), np.array([1, -1]) / np.sqrt(2), rtol=1e-6)
  zero = tx.update({"a": jnp.zeros(2)}, tx.init(g))[0]
  np.testing.assert_array_equal(np.asarray(zero["a"]), 0.0)  # 0 / 0 gives 0, not NaN


# -------------------------------------------------------------- federated
def test_federated_simulation_trains_and_fedavg_is_sgd_one():
  data = federated.digits_shards(4)
  assert data[0].shape == (4, 448, 64)
  p0 = federated.init_mlp(jax.random.key(0))
  _, losses = federated.simulate(optlab.fedadam(0.03), p0, data, rounds=8, local_steps=3,
                                 local_lr=0.3)
  assert losses[-1] < 0.6 * losses[0]
  # FedAvg (server SGD with lr 1) with one client is that client's local SGD.
  one = (data[0][:1], data[1][:1])
  p_avg, _ = federated.simulate(optax.sgd(1.0), p0, one, rounds=2, local_steps=3, local_lr=0.3)
  p = p0
  for _ in range(2):
    p = federated.client_update(p, one[0][0], one[1][0], local_steps=3, local_lr=0.3)
  for k in p:
    np.testing.assert_allclose(np.asarray(p_avg[k]), np.asarray(p[k]), rtol=1e-5, atol=1e-6)
