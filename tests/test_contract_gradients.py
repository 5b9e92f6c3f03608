"""Contract: gradient pathologies (issue 12, items 3 and 8).

* A single finite 1e30 entry keeps every update finite and within a modest factor
  of the updates of the same run without it: a method with a second moment bounds
  its step, e.g. Adam's |m_hat| / sqrt(v_hat) <= (1 - b1) / sqrt(1 - b2) per entry.
  (Before `bound_gradient`, v saturated at the float maximum while m followed the
  spike, and the step was ~1e10 times the normal one.)
* A NaN entry without `optlab.skip_non_finite` stays visible, as in optax: the
  update of its leaf is NaN at that step or the next. It is never masked into a
  zero step, neither for its own coordinate nor, through a shared statistic (a
  norm, a block scale, a step size), for the rest of its leaf.

Both reuse the recipe's compiled update from test_contract (`jitted_update` of
`plain(recipe)`, same shapes). The two cases of a recipe are collected next to
each other, so that they run one after the other on its xdist worker and share
that compile."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from tests.test_contract import (RECIPES, by_recipe, grads_at, jitted_update, make_params,
                                 plain)

STEPS, BAD_STEP = 5, 2
SPIKE = 1e30
# Adam's bound, (1 - b1) / sqrt(1 - b2) times lr, is 3.2 at the default b1, b2 and
# 10 at b2 = 0.9999, while a normal step is about lr; at the spike step (t = 3) the
# bias corrections make it 0.64 (b2 = 0.999). Measured worst among the bounded
# recipes: adamod, 10.4 (its momental bound keeps the first normal steps small; the
# spike step meets Adam's bound). The failure this guards against was ~1e10.
SPIKE_FACTOR = 30.0

# Zeroth-order estimators never read the incoming gradient (they take obj_fn), nor
# does ivon (its gradients are taken at sampled weights through obj_fn): for them
# both checks assert exactly that.
IGNORE_GRADIENTS = {"mezo", "sparse_mezo", "zo_adamu", "quzo", "deepzero", "ivon"}
# Methods whose step grows with |g| by their own math (at the catalogue settings,
# within the first steps): for them the spike check asserts finite updates and
# params only (measured ratio to the run without the spike in brackets). The NaN
# check applies to them all the same.
GROWS_WITH_G = {
    "sgd": "SGD with heavy-ball momentum: the step is lr * m, linear in g (7e17)",
    "sgdp": "SGD with momentum (and AdamP's projection): linear in g (7e17)",
    "radam": "while rho_t <= 5 (the first steps) RAdam takes the un-rectified momentum "
             "step m_hat, linear in g (1e18)",
    "adabound": "the lower bound eta_l(t) > 0 on lr / sqrt(v) makes the step "
                "eta_l(t) * m_hat once v is huge: linear in g (2e16)",
    "amsbound": "as adabound: the lower bound makes the step linear in m_hat (2e16)",
    "adahessian": "the denominator is the EMA of the Hessian-diagonal estimate from "
                  "obj_fn, which a gradient spike does not move: the step is linear in m "
                  "(1e18)",
    "dadapt_sgd": "D-Adapted SGD: lr * d * g / ||g_0||, linear in g (3e17)",
    "madgrad": "the step s / v^(1/3) grows as |g|^(1/3) (dual averaging with a cube root; "
               "6e5)",
    "onebit_adam": "after the warm-up (warmup_steps=2 in the catalogue) v is frozen, so the "
                   "compressed momentum step is linear in g (3e16)",
    "shampoo": "the default SGD grafting gives the step the norm of SGD's (linear in g), "
               "and preconditioning starts only at start_preconditioning_step (1e18)",
    "adafisher": "the momentum is divided by the Fisher of the layer statistics (which a "
                 "gradient spike does not move) or by 1 for leaves without them: linear in "
                 "g (1e18)",
    "egn": "the direction (JᵀQJ / n + λ I)⁻¹ g solves a linear system whose matrix comes "
           "from logits_fn, not from g: linear in g (1e18)",
    "kfac": "the direction A⁻¹ ∇W G⁻¹ uses factors from layer_stats, which a gradient "
            "spike does not move, then heavy-ball momentum: linear in g (4e16)",
    "mkor": "the preconditioned direction is rescaled to the gradient's norm, then SGD "
            "with momentum: linear in g (9e16)",
}


def _poison(g, value, every_leaf):
  """g with entry [1, 2] of w2 (or the first entry of every leaf) set to `value`."""
  if not every_leaf:
    return {**g, "w2": g["w2"].at[1, 2].set(value)}
  return jax.tree.map(lambda x: x.reshape(-1).at[0].set(value).reshape(x.shape), g)


def _run(recipe, bad=None, every_leaf=False, steps=STEPS):
  """Updates and final params of `steps` steps; with `bad`, a poisoned gradient at
  BAD_STEP (`_poison`)."""
  tx = plain(recipe)
  update = jitted_update(tx, recipe)
  p = make_params()
  state = tx.init(p)
  updates = []
  for t in range(steps):
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
  """The run without a poisoned gradient, shared by both cases of a recipe."""
  if recipe.name not in _CLEAN:
    _CLEAN.clear()
    steps = BAD_STEP + 2 if recipe.name in IGNORE_GRADIENTS else STEPS
    _CLEAN[recipe.name] = _run(recipe, steps=steps)
  return _CLEAN[recipe.name]


def _assert_ignored(recipe, bad, every_leaf, clean):
  """The poisoned gradient leaves the updates bit-identical to the clean run's (the
  steps after it follow from the same state; zeroth-order steps are slow)."""
  poisoned, _ = _run(recipe, bad=bad, every_leaf=every_leaf, steps=BAD_STEP + 2)
  for t, (u, v) in enumerate(zip(poisoned, clean)):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(u), jax.tree.leaves(v)):
      np.testing.assert_array_equal(x, y, err_msg=(
          f"{recipe.name} is listed as ignoring the gradient, but a {bad} entry changed "
          f"update{jax.tree_util.keystr(path)} at step {t}"))


def test_exemptions_name_catalogue_recipes():
  names = {r.name for r in RECIPES}
  assert set(GROWS_WITH_G) | IGNORE_GRADIENTS <= names
  assert not set(GROWS_WITH_G) & IGNORE_GRADIENTS


@pytest.mark.parametrize("case", ["spike", "nan"])
@by_recipe
def test_gradient_pathology(recipe, case):
  if case == "spike":
    _spike_keeps_updates_bounded(recipe)
  else:
    _nan_gradient_stays_visible(recipe)


def _spike_keeps_updates_bounded(recipe):
  clean, _ = _clean(recipe)
  if recipe.name in IGNORE_GRADIENTS:
    _assert_ignored(recipe, SPIKE, False, clean)
    return
  spiked, params = _run(recipe, bad=SPIKE)
  for t, u in enumerate(spiked):
    for path, x in jax.tree_util.tree_leaves_with_path(u):
      assert np.all(np.isfinite(x)), f"step {t}: update{jax.tree_util.keystr(path)} not finite"
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    assert np.all(np.isfinite(x)), f"params{jax.tree_util.keystr(path)} not finite"
  if recipe.name in GROWS_WITH_G:
    return
  normal, worst = _max_abs(clean), _max_abs(spiked)
  assert worst <= SPIKE_FACTOR * normal, (
      f"{recipe.name}: a {SPIKE:g} gradient entry gave |update| {worst:.3g}, "
      f"{worst / normal:.3g} x the run without it ({normal:.3g})")


def _nan_gradient_stays_visible(recipe):
  # One NaN entry in every leaf, so each leaf's own path is checked, and block-
  # coordinate methods (badam), which drop the gradients of inactive blocks by
  # design, see it in their active block.
  clean = _clean(recipe)[0]
  if recipe.name in IGNORE_GRADIENTS:
    _assert_ignored(recipe, np.nan, True, clean)
    return
  poisoned, _ = _run(recipe, bad=np.nan, every_leaf=True)
  at, after, normal = poisoned[BAD_STEP], poisoned[BAD_STEP + 1], clean[BAD_STEP]
  for (path, x), y, ref in zip(jax.tree_util.tree_leaves_with_path(at), jax.tree.leaves(after),
                               jax.tree.leaves(normal)):
    leaf = f"{recipe.name}: update{jax.tree_util.keystr(path)}"
    if not np.any(ref):
      continue  # a leaf the method does not move at this step (badam's inactive blocks)
    assert np.isnan(x).any() or np.isnan(y).any(), (
        f"{leaf}: a NaN gradient entry left it finite (masked silently instead of propagating)")
    # Inputs equal the run without the NaN except at the NaN entries, so a finite
    # entry that becomes an exact zero is a masked shared statistic (a stall).
    assert np.sum(x == 0) <= np.sum(ref == 0), (
        f"{leaf}: {int(np.sum(x == 0))} entries became exactly 0 at the NaN step "
        f"({int(np.sum(ref == 0))} without it): a shared statistic masked the NaN")
