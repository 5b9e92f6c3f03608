"""Every notebook in notebooks/ runs top to bottom (nbclient) without errors or
warnings, none has committed outputs, and their install cell installs the checkout
inside a checkout and the `optlab-jax` distribution elsewhere (Colab)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _install_cell(nb):
  cells = [c for c in nb.cells[:3] if c.cell_type == "code" and 'find_spec("optlab")' in c.source]
  assert len(cells) == 1, "one install cell among the first three"
  return cells[0].source


def test_there_are_four_notebooks_without_outputs():
  assert len(NOTEBOOKS) >= 4
  sources = {}
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    sources[path.name] = _install_cell(nb)
    text = path.read_text()
    # no placeholder repository, Colab badge pointing to it, or version guard
    for stale in ("github.com/optlab/optlab", "git+https", "colab-badge", "hasattr(optlab"):
      assert stale not in text, f"{path.name}: {stale!r}"
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs committed"


  assert len(set(sources.values())) == 1, "the notebooks' install cells differ"


class _Pip:
  """Stands in for `subprocess.call` of pip: records the command, returns `rc`."""

  def __init__(self, rc):
    self.rc, self.calls = rc, []

  def __call__(self, cmd, *args, **kwargs):
    assert cmd[:3] == [sys.executable, "-m", "pip"], cmd
    self.calls.append(cmd[3:])
    return self.rc


_FIND_SPEC = importlib.util.find_spec


def _run_install_cell(monkeypatch, cwd, rc=0, importable=False):
  """Runs the install cell with optlab (not) importable and pip faked."""
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      _FIND_SPEC(name, *a) if importable or name != "optlab" else None))
  pip = _Pip(rc)
  monkeypatch.setattr(subprocess, "call", pip)
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.chdir(cwd)
  exec(compile(_install_cell(nbformat.read(NOTEBOOKS[0], as_version=4)), "install", "exec"), {})
  return pip.calls


def test_install_cell_installs_the_checkout_inside_one(monkeypatch):
  calls = _run_install_cell(monkeypatch, ROOT / "notebooks")
  assert calls == [["install", "-q", "-e", str(ROOT)]]
  assert sys.path[0] == str(ROOT)  # importable in this kernel without a restart


def test_install_cell_installs_the_distribution_elsewhere(monkeypatch, tmp_path):
  assert _run_install_cell(monkeypatch, tmp_path) == [["install", "-q", "optlab-jax"]]
  assert _run_install_cell(monkeypatch, tmp_path, importable=True) == []
  with pytest.raises(RuntimeError, match="not published on PyPI yet"):
    _run_install_cell(monkeypatch, tmp_path, rc=1)


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # the kernel imports this checkout's optlab even where it is not pip-installed
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
  # warnings (and anything else on stderr) fail too, e.g. tqdm's "IProgress not found"
  stderr = [o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "stream" and o.name == "stderr"]
  assert not stderr, "".join(stderr)
