"""The contract every recipe in `optlab.catalog()` passes (DESIGN.md, points 1-9).

Recipes of `optlab.held_out()` run it too; they are expected to fail exactly the
convergence problems their `known_failures` name (strict xfail), and nothing else."""

from __future__ import annotations

import inspect

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optlab
from tests import extras, problems
from tests import recipe_config as cfg

RECIPES = optlab.catalog() + optlab.held_out()
by_recipe = pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])


# ------------------------------------------------------------------ the problem
def make_params(dtype=jnp.float32):
  rng = np.random.default_rng(1)
  return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in problems.SHAPES.items()}


def _noise(i):
  rng = np.random.default_rng(100 + i)
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in problems.SHAPES.items()}


def loss_fn(p):
  return sum(jnp.sum(0.5 * (x.astype(jnp.float32) - 0.5) ** 2) for x in jax.tree.leaves(p))


_NOISE = jax.tree.map(lambda *xs: jnp.stack(xs),
                      *[_noise(i) for i in range(8)])


def grads_at(params, t):
  """A deterministic stochastic gradient: grad of loss_fn plus step-dependent noise.

  `t` may be traced (inside scan); the noise cycles with period 8."""
  g = jax.grad(loss_fn)(params)
  scale = 0.3 * jnp.sin(jnp.asarray(t, jnp.float32) + 1.0)
  return jax.tree.map(lambda a, n: (a + scale * n[t % 8]).astype(a.dtype), g, _NOISE)


def extra_for(recipe, params, loss=loss_fn):
  """The extra args the recipe declares, for the current params."""
  return extras.extra_args(recipe.needs_extra_args, loss, params)


_COMPILED: dict = {}
_PLAIN: dict = {}


def plain(recipe):
  """The recipe built with its contract hparams (tests/recipe_config.py), one per
  recipe and test process.

  Sharing it shares its compiled update (`jitted_update`) between the tests; the
  conftest sends every test of one recipe to the same xdist worker."""
  if recipe.name not in _PLAIN:
    # A new recipe: drop the previous recipes' transformations and compiled steps
    # (and so their executables), so a worker's memory stays bounded.
    _PLAIN.clear()
    _COMPILED.clear()
    _PLAIN[recipe.name] = cfg.build(recipe)
  return _PLAIN[recipe.name]


def jitted_update(tx, recipe):
  """One jitted (grads, state, params) -> (updates, state) per transformation,
  shared by every test of the recipe (the conftest sends them to one worker).

  The cache keeps `tx` alive, so its id is never reused for another one."""
  key = ("update", id(tx))
  if key not in _COMPILED:
    _COMPILED[key] = (tx, jax.jit(lambda g, s, p: tx.update(g, s, p, **extra_for(recipe, p))))
  return _COMPILED[key][1]


# Shared by every recipe of a test process: compiled once per tree, dtype and sharding.
_grads = jax.jit(grads_at)
_apply = jax.jit(optax.apply_updates)


def run(tx, recipe, params, steps, *, state=None, start=0):
  """Runs `steps` steps of the recipe's `jitted_update`; returns (params, state,
  list of updates)."""
  update = jitted_update(tx, recipe)
  state = tx.init(params) if state is None else state
  updates = []
  for t in range(start, start + steps):
    u, state = update(_grads(params, t), state, params)
    params = _apply(params, u)
    updates.append(u)
  return params, state, updates


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7, what=""):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol,
                               atol=atol, err_msg=f"{what}{jax.tree_util.keystr(path)}")


def shapes_of(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


# ---------------------------------------------------- 1-2: jit, dtypes, scan
@by_recipe
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_jit_dtype_and_stable_state(recipe, dtype):
  """Stable state shapes and dtypes are what lets the update run inside lax.scan
  or a while loop: test_converges runs every recipe's update in a lax.fori_loop."""
  tx, params = (plain(recipe) if dtype == jnp.float32 else cfg.build(recipe)), make_params(dtype)
  state0 = jax.jit(tx.init)(params)
  update = jitted_update(tx, recipe)
  p, states = params, [state0]
  for t in range(3):
    u, s = update(_grads(p, t), states[-1], p)
    if t == 0:
      compiles = update._cache_size()
    for path, leaf in jax.tree_util.tree_leaves_with_path(u):
      assert leaf.dtype == dtype, f"update{jax.tree_util.keystr(path)} is {leaf.dtype}"
      assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
    p = _apply(p, u)
    states.append(s)
  assert update._cache_size() == compiles, "update recompiled on a later step"
  for s in states[1:]:
    assert shapes_of(s) == shapes_of(state0), "state shapes/dtypes changed between steps"


# ------------------------------------------------ 3: inject_hyperparams, masked
def _float_hparams(recipe):
  return {k: v for k, v in cfg.hparams(recipe).items()
          if isinstance(v, float) and not isinstance(v, bool) and k not in recipe.static}


@by_recipe
def test_inject_hyperparams(recipe):
  floats = _float_hparams(recipe)
  assert "learning_rate" in floats, "recipe_config hparams must give a float learning_rate"
  static = tuple({k for k in cfg.hparams(recipe) if k not in floats} | set(recipe.static))
  injected = optax.inject_hyperparams(recipe.factory, static_args=static)(**cfg.hparams(recipe))
  params = make_params()
  want, _, _ = run(plain(recipe), recipe, params, 4)
  got, state, _ = run(injected, recipe, params, 4)
  assert set(floats) <= set(state.hyperparams)
  # Looser than elsewhere: with the learning rate a runtime value instead of a
  # constant, XLA fuses the step differently (optax.adam shows the same ~1e-5).
  assert_trees_close(got, want, rtol=1e-5, atol=1e-6, what="inject_hyperparams ")


def _subtree(tree, keys):
  return {k: tree[k] for k in keys}


# Absolute tolerance on the updates of the masked / partition point for finite-
# difference estimators: the masked tree and the sub-tree evaluate the loss in two
# programs (and over different leaves), so f differs by ~ulp(f) and a difference
# quotient by ~ulp(f) / mu. deepzero's (f(p + mu e_j) - f(p)) / mu (f ~ 64, ulp
# 7.6e-6, mu 0.1, lr 0.01): ~8e-7 on the update, 3.8e-7 measured. quzo's two-point
# estimate (eps 0.1, lr 0.007, averaged over 32 samples): 1.6e-7 measured.
FINITE_DIFFERENCE_ATOL = {"deepzero": 2e-6, "quzo": 1e-6}


@by_recipe
@pytest.mark.parametrize("wrapper", ["masked", "partition"])
def test_masked_and_partition(recipe, wrapper):
  params = make_params()
  inside = ("w1", "w2", "scale")
  if wrapper == "masked":
    tx = optax.masked(cfg.build(recipe), {k: k in inside for k in params})
  else:
    labels = {k: "opt" if k in inside else "sgd" for k in params}
    tx = optax.partition({"opt": cfg.build(recipe), "sgd": optax.sgd(0.1)}, labels)

  sub_tx = plain(recipe)
  update = jitted_update(tx, recipe)
  # The sub-transformation sees the same loss as the wrapped one: the full tree's.
  # Its jitted update is shared by the masked and the partition test.
  key = ("sub", id(sub_tx))
  if key not in _COMPILED:
    _COMPILED[key] = (sub_tx, jax.jit(lambda g, s, q, full: sub_tx.update(
        g, s, q, **extra_for(recipe, q, loss=lambda x: loss_fn({**full, **x})))))
  sub_update = _COMPILED[key][1]
  p, s = params, tx.init(params)
  sub_p, sub_s = _subtree(params, inside), sub_tx.init(_subtree(params, inside))
  for t in range(3):
    g = grads_at(p, t)
    u, s = update(g, s, p)
    sub_g = _subtree(grads_at({**p, **sub_p}, t), inside)  # the loss is separable per leaf
    sub_u, sub_s = sub_update(sub_g, sub_s, sub_p, p)
    assert_trees_close(_subtree(u, inside), sub_u, what=f"{wrapper} step {t} ",
                       atol=FINITE_DIFFERENCE_ATOL.get(recipe.name, 1e-7))
    outside = g["b1"] if wrapper == "masked" else -0.1 * g["b1"]
    assert_trees_close(u["b1"], outside, what=f"{wrapper} untouched leaf ")
    p, sub_p = optax.apply_updates(p, u), optax.apply_updates(sub_p, sub_u)


# ------------------------------------------------------------ 3: MultiSteps
@by_recipe
def test_multisteps(recipe):
  params = make_params()
  tx = plain(recipe)
  ms = optax.MultiSteps(cfg.build(recipe), every_k_schedule=2)
  ms_update, update = jitted_update(ms, recipe), jitted_update(tx, recipe)
  p_ms, s_ms = params, ms.init(params)
  p, s = params, tx.init(params)
  for t in range(3):
    g1, g2 = grads_at(p_ms, 2 * t), grads_at(p_ms, 2 * t + 1)
    for g in (g1, g2):
      u, s_ms = ms_update(g, s_ms, p_ms)
      p_ms = optax.apply_updates(p_ms, u)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    u, s = update(mean, s, p)
    p = optax.apply_updates(p, u)
  assert_trees_close(p_ms, p, rtol=1e-5, atol=1e-6, what="MultiSteps ")


# ------------------------------------------------------- 4: tree_map_params
@by_recipe
def test_tree_map_params(recipe):
  tx, params = plain(recipe), make_params()
  _, state, _ = run(tx, recipe, params, 1)
  # Non-param values are transformed leaf by leaf: a stacked state (SOAP's blocks) is
  # one non-param value to tree_map_params, whose structure depends on the params.
  leafwise = lambda value: lambda v: jax.tree.map(lambda _: value, v)
  marked = optax.tree_map_params(tx, lambda _: "P", state, transform_non_params=leafwise("N"))
  assert jax.tree.structure(marked) == jax.tree.structure(state)
  shapes = {jnp.shape(x) for x in jax.tree.leaves(params)}
  for m, leaf in zip(jax.tree.leaves(marked), jax.tree.leaves(state)):
    assert m in ("P", "N")
    if m == "P":
      assert jnp.shape(leaf) in shapes
  # A sharding-spec map, the main use: every param-shaped leaf gets its spec.
  specs = jax.tree.map(lambda x: P(*([None] * jnp.ndim(x))), params)
  is_spec = lambda x: isinstance(x, P)
  mapped = optax.tree_map_params(tx, lambda _, spec: spec, state, specs,
                                 transform_non_params=leafwise(P()))
  assert len(jax.tree.leaves(mapped, is_leaf=is_spec)) == len(jax.tree.leaves(state))
  # One value per non-param field gives a prefix of the state, as jit's shardings accept.
  prefix = optax.tree_map_params(tx, lambda _, spec: spec, state, specs,
                                 transform_non_params=lambda _: P())
  jax.tree.map(lambda *_: None, prefix, state, is_leaf=is_spec)


# ------------------------------------------------------------ 5: convergence
# task on top, so it varies fastest: a recipe's tasks run one after another (also on
# an xdist worker), and digits_finetune reuses the step that digits compiled (_trainer)
@pytest.mark.parametrize("task", sorted(problems.TASKS))
@by_recipe
def test_converges(recipe, task, request):
  if task in recipe.known_failures:  # runs, and must fail: a pass means it can join catalog()
    request.applymarker(pytest.mark.xfail(strict=True, reason=recipe.known_failures[task]))
  params, loss, steps, passes = problems.TASKS[task]()
  train = _trainer(plain(recipe), recipe, loss)
  initial, final = float(loss(params)), float(train(params, steps))
  assert np.isfinite(final) and passes(final, initial), (
      f"{recipe.name} on {task}: loss {initial:.4g} -> {final:.4g} in {steps} steps")


# Recipes whose contract runs are long enough (many objective or Hessian-vector
# evaluations per step) that LLVM -O1 pays for its compile time; the suite compiles
# at -O0 (tests/conftest.py). Measured on the three tasks, compile + run CPU s at
# -O0 / -O1: fosi 7.2 / 4.4, mezo's digits run alone 13.1 / 7.3; a typical recipe
# 0.3 / 0.55, the next costliest (sps, adamw_8bit, egn) 1.4-1.7 / 1.7-2.9.
SLOW_RUNS = ("fosi",)


# The zeroth-order runs loop over their samples, and the MLIR fusion emitters run such
# a loop faster (digits, run s, legacy / MLIR: zo_adamu 13.2 / 8.8, deepzero 13.3 / 10.7,
# mezo 4.2 / 2.5) for about 0.5 s more compile time.
def _trainer_options(recipe):
  if recipe.family == "zeroth_order":
    return {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": True}
  if recipe.name in SLOW_RUNS:
    return {"xla_backend_optimization_level": 1}
  return None


def _trainer(tx, recipe, loss):
  """A jitted (params, steps) -> final loss, cached like `jitted_update` per
  transformation and loss: tasks that share a loss (digits and digits_finetune)
  share one compile; the step count is a runtime bound (a while loop, whose
  results equal lax.scan's bit for bit)."""
  key = ("train", id(tx), id(loss))
  if key not in _COMPILED:
    def body(_, carry):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p, **extra_for(recipe, p, loss))
      return optax.apply_updates(p, u), s

    train = jax.jit(lambda params, steps: loss(
        jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))[0]),
        compiler_options=_trainer_options(recipe))
    _COMPILED[key] = (tx, loss, train)  # keeps tx and loss alive: their ids stay unique
  return _COMPILED[key][2]


# ------------------------------------------------------ 7: pmap and sharding
def _shard_spec(x):
  for axis, n in enumerate(jnp.shape(x)):
    if n % 8 == 0:
      return P(*([None] * axis + ["d"]))
  return P()


# Recipes whose update amplifies float32 rounding, so that a different reduction
# order under pmap / sharding moves them by more than 1e-6 relative in 4 steps:
SENSITIVE_RTOL = {
    "came": 2e-5,  # the (u - m)^2 confidence term amplifies rounding 20-60x
    "sania": 1e-5,  # divides by v_hat without a square root
    # A Polyak-type step (f - lb + <x, d> - gamma) / ||d||^2 cancels: 3.3e-6 measured
    # under sharding (default XLA flags as well as the test suite's).
    "momo": 1e-5,
    # Zeroth-order: a finite difference (f(x + eps z) - f(x - eps z)) / 2 eps turns the
    # loss's reduction-order rounding, ulp(f), into ~ulp(f) / eps relative on the update
    # (measured under sharding: mezo 1.1e-5, quzo 2.6e-6 at eps 0.1).
    "mezo": 5e-5,
    "sparse_mezo": 5e-5,  # 2.7e-6 measured
    "quzo": 5e-5,
    # Stacked blocks: a batched matmul over same-shaped matrices rounds differently in
    # one device program than in eight (pmap), and the iteration amplifies it. Measured:
    # Newton-Schulz (5 quintic steps) 1.7e-5 on an entry of 8e-3; the inverse 4th roots
    # of MARS-Shampoo 2.1e-6.
    "muon": 5e-5,
    "mars_shampoo": 1e-5,
    # At a refresh the core U^T G V of the gradient the projector came from is diagonal
    # up to rounding, and Adam scales those rounding-level off-diagonal entries to
    # m / sqrt(v) ~ 1: a last-bit difference moves the params by ~1e-6 in 4 steps (a
    # gradient scaled by 1 + 1.2e-7 moves them 1.3e-6; one-sided: 6e-8). Measured
    # under pmap: 1.1e-6 on an entry of 0.018, 6e-5 relative.
    "natural_galore": 2e-4,
}


@by_recipe
def test_pmap_and_sharding_match_single_device(recipe):
  steps, params = 4, make_params()
  single, _, _ = run(plain(recipe), recipe, params, steps)

  # pmap over 8 devices: each replica averages the (identical) per-device gradients.
  # A recipe that communicates itself (axis_name=) is given the pmap axis.
  takes_axis = "axis_name" in inspect.signature(recipe.factory).parameters
  tx = cfg.build(recipe, axis_name="batch") if takes_axis else cfg.build(recipe)
  devices = jax.devices()[:8]
  rep = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * 8), tree)

  def pstep(p, s, t):
    g = jax.lax.pmean(grads_at(p, t), "batch")
    u, s = tx.update(g, s, p, **extra_for(recipe, p))
    return optax.apply_updates(p, u), s

  pstep = jax.pmap(pstep, axis_name="batch", in_axes=(0, 0, None))
  p_rep, s_rep = rep(params), rep(tx.init(params))
  for t in range(steps):
    p_rep, s_rep = pstep(p_rep, s_rep, t)
  for leaf in jax.tree.leaves((p_rep, s_rep)):
    arr = np.asarray(leaf)
    assert all(np.array_equal(arr[0], arr[i]) for i in range(1, 8)), "replicas diverged"
  rtol = SENSITIVE_RTOL.get(recipe.name, 1e-6)
  # A finite-difference gap per update, accumulated by 4 steps of momentum 0.9 (~9 updates):
  fd_atol = FINITE_DIFFERENCE_ATOL.get(recipe.name)
  atol = 1e-7 if fd_atol is None else 10 * fd_atol
  assert_trees_close(jax.tree.map(lambda x: x[0], p_rep), single, rtol=rtol, atol=atol,
                     what="pmap ")

  # jit with params sharded over an 8-device mesh.
  tx = plain(recipe)
  mesh = Mesh(np.array(devices), ("d",))
  shardings = jax.tree.map(lambda x: NamedSharding(mesh, _shard_spec(x)), params)
  p_sh = jax.device_put(params, shardings)
  state = jax.jit(tx.init)(p_sh)
  expected = optax.tree_map_params(tx, lambda _, sh: sh, state, shardings,
                                   transform_non_params=lambda v: jax.tree.map(lambda _: None, v))

  def assert_state_keeps_sharding(state, when):
    for (path, want), leaf in zip(
        jax.tree_util.tree_leaves_with_path(expected, is_leaf=lambda x: x is None),
        jax.tree.leaves(state, is_leaf=lambda x: x is None)):
      if want is not None:
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (
            f"{when}: state{jax.tree_util.keystr(path)} lost the params' sharding")

  assert_state_keeps_sharding(state, "after init")
  p_sh, state, _ = run(tx, recipe, p_sh, steps, state=state)
  assert_trees_close(p_sh, single, rtol=rtol, atol=atol, what="sharded ")
  for path, leaf in jax.tree_util.tree_leaves_with_path(p_sh):
    assert leaf.sharding.is_equivalent_to(shardings[path[0].key], leaf.ndim)
  assert_state_keeps_sharding(state, f"after {steps} steps")


# -------------------------------------------------------- 8: save / restore
@by_recipe
def test_save_restore_mid_run(recipe):
  tx, params = plain(recipe), make_params()
  straight, _, _ = run(tx, recipe, params, 6)
  p3, s3, _ = run(tx, recipe, params, 3)
  blob = flax.serialization.to_bytes(s3)
  restored = flax.serialization.from_bytes(tx.init(params), blob)
  resumed, _, _ = run(tx, recipe, p3, 3, state=restored, start=3)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    assert np.array_equal(np.asarray(a), np.asarray(b)), "resumed run is not bit-identical"


# -------------------------------------------------------------- 9: bad input
@by_recipe
def test_rejects_integer_params(recipe):
  params = {**make_params(), "b1": jnp.zeros(6, jnp.int32)}
  with pytest.raises(TypeError, match=r"\['b1'\]"):
    cfg.build(recipe).init(params)


@by_recipe
def test_rejects_mismatched_trees(recipe):
  tx, params = plain(recipe), make_params()
  state = tx.init(params)
  grads = grads_at(params, 0)
  missing = {k: v for k, v in grads.items() if k != "b1"}
  trace = lambda g, p: jax.eval_shape(lambda: tx.update(g, state, p, **extra_for(recipe, params)))
  with pytest.raises(ValueError, match="b1"):
    trace(missing, params)
  # Without params, only a state that keeps param-shaped trees can name the leaf;
  # compact states (factored, packed, block-coordinate) must still refuse the
  # tree, saying that it does not match the params.
  marks = optax.tree_map_params(tx, lambda _: "P", state,
                                transform_non_params=lambda v: jax.tree.map(lambda _: "N", v))
  tracks_params = "P" in jax.tree.leaves(marks)
  with pytest.raises(ValueError, match="b1" if tracks_params else "b1|match the params"):
    trace(missing, None)
  wrong = {**grads, "w1": grads["w1"].T}
  with pytest.raises(ValueError, match="w1"):
    trace(wrong, params)


BAD_VALUES = {"learning_rate": -1.0, "b1": 1.5, "b2": -0.5, "eps": -1.0,
              "weight_decay": -1.0, "momentum": 1.5}


@by_recipe
def test_rejects_out_of_range_hyperparameters(recipe):
  names = inspect.signature(recipe.factory).parameters
  checked = [n for n in BAD_VALUES if n in names]
  assert "learning_rate" in checked
  for name in checked:
    with pytest.raises(ValueError, match=name):
      cfg.build(recipe, **{name: BAD_VALUES[name]})


@by_recipe
def test_missing_extra_args_are_named(recipe):
  if not recipe.needs_extra_args:
    params = make_params()
    tx = plain(recipe)
    jax.eval_shape(lambda: tx.update(grads_at(params, 0), tx.init(params), params))
    return  # traced without any extra arg: it needs none
  params = make_params()
  tx = plain(recipe)
  state = tx.init(params)
  for name in recipe.needs_extra_args:
    extra = {k: v for k, v in extra_for(recipe, params).items() if k != name}
    with pytest.raises(TypeError, match=name):
      jax.eval_shape(lambda: tx.update(grads_at(params, 0), state, params, **extra))


@by_recipe
def test_skip_non_finite_keeps_state(recipe):
  tx, params = optlab.skip_non_finite(cfg.build(recipe)), make_params()
  p1, s1, _ = run(tx, recipe, params, 2)
  bad = grads_at(p1, 2)
  bad = {**bad, "w2": bad["w2"].at[1, 2].set(jnp.nan)}
  u, s2 = jitted_update(tx, recipe)(bad, s1, p1)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  for a, b in zip(jax.tree.leaves(s2.inner_state), jax.tree.leaves(s1.inner_state)):
    assert np.array_equal(np.asarray(a), np.asarray(b)), "a non-finite step changed the state"
  assert int(s2.total_skipped) == 1 and int(s2.skipped) == 1
  _, s3, _ = run(tx, recipe, p1, 1, state=s2, start=3)
  assert int(s3.skipped) == 0 and int(s3.total_skipped) == 1


def test_held_out_recipes_name_contract_tasks():
  held = optlab.held_out()
  assert not {r.name for r in held} & {r.name for r in optlab.catalog()}
  for r in held:
    assert set(r.known_failures) <= set(problems.TASKS), (r.name, sorted(r.known_failures))
    assert optlab.get_recipe(r.name) is r
