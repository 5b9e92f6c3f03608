"""The tests' recipe table (tests/recipe_config.py) against the library's catalogue.

The library keeps paper metadata and factories; the contract's hyperparameters,
option cases, NumPy references and optax adapters live in the test table. These
checks keep the two in step and the library free of test configuration.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import jax.numpy as jnp
import pytest

import optlab
from optlab import recipes as recipes_package
from tests import recipe_config as cfg

ROOT = Path(__file__).resolve().parents[1]
catalog_module = importlib.import_module("optlab.catalog")  # optlab.catalog is the function
ALL = optlab.catalog() + optlab.held_out()


def test_table_names_exactly_the_catalogue():
  names = [r.name for r in ALL]
  assert len(set(names)) == len(names)
  assert set(cfg.CONFIG) == set(names), (
      f"only in tests/recipe_config.py: {sorted(set(cfg.CONFIG) - set(names))}; "
      f"only in the catalogue: {sorted(set(names) - set(cfg.CONFIG))}")


def test_every_recipe_module_is_registered():
  registering = set()
  for info in pkgutil.iter_modules(recipes_package.__path__):
    module = importlib.import_module(f"optlab.recipes.{info.name}")
    if hasattr(module, "RECIPES"):
      registering.add(module.__name__)
  assert registering == {m.__name__ for m in catalog_module.MODULES}


def test_table_entries_use_the_factories_arguments():
  allowed = {"hparams", "cases", "reference", "optax"}
  for r in ALL:
    entry = cfg.config(r)
    assert set(entry) <= allowed, f"{r.name}: unknown keys {sorted(set(entry) - allowed)}"
    params = inspect.signature(r.factory).parameters
    for kwargs in (cfg.hparams(r),) + cfg.cases(r):
      unknown = sorted(set(kwargs) - set(params))
      assert not unknown, f"{r.name}: {unknown} are not arguments of optlab.{r.name}"
    ref = cfg.reference(r)
    assert ref and ref.count(":") == 1, f"{r.name}: reference {ref!r}"


def test_recipe_carries_no_test_configuration():
  fields = {f.name for f in dataclasses.fields(optlab.Recipe)}
  assert fields == {"name", "factory", "family", "paper", "arxiv", "needs_extra_args", "notes",
                    "static", "known_failures"}
  # the registry does not import the catalogue, so the recipe modules need no lazy import
  imports = re.compile(r"^\s*(from|import) optlab(\.catalog|\.recipes| import catalog)", re.M)
  assert not imports.search((ROOT / "optlab" / "_registry.py").read_text())
  for info in pkgutil.iter_modules(recipes_package.__path__):
    text = (ROOT / "optlab" / "recipes" / f"{info.name}.py").read_text()
    found = [m.group(0) for m in imports.finditer(text) if "optlab.recipes" not in m.group(0)]
    assert not found, f"optlab/recipes/{info.name}.py imports the catalogue: {found}"
    assert "def _optax_" not in text, f"optlab/recipes/{info.name}.py defines a test adapter"


def test_build_uses_the_factory_defaults():
  adamw = optlab.get_recipe("adamw")
  with pytest.raises(TypeError, match="learning_rate"):
    adamw.build()  # no hidden test learning rate
  params = {"w": jnp.ones(3)}
  adamw.build(learning_rate=1e-3).init(params)
  # a factory with a default learning rate builds without arguments
  dog = optlab.get_recipe("dog")
  assert inspect.signature(dog.factory).parameters["learning_rate"].default == 1.0
  dog.build().init(params)
