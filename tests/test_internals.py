"""optlab's internals: one home for shared helpers, and steps that update donated state in place.

* No module imports another module's underscore-prefixed names: a helper that
  several modules need lives in `optlab/_src/` (issue 13, item 3). Importing a
  private *module* (`from optlab import _validate`, `optlab._src.numerics`) is fine.
* The saturating helpers are selects, not `jnp.minimum` (`optlab/_src/numerics.py`,
  `saturate`): with `minimum` XLA:CPU copies every donated statistic buffer per
  step. The check compiles a donated step (compile only, no run) and counts the
  ``copy`` instructions of param-shaped buffers (`benchmarks/step_time.py --copies`
  prints the same on a transformer-shaped tree).
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab._src import numerics
from tests.test_contract import grads_at, make_params

_ROOT = pathlib.Path(optlab.__file__).parent


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_module(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
  if not node.level:
    return node.module or ""
  base = importer.split(".")
  base = base[:len(base) - node.level + (1 if is_package else 0)]
  return ".".join(base + ([node.module] if node.module else []))


def _is_module(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False


def private_imports(root: pathlib.Path = _ROOT) -> list[str]:
  """``file:line: from X import _name`` for every underscore-prefixed *name* (not
  module) that a module under `root` imports from another optlab module."""
  found = []
  for path in sorted(root.rglob("*.py")):
    importer = _module_name(path, root)
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
      if not isinstance(node, ast.ImportFrom):
        continue
      module = _imported_module(node, importer, path.name == "__init__.py")
      if module != "optlab" and not module.startswith("optlab."):
        continue
      for alias in node.names:
        name = alias.name
        if name.startswith("_") and not name.startswith("__") and module != importer:
          if not _is_module(f"{module}.{name}"):
            found.append(f"{path.relative_to(root.parent)}:{node.lineno}: "
                         f"from {module} import {name}")
  return found


def test_no_cross_module_private_imports():
  bad = private_imports()
  assert not bad, ("modules import other modules' private names; move the helper to "
                   "optlab/_src/ and import it from there:\n" + "\n".join(bad))


def test_private_import_check_can_fail(tmp_path):
  # the check itself: it flags a private name, and passes private modules
  pkg = tmp_path / "optlab"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from optlab.primitives.moments import _ema_tree\n"
                            "from optlab import _validate as V\n"
                            "from . import _src\n"
                            "from .b import _helper\n")
  (pkg / "b.py").write_text("def _helper(): pass\n")
  bad = private_imports(pkg)
  assert [b.split(": ", 1)[1] for b in bad] == [
      "from optlab.primitives.moments import _ema_tree", "from optlab.b import _helper"], bad


# ------------------------------------------------------------------ saturation
def test_saturating_helpers_keep_nan_and_clamp_inf():
  f32 = lambda v: np.asarray(v, np.float32)
  top = np.finfo(np.float32).max
  x = jnp.asarray(f32([1.0, np.inf, np.nan, 3e38]))
  np.testing.assert_array_equal(numerics.saturate(x), f32([1.0, top, np.nan, 3e38]))
  np.testing.assert_array_equal(numerics.safe_square(x), f32([1.0, top, np.nan, top]))
  np.testing.assert_array_equal(numerics.clip_finite(-x), f32([-1.0, -top, np.nan, -3e38]))


def test_finiteness_tests_catch_inf_and_nan_under_jit():
  big = jnp.asarray([3e38, -3e38, 1e-45], jnp.float32)  # finite extremes: no overflow
  cases = [(big, True), (big.at[1].set(-jnp.inf), False), (big.at[0].set(jnp.nan), False),
           (jnp.ones(3, jnp.bfloat16).at[2].set(jnp.inf), False), (jnp.arange(3), True)]
  all_finite = jax.jit(numerics.all_finite)
  for x, want in cases:
    assert bool(all_finite(x)) is want and bool(all_finite({"a": big, "b": [x]})) is want
  assert bool(all_finite({})) and bool(all_finite(jnp.zeros((0, 3))))
  any_nan = jax.jit(numerics.any_nan)
  assert not any_nan(big.at[0].set(jnp.inf)) and any_nan(big.at[2].set(jnp.nan))
  per_row = jax.jit(lambda x: numerics.finite_sum(x, axis=1) == 0)
  np.testing.assert_array_equal(per_row(jnp.stack([big, big.at[1].set(jnp.nan)])), [True, False])


def _accumulator(form):
  """A minimal Adagrad-like transformation whose statistic saturates by `form`."""
  top = lambda v: jnp.finfo(v.dtype).max
  new = {"minimum": lambda v, g: jnp.minimum(0.9 * v + 0.1 * g * g, top(v)),
         "select": lambda v, g: numerics.saturate(0.9 * v + 0.1 * numerics.safe_square(g))}[form]

  def update(g, nu, params=None):
    del params
    nu = jax.tree.map(new, nu, g)
    return jax.tree.map(lambda x, v: x / (jnp.sqrt(v) + 1e-8), g, nu), nu

  return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p), update)


def test_copy_count_sees_the_minimum_form():
  # the check below can fail: on XLA:CPU the minimum form copies every donated
  # statistic buffer, the select form none
  from benchmarks.step_time import donated_copies

  def copies(form):
    tx = _accumulator(form)

    def step(p, s, g):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    params = make_params()
    return donated_copies(jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params),
                          grads_at(params, 0))

  if jax.default_backend() != "cpu":
    pytest.skip("the minimum-form copies are XLA:CPU's (the check below still runs)")
  assert len(copies("minimum")) == len(make_params())
  assert copies("select") == []


# Copies of param-shaped state buffers that a donated step still makes, by the
# structure of the method rather than by saturation (measured on the contract
# tree, 3 non-scalar leaves). A regression (more copies) fails; a fix (fewer)
# fails too, so that the table is updated.
_STRUCTURAL_COPIES = {
    # nu is read by the refresh select and the Hessian estimate's lax.cond
    # before it is overwritten: one copy per leaf.
    "sophia_h": 3,
    # D-Adaptation's numerator is a reduction over the *old* s and nu
    # (saturating_vdot's lax.cond), needed before they are updated: nu and s
    # are copied.
    "dadapt_adam": 6,
}


def _copy_check_recipes():
  from benchmarks.step_time import COPY_CHECK
  return [optlab.get_recipe(name) for name in COPY_CHECK]


@pytest.mark.parametrize("recipe", _copy_check_recipes(), ids=lambda r: r.name)
def test_donated_step_copies_no_statistic(recipe):
  from benchmarks.step_time import COPY_CHECK, donated_copies, make_step
  params = make_params()
  tx = recipe.factory(**COPY_CHECK[recipe.name])
  state = jax.jit(tx.init)(params)
  copies = donated_copies(make_step(tx, recipe), params, state, grads_at(params, 0))
  big = [c for c in copies if not c[0].split("{")[0].endswith("[]")]
  assert len(big) == _STRUCTURAL_COPIES.get(recipe.name, 0), (
      f"{recipe.name}: the donated step copies state buffers {big}; saturate statistics "
      "with optlab._src.numerics.saturate (a select), not jnp.minimum")


def test_tree_choose_picks_a_whole_tree():
  from optlab._src.tree import tree_choose
  a = {"x": jnp.ones(3), "y": jnp.full((2, 2), jnp.nan)}
  b = {"x": jnp.zeros(3), "y": jnp.zeros((2, 2))}
  fn = jax.jit(lambda p: tree_choose(p, lambda: a, lambda: b))
  for pred, want in ((True, a), (False, b)):
    got = fn(jnp.asarray(pred))
    for k in a:
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
  hlo = fn.lower(jnp.asarray(True)).compile().as_text()
  assert " conditional(" in hlo and " select(" not in hlo  # on CPU: one branch, no selects
