"""optlab as a user outside this repository gets it (issue 17).

The distribution `optlab-jax` (`pip install optlab` is another project) builds
as an sdist and, from that sdist, a wheel; the wheel installs into a fresh venv;
there, from a folder outside the checkout, the README's usage example and
`optlab bench` run against the installed copy, not the checkout.

The fresh venv gets optlab's dependencies from this test environment through a
`.pth` line (installing jax and the rest from PyPI would take minutes and the
network) and optlab itself from the wheel, with `pip --no-deps`.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import optlab

ROOT = Path(__file__).resolve().parents[1]
DIST = "optlab-jax"
# what a checkout holds besides the sources: never copied into the build
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                     "bench_out", ".pytest_cache", ".hypothesis",
                                     ".ipynb_checkpoints")


def test_every_module_imports():
  names = [m.name for m in pkgutil.walk_packages(optlab.__path__, "optlab.")]
  assert "optlab.bench.runner" in names and "optlab.cli" in names
  for name in names:
    importlib.import_module(name)


def _run(cmd, cwd, env=None, timeout=300):
  out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, (f"{' '.join(map(str, cmd))} exited {out.returncode}:\n"
                               f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  return out.stdout


def _readme_usage():
  text = (ROOT / "README.md").read_text()
  return re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
  # Build in a copy: a build writes build/ and *.egg-info next to pyproject.toml.
  src, dist = tmp_path / "src", tmp_path / "dist"
  shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
  # `build` makes the sdist, then the wheel from the unpacked sdist, so the wheel
  # also proves that the sdist holds what a build needs.
  _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src], cwd=tmp_path)
  (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
  assert sdist.name == "optlab_jax-0.1.0.tar.gz" and wheel.name.startswith("optlab_jax-")

  with tarfile.open(sdist) as tar:
    members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
  for need in ("LICENSE", "README.md", "pyproject.toml", "PKG-INFO", "optlab/__init__.py",
               "optlab/bench/runner.py"):
    assert need in members, f"the sdist lacks {need}"
  with zipfile.ZipFile(wheel) as whl:
    files = whl.namelist()
    info = next(f for f in files if f.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
    metadata = whl.read(f"{info}/METADATA").decode()
    entry_points = whl.read(f"{info}/entry_points.txt").decode()
  assert f"{info}/licenses/LICENSE" in files
  from optlab.demo import PRESET  # the demo's tuned tables are package data
  for task in PRESET:
    assert f"optlab/bench/tuned/{task}-{PRESET[task][0]}.json" in files, f"the wheel lacks {task}'s table"
  assert not [f for f in files if not f.startswith(("optlab/", info))], "stray top-level files"
  for line in (f"Name: {DIST}", "License-Expression: Apache-2.0", "Author: optlab developers",
               "Requires-Python: >=3.10"):
    assert line in metadata.splitlines(), f"METADATA lacks {line!r}"
  assert "optlab = optlab.cli:main" in entry_points

  # A fresh venv: the wheel with pip --no-deps, the dependencies through a .pth line.
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                      cwd=tmp_path).strip())
  (purelib / "_optlab_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", wheel], cwd=tmp_path)

  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["PATH"] = os.pathsep.join([str(env_dir / "bin"), env.get("PATH", "")])
  (outside / "quickstart.py").write_text(_readme_usage() + (
      "\nimport importlib.metadata, jax, numpy as np\n"
      "assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))\n"
      f"print('OPTLAB_FILE', optlab.__file__)\n"
      f"print('DIST_VERSION', importlib.metadata.version({DIST!r}))\n"))
  out = _run([python, "quickstart.py"], cwd=outside, env=env)
  where = Path(re.search(r"OPTLAB_FILE (.*)", out).group(1)).resolve()
  assert where.is_relative_to(purelib.resolve()), f"optlab imported from {where}, not the venv"
  assert "DIST_VERSION 0.1.0" in out

  bench_out = tmp_path / "bench_out"
  _run([env_dir / "bin" / "optlab", "bench", "--task", "digits-mlp", "--optimizers", "adamw,lion",
        "--steps", "50", "--out", bench_out], cwd=outside, env=env)
  results = json.loads((bench_out / "results.json").read_text())
  assert results["task"] == "digits-mlp" and results["steps"] == 50
  assert [o["name"] for o in results["optimizers"]] == ["adamw", "lion"]
  assert all(0 < o["final_loss"] < 2.3 for o in results["optimizers"]), "no learning (ln 10 = 2.30)"
  assert (bench_out / "report.md").is_file()
  assert [p.name for p in outside.iterdir()] == ["quickstart.py"], "wrote into the working dir"
