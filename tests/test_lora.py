"""LoRA-Pro (`optlab.lora_pro`, `optlab.in_lora_pairs`): the pairs it finds, the
errors it names, and what it claims on a tiny LoRA model (a frozen base weight W0
plus an adapter s B A): its equivalent full update is the projection of the full
gradient onto the updates an adapter can make, so it stays closer to full
fine-tuning than plain LoRA. The reference and contract checks live in
test_reference.py / test_contract.py (the contract pairs w1 and w2 through
tests/recipe_config.py's `lora_test_pairs`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.primitives import lora as L

M, N, R, S = 7, 5, 3, 2.0


def _factors(seed=0, dtype=jnp.float64):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(R, N)), dtype), jnp.asarray(rng.normal(size=(M, R)), dtype),
          jnp.asarray(rng.normal(size=(M, N)), dtype))


def _adjusted(a, b, g, inner=None):
  """in_lora_pairs(inner) on the LoRA gradients of the full gradient g (PEFT names);
  delta 0: exact inverses (the default 1e-8 damping moves results by ~1e-8 / sigma^2)."""
  tx = L.in_lora_pairs(inner or optax.identity(), scaling=S, delta=0.0)
  params = {"lora_A": a, "lora_B": b}
  grads = {"lora_A": S * b.T @ g, "lora_B": S * g @ a.T}
  u, _ = tx.update(grads, tx.init(params), params)
  return u["lora_A"], u["lora_B"]


# ------------------------------------------------------------------- the math
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equivalent_update_is_the_best_approximation_of_the_full_gradient(seed):
  """With no inner rule, s (B u_A + u_B A) is the least-squares projection of g onto
  {s (B X + Y A)} (solved here by lstsq over X, Y), and it is closer to g than
  plain LoRA's s (B g_A + g_B A) at any rescaling of that step."""
  with jax.enable_x64(True):
    a, b, g = _factors(seed)
    ua, ub = _adjusted(a, b, g)
    got = np.asarray(S * (b @ ua + ub @ a))
  a, b, g = (np.asarray(x) for x in (a, b, g))
  # the linear map (X, Y) -> s (B X + Y A) as a matrix on vec(X), vec(Y)
  cols = []
  for k in range(R * N):
    x = np.zeros(R * N)
    x[k] = 1
    cols.append((S * b @ x.reshape(R, N)).ravel())
  for k in range(M * R):
    y = np.zeros(M * R)
    y[k] = 1
    cols.append((S * y.reshape(M, R) @ a).ravel())
  basis = np.stack(cols, 1)
  coef = np.linalg.lstsq(basis, g.ravel(), rcond=None)[0]
  best = (basis @ coef).reshape(M, N)
  np.testing.assert_allclose(got, best, rtol=1e-8, atol=1e-10)
  lora = S * (b @ (S * b.T @ g) + (S * g @ a.T) @ a)
  c = np.sum(lora * g) / np.sum(lora * lora)  # the best rescaling of LoRA's step
  assert np.linalg.norm(got - g) < 0.9 * np.linalg.norm(c * lora - g)


def test_x_makes_the_adjusted_gradients_closest_to_loras():
  """Among the (u_A + X A, u_B - B X), which all give the same equivalent update, the
  paper's X is the one closest to LoRA's own gradients of the inner rule's output D:
  the derivative of ||u_A - s B^T D||^2 + ||u_B - s D A^T||^2 in X,
  (u_A - s B^T D) A^T - B^T (u_B - s D A^T), vanishes. D = tanh(equivalent gradient),
  a fixed non-linear rule whose output leaves the adapter's tangent space."""
  squash = optax.stateless(lambda u, _: jax.tree.map(jnp.tanh, u))
  with jax.enable_x64(True):
    a, b, g = _factors(3)
    ua, ub = _adjusted(a, b, g, squash)
    eq_a, eq_b = _adjusted(a, b, g)
    d = jnp.tanh(S * (b @ eq_a + eq_b @ a))
    res = (ua - S * b.T @ d) @ a.T - b.T @ (ub - S * d @ a.T)
    # and X is not zero: the X = 0 split is farther from LoRA's gradients
    res0 = (ua - S * b.T @ d) @ a.T
  assert np.abs(np.asarray(res)).max() < 1e-9 * np.abs(np.asarray(ua)).max()
  assert np.abs(np.asarray(res0)).max() > 1e-3 * np.abs(np.asarray(ua)).max()


def test_flax_layout_gives_the_transposed_update():
  """nnx.LoRA's (in, out) layout: lora_a = A^T (in, r) is the left factor (B's role),
  lora_b = B^T (r, out) the right one. Its updates are PEFT's transposed."""
  with jax.enable_x64(True):
    a, b, g = _factors(4)
    ua, ub = _adjusted(a, b, g, optlab.scale_by_adam())
    tx = L.in_lora_pairs(optlab.scale_by_adam(), scaling=S, delta=0.0)
    flax = {"lora_a": a.T, "lora_b": b.T}
    grads = {"lora_a": S * g.T @ b, "lora_b": S * a @ g.T}  # of W^T = lora_a lora_b
    u, _ = tx.update(grads, tx.init(flax), flax)
  np.testing.assert_allclose(np.asarray(u["lora_a"]), np.asarray(ua).T, rtol=1e-8, atol=1e-12)
  np.testing.assert_allclose(np.asarray(u["lora_b"]), np.asarray(ub).T, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------- a tiny LoRA model, trained
def _tiny_lora(steps=30, lr=1e-2, s=2.0, m=16, n=12, r=4):
  """A frozen W0 (m, n) and an adapter (B starts at zero, as PEFT's), regression onto
  W0 + a rank-3 change. Returns the full weight after each step of lora_pro, of
  AdamW on (A, B) (plain LoRA) and of AdamW on W itself (full fine-tuning)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, n)), jnp.float32)
  w0 = jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(n), jnp.float32)
  target = w0 + jnp.asarray(rng.normal(size=(m, 3)) @ rng.normal(size=(3, n)) / 3, jnp.float32)
  y = x @ target.T
  full_loss = lambda w: jnp.mean((x @ w.T - y) ** 2)
  merged = lambda p: w0 + s * p["lora_B"] @ p["lora_A"]
  adapter = {"lora_A": jnp.asarray(rng.normal(size=(r, n)) / np.sqrt(n), jnp.float32),
             "lora_B": jnp.zeros((m, r), jnp.float32)}

  def run(tx, p, weight):
    def step(carry, _):
      p, state = carry
      u, state = tx.update(jax.grad(lambda q: full_loss(weight(q)))(p), state, p)
      p = optax.apply_updates(p, u)
      return (p, state), weight(p)

    return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[1]

  pro = jax.jit(lambda: run(optlab.lora_pro(lr, scaling=s), adapter, merged))()
  lora = jax.jit(lambda: run(optax.adamw(lr, weight_decay=0.0), adapter, merged))()
  full = jax.jit(lambda: run(optax.adamw(lr, weight_decay=0.0), {"w": w0}, lambda p: p["w"]))()
  return pro, lora, full


def test_lora_pro_follows_full_fine_tuning_closer_than_lora():
  """The paper's claim on the tiny model: the merged weight of LoRA-Pro (Adam on the
  equivalent gradient) stays near full fine-tuning's (AdamW on W), plain LoRA's
  (AdamW on A and B) drifts away. Measured at lr 1e-2: distances 0.34 / 0.53 / 0.85
  (LoRA-Pro) against 0.91 / 1.73 / 3.27 (LoRA) after 5 / 10 / 30 steps."""
  pro, lora, full = (np.asarray(w) for w in _tiny_lora())
  for t in (4, 9, 29):
    d_pro, d_lora = np.linalg.norm(pro[t] - full[t]), np.linalg.norm(lora[t] - full[t])
    assert d_pro < 0.5 * d_lora, (t, d_pro, d_lora)


# ------------------------------------------------------------------ the pairs
def _peft_tree():
  w = lambda *s: jnp.ones(s)
  return {"q": {"base_layer": {"weight": w(6, 5)},
                "lora_A": {"default": {"weight": w(2, 5)}},
                "lora_B": {"default": {"weight": w(6, 2)}}},
          "head": {"bias": w(3)}}


def _named_pairs(params, pairs=None):
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  return [(paths[a], paths[b]) for a, b in L.find_lora_pairs(params, pairs)]


def test_naming_convention_finds_peft_and_flax_pairs():
  assert _named_pairs(_peft_tree()) == [("['q']['lora_A']['default']['weight']",
                                         "['q']['lora_B']['default']['weight']")]
  flax = {"layer": {"kernel": jnp.ones((5, 6)), "lora_a": jnp.ones((5, 2)),
                    "lora_b": jnp.ones((2, 6))}}
  # flax: x @ lora_a @ lora_b, so lora_b is A (right factor), lora_a is B
  assert _named_pairs(flax) == [("['layer']['lora_b']", "['layer']['lora_a']")]
  assert _named_pairs({"w": jnp.ones((3, 3))}) == []


def test_flax_nnx_lora_linear_is_paired():
  """nnx.LoRALinear's state (LoRAParam leaves under ``lora``, paths ending in .value)."""
  from flax import nnx
  state = nnx.state(nnx.LoRALinear(5, 6, lora_rank=2, rngs=nnx.Rngs(0)), nnx.Param)
  assert _named_pairs(state) == [("['lora']['lora_b'].value", "['lora']['lora_a'].value")]


@pytest.mark.parametrize("spelling", [
    [("q/lora_A/default/weight", "q/lora_B/default/weight")],
    [("['q']['lora_A']['default']['weight']", "params['q']['lora_B']['default']['weight']")],
    [(("q", "lora_A", "default", "weight"), ("q", "lora_B", "default", "weight"))],
    {"q": ("q/lora_A/default/weight", "q/lora_B/default/weight")},
])
def test_pairs_given_by_path_spellings_or_a_label_function(spelling):
  want = _named_pairs(_peft_tree())
  assert _named_pairs(_peft_tree(), spelling) == want
  assert _named_pairs(_peft_tree(), lambda params: spelling) == want


@pytest.mark.parametrize("params,pairs,message", [
    ({"x": {"lora_A": jnp.ones((2, 3))}}, None,
     r"params\['x'\]\['lora_A'\] has no partner"),
    ({"lora_a": jnp.ones((3, 2)), "w": jnp.ones(3)}, None, r"params\['lora_a'\] has no partner"),
    ({"a": jnp.ones((2, 3)), "b": jnp.ones((4, 3))}, [("a", "b")],
     r"params\['a'\] \(A, shape \(2, 3\)\) and params\['b'\] \(B, shape \(4, 3\)\) does not "
     r"chain"),
    ({"a": jnp.ones((2, 3)), "b": jnp.ones((4, 2))}, [("a", "c")], r"'c', which is no leaf"),
    ({"a": jnp.ones((2, 3)), "b": jnp.ones((4, 2)), "c": jnp.ones((4, 2))},
     [("a", "b"), ("a", "c")], r"params\['a'\] is in two LoRA pairs"),
    ({"a": jnp.ones(2), "b": jnp.ones((4, 2))}, [("a", "b")], r"params\['a'\] .* must be matrices"),
])
def test_bad_pairs_are_named(params, pairs, message):
  with pytest.raises(ValueError, match=message):
    optlab.lora_pro(0.01, pairs).init(params)


def test_update_needs_params_and_the_state_names_a_mismatched_leaf():
  tx = optlab.lora_pro(0.01)
  params = _peft_tree()
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  with pytest.raises(ValueError, match="needs `params`"):
    jax.eval_shape(lambda: tx.update(grads, state))
  grads["q"]["lora_A"]["default"]["weight"] = jnp.ones((5, 2))
  with pytest.raises(ValueError, match=r"\['lora_A'\]\['default'\]\['weight'\]"):
    jax.jit(tx.update)(grads, state, None)


def test_unpaired_leaves_get_plain_adamw_and_pair_moments_are_full_size():
  params = _peft_tree()
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  tx = optlab.lora_pro(0.01, weight_decay=0.1)
  u, state = tx.update(grads, tx.init(params), params)
  ref = optax.adamw(0.01, weight_decay=0.1)
  want, _ = ref.update(grads, ref.init(params), params)
  for leaf in (("head", "bias"), ("q", "base_layer", "weight")):
    a, b = u, want
    for k in leaf:
      a, b = a[k], b[k]
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # the packed Adam moments: 6 x 5 for the pair, 3 + 30 for the unpaired leaves
  sizes = [x.size for x in state[0].inner_state if x is not None and x.ndim == 1]
  assert sizes == [6 * 5 + 3 + 30] * 2
