"""Helpers shared by the test modules: running a transformation for a few steps."""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.tree_util import Partial

from tests import extras
from tests import recipe_config as cfg


def reference_module(recipe):
  return importlib.import_module(f"tests.reference.{cfg.reference(recipe).split(':')[0]}")


def reference_fn(recipe):
  return getattr(reference_module(recipe), cfg.reference(recipe).split(":")[1])


def extra_args_for(recipe, loss_fn, params, t) -> dict[str, Any]:
  """The extra args a recipe declares, computed on the reference problem at step t.

  `loss_fn(params, t)` must be jax-traceable where a recipe differentiates it
  (obj_fn); see `problems.reference_problem`."""
  if loss_fn not in _AT_STEP:  # one function per problem: jit sees the same static part
    _AT_STEP[loss_fn] = lambda step, p: loss_fn(p, step)
  loss = Partial(_AT_STEP[loss_fn], jnp.asarray(t, jnp.int32))
  return extras.extra_args(recipe.needs_extra_args, loss, params)


_AT_STEP: dict = {}

# The zeroth-order recipes' reference comparisons compile at LLVM -O1 whatever the
# suite's level (-O0, tests/conftest.py): float32 random draws (jax.random.normal's
# erfinv) round differently in the last bit at -O0 when fused into a step than when
# drawn alone, which flips a stochastic-rounding decision near a tie in quzo's
# check. Their references draw alone at -O1 too (tests/reference/zeroth_order.py).
# The other recipes draw nothing there and compile at the suite's -O0.
REFERENCE_XLA = {"xla_backend_optimization_level": 1}


def _compiler_options(recipe):
  return REFERENCE_XLA if getattr(recipe, "family", None) == "zeroth_order" else None


def run_jax(tx, params, grad_fn, steps, *, loss_fn=None, recipe=None):
  """Runs `tx` on NumPy `grad_fn` for `steps` steps; returns the params after each."""
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  step = jax.jit(lambda g, s, p, **kw: tx.update(g, s, p, **kw),
                 compiler_options=_compiler_options(recipe))
  out = []
  for t in range(steps):
    np_p = jax.tree.map(np.asarray, p)
    g = jax.tree.map(jnp.asarray, grad_fn(np_p, t))
    extra = extra_args_for(recipe, loss_fn, np_p, t) if recipe is not None else {}
    u, state = step(g, state, p, **extra)
    p = optax.apply_updates(p, u)
    out.append(jax.tree.map(np.asarray, p))
  return out


def assert_trajectories_close(got, want, rtol, atol, what=""):
  assert len(got) == len(want)
  for t, (a, b) in enumerate(zip(got, want)):
    for k in b:
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol,
                                 err_msg=f"{what}: leaf {k!r} differs at step {t + 1}")
