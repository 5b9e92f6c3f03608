"""The public namespace: written out, current, free of internals and of optax clashes."""

from __future__ import annotations

import inspect

import optax
import pytest

import optlab
from tests import api


def test_init_is_current():
  assert api.INIT.read_text() == api.render_init(), (
      "optlab/__init__.py is stale: run `make api` after changing a module's __all__")


def test_every_exported_name_resolves_once_and_is_public():
  names = optlab.__all__
  assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
  assert not [n for n in names if n.startswith("_")]
  assert not [n for n in names if not hasattr(optlab, n)]
  # a module's __all__ names only what the module defines or deliberately re-exports
  for module, exported in api.modules():
    mod = __import__(module, fromlist=["_"])
    for n in exported:
      assert getattr(optlab, n) is getattr(mod, n), f"{module}.{n}"


def test_moment_rules_live_in_rules_only():
  for n in optlab.rules.__all__:
    assert n not in optlab.__all__ or n == "embedding_paths", n
  assert "ema" not in optlab.__all__ and "bias_correction" not in optlab.__all__


def test_every_recipe_is_exported():
  for r in optlab.catalog() + optlab.held_out():
    assert getattr(optlab, r.name) is r.factory, r.name


def _positional(f):
  return [p.name for p in inspect.signature(f).parameters.values()
          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


@pytest.mark.parametrize("name", sorted(n for n in optlab.__all__ if hasattr(optax, n)
                                         and n not in api.SUBMODULES))
def test_no_clash_with_optax(name):
  """A name optax also has means the same: every argument optlab takes by
  position is optax's argument at that position, so a call written for optax
  either means the same here or fails loudly (keyword-only arguments)."""
  ours, theirs = getattr(optlab, name), getattr(optax, name)
  if isinstance(ours, type):
    assert isinstance(theirs, type) and ours._fields[:len(theirs._fields)] == theirs._fields, name
    return
  mine, optax_args = _positional(ours), _positional(theirs)
  common = min(len(mine), len(optax_args))
  assert mine[:common] == optax_args[:common], f"{name}: {mine} vs optax {optax_args}"


def test_boolean_flags_are_keyword_only():
  flags = []
  for n in optlab.__all__ + [f"rules.{m}" for m in optlab.rules.__all__]:
    f = getattr(optlab.rules, n[6:]) if n.startswith("rules.") else getattr(optlab, n)
    if not callable(f):
      continue
    try:
      params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
      continue
    flags += [f"{n}({p.name})" for p in params
              if p.kind == p.POSITIONAL_OR_KEYWORD and isinstance(p.default, bool)]
  assert not flags
