"""Property tests: finite gradients never give NaN or Inf, for every recipe and primitive.

Gradients are drawn (with hypothesis) from arrays that mix the awkward
magnitudes -- exact zeros, +-1e30, +-1e-30, +-1 -- with ordinary values of
either sign, for a few steps in float32 and in bfloat16. After every step the
updates and every floating leaf of the new state must be finite.

Recipes are taken from `optlab.catalog()`, so recipes added later are covered
without editing this file; recipes that need extra args get a bounded
``obj_fn`` and a ``value`` drawn from the same special magnitudes. Primitives
are the configurations listed in `PRIMITIVES` plus every exported factory that
can be built from the names in `_FILL` (so new ``scale_by_*`` / ``clip_*`` /
wrapper factories with defaults are picked up too).

Each recipe / primitive's update is jitted once per dtype and reused across
examples (compilation is most of this file's run time).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import optlab
from tests import extras
from tests import recipe_config as cfg

STEPS = 3
SHAPES = {"w": (4, 3), "b": (5,), "s": ()}  # a matrix, a vector and a scalar leaf
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EXAMPLES = {"float32": 8, "bfloat16": 4}  # drawn on top of the explicit awkward examples

SPECIAL = (0.0, 1e30, -1e30, 1e-30, -1e-30, 1.0, -1.0)
VALUES = (0.0, 1e-30, 1.0, 1e30)  # loss values passed as the `value` extra arg

_elements = st.one_of(st.sampled_from(SPECIAL),
                      st.floats(-8.0, 8.0, width=32, allow_subnormal=False))
_param_elements = st.one_of(st.sampled_from((0.0, 1.0, -1.0)),
                            st.floats(-2.0, 2.0, width=32, allow_subnormal=False))


def _tree_of(elements, lead=()):
  return st.fixed_dictionaries({
      k: hnp.arrays(np.float32, lead + s, elements=elements) for k, s in SHAPES.items()})


grad_seqs = _tree_of(_elements, (STEPS,))
param_trees = _tree_of(_param_elements)
value_seqs = hnp.arrays(np.float32, (STEPS,), elements=st.sampled_from(VALUES))


def _const(x):
  return {k: np.full((STEPS,) + s, x, np.float32) for k, s in SHAPES.items()}


def _alternating(x):
  return {k: np.resize(np.array([x, -x], np.float32), (STEPS,) + s) for k, s in SHAPES.items()}


_ONES = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
_ZEROS = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
_VALUES_1 = np.ones(STEPS, np.float32)
# Explicit examples run on every test run, whatever hypothesis draws.
_EXAMPLES = [
    (_const(0.0), _ZEROS, np.zeros(STEPS, np.float32)),
    (_const(0.0), _ONES, _VALUES_1),
    (_const(1e30), _ONES, np.full(STEPS, 1e30, np.float32)),
    (_const(-1e30), _ZEROS, _VALUES_1),
    (_const(1e-30), _ONES, np.full(STEPS, 1e-30, np.float32)),
    (_alternating(1e30), _ONES, _VALUES_1),
    (_alternating(1e-30), _ZEROS, _VALUES_1),
    ({k: np.stack([np.full(s, v, np.float32) for v in (1e30, 0.0, 1e-30)])
      for k, s in SHAPES.items()}, _ONES, _VALUES_1),
]


def _with_examples(test):
  for grads, params, values in reversed(_EXAMPLES):
    test = example(grads=grads, params=params, values=values)(test)
  return test


def _obj_fn(params):
  """A smooth loss that stays finite for any finite params (tanh is bounded)."""
  return sum(jnp.sum(jnp.square(jnp.tanh(x.astype(jnp.float32)))) for x in jax.tree.leaves(params))


# ------------------------------------------------------------------ the run
def _make_run(tx: optax.GradientTransformation, extra_names: tuple[str, ...]) -> Callable:
  """(params, grads[STEPS], values[STEPS]) -> [(updates, state)] after each step.

  `init` runs eagerly and the update is jitted once (compiling only the step,
  not an init + scan program, halves the compile time that dominates this file).
  """
  tx = optax.with_extra_args_support(tx)

  @jax.jit
  def step(params, state, grads, value):
    extra = extras.extra_args([n for n in extra_names if n != "value"], _obj_fn, params)
    if "value" in extra_names:
      extra["value"] = value  # drawn from the awkward magnitudes, not the loss
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), updates, state

  def run(params, grads, values):
    state = tx.init(params)
    out = []
    for t in range(STEPS):
      params, updates, state = step(params, state, jax.tree.map(lambda g: g[t], grads), values[t])
      out.append((updates, state))
    return out

  return run


def _non_finite(tree: Any, step: int) -> list[str]:
  """'path (step k)' for every floating leaf of `tree` with a NaN or an Inf."""
  bad = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact):
      if not np.all(np.isfinite(np.asarray(x, np.float32))):
        bad.append(f"{jax.tree_util.keystr(path)} (step {step})")
  return bad


def _check(run, dtype, grads, params, values, what):
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  grads = jax.tree.map(lambda x: jnp.asarray(x, dtype), grads)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grads))
  bad_u, bad_s = [], []
  for t, (updates, state) in enumerate(run(params, grads, jnp.asarray(values)), 1):
    bad_u += _non_finite(updates, t)
    bad_s += _non_finite(state, t)
  assert not (bad_u or bad_s), (
      f"{what}: non-finite output from finite input\n  updates: {bad_u}\n  state: {bad_s}\n"
      f"  grads: {jax.tree.map(np.asarray, grads)}\n  params: {jax.tree.map(np.asarray, params)}"
      f"\n  values: {values}")


# ------------------------------------------------------------------- recipes
RECIPES = optlab.catalog()
KNOWN_EXTRA_ARGS = tuple(extras.BUILDERS)


@functools.lru_cache(maxsize=None)
def _recipe_run(name: str, dtype_name: str) -> Callable:
  del dtype_name  # one cache entry (and compilation) per dtype
  recipe = optlab.get_recipe(name)
  return _make_run(cfg.build(recipe), tuple(recipe.needs_extra_args))


def test_every_extra_arg_is_supplied():
  unknown = {r.name: sorted(set(r.needs_extra_args) - set(KNOWN_EXTRA_ARGS)) for r in RECIPES}
  unknown = {k: v for k, v in unknown.items() if v}
  assert not unknown, f"tests/extras.py has no builder for {unknown}"


def _finite_test(keys, run_fn, dtype_name):
  """A hypothesis test, parametrised over `keys`, that `run_fn(key, dtype)` stays finite."""
  @pytest.mark.parametrize("key", keys)
  @settings(max_examples=EXAMPLES[dtype_name], deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
  @_with_examples
  @given(grads=grad_seqs, params=param_trees, values=value_seqs)
  def test(key, grads, params, values):
    _check(run_fn(key, dtype_name), DTYPES[dtype_name], grads, params, values,
           f"optlab.{key} ({dtype_name})")
  return test


RECIPE_NAMES = [r.name for r in RECIPES]
test_recipe_finite_float32 = _finite_test(RECIPE_NAMES, _recipe_run, "float32")
test_recipe_finite_bfloat16 = _finite_test(RECIPE_NAMES, _recipe_run, "bfloat16")


# ---------------------------------------------------------------- primitives
def _explicit_primitives() -> dict[str, Callable[[], Any]]:
  """Configurations that the defaults-only discovery below would not reach."""
  o, r = optlab, optlab.rules
  return {
      "scale_by_adam(nesterov)": lambda: o.scale_by_adam(nesterov=True),
      "scale_by_adam(mu_dtype=bf16)": lambda: o.scale_by_adam(mu_dtype=jnp.bfloat16),
      "scale_by_adam(eps_root=1e-16)": lambda: o.scale_by_adam(eps_root=1e-16),
      "moments(ema, ema_sq, laprop)": lambda: o.scale_by_moments(
          r.ema(0.9), r.ema_sq(0.99), order="laprop"),
      "moments(None, ema_sq)": lambda: o.scale_by_moments(None, r.ema_sq(0.99)),
      "moments(ema no debias, ema_sq no debias)": lambda: o.scale_by_moments(
          r.ema(0.9, debias=False), r.ema_sq(0.99, debias=False)),
      "moments(heavy_ball nesterov)": lambda: o.scale_by_moments(r.heavy_ball(0.9, nesterov=True), None),
      "moments(lion_interp)": lambda: o.scale_by_moments(r.lion_interp(), None),
      "add_decayed_weights(0.1)": lambda: o.add_decayed_weights(0.1),
      "scale_by_learning_rate(schedule)": lambda: o.scale_by_learning_rate(
          optax.cosine_decay_schedule(0.1, 10)),
  }


# Values for required parameters of exported factories, by parameter name.
_FILL: dict[str, Callable[[], Any]] = {
    "learning_rate": lambda: 0.1,
    "weight_decay": lambda: 0.1,
    "inner": lambda: optlab.scale_by_adam(),
    "inner_transform": lambda: optlab.scale_by_adam(),
}


def _discovered_primitives() -> dict[str, Callable[[], Any]]:
  """Every exported non-recipe function that builds a transformation from `_FILL` alone."""
  recipes = {r.name for r in RECIPES}
  found = {}
  for name in sorted(optlab.__all__):
    fn = getattr(optlab, name)
    if name in recipes or inspect.isclass(fn) or not inspect.isfunction(fn):
      continue
    try:
      sig = inspect.signature(fn)
    except (TypeError, ValueError):
      continue
    required = [p.name for p in sig.parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(r not in _FILL for r in required):
      continue
    build = functools.partial(lambda fn, req: fn(**{r: _FILL[r]() for r in req}), fn, required)
    try:
      tx = build()
    except Exception:  # not a transformation factory (or needs more than _FILL)
      continue
    if isinstance(tx, optax.GradientTransformation):
      found[f"{name}({', '.join(required)})" if required else f"{name}()"] = build
  return found


PRIMITIVES = {**_discovered_primitives(), **_explicit_primitives()}


@functools.lru_cache(maxsize=None)
def _primitive_run(key: str, dtype_name: str) -> Callable:
  del dtype_name
  return _make_run(PRIMITIVES[key](), KNOWN_EXTRA_ARGS)


def test_discovery_finds_the_core_primitives():
  names = " ".join(PRIMITIVES)
  for expected in ("scale_by_adam()", "scale_by_sign()", "scale_by_lion_momentum()",
                   "scale_by_learning_rate(learning_rate)", "skip_non_finite(inner)"):
    assert expected in names, f"{expected} not discovered; found {sorted(PRIMITIVES)}"


test_primitive_finite_float32 = _finite_test(sorted(PRIMITIVES), _primitive_run, "float32")
test_primitive_finite_bfloat16 = _finite_test(sorted(PRIMITIVES), _primitive_run, "bfloat16")
