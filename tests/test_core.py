"""Core pieces: the basis protocol, input checks, skip_non_finite, catalogue, README."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab import _validate as V
from optlab.docs_table import with_table

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------- basis protocol
def _orthogonal(n, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  return jnp.asarray(q, jnp.float32)


class TwoSidedRotation:
  """Old basis (L0, R0) -> new basis (L1, R1) for a dict of matrices; records calls."""

  def __init__(self, old, new):
    self.old, self.new, self.calls = old, new, []

  def linear(self, tree):
    self.calls.append("linear")
    (l0, r0), (l1, r1) = self.old, self.new
    return jax.tree.map(lambda m: l1.T @ (l0 @ m @ r0.T) @ r1, tree)

  def second(self, tree):
    self.calls.append("second")
    return tree


def _rotate(g, basis):
  left, right = basis
  return jax.tree.map(lambda x: left.T @ x @ right, g)


def test_rebase_moves_first_moment_exactly():
  old, new = (_orthogonal(4, 0), _orthogonal(3, 1)), (_orthogonal(4, 2), _orthogonal(3, 3))
  grads = [{"w": jnp.asarray(np.random.default_rng(t).normal(size=(4, 3)), jnp.float32)}
           for t in range(3)]
  tx = optax.chain(optlab.scale_by_adam(), optlab.scale_by_learning_rate(0.1))

  def accumulate(basis):
    state = tx.init(grads[0])
    for g in grads:
      _, state = tx.update(_rotate(g, basis), state)
    return state

  change = TwoSidedRotation(old, new)
  rebased = optlab.rebase_state(accumulate(old), change)
  direct = accumulate(new)
  np.testing.assert_allclose(rebased[0].first.mu["w"], direct[0].first.mu["w"], rtol=1e-5,
                             atol=1e-6)
  assert change.calls == ["linear", "second"]
  assert int(rebased[0].count) == 3  # invariant field


def test_rebase_handles_optax_states_and_rejects_undeclared():
  params = {"w": jnp.ones((4, 3))}
  basis = (_orthogonal(4, 0), _orthogonal(3, 1))
  change = TwoSidedRotation(basis, basis)
  state = optax.chain(optax.scale_by_adam(), optax.trace(0.9)).init(params)
  optlab.rebase_state(state, change)
  assert change.calls == ["linear", "second", "linear"]

  class Undeclared(NamedTuple):
    buf: dict

  with pytest.raises(TypeError, match=r"state\[0\]\.buf\['w'\] is a tensor in an undeclared"):
    optlab.rebase_state((Undeclared(params),), change)


# --------------------------------------------------------------- input checks
def test_check_range_names_the_argument_and_skips_schedules():
  with pytest.raises(ValueError, match=r"optlab.f: b1 must be in \[0.0, 1.0\), got 1.0"):
    V.check_decay("f", "b1", 1.0)
  V.check_decay("f", "b1", lambda step: 0.9)  # schedules are not evaluated
  jax.jit(lambda b: V.check_decay("f", "b1", b) or b)(2.0)  # nor tracers
  with pytest.raises(ValueError, match="eps"):
    V.check_nonneg("f", "eps", float("nan"))
  with pytest.raises(TypeError, match="lr must be a number"):
    V.check_nonneg("f", "lr", "fast")


def test_require_extra_arg():
  assert V.require_extra_arg("f", {"value": 3.0}, "value") == 3.0
  with pytest.raises(TypeError, match="`obj_fn`"):
    V.require_extra_arg("f", {}, "obj_fn")
  # `value` is the scalar loss; a per-example loss is named, not broadcast.
  with pytest.raises(ValueError, match=r"optlab.f: the extra arg `value` must be the scalar"):
    V.require_extra_arg("f", {"value": jnp.ones(5)}, "value")
  # `obj_fn` is checked to return a scalar when it is called (while tracing).
  fn = V.require_extra_arg("f", {"obj_fn": lambda p: 2.0 * p}, "obj_fn")
  assert float(fn(jnp.float32(1.5))) == 3.0
  with pytest.raises(ValueError, match=r"optlab.f: the extra arg `obj_fn` must return the "
                                       r"scalar loss, got shape \(5,\)"):
    jax.eval_shape(fn, jnp.ones(5))


def test_check_int_refuses_floats_and_nan():
  for ok in (3, np.int64(-2), jnp.asarray(7, jnp.int32)):
    V.check_int("f", "axis", ok)
    V.check_seed("f", ok)
  jax.jit(lambda s: V.check_seed("f", s) or s)(jnp.asarray(3))  # as inject_hyperparams passes it
  for bad in (float("nan"), 1.5, True, "0", jnp.asarray(1.0)):
    with pytest.raises(TypeError, match=r"optlab.f: seed must be an int \(the PRNG seed\)"):
      V.check_seed("f", bad)


def test_nested_mismatch_is_named():
  a = {"enc": {"w": jnp.ones(2)}, "dec": jnp.ones(3)}
  b = {"enc": {"v": jnp.ones(2)}, "dec": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"\['enc'\]\['w'\]"):
    V.check_same_tree("f", a, "updates", b, "params")


# ------------------------------------------------------------ skip_non_finite
def test_skip_non_finite_max_consecutive():
  tx = optlab.skip_non_finite(optlab.sgd(0.1), max_consecutive=2)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  bad = {"w": jnp.array([1.0, jnp.inf, jnp.nan])}
  u1, state = tx.update(bad, state, params)
  u2, state = tx.update(bad, state, params)
  assert np.all(np.asarray(u1["w"]) == 0) and np.all(np.asarray(u2["w"]) == 0)
  u3, state = tx.update(bad, state, params)  # the third in a row is let through
  # the NaN shows; the inf was clamped by bound_gradient to a huge finite step
  assert np.isnan(u3["w"][2]) and np.isfinite(u3["w"][1]) and abs(float(u3["w"][1])) > 1e17
  assert int(state.total_skipped) == 2 and int(state.skipped) == 0


# -------------------------------------------------------- catalogue and README
def test_catalogue_metadata():
  recipes = optlab.catalog()
  assert len({r.name for r in recipes}) == len(recipes)
  for r in recipes:
    assert getattr(optlab, r.name) is r.factory, f"optlab.{r.name} is not the factory"
    doc = inspect.getdoc(r.factory) or ""
    assert r.arxiv in doc, f"{r.name}: docstring does not cite arXiv {r.arxiv}"
    assert list(inspect.signature(r.factory).parameters)[0] == "learning_rate", r.name
    assert r.family in optlab.catalog.__globals__["FAMILY_ORDER"]


def test_readme_table_is_current():
  text = (ROOT / "README.md").read_text()
  assert with_table(text) == text, "README catalogue is stale: run `make readme`"


def test_readme_usage_example_runs():
  text = (ROOT / "README.md").read_text()
  code = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
  namespace: dict = {}
  exec(compile(code, "README.md", "exec"), namespace)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(namespace["params"]))


def test_examples_run(capsys):
  import runpy
  module = runpy.run_path(str(ROOT / "examples" / "custom_chain.py"))
  module["main"](steps=3)
  out = capsys.readouterr().out
  assert "adamw" in out and "cautious lion" in out


def test_ttur_example_learns_the_data_mean(capsys):
  import runpy
  runpy.run_path(str(ROOT / "examples" / "ttur_gan.py"))["main"]()
  assert "matches the data (|mean error| < 0.3): True" in capsys.readouterr().out


def test_complex_momentum_example_converges(capsys):
  import runpy
  runpy.run_path(str(ROOT / "examples" / "complex_momentum_game.py"))["main"]()
  out = capsys.readouterr().out
  assert "closest to the equilibrium: complex momentum" in out
  assert "converged (distance < 1e-2): True" in out


def test_mezo_example_reports_memory():
  import runpy
  main = runpy.run_path(str(ROOT / "examples" / "mezo_finetune.py"))["main"]
  mem = main(hidden=32, depth=2, pretrain_steps=3, steps=4)
  for name in ("mezo", "adamw"):
    assert mem[name]["peak"] > 0
  assert mem["mezo"]["peak"] <= mem["adamw"]["peak"]
