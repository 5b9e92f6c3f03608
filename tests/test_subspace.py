"""Unit tests of the low-rank subspace primitives (`optlab.primitives.subspace`) and
the norm-growth limiter; the recipes' reference and contract checks live in
test_reference.py / test_contract.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.primitives import subspace as S
from tests import harness, problems
from tests.reference import subspace as ref
from tests import recipe_config as cfg

SHAPES = {"b": (6,), "v": (6, 8), "w": (8, 6)}


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in SHAPES.items()}


def _packed_sizes(state):
  """Sizes of the packed moment vectors of the projected and regular inner states
  (0 for a None entry: a packed tree without entries)."""
  size = lambda x: 0 if x is None else int(x.size)
  proj = [size(x) for x in state.inner_state if x is None or jnp.ndim(x) == 1]
  reg = [size(x) for x in state.regular_state if x is None or jnp.ndim(x) == 1]
  return proj, reg


def _subspace_state(state):
  for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, S.SubspaceState)):
    if isinstance(s, S.SubspaceState):
      return s
  raise AssertionError("no SubspaceState")


# ------------------------------------------------------------- state shapes
@pytest.mark.parametrize("proj_type,expected", [
    ("std", 8 * 2 + 2 * 8),          # w (8,6) -> (8,2) on the right; v (6,8) -> (2,8) left
    ("reverse_std", 2 * 6 + 6 * 2),  # w -> (2,6) on the left; v -> (6,2) on the right
    ("both", 2 * 2 + 2 * 2),         # both -> (2,2) cores
])
def test_galore_moments_are_low_rank(proj_type, expected):
  tx = optlab.galore_adamw(0.01, rank=2, proj_type=proj_type)
  state = _subspace_state(tx.init(_params()))
  proj, reg = _packed_sizes(state)
  assert proj == [expected, expected]   # mu and nu of the projected leaves only
  assert reg == [6, 6]                  # the bias is trained unprojected
  full = 8 * 6 * 2
  assert expected < full
  # projectors: w (2, 6) + v (6, 2) with std; (8, 2) + (2, 8) with reverse_std
  # the projectors: V_r^T (2, 6) / U_r (6, 2) on one side; (U_r; V_r), (8 + 6) x 2, on both
  assert state.projectors.size == {"std": 2 * 6 + 6 * 2, "reverse_std": 8 * 2 + 2 * 8,
                                   "both": 2 * 14 * 2}[proj_type]


SUBSPACE_RECIPES = [r for r in optlab.catalog() if cfg.reference(r)
                    and cfg.reference(r).startswith("subspace:")]


@pytest.mark.parametrize("recipe", SUBSPACE_RECIPES, ids=[r.name for r in SUBSPACE_RECIPES])
def test_no_recipe_keeps_a_full_size_moment(recipe):
  """Every moment of the two (8,6)/(6,8) matrices lives in the subspace: each packed
  moment vector is at most half the matrices' size; the bias alone is full-size."""
  state = _subspace_state(cfg.build(recipe).init(_params()))
  proj, reg = _packed_sizes(state)
  if recipe.name == "natural_galore":
    # first the window of the Fisher: s low-rank gradients (not a moment), each of the
    # two matrices' r x r cores (the official code's two-sided projection): s * (4 + 4)
    window, proj = proj[0], proj[1:]
    assert window == cfg.hparams(recipe)["natural_history"] * 8, window
  assert proj and all(0 < n <= (48 + 48) // 2 for n in proj), proj
  assert all(n == 6 for n in reg), reg


def test_apollo_mini_state_is_rank_one():
  tx = optlab.apollo_mini(0.01)
  state = _subspace_state(tx.init(_params()))
  proj, _ = _packed_sizes(state)
  assert proj == [8 + 8, 8 + 8]  # (8,1) and (1,8) moments
  assert state.key.dtype == jnp.uint32 and state.key.shape == (2,)


def test_small_matrices_are_not_projected():
  tx = S.in_subspace(optlab.scale_by_adam(), rank=6)  # rank >= min(m, n) = 6
  state = tx.init(_params())
  proj, reg = _packed_sizes(state)
  assert proj == [0, 0] and reg == [6 + 48 + 48] * 2
  g = _params()
  u, _ = tx.update(g, state)
  want, _ = optlab.scale_by_adam().update(g, optlab.scale_by_adam().init(g))
  for k in g:
    np.testing.assert_allclose(u[k], want[k], rtol=1e-6)


def test_tree_map_params_sees_no_param_shaped_projected_state():
  tx = optlab.galore_adamw(0.01, rank=2)
  state = tx.init(_params())
  marked = optax.tree_map_params(tx, lambda _: "P", state, transform_non_params=lambda _: "N")
  assert "P" not in jax.tree.leaves(marked)


# ------------------------------------------------------- references (std side)
def test_galore_std_side_matches_reference():
  """The catalogue runs 'reverse_std' (optax's side); the official default is 'std'."""
  kw = dict(learning_rate=0.02, rank=2, update_proj_gap=5, scale=0.25, eps=1e-6,
            weight_decay=0.1)
  params, grad_fn, _ = problems.reference_problem()
  want = ref.galore_adamw(params, grad_fn, 12, **kw)
  with jax.enable_x64(True):
    got = harness.run_jax(optlab.galore_adamw(**kw), params, grad_fn, 12)
  harness.assert_trajectories_close(got, want, 1e-5, 1e-9, "galore std")


def test_galore_matches_optax_contrib_galore():
  """optax.contrib.galore computes its SVD in float32 even for float64 params, so the
  comparison is at atol 1e-6 (the projector's float32 precision), not rtol 1e-5."""
  from tests.recipe_config import optax_galore
  kw = dict(learning_rate=0.02, rank=2, update_proj_gap=30, scale=1.0,
            proj_type="reverse_std", eps=1e-8, weight_decay=0.1)
  params, grad_fn, _ = problems.reference_problem()
  with jax.enable_x64(True):
    want = harness.run_jax(optax_galore(**kw), params, grad_fn, 25)
    got = harness.run_jax(optlab.galore_adamw(**kw), params, grad_fn, 25)
  harness.assert_trajectories_close(got, want, 1e-5, 1e-6, "galore vs optax")


# ------------------------------------------------------------ basis protocol
def test_project_on_refresh_maps_momentum_exactly():
  """on_refresh='project': the momentum m (in old coordinates) becomes m P_old P_new^T."""
  b1 = 0.5
  inner = optlab.scale_by_moments(optlab.rules.ema(b1, debias=False), None)
  tx = S.in_subspace(inner, S.svd_projector(), 2, 2, on_refresh="project")
  params = {"w": jnp.zeros((8, 6))}
  rng = np.random.default_rng(3)
  gs = [{"w": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)} for _ in range(3)]
  state = tx.init(params)
  outs, projs = [], []
  for g in gs:
    u, state = tx.update(g, state)
    outs.append(u["w"])
    projs.append(state.projectors.reshape(2, 6))  # side "right": P is (r, n)
  p0, p2 = projs[1], projs[2]  # steps 1-2 use p0; step 3 refreshes to p2
  m = (1 - b1) * (gs[0]["w"] @ p0.T)
  m = b1 * m + (1 - b1) * (gs[1]["w"] @ p0.T)
  m = b1 * (m @ p0 @ p2.T) + (1 - b1) * (gs[2]["w"] @ p2.T)
  np.testing.assert_allclose(outs[2], m @ p2, rtol=1e-4, atol=1e-5)


def test_both_sides_project_to_the_core_and_map_momentum_exactly():
  """proj_type='both': R = U^T G V with the top-2 singular vectors (signs aligned),
  the update U m V^T, and on_refresh='project' takes m to (U2^T U0) m (V0^T V2)."""
  b1 = 0.5
  inner = optlab.scale_by_moments(optlab.rules.ema(b1, debias=False), None)
  tx = S.in_subspace(inner, S.svd_projector(), 2, 2, proj_type="both", on_refresh="project")
  rng = np.random.default_rng(3)
  gs = [{"w": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)} for _ in range(3)]
  state = tx.init({"w": jnp.zeros((8, 6))})
  outs, projs = [], []
  for g in gs:
    u, state = tx.update(g, state)
    outs.append(u["w"])
    p = np.asarray(state.projectors, np.float64).reshape(14, 2)  # (U; V), (8 + 6) x 2
    projs.append((p[:8], p[8:]))
  (u0, v0), (u2, v2) = projs[1], projs[2]  # steps 1-2 use (u0, v0); step 3 refreshes
  g0 = np.asarray(gs[0]["w"], np.float64)
  su, _, svh = np.linalg.svd(g0)
  np.testing.assert_allclose(np.abs(u0), np.abs(su[:, :2]), atol=1e-5)
  np.testing.assert_allclose(np.abs(v0), np.abs(svh[:2].T), atol=1e-5)
  g = [np.asarray(x["w"], np.float64) for x in gs]
  m = (1 - b1) * (u0.T @ g[0] @ v0)
  np.testing.assert_allclose(outs[0], u0 @ m @ v0.T, rtol=1e-4, atol=1e-5)
  m = b1 * m + (1 - b1) * (u0.T @ g[1] @ v0)
  m = b1 * ((u2.T @ u0) @ m @ (v0.T @ v2)) + (1 - b1) * (u2.T @ g[2] @ v2)
  np.testing.assert_allclose(outs[2], u2 @ m @ v2.T, rtol=1e-4, atol=1e-5)


def test_reset_on_refresh_restarts_inner_state():
  inner = optlab.scale_by_adam()
  tx = S.in_subspace(inner, S.svd_projector(), 2, 3, on_refresh="reset")
  params = {"w": jnp.zeros((8, 6)), "b": jnp.zeros(6)}
  state = tx.init(params)
  g = {"w": jnp.ones((8, 6)) + jnp.arange(6.0), "b": jnp.ones(6)}
  for _ in range(4):
    _, state = tx.update(g, state)
  counts = [int(x) for x in state.inner_state if x.dtype == jnp.int32]
  regular = [int(x) for x in state.regular_state if x.dtype == jnp.int32]
  assert counts == [1] and regular == [4]  # reset at step 4 (0-based 3); bias not reset


# -------------------------------------------------------------- projectors
def test_svd_projector_is_finite_at_extremes():
  tx = optlab.galore_adamw(0.01, rank=2)
  params = _params()
  state = tx.init(params)
  for value in (0.0, 1e30, 1e-30):
    g = jax.tree.map(lambda x: jnp.full_like(x, value).at[..., 0].set(-value), params)
    u, s = jax.jit(tx.update)(g, state, params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((u, s)))


def test_svd_signs_are_aligned_with_previous_projector():
  g = jnp.asarray(np.random.default_rng(1).normal(size=(8, 6)), jnp.float32)
  p = S.svd_projector().refresh(g, jnp.zeros((2, 6)), None, "right", 2)
  flipped = S.svd_projector().refresh(g, -p, None, "right", 2)
  np.testing.assert_allclose(flipped, -p, atol=1e-6)
  # both sides: U's columns and V's columns follow the old ones each on their own
  p = S.svd_projector().refresh(g, jnp.zeros((14, 2)), None, "both", 2)
  old = p.at[:8, 0].multiply(-1).at[8:, 1].multiply(-1)
  np.testing.assert_allclose(S.svd_projector().refresh(g, old, None, "both", 2), old, atol=1e-6)


def test_haar_projector_is_orthonormal_average():
  h = np.asarray(S._haar_matrix(8, 2))
  np.testing.assert_allclose(h @ h.T, np.eye(2), atol=1e-12)
  np.testing.assert_allclose(h[0], [0.5] * 4 + [0] * 4, atol=1e-12)  # 1/sqrt(2)^2


def test_online_pca_step_is_the_loss_gradient():
  """One online-PCA AdamW step from zero moments moves P against sign(dL/dP)."""
  rng = np.random.default_rng(2)
  g = jnp.asarray(rng.normal(size=(8, 6)))
  with jax.enable_x64(True):
    g = jnp.asarray(np.asarray(g), jnp.float64)
    for side, shape in (("right", (2, 6)), ("left", (8, 2))):
      p = jnp.asarray(rng.normal(size=shape), jnp.float64)
      gn = g / jnp.linalg.norm(g)
      if side == "right":
        loss = lambda p: jnp.sum((gn @ p.T @ p - gn) ** 2)
      else:
        loss = lambda p: jnp.sum((p @ p.T @ gn - gn) ** 2)
      grad = jax.grad(loss)(p)
      proj = S.online_pca_projector(weight_decay=0.0, eps=0.0)
      z = jnp.zeros_like(p)
      new, (m, v) = proj.step(g, p, side, (z, z), jnp.asarray(1), 10)
      np.testing.assert_allclose(m, 0.1 * grad, rtol=1e-10)
      np.testing.assert_allclose(new, p - 0.1 * jnp.sign(grad), rtol=1e-10)


def test_random_projector_key_advances_only_on_refresh():
  tx = optlab.apollo(0.01, rank=2, update_proj_gap=2)
  params = _params()
  state = _subspace_state(tx.init(params))
  keys = []
  inner_tx_state = tx.init(params)
  for _ in range(3):
    _, inner_tx_state = tx.update(_params(), inner_tx_state, params)
    keys.append(np.asarray(_subspace_state(inner_tx_state).key))
  assert not np.array_equal(keys[0], np.asarray(state.key))  # refresh at step 0
  assert np.array_equal(keys[0], keys[1])                     # none at step 1
  assert not np.array_equal(keys[1], keys[2])                 # refresh at step 2


# -------------------------------------------------------- norm-growth limiter
def test_limit_norm_growth_known_values():
  x = jnp.asarray([3.0, 4.0])  # norm 5
  y, n = optlab.limit_norm_growth(x, jnp.asarray(2.0), False)
  limiter = (5.0 / (2.0 + 1e-8)) / 1.01
  np.testing.assert_allclose(y, np.array([3.0, 4.0]) / limiter, rtol=1e-6)
  np.testing.assert_allclose(n, 2.02, rtol=1e-6)
  y, n = optlab.limit_norm_growth(x, jnp.asarray(2.0), True)  # first step: record only
  np.testing.assert_allclose(y, x)
  np.testing.assert_allclose(n, 5.0)
  y, n = optlab.limit_norm_growth(x, jnp.asarray(10.0), False)  # shrinking: untouched
  np.testing.assert_allclose(y, x, rtol=1e-6)
  y, n = optlab.limit_norm_growth(jnp.zeros(2), jnp.asarray(0.0), False)
  assert np.all(np.asarray(y) == 0) and float(n) == 0.0


def test_clip_by_norm_growth_transformation():
  tx = optlab.clip_by_norm_growth(1.5)
  params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
  state = tx.init(params)
  u, state = tx.update({"a": jnp.asarray([1.0, 0.0]), "b": jnp.ones(3)}, state)
  np.testing.assert_allclose(state.prev_norm, [1.0, np.sqrt(3)], rtol=1e-6)
  u, state = tx.update({"a": jnp.asarray([10.0, 0.0]), "b": jnp.ones(3)}, state)
  np.testing.assert_allclose(u["a"], [1.5, 0.0], rtol=1e-6)  # grew 10x, allowed 1.5x
  np.testing.assert_allclose(u["b"], np.ones(3), rtol=1e-6)
  with pytest.raises(ValueError, match="gamma"):
    optlab.clip_by_norm_growth(0.5)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="rank"):
    S.in_subspace(optlab.scale_by_adam(), rank=0)
  with pytest.raises(ValueError, match="update_every"):
    S.in_subspace(optlab.scale_by_adam(), update_every=0)
  with pytest.raises(ValueError, match="proj_type"):
    S.in_subspace(optlab.scale_by_adam(), proj_type="diagonal")
  with pytest.raises(ValueError, match="proj_type 'both'"):
    S.in_subspace(optlab.scale_by_adam(), S.random_projector(), proj_type="both")
  with pytest.raises(ValueError, match="proj_type 'both'"):
    S.in_subspace(optlab.scale_by_adam(), proj_type="both", residual="norm_scaled")
  tx = S.in_subspace(optlab.scale_by_adam(), rank=2)
  state = tx.init(_params())
  with pytest.raises(ValueError, match="'b'"):
    tx.update({k: v for k, v in _params().items() if k != "b"}, state)


# ----------------------------------------------------------- Subspace-Momentum
def test_subspace_momentum_complement_and_reset():
  b1, b2 = 0.5, 0.9
  rng = np.random.default_rng(3)
  g = rng.normal(size=(5, 4))
  tx = S.scale_by_subspace_momentum(b1, b2, eps=0.0, rank=1, update_every=2)
  params = {"w": jnp.zeros((5, 4)), "b": jnp.zeros(3)}
  state = tx.init(params)
  grads = {"w": jnp.asarray(g, jnp.float32), "b": jnp.asarray([1.0, -2.0, 0.5])}
  u, state = tx.update(grads, state)
  # rank-1 right projector (m >= n): the top right singular vector of g
  vt = np.linalg.svd(g)[2][:1]
  low_back = g @ vt.T @ vt
  num = (1 - b1) * low_back + (g - low_back)        # momentum in the subspace, SGD outside
  want = num * np.sqrt(1 - b2) / (1 - b1) / (np.sqrt((1 - b2) * g ** 2))
  np.testing.assert_allclose(u["w"], want, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(u["b"], np.sign(grads["b"]), rtol=1e-5)  # plain Adam step
  # a rank-1 gradient lies in the subspace; the momentum restarts on step 3 (refresh)
  r1 = {"w": jnp.asarray(np.outer([1.0, 2, -1, 3, 1], [1.0, -1, 2, 0.5])), "b": grads["b"]}
  tx = S.scale_by_subspace_momentum(b1, b2, eps=0.0, rank=1, update_every=2)
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update(r1, state)
  ratio = np.asarray(u["w"]) / np.sign(np.asarray(r1["w"]))
  np.testing.assert_allclose(ratio, (1 - b1) / (1 - b1 ** 3), rtol=1e-4)


def test_subspace_momentum_keeps_no_full_first_moment():
  params = {f"w{i}": jax.ShapeDtypeStruct((1024, 1024), jnp.float32) for i in range(2)}
  sm = optlab.state_bytes(optlab.adam_subset_norm(1e-3, momentum_rank=128), params)
  # per matrix: m (1024 x 128) + projector (128 x 1024) + 1024 subset norms, in float32
  assert sm.total <= 2 * 4 * (2 * 1024 * 128 + 1024) + 4096


# ------------------------------------------------------------ Natural GaLore
def test_natural_gradient_is_the_damped_inverse_fisher_of_its_window():
  """Against the direct (lambda I + G G^T)^{-1} g (no Woodbury), float64: the window
  grows over the first s steps, then the ring buffer drops the oldest gradient."""
  s, lam = 3, 0.05
  tx = S.scale_by_natural_gradient(s, lam)
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    params = {"m": jnp.zeros((4, 3), jnp.float64), "v": jnp.zeros(2, jnp.float64)}
    state, seen = tx.init(params), {k: [] for k in params}
    for _ in range(2 * s + 1):
      g = {k: rng.normal(size=x.shape) * 3 for k, x in params.items()}
      u, state = tx.update(jax.tree.map(jnp.asarray, g), state)
      for k in g:
        seen[k] = (seen[k] + [g[k].ravel()])[-s:]
        cols = np.stack(seen[k], 1)
        want = np.linalg.solve(lam * np.eye(cols.shape[0]) + cols @ cols.T, g[k].ravel())
        np.testing.assert_allclose(np.asarray(u[k]).ravel(), want, rtol=1e-9, err_msg=k)


def test_natural_gradient_stays_finite_and_zero_stays_zero():
  tx = S.scale_by_natural_gradient(4, 1e-3)
  params = {"w": jnp.zeros((3, 2))}
  state = tx.init(params)
  u, state = tx.update({"w": jnp.zeros((3, 2))}, state)
  assert not np.any(np.asarray(u["w"]))
  huge = jnp.full((3, 2), 3e38, jnp.float32).at[0, 0].set(-3e38)
  for _ in range(3):
    u, state = tx.update({"w": huge}, state)
    assert np.all(np.isfinite(np.asarray(u["w"])))
  with pytest.raises(TypeError, match="history"):
    S.scale_by_natural_gradient(2.5)
  with pytest.raises(ValueError, match="damping"):
    S.scale_by_natural_gradient(2, 0.0)


def test_natural_galore_trains_unprojected_leaves_by_plain_adamw():
  """`regular=`: the bias (not projected) gets GaLore-AdamW's update exactly, the
  projected matrices a different one (the Fisher acts on them only)."""
  kw = dict(learning_rate=0.02, rank=2, update_proj_gap=10, scale=1.0)
  nat, gal = optlab.natural_galore(natural_history=3, **kw), optlab.galore_adamw(**kw)
  params = _params()
  s_nat, s_gal = nat.init(params), gal.init(params)
  for t in range(3):
    g = jax.tree.map(lambda x: jnp.sin(x * (t + 1.0)), params)
    u_nat, s_nat = nat.update(g, s_nat, params)
    u_gal, s_gal = gal.update(g, s_gal, params)
  np.testing.assert_allclose(u_nat["b"], u_gal["b"], rtol=1e-6)
  assert not np.allclose(u_nat["w"], u_gal["w"], rtol=1e-3)
