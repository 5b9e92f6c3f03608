"""Contract: gradient pathologies (issue 12, items 3 and 8).

* A single finite 1e30 entry keeps every update finite and within a modest factor
  of the updates of the same run without it: a method with a second moment bounds
  its step, e.g. Adam's |m_hat| / sqrt(v_hat) <= (1 - b1) / sqrt(1 - b2) per entry.
* A NaN entry without `optlab.skip_non_finite` stays visible: some later update is
  NaN. It is never silently masked into a zero step while everything else stays
  finite.

Both reuse the recipe's compiled update from test_contract (same shapes, no new
compile)."""

from __future__ import annotations

import jax
import numpy as np
import optax

from tests.test_contract import RECIPES, by_recipe, grads_at, jitted_update, make_params, plain

STEPS, BAD_STEP = 5, 2
# The bug this guards against gave updates ~1e10 times the normal size; Adam's own
# bound allows (1 - b1) / sqrt(1 - b2) = 3.2 times lr at the default b1, b2.
SPIKE_FACTOR = 100.0

# Zeroth-order estimators never read the incoming gradient (they take obj_fn), nor
# does ivon (its gradients are taken at sampled weights through obj_fn): for them
# both checks assert exactly that.
IGNORE_GRADIENTS = {"mezo", "sparse_mezo", "zo_adamu", "quzo", "deepzero", "ivon"}
# Methods whose step grows with |g| by their own math (at the catalogue settings,
# within the first steps): for them the spike check asserts finite updates and
# params only. The NaN check applies to them all the same.
GROWS_WITH_G = {
    "sgd": "SGD with heavy-ball momentum: the step is lr * m, linear in g",
    "sgdp": "SGD with momentum (and AdamP's projection): linear in g",
    "radam": "while rho_t <= 5 (the first steps) RAdam takes the un-rectified momentum "
             "step m_hat, linear in g",
    "adabound": "the lower bound eta_l(t) > 0 on lr / sqrt(v) makes the step "
                "eta_l(t) * m_hat once v is huge: linear in g",
    "amsbound": "as adabound: the lower bound makes the step linear in m_hat",
    "adahessian": "the denominator is the EMA of the Hessian-diagonal estimate from "
                  "obj_fn, which a gradient spike does not move: the step is linear in m",
    "dadapt_sgd": "D-Adapted SGD: lr * d * g / ||g_0||, linear in g",
    "madgrad": "the step s / v^(1/3) grows as |g|^(1/3) (dual averaging with a cube root)",
    "onebit_adam": "after the warm-up (freeze_step) v is frozen, so the compressed momentum "
                   "step is linear in g",
    "shampoo": "the default SGD grafting gives the step the norm of SGD's (linear in g), "
               "and preconditioning starts only at start_preconditioning_step",
}


def _poison(g, value, every_leaf):
  """g with entry [1, 2] of w2 (or the first entry of every leaf) set to `value`."""
  if not every_leaf:
    return {**g, "w2": g["w2"].at[1, 2].set(value)}
  return jax.tree.map(lambda x: x.reshape(-1).at[0].set(value).reshape(x.shape), g)


def _run(recipe, bad=None, every_leaf=False):
  """Updates and final params of STEPS steps; with `bad`, a poisoned gradient at
  BAD_STEP (`_poison`)."""
  tx = plain(recipe)
  update = jitted_update(tx, recipe)
  p = make_params()
  state = tx.init(p)
  updates = []
  for t in range(STEPS):
    g = grads_at(p, t)
    if bad is not None and t == BAD_STEP:
      g = _poison(g, bad, every_leaf)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    updates.append(jax.tree.map(lambda x: np.asarray(x, np.float64), u))
  return updates, jax.tree.map(np.asarray, p)


def _max_abs(updates):
  return max(float(np.max(np.abs(x), initial=0.0)) for u in updates for x in jax.tree.leaves(u))


_CLEAN: dict = {}


def _clean(recipe):
  if recipe.name not in _CLEAN:
    _CLEAN.clear()
    _CLEAN[recipe.name] = _run(recipe)
  return _CLEAN[recipe.name]


def _assert_same(a, b, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=what)


@by_recipe
def test_gradient_spike_keeps_updates_bounded(recipe):
  clean, clean_params = _clean(recipe)
  spiked, params = _run(recipe, bad=1e30)
  if recipe.name in IGNORE_GRADIENTS:
    _assert_same(spiked, clean, f"{recipe.name} ignores gradients, but a spike changed it")
    return
  for t, u in enumerate(spiked):
    for path, x in jax.tree_util.tree_leaves_with_path(u):
      assert np.all(np.isfinite(x)), f"step {t}: update{jax.tree_util.keystr(path)} not finite"
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)), "params not finite"
  if recipe.name in GROWS_WITH_G:
    return
  normal, worst = _max_abs(clean), _max_abs(spiked)
  assert worst <= SPIKE_FACTOR * normal, (
      f"{recipe.name}: a 1e30 gradient entry gave |update| {worst:.3g}, "
      f"{worst / normal:.3g} x the run without it ({normal:.3g})")


@by_recipe
def test_nan_gradient_stays_visible(recipe):
  # A NaN in one entry of every leaf, so block-coordinate methods (badam), which
  # discard the gradients of inactive blocks by design, see it too.
  poisoned, _ = _run(recipe, bad=np.nan, every_leaf=True)
  if recipe.name in IGNORE_GRADIENTS:
    _assert_same(poisoned, _clean(recipe)[0], f"{recipe.name} ignores gradients")
    return
  later = poisoned[BAD_STEP:]
  assert any(np.isnan(x).any() for u in later for x in jax.tree.leaves(u)), (
      f"{recipe.name}: a NaN gradient entry left every later update finite "
      "(masked silently instead of propagating)")
