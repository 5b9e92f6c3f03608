"""The bench: tasks, runner, report, CLI errors, and the generated docs pages."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optlab
from optlab import bench
from optlab.cli import main
from optlab.docs_table import docs_pages, stale_docs

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "quadratic-illcond": {"dim": 8},
    "rosenbrock": {"dim": 16},
    "digits-mlp": {"hidden": 16, "depth": 1, "batch_size": 32},
    "lm-stdlib": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16,
                  "batch_size": 2, "budget_bytes": 40_000, "val_batches": 1},
}
SPEC = """
import optax, optlab
OPTIMIZERS = {
    "cautious_lion_chain": lambda lr: optax.chain(
        optlab.cautious(optlab.scale_by_lion_momentum(0.9, 0.99)),
        optlab.scale_by_learning_rate(lr)),
    "fixed_sgd": optax.sgd(1e-3),
}
LEARNING_RATES = {"cautious_lion_chain": 1e-2}
"""


@pytest.mark.slow  # every built-in task built: loss, gradient and metrics (~7 s)
def test_every_task_builds_trains_and_evaluates():
  assert set(TINY) <= set(bench.TASKS)
  for name, options in TINY.items():
    task = bench.make_task(name, **options)
    params = task.init(0)
    batch = task.batch(task.data, jax.random.PRNGKey(0), jnp.int32(3))
    value, grads = jax.jit(jax.value_and_grad(task.loss))(params, batch)
    assert np.isfinite(float(value)), name
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads)), name
    assert all(np.isfinite(v) for v in task.evaluate(params).values()), name
    if task.logits is not None:  # classification / LM: logits end in the class axis
      assert task.logits(params, batch).shape[-1] in (10, 256)
    other = task.init(1)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                          jax.tree.leaves(other))), name


def test_quadratic_condition_number():
  task = bench.make_task("quadratic-illcond", dim=16)
  eig = np.linalg.eigvalsh(np.asarray(task.data["a"], np.float64))
  assert eig.max() / eig.min() == pytest.approx(1e4, rel=1e-3)
  assert float(task.loss({"x": task.data["x_star"]}, task.data)) == pytest.approx(0.0, abs=1e-6)


def test_stdlib_corpus_is_fixed_and_split():
  train, val, info = bench.stdlib_corpus(30_000, val_fraction=0.1)
  train2, val2, info2 = bench.stdlib_corpus(30_000, val_fraction=0.1)
  assert info == info2 and np.array_equal(train, train2) and np.array_equal(val, val2)
  assert len(train) + len(val) == info["bytes"] == 30_000 and len(val) == 3_000
  assert bytes(train[:200]).decode("utf-8", "replace").strip()  # real source text
  task = bench.make_task("lm-stdlib", **TINY["lm-stdlib"])
  assert task.info["params"] == sum(x.size for x in jax.tree.leaves(task.init(0)))


def test_unknown_task_and_options_are_named():
  with pytest.raises(ValueError, match="unknown task 'nope'.*digits-mlp"):
    bench.make_task("nope")
  with pytest.raises(ValueError, match=r"no options \['width'\]"):
    bench.make_task("rosenbrock", width=3)


def test_measures():
  params = {"w": jnp.ones((4, 5)), "b": jnp.ones(5)}
  assert bench.state_bytes_per_param(optlab.adamw(1e-3), params) == pytest.approx(8.0, abs=0.5)
  assert bench.state_bytes_per_param(optlab.lion(1e-3), params) == pytest.approx(4.0, abs=0.5)
  from optlab.bench.runner import smooth
  np.testing.assert_allclose(smooth(np.array([4.0, 2.0, 0.0, 2.0]), 2), [4.0, 3.0, 1.0, 1.0])


def test_bench_cli_end_to_end(tmp_path, capsys):
  """Catalog recipes (one with obj_fn), a spec-file chain and a fixed transformation;
  learning-rate tuning, two seeds, speedups; every output file is written and consistent."""
  spec = tmp_path / "spec.py"
  spec.write_text(SPEC)
  with_obj_fn = [r.name for r in optlab.catalog() if "obj_fn" in r.needs_extra_args][:1]
  names = ",".join(["adamw", *with_obj_fn, "cautious_lion_chain", "fixed_sgd"])
  out = tmp_path / "out"
  code = main(["bench", "--task", "quadratic-illcond", "--task-arg", "dim=8", "--optimizers",
               names, "--spec", str(spec), "--steps", "30", "--budget", "3", "--seeds", "2",
               "--budgets", "0.5,2", "--out", str(out), "--no-progress"])
  assert code == 0
  text = capsys.readouterr().out
  results = json.loads((out / "results.json").read_text())
  assert [r["name"] for r in results["optimizers"]] == names.split(",")
  for r in results["optimizers"]:
    assert r["name"] in text
    assert len(r["runs"]) == 2 and all(len(x["losses"]) == 30 for x in r["runs"])
    assert r["compile_s"] > 0 and r["median_step_ms"] > 0
    trials = (r["tuning"] or {}).get("trials", [])
    assert 1 <= len(trials) <= 3 if r["name"] != "fixed_sgd" else r["tuning"] is None
    assert r["speedup"]["per_seed"] and len(r["speedup"]["per_seed"]) == 2
  adamw = results["optimizers"][0]
  assert adamw["state_bytes_per_param"] == pytest.approx(8.0, abs=0.5)
  assert results["target"] == pytest.approx(max(adamw["final_loss_per_seed"]))
  assert adamw["steps_to_target"] is not None and adamw["steps_to_target"] <= 30
  report = (out / "report.md").read_text()
  assert "| adamw |" in report and "quadratic-illcond_loss_vs_steps.png" in report
  for axis in ("steps", "time"):
    png = out / f"quadratic-illcond_loss_vs_{axis}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def test_bench_supplies_logits_fn():
  names = [r.name for r in optlab.catalog() if "logits_fn" in r.needs_extra_args][:1] or ["adamw"]
  task = bench.make_task("digits-mlp", **TINY["digits-mlp"])
  results = bench.run_bench(task, bench.resolve_optimizers(names), steps=3, progress=False,
                            log=lambda s: None)
  for r in results["optimizers"]:
    assert all(math.isfinite(v) for v in r["runs"][0]["losses"]), r["name"]
    assert "val_acc" in r["metrics"] and "val_loss" in r["metrics"]


def _cli(capsys, *argv):
  code = main(list(argv))
  err = capsys.readouterr().err
  return code, err


@pytest.mark.parametrize("argv, message", [
    (["--task", "digits-mlp", "--optimizers", "adamw,not_a_recipe"], "unknown optimizers"),
    (["--task", "no-such-task", "--optimizers", "adamw"], "unknown task 'no-such-task'"),
    (["--task", "rosenbrock", "--spec", "/nonexistent/spec.py"], "does not exist"),
    (["--task", "rosenbrock"], "no optimizers given"),
    (["--optimizers", "adamw"], "--task is required"),
    (["--task", "rosenbrock", "--optimizers", "adamw", "--task-arg", "width=2"], "no options"),
    (["--task", "rosenbrock", "--optimizers", "adamw,adamw"], "listed twice"),
])
def test_cli_bad_input_is_a_message(capsys, argv, message):
  code, err = _cli(capsys, "bench", *argv)
  assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize("body, message", [
    ("OPTIMIZERS = {'a': lambda lr: None\n", "failed to load: SyntaxError"),
    ("import not_a_module_xyz\n", "ModuleNotFoundError"),
    ("X = 1\n", "must define OPTIMIZERS"),
    ("OPTIMIZERS = {'a': 3}\n", "not a transformation or a callable"),
    ("OPTIMIZERS = {'a': lambda lr: 3}\n", "did not return a GradientTransformation"),
])
def test_cli_bad_spec_file(tmp_path, capsys, body, message):
  spec = tmp_path / "spec.py"
  spec.write_text(body)
  code, err = _cli(capsys, "bench", "--task", "rosenbrock", "--task-arg", "dim=4",
                   "--spec", str(spec), "--steps", "2", "--no-progress",
                   "--out", str(tmp_path / "o"))
  assert code != 0 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--steps", "0"),
                                         ("--seeds", "0"), ("--budget", "0"),
                                         ("--budget", "x"), ("--warmup", "1.5"),
                                         ("--budgets", "0,2"),
                                         ("--target", "nan")])
def test_cli_bad_numbers(capsys, flag, value):
  with pytest.raises(SystemExit) as e:
    main(["bench", "--task", "rosenbrock", "--optimizers", "adamw", flag, value])
  err = capsys.readouterr().err
  assert e.value.code == 2 and flag in err and "Traceback" not in err


def test_module_entry_point_reports_errors_without_traceback():
  proc = subprocess.run([sys.executable, "-m", "optlab.bench", "--task", "rosenbrock",
                         "--optimizers", "adamw,bogus", "--steps", "3"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert "optlab bench: error: unknown optimizers ['bogus']" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_docs_pages_are_current():
  stale = stale_docs(ROOT / "docs")
  assert not stale, f"docs pages are stale: {stale}; run `make readme`"
  pages = docs_pages()
  for r in optlab.catalog():
    page = pages[f"{r.family}.md"]
    assert f"## {r.name}\n" in page and (not r.arxiv or r.arxiv in page)
    for arg in r.needs_extra_args:
      assert f"`{arg}`" in page
  assert "(architecture.md)" in pages["index.md"]


def test_bench_finds_held_out_recipes_by_name():
  name = optlab.held_out()[0].name
  assert [s.name for s in bench.resolve_optimizers([name])] == [name]


def test_bench_builds_every_recipe_at_its_documented_defaults():
  """The bench passes a recipe only a learning rate (and a seed): every other argument
  keeps the factory's default, never the contract tests' settings."""
  from optlab.bench import defaults
  recipes = optlab.catalog() + optlab.held_out()
  assert set(defaults.LEARNING_RATES) <= {r.name for r in recipes}
  params = {"w": jnp.ones((16, 8)), "b": jnp.ones(8)}
  for r, spec in zip(recipes, bench.resolve_optimizers([r.name for r in recipes])):
    kwargs = defaults.default_kwargs(r, 2.0, seed=1)
    assert set(kwargs) <= {"learning_rate", "seed"}, r.name
    lr, scaled = defaults.default_learning_rate(r)
    assert spec.scale_lr == scaled and spec.learning_rate == lr, r.name
    assert lr is None or lr > 0, r.name
    assert scaled == (inspect.signature(r.factory).parameters["learning_rate"].default
                      is inspect.Parameter.empty), r.name
    jax.eval_shape(spec.build(spec.learning_rate, 0).init, params)  # builds; traces only


def test_spec_file_rates_are_used_as_given(tmp_path):
  spec = tmp_path / "spec.py"
  spec.write_text(SPEC)
  task = bench.make_task("quadratic-illcond", dim=8, lr_scale=10.0)
  logs = []
  results = bench.run_bench(task, bench.resolve_optimizers(["cautious_lion_chain", "adamw"],
                                                           str(spec)),
                            steps=2, progress=False, log=logs.append)
  rates = {r["name"]: r["learning_rate"] for r in results["optimizers"]}
  assert rates["cautious_lion_chain"] == pytest.approx(1e-2)  # LEARNING_RATES in SPEC
  assert rates["adamw"] == pytest.approx(1e-3 * 10.0)
  assert any("cautious_lion_chain: learning rate 0.01 (as given)" in s for s in logs)
  assert any("adamw: learning rate 0.01 (0.001 x task lr_scale 10)" in s for s in logs)
