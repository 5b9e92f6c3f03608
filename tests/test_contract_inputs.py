"""Contract: odd trees and low-precision params (issue 12, items 5 and 6).

* A zero-size leaf (shape (0, 3)) gets a zero-size update of its dtype, and the
  other leaves' updates are those of the same run without it: an empty tensor
  holds nothing to precondition, normalise or count, so it contributes nothing
  to a per-tensor statistic, a global norm or a flattened window (and takes no
  turn in a block cycle: tests/test_block_coordinate.py).
* An empty params tree gets an empty update, step after step.
* float16 params, with ordinary gradients (grads_at, entries ~0.1-1) and tiny
  ones (1e-4 times them), the latter both with the loss scaled alike and with
  the ordinary loss (a plateau: Polyak-type steps f / ||g||^2 g are then huge by
  their math, and must saturate, not overflow): two steps give finite float16
  updates. float16's 5-bit exponent squares 1e-4 to 0 and 300 to inf, so
  statistics must not live or be computed in float16.
* With ``jax_enable_x64``, no state built for bfloat16 params holds a float64
  leaf, before or after an update: state dtypes follow the params or are
  float32, never the x64 default float.

The zero-size run reuses test_contract's compiled update for the plain tree (one
new compile: the tree with the extra leaf); float16 is one compiled 2-step scan
per recipe, called for the three cases; the empty tree runs eagerly; the x64
check is one subprocess for all recipes, traced only (`jax.eval_shape`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

from tests.test_contract import (
    FINITE_DIFFERENCE_ATOL, RECIPES, by_recipe, extra_for, grads_at, jitted_update, loss_fn,
    make_params, plain)

# The extra leaf sorts after every key of make_params(), so that methods that draw
# one random stream per leaf *index* (ivon, gravity, apollo's projections: as
# optax.add_noise) give the other leaves the same draws with and without it.
EMPTY = "zero_size"
ZERO_SIZE_STEPS = 3  # past the steps that only build state (soap, adam_cm, adopt)


def _leaf_report(tree):
  return {jax.tree_util.keystr(k): np.asarray(v, np.float64)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@by_recipe
def test_zero_size_leaf(recipe):
  tx, params = plain(recipe), make_params()
  update = jitted_update(tx, recipe)  # compiled for make_params(); the odd tree adds one
  empty = jnp.zeros((0, 3), jnp.float32)
  p = params
  state, odd_state = tx.init(params), tx.init({**params, EMPTY: empty})
  atol = FINITE_DIFFERENCE_ATOL.get(recipe.name, 1e-7)
  for t in range(ZERO_SIZE_STEPS):
    g = grads_at(p, t)
    u, state = update(g, state, p)
    odd_u, odd_state = update({**g, EMPTY: empty}, odd_state, {**p, EMPTY: empty})
    assert odd_u[EMPTY].shape == (0, 3) and odd_u[EMPTY].dtype == jnp.float32, (
        f"step {t}: the zero-size leaf's update is {odd_u[EMPTY].shape} {odd_u[EMPTY].dtype}")
    for path, x in _leaf_report(odd_u).items():
      assert np.all(np.isfinite(x)), f"step {t}: update{path} is not finite"
    want, got = _leaf_report(u), _leaf_report({k: v for k, v in odd_u.items() if k != EMPTY})
    for path in want:
      np.testing.assert_allclose(
          got[path], want[path], rtol=1e-6, atol=atol,
          err_msg=f"step {t}: update{path} changed when a zero-size leaf was added")
    p = optax.apply_updates(p, u)


def _zero_loss(params):
  del params
  return jnp.zeros([], jnp.float32)


@by_recipe
def test_empty_tree(recipe):
  tx = plain(recipe)
  extra = extra_for(recipe, {}, loss=_zero_loss)
  state = tx.init({})
  for t in range(2):
    u, state = tx.update({}, state, {}, **extra)
    assert u == {}, f"step {t}: an empty tree's update is {u!r}"


# ---------------------------------------------------------------------- float16
# (gradient scale, loss scale)
F16_CASES = {"ordinary": (1.0, 1.0), "tiny": (1e-4, 1e-4), "plateau": (1e-4, 1.0)}


def _scaled_loss(c, p):
  return c * loss_fn(p)


_F16: dict = {}


def _f16_run(recipe):
  """A jitted (params, state, c, c_loss) -> updates of 2 steps on float16 params,
  with the gradients scaled by c and the loss by c_loss (one compile for all)."""
  tx = plain(recipe)
  if recipe.name not in _F16:
    _F16.clear()

    def two_steps(params, state, c, c_loss):
      def body(carry, t):
        p, s = carry
        g = jax.tree.map(lambda x: (c * x.astype(jnp.float32)).astype(x.dtype), grads_at(p, t))
        u, s = tx.update(g, s, p, **extra_for(recipe, p, loss=Partial(_scaled_loss, c_loss)))
        return (optax.apply_updates(p, u), s), u

      _, updates = jax.lax.scan(body, (params, state), jnp.arange(2))
      return updates

    _F16[recipe.name] = (tx, jax.jit(two_steps))
  return _F16[recipe.name][1]


@by_recipe
def test_float16_updates_are_finite(recipe):
  params = make_params(jnp.float16)
  run = _f16_run(recipe)
  state = plain(recipe).init(params)
  for case, (c, c_loss) in F16_CASES.items():
    updates = run(params, state, jnp.float32(c), jnp.float32(c_loss))
    for path, x in jax.tree_util.tree_leaves_with_path(updates):
      name = f"{case} gradients: update{jax.tree_util.keystr(path)}"
      assert x.dtype == jnp.float16, f"{name} is {x.dtype}"
      bad = ~np.isfinite(np.asarray(x, np.float32))
      assert not bad.any(), f"{name} is not finite at steps {sorted(set(np.nonzero(bad)[0]))}"


# ------------------------------------------------------------------ x64 states
_X64_PROBE = r"""
import json
import tests.conftest  # the suite's XLA flags
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from tests.test_contract import RECIPES, extra_for, grads_at, make_params
from tests import recipe_config as cfg

def wide(tree, what):
  return [f"{what}{jax.tree_util.keystr(k)}" for k, v in jax.tree_util.tree_leaves_with_path(tree)
          if jnp.result_type(v) == jnp.float64]

report = {}
for recipe in RECIPES:
  try:
    tx, params = cfg.build(recipe), make_params(jnp.bfloat16)
    state = tx.init(params)
    updates, new_state = jax.eval_shape(
        lambda: tx.update(grads_at(params, 0), state, params, **extra_for(recipe, params)))
    bad = wide(state, "init: state") + wide(new_state, "update: state")
    bad += [f"update{jax.tree_util.keystr(k)} is {v.dtype}"
            for k, v in jax.tree_util.tree_leaves_with_path(updates) if v.dtype != jnp.bfloat16]
  except Exception as e:  # reported, not hidden
    bad = [f"raised {type(e).__name__}: {e}"]
  if bad:
    report[recipe.name] = bad
print("X64_REPORT " + json.dumps(report))
"""


@pytest.mark.slow  # one subprocess that traces every recipe under x64 (~13 s)
def test_x64_states_follow_param_dtypes():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  out = subprocess.run([sys.executable, "-c", _X64_PROBE], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
  lines = [l for l in out.stdout.splitlines() if l.startswith("X64_REPORT ")]
  assert out.returncode == 0 and lines, f"the x64 probe failed:\n{out.stderr[-4000:]}"
  report = json.loads(lines[-1][len("X64_REPORT "):])
  assert not report, "float64 in states or updates for bfloat16 params under x64:\n" + "\n".join(
      f"  {name}: {', '.join(bad)}" for name, bad in sorted(report.items()))
