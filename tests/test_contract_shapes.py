"""Contract: gradients, a state or inputs that do not match (issue 12, items 4 and 9).

Each case is traced only (`jax.eval_shape`) or only builds the recipe, so it costs
no compile. A shape case passes when it raises a ValueError that names the
offending leaf, or, for a recipe that needs params and is called without them,
the error that asks for `params`. Bad hyperparameters and extra args must raise
an error naming the argument the user passed."""

from __future__ import annotations

import inspect
import math
import numbers
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_contract import RECIPES, extra_for, grads_at, loss_fn, make_params, plain
from tests import recipe_config as cfg

# Refuses a state initialised for w1.T (its packed row/column lengths follow the
# last two dims: 12 and 16 instead of 14 and 14) with a ValueError naming the
# state field, but packed lengths cannot say which leaf is to blame.
PACKED_STATE = {"adalomo": "row/column statistics packed over all leaves: the error names "
                           "state[0].v_row, not the leaf"}
# States built from the leaves' sizes only (adafactor: from their dims ordered by
# size), so init(w1.T) is bit-identical to init(w1) (checked below): that state is
# the one init(params) builds, its update is the right one, and it is accepted.
# Nothing in such a state records a leaf's layout, so no trace-time check could
# reject it.
LAYOUT_FREE = {
    "sparse_mezo": "one magnitude threshold per tensor (a quantile of |p|)",
    "adafactor": "flat row/column statistics over the largest / second-largest dim, "
                 "which a transpose keeps",
    "badam": "the active block's moments on a flat buffer sized by the leaves' sizes",
    "smmf": "factors of each leaf reshaped to its most nearly square matrix (by size)",
    "microadam": "top-k window and 4-bit error over the flattened leaves",
}


def _identical(a, b):
  """Same structure, shapes, dtypes and bits."""
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
      and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _cases(params, grads, state, other_state):
  yield "transposed w1 grads, no params", {**grads, "w1": grads["w1"].T}, state, None, "w1"
  yield "a (1, 6) grad for b1 (6,), no params", {**grads, "b1": grads["b1"][None]}, state, None, "b1"
  yield "a state initialised for w1.T", grads, other_state, params, "w1"
  yield "a state initialised for w1.T, no params", grads, other_state, None, "w1"


def _shape_cases():
  for r in RECIPES:
    for i, name in enumerate(["transposed", "extra_dim", "other_state", "other_state_no_params"]):
      marks = ()
      if r.name in PACKED_STATE and name == "other_state":
        marks = pytest.mark.xfail(strict=True, reason=PACKED_STATE[r.name])
      yield pytest.param(r, i, id=f"{name}-{r.name}", marks=marks)


@pytest.mark.parametrize("recipe,case", list(_shape_cases()))
def test_mismatched_shapes_are_named(recipe, case):
  tx, params = plain(recipe), make_params()
  other = tx.init({**params, "w1": params["w1"].T})
  what, grads, state, p, leaf = list(_cases(params, grads_at(params, 0), tx.init(params),
                                          other))[case]
  extra = extra_for(recipe, params)
  if recipe.name in LAYOUT_FREE and p is not None and state is other:
    assert _identical(other, tx.init(params)), (
        f"{recipe.name}: init(w1.T) differs from init(w1), so it is not layout-free")
    jax.eval_shape(lambda: tx.update(grads, state, p, **extra))
    return
  with pytest.raises(ValueError) as err:
    jax.eval_shape(lambda: tx.update(grads, state, p, **extra))
  message = str(err.value)
  assert f"'{leaf}'" in message or (p is None and "needs `params`" in message), (
      f"{recipe.name}, {what}: the error does not name {leaf}: {message}")


# ---------------------------------------------------------- hyperparameters
# Arguments that default to None, take a number when given, and that no entry of
# tests/recipe_config.py sets (the others are found from its hparams and cases).
OPTIONAL_NUMBERS = {"base_lr": float, "weight_decay": float, "num_heads": int, "vocab_axis": int}
# Arguments that default to None and take no number (trees, functions, dtypes, names).
NOT_NUMBERS = {"axis_name", "base", "blocks", "clip_value_fn", "compute_dtype", "mask", "matrices",
               "mu_dtype", "partition", "projector", "values_dtype", "weight_decay_mask"}


def _is_number(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _numeric_args(recipe):
  """{name: float or int} for every argument of the recipe's factory that takes a number."""
  found = {}
  for name, p in inspect.signature(recipe.factory).parameters.items():
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    values = ([cfg.hparams(recipe).get(name, p.default)]
              + [c[name] for c in cfg.cases(recipe) if name in c])
    given = [v for v in values if _is_number(v)]
    if given:
      found[name] = int if all(isinstance(v, numbers.Integral) for v in given) else float
    elif all(v is None for v in values):
      assert name in OPTIONAL_NUMBERS or name in NOT_NUMBERS, (
          f"{recipe.name}({name}=None): add {name} to OPTIONAL_NUMBERS or NOT_NUMBERS")
      if name in OPTIONAL_NUMBERS:
        found[name] = OPTIONAL_NUMBERS[name]
  return found


def _names(name, message):
  return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message) is not None


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_nan_hyperparameters_are_rejected(recipe):
  """NaN in any numeric argument raises naming it (issue 12, item 9): a ValueError,
  or for an integer argument (a seed, an axis) the TypeError saying it needs an int."""
  args = _numeric_args(recipe)
  assert "learning_rate" in args
  for name, kind in args.items():
    errors = (ValueError,) if kind is float else (ValueError, TypeError)
    with pytest.raises(errors) as err:
      cfg.build(recipe, **{name: math.nan})
    assert _names(name, str(err.value)), f"{recipe.name}({name}=nan): {err.value}"


FLOAT_PROBES = (-1.0, 0.0, 1.0, 1.5, 1e9, -1e9, math.inf, -math.inf)
INT_PROBES = (-1, 0, 1, 2, 10**9, -10**9)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_hyperparameter_errors_name_the_argument(recipe):
  """Whatever a recipe refuses among these values, its error names the argument the
  user passed, not a primitive's internal name (issue 12, item 9: e.g. galore's
  update_proj_gap was reported as in_subspace's update_every)."""
  for name, kind in _numeric_args(recipe).items():
    for value in INT_PROBES if kind is int else FLOAT_PROBES:
      try:
        cfg.build(recipe, **{name: value})
      except Exception as e:  # noqa: BLE001 -- any error must name the argument
        assert _names(name, str(e)), f"{recipe.name}({name}={value}): {type(e).__name__}: {e}"


# ----------------------------------------------------------- extra args
def _vector_loss(p):
  return jnp.full((5,), loss_fn(p))


def _needing(arg):
  picked = [r for r in RECIPES if arg in r.needs_extra_args]
  return pytest.mark.parametrize("recipe", picked, ids=[r.name for r in picked])


@_needing("value")
def test_per_example_value_is_named(recipe):
  """A per-example loss of shape (5,) as `value` raises naming `value` (momo and
  momo_adam took it and changed their state's shape)."""
  tx, params = plain(recipe), make_params()
  state = tx.init(params)
  extra = {**extra_for(recipe, params), "value": jnp.full((5,), loss_fn(params))}
  with pytest.raises(ValueError, match="`value`"):
    jax.eval_shape(lambda: tx.update(grads_at(params, 0), state, params, **extra))


@_needing("obj_fn")
def test_vector_obj_fn_is_named(recipe):
  """An `obj_fn` returning a vector raises naming `obj_fn`, not JAX's message about
  gradients of non-scalar functions."""
  tx, params = plain(recipe), make_params()
  state = tx.init(params)
  vector_obj_fn = extra_for(recipe, params, loss=_vector_loss)["obj_fn"]
  extra = {**extra_for(recipe, params), "obj_fn": vector_obj_fn}
  with pytest.raises(ValueError, match="`obj_fn`"):
    jax.eval_shape(lambda: tx.update(grads_at(params, 0), state, params, **extra))
