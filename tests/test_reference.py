"""Contract point 6: every recipe matches its independent NumPy reference over
25 steps in float64 (rtol 1e-5), and optax's version where optax has one."""

import jax
import pytest

import optlab
from tests import harness, problems
from tests import recipe_config as cfg

STEPS = 25
RTOL, ATOL = 1e-5, 1e-9  # atol only guards exact zeros
RECIPES = optlab.catalog()
# Held out of the catalogue (they fail a contract point), still held to their references.
HELD_OUT = optlab.held_out()


def _cases(recipe):
  return [(recipe, {**cfg.hparams(recipe), **case}) for case in ({},) + tuple(cfg.cases(recipe))]


def _ids(cases):
  """Stable ids (name-case index): kwargs may hold functions, whose repr varies."""
  seen: dict = {}
  ids = []
  for r, _ in cases:
    seen[r.name] = seen.get(r.name, -1) + 1
    ids.append(f"{r.name}-{seen[r.name]}")
  return ids



REF_CASES = [c for r in RECIPES + HELD_OUT if cfg.reference(r) for c in _cases(r)]
OPTAX_CASES = [c for r in RECIPES if cfg.optax_of(r) for c in _cases(r)]


def test_every_recipe_has_a_reference():
  missing = [r.name for r in RECIPES + HELD_OUT if not cfg.reference(r)]
  assert not missing, f"recipes without a NumPy reference: {missing}"


@pytest.mark.parametrize("recipe,kwargs", REF_CASES,
                         ids=_ids(REF_CASES))
def test_matches_numpy_reference(recipe, kwargs):
  params, grad_fn, loss_fn = problems.reference_problem()
  want = harness.reference_fn(recipe)(params, grad_fn, STEPS, **kwargs)
  with jax.enable_x64(True):
    got = harness.run_jax(recipe.factory(**kwargs), params, grad_fn, STEPS,
                          loss_fn=loss_fn, recipe=recipe)
  atol = getattr(harness.reference_module(recipe), "ATOL", ATOL)
  harness.assert_trajectories_close(got, want, RTOL, atol, f"{recipe.name}{kwargs}")


@pytest.mark.parametrize("recipe,kwargs", OPTAX_CASES,
                         ids=_ids(OPTAX_CASES))
def test_matches_optax(recipe, kwargs):
  params, grad_fn, loss_fn = problems.reference_problem()
  with jax.enable_x64(True):
    want = harness.run_jax(cfg.optax_of(recipe)(**kwargs), params, grad_fn, STEPS,
                           loss_fn=loss_fn, recipe=recipe)
    got = harness.run_jax(recipe.factory(**kwargs), params, grad_fn, STEPS,
                          loss_fn=loss_fn, recipe=recipe)
  harness.assert_trajectories_close(got, want, RTOL, ATOL, f"{recipe.name} vs optax")
