"""The API reference (``make docs``, docs/api/conf.py) and the recipe docstrings it renders.

* `test_api_reference_builds`: Sphinx builds the site with warnings as errors
  (``-W -n``: a broken cross-reference, an RST error in a docstring, a public
  name that no generated page places all fail), and its inventory holds every
  public name exactly once;
* `test_recipe_docstring_sections`: every recipe's Google-style docstring has
  ``Args:`` naming exactly the signature's parameters in order, ``Returns:`` and
  ``References:`` (parsed here, without Sphinx, so it is cheap);
* `test_recipe_example_runs`: the ``Example:`` doctests of the recipe modules pass.
"""

from __future__ import annotations

import doctest
import inspect
import os
import pathlib
import re
import subprocess
import sys
import zlib

import pytest

import optlab
import optlab.bench  # not imported by `import optlab`
from optlab.catalog import MODULES  # the recipe modules
from tests.test_contract import RECIPES, by_recipe

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("Args", "Returns", "References", "Example", "Examples", "Raises", "Note", "Notes")


def _inventory(path: pathlib.Path) -> list[tuple[str, str, str]]:
  """(name, domain:role, page) of every object in a Sphinx ``objects.inv`` (format 2:
  four header lines, then zlib-compressed ``name domain:role priority uri dispname`` lines)."""
  raw = path.read_bytes()
  header_end = 0
  for _ in range(4):
    header_end = raw.index(b"\n", header_end) + 1
  assert raw[:header_end].startswith(b"# Sphinx inventory version 2"), raw[:header_end]
  entries = []
  for line in zlib.decompress(raw[header_end:]).decode().splitlines():
    m = re.match(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
    assert m, f"objects.inv: cannot parse {line!r}"
    entries.append((m.group(1), m.group(2), m.group(4).split("#")[0]))
  return entries


@pytest.mark.slow  # one Sphinx build of the whole site in a subprocess (~15 s)
def test_api_reference_builds(tmp_path):
  out = tmp_path / "html"
  cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs" / "api"), str(out)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  code, warnings = proc.returncode, proc.stderr.strip()
  assert code == 0 and not warnings, f"sphinx failed (exit {code}):\n{warnings[-6000:]}"

  pages: dict[str, list[str]] = {}
  for name, role, page in _inventory(out / "objects.inv"):
    if role.startswith("py:"):
      pages.setdefault(name, []).append(page)
  # every public name, as users spell it, on exactly one page
  public = [f"optlab.{n}" for n in optlab.__all__]
  for module in (optlab.rules, optlab.schedules, optlab.federated, optlab.bench):
    public += [f"{module.__name__}.{n}" for n in module.__all__]
  missing = [n for n in public if n not in pages]
  assert not missing, f"public names missing from the API reference: {missing}"
  twice = {n: pages[n] for n in public if len(pages[n]) != 1}
  assert not twice, f"public names documented more than once: {twice}"
  # a recipe sits on its family's page
  for r in RECIPES:
    assert pages[f"optlab.{r.name}"] == [f"generated/family_{r.family}.html"], r.name


def _sections(doc: str) -> dict[str, list[str]]:
  """The Google-style sections of a docstring: header (``Args:`` at column 0) -> its lines."""
  found: dict[str, list[str]] = {}
  current = None
  for line in doc.splitlines():
    header = re.fullmatch(r"(\w+):", line)
    if header and header.group(1) in SECTIONS:
      current = found.setdefault(header.group(1), [])
    elif line and not line[0].isspace():
      current = None  # back at column 0: the section ended
    elif current is not None:
      current.append(line)
  return found


def _documented_args(lines: list[str]) -> list[str]:
  """Argument names of an ``Args:`` section: ``name:`` or ``name (type):`` at its first indent."""
  body = [line for line in lines if line.strip()]
  if not body:
    return []
  indent = len(body[0]) - len(body[0].lstrip())
  names = []
  for line in body:
    if len(line) - len(line.lstrip()) == indent:
      m = re.match(r"\s*\**(\w+)\s*(\([^)]*\))?:", line)
      assert m, f"Args entry without `name:`: {line.strip()!r}"
      names.append(m.group(1))
  return names


@by_recipe
def test_recipe_docstring_sections(recipe):
  doc = inspect.getdoc(recipe.factory) or ""
  sections = _sections(doc)
  for name in ("Args", "Returns", "References"):
    assert sections.get(name) and any(s.strip() for s in sections[name]), (
        f"{recipe.name}: docstring has no `{name}:` section")
  params = list(inspect.signature(recipe.factory).parameters)
  assert _documented_args(sections["Args"]) == params, (
      f"{recipe.name}: `Args:` must name the signature's parameters in order")
  assert recipe.arxiv in "\n".join(sections["References"]), (
      f"{recipe.name}: `References:` does not cite arXiv {recipe.arxiv}")


def _examples():
  """The doctests of the recipe modules, by the recipe (or helper) they belong to."""
  finder = doctest.DocTestFinder(exclude_empty=True)
  tests = [t for module in MODULES for t in finder.find(module) if t.examples]
  return sorted(tests, key=lambda t: t.name)


EXAMPLES = _examples()


@pytest.mark.parametrize("recipe", EXAMPLES, ids=[t.name.rsplit(".", 1)[-1] for t in EXAMPLES])
def test_recipe_example_runs(recipe):
  """`recipe` is the doctest of one recipe's docstring (named so that the test runs in
  that recipe's xdist scope, tests/conftest.py)."""
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  report = []
  runner.run(recipe, out=report.append, clear_globs=True)
  assert runner.failures == 0, "".join(report)


def test_recipe_examples_exist():
  """The examples above are found at all (a finder that finds nothing would pass them all)."""
  assert any(t.name.endswith(".adamw") for t in EXAMPLES), [t.name for t in EXAMPLES]
