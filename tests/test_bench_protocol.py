"""The bench's fair-comparison protocol: tuning until the optimum is interior,
schedules, speedup interpolation, tuned tables, and its bad input."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab import bench
from optlab.bench.tuning import Trial, neighbours, parse_knobs, tune
from optlab.cli import main
from tests.test_bench import _cli  # (exit code, stderr) of an `optlab` command

TINY_DIGITS = {"hidden": 16, "depth": 1, "batch_size": 32}


def _bowl(optimum: dict, fail_above: float = math.inf):
  """A synthetic tuning objective: squared log-distance to `optimum` (decays measured
  on 1 - b), inf past `fail_above` for the learning rate; records every call."""
  calls = []

  def evaluate(hp):
    calls.append(dict(hp))
    if hp["learning_rate"] > fail_above:
      return Trial(hp, math.inf, "diverged", math.inf)
    d = 0.0
    for k, v in optimum.items():
      if k.startswith("b"):
        d += (math.log10(1 - hp[k]) - math.log10(1 - v)) ** 2
      else:
        d += (math.log10(hp[k]) - math.log10(v)) ** 2
    return Trial(hp, 1.0 + d, "ok", 1.0 + d)

  return evaluate, calls


# ------------------------------------------------------------------ tuning
def test_grid_extends_by_half_decades_until_the_optimum_is_interior():
  evaluate, calls = _bowl({"learning_rate": 0.3})
  out = tune(evaluate, {"learning_rate": 1e-3}, ["learning_rate"], budget=10)
  assert out["interior"] is True and out["note"] == ""
  assert out["hparams"]["learning_rate"] == pytest.approx(10 ** -0.5, rel=1e-6)  # 0.316
  rates = sorted(c["learning_rate"] for c in calls)
  # 1e-3 and its lower neighbour, then half-decades up to 1.0, one past the optimum
  np.testing.assert_allclose(rates, [10 ** e for e in np.arange(-3.5, 0.01, 0.5)], rtol=1e-9)
  assert out["runs"] == len(calls) == 8


def test_an_optimum_at_the_start_costs_three_runs():
  evaluate, calls = _bowl({"learning_rate": 1e-3})
  out = tune(evaluate, {"learning_rate": 1e-3}, ["learning_rate"], budget=8)
  assert out["interior"] and out["runs"] == 3 and len(calls) == 3


def test_budget_cap_is_flagged_not_interior():
  evaluate, calls = _bowl({"learning_rate": 10.0})
  out = tune(evaluate, {"learning_rate": 1e-3}, ["learning_rate"], budget=4)
  assert len(calls) == 4 and out["interior"] is False
  assert "budget" in out["note"] and out["hparams"]["learning_rate"] == max(
      c["learning_rate"] for c in calls)


def test_a_diverged_trial_is_never_best_and_a_failing_start_walks_down():
  # every rate above 2e-4 diverges; the true optimum (1e-2) is unreachable
  evaluate, calls = _bowl({"learning_rate": 1e-2}, fail_above=2e-4)
  out = tune(evaluate, {"learning_rate": 1e-3}, ["learning_rate"], budget=8)
  best = out["hparams"]["learning_rate"]
  assert best == pytest.approx(1e-4)  # 1e-3 and 3.2e-4 diverge, 1e-4 is the largest that trains
  assert all(t["status"] == "ok" or t["hparams"]["learning_rate"] > 2e-4 for t in out["trials"])
  # interior: the neighbour above diverged (worse), the one below is farther from 1e-2
  assert out["interior"] is True
  assert any(c["learning_rate"] > 2e-4 for c in calls)


def test_coordinate_descent_moves_each_knob_and_rechecks_the_rate():
  evaluate, calls = _bowl({"learning_rate": 3e-3, "weight_decay": 0.1, "b2": 0.99})
  start = {"learning_rate": 1e-3, "weight_decay": 1e-2, "b2": 0.999}
  out = tune(evaluate, start, ["learning_rate", "weight_decay", "b2"], budget=30)
  hp = out["hparams"]
  assert hp["learning_rate"] == pytest.approx(10 ** -2.5, rel=1e-6)
  assert hp["weight_decay"] == pytest.approx(10 ** -1.0, rel=1e-6)
  assert 1 - hp["b2"] == pytest.approx(10 ** -2.0, rel=1e-6)
  assert out["interior"] is True and out["runs"] <= 30
  # the final rate's neighbours were run at the final weight decay and b2
  lr = hp["learning_rate"]
  finals = [c for c in calls if c["weight_decay"] == hp["weight_decay"] and c["b2"] == hp["b2"]]
  assert {round(math.log10(c["learning_rate"]) * 2) for c in finals} >= {
      round(math.log10(lr) * 2) - 1, round(math.log10(lr) * 2) + 1}


def test_a_tied_rate_starts_from_the_tuned_learning_rate():
  """Muon's adam_learning_rate defaults to None (tied to learning_rate): tuning it
  starts at the tuned rate and moves it on its own."""
  evaluate, calls = _bowl({"learning_rate": 1e-2, "adam_learning_rate": 1e-3})
  start = {"learning_rate": 1e-2, "adam_learning_rate": None}
  spec, = bench.resolve_optimizers(["muon"])
  assert spec.tunable()["adam_learning_rate"] is None
  calls_seen = []
  out = tune(lambda hp: (calls_seen.append(dict(hp)), evaluate(
      {**hp, "adam_learning_rate": hp["adam_learning_rate"] or hp["learning_rate"]}))[1],
      start, ["learning_rate", "adam_learning_rate"], budget=12)
  assert calls_seen[0]["adam_learning_rate"] is None  # the tied default runs first
  assert out["hparams"]["adam_learning_rate"] == pytest.approx(1e-3, rel=1e-6)
  assert out["hparams"]["learning_rate"] == pytest.approx(1e-2, rel=1e-6)


def test_neighbour_rules():
  lo, hi = neighbours("learning_rate", 1e-3)
  assert lo == pytest.approx(10 ** -3.5) and hi == pytest.approx(10 ** -2.5)
  lo, hi = neighbours("b2", 0.999)
  assert 1 - lo == pytest.approx(10 ** -2.5) and 1 - hi == pytest.approx(10 ** -3.5)
  assert neighbours("precondition_frequency", 10) == (5, 20)
  assert neighbours("precondition_frequency", 1) == (None, 2)
  assert neighbours("weight_decay", 0.0) == (None, 1e-2)
  with pytest.raises(ValueError, match="nesterov"):
    neighbours("nesterov", True)
  assert parse_knobs("wd,lr") == ("learning_rate", "weight_decay")
  assert parse_knobs("none") == ()
  with pytest.raises(ValueError, match="more than once"):
    parse_knobs("lr,learning_rate")


# --------------------------------------------------------------- schedules
def test_schedule_shapes():
  c = bench.schedule_factors("cosine", 100, warmup=0.1)
  np.testing.assert_allclose(c[:10], np.arange(1, 11) / 10, rtol=1e-6)
  assert c[10] == pytest.approx(1.0) and c[-1] < 1e-3 and np.all(np.diff(c[10:]) <= 0)
  w = bench.schedule_factors("wsd", 100, warmup=0.0, decay=0.2)
  assert np.all(w[:81] == 1.0) and w[-1] == pytest.approx(0.05) and np.all(np.diff(w) <= 0)
  k = bench.schedule_factors("constant", 10, warmup=0.2)
  np.testing.assert_allclose(k, [0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1])
  with pytest.raises(bench.BenchError, match="unknown schedule 'linear'"):
    bench.schedule_factors("linear", 10)


def test_schedule_reaches_the_update():
  """The losses of SGD under a cosine schedule match a NumPy run of
  x <- x - lr * factor_t * A (x - x*) on the same quadratic."""
  task = bench.make_task("quadratic-illcond", dim=8)
  spec = bench.OptimizerSpec("sgd_chain", lambda lr, seed, **hp: optax.sgd(lr), 0.5,
                             source="test")
  steps = 12
  run = bench.train(task, spec, {"learning_rate": 0.5}, 0, steps, schedule="cosine",
                    warmup=0.25, progress=False)
  a = np.asarray(task.data["a"], np.float64)
  xs = np.asarray(task.data["x_star"], np.float64)
  x = np.asarray(task.init(0)["x"], np.float64)
  f = bench.schedule_factors("cosine", steps, 0.25)
  want = []
  for i in range(steps):
    want.append(0.5 * (x - xs) @ a @ (x - xs))
    x = x - 0.5 * f[i] * (a @ (x - xs))
  np.testing.assert_allclose(run["losses"], want, rtol=2e-4)


def test_one_compile_serves_every_rate_and_a_concrete_rate_chain_falls_back():
  task = bench.make_task("quadratic-illcond", dim=8)
  cache = bench.StepCache(task)
  adamw, = bench.resolve_optimizers(["adamw"])
  a = bench.train(task, adamw, {"learning_rate": 1e-2}, 0, 5, cache=cache, progress=False)
  b = bench.train(task, adamw, {"learning_rate": 1e-1}, 0, 5, cache=cache, progress=False)
  assert len(cache._steps) == 1 and a["losses"][-1] != b["losses"][-1]
  # float(lr) needs a concrete rate: one compile per rate, no retry of the traced one
  concrete = bench.OptimizerSpec("sgd_float", lambda lr, seed, **hp: optax.sgd(float(lr)), 0.1)
  c = bench.train(task, concrete, {"learning_rate": 0.1}, 0, 5, cache=cache, progress=False)
  d = bench.train(task, concrete, {"learning_rate": 0.2}, 0, 5, cache=cache, progress=False)
  assert len(cache._steps) == 3 and c["losses"][-1] != d["losses"][-1]
  assert c["status"] == d["status"] == "ok"


# ----------------------------------------------------------------- speedup
def test_speedup_interpolates_in_log_steps_and_bounds_the_ends():
  curve = bench.baseline_curve({100: [2.0, 2.0], 200: [1.6, 1.4], 400: [1.0, 1.0]})
  assert curve["score"] == [2.0, 1.5, 1.0]
  n, how = bench.steps_to_match(1.25, curve)  # halfway from 200 to 400 in log steps
  assert how == "=" and n == pytest.approx(200 * math.sqrt(2))
  assert bench.steps_to_match(0.9, curve) == (400.0, ">")
  assert bench.steps_to_match(2.5, curve) == (100.0, "<")
  s = bench.speedup([1.25, 1.5], 200, curve)
  assert s["per_seed"] == pytest.approx([math.sqrt(2), 1.0])
  assert s["median"] == pytest.approx((math.sqrt(2) + 1) / 2) and s["bound"] is None
  s = bench.speedup([0.5, math.inf], 200, curve)
  assert s["bounds"] == [">", "<"] and s["bound"] == "mixed"
  # a noisy longer run does not make the curve rise
  assert bench.baseline_curve({100: [1.0], 200: [1.2]})["score"] == [1.0, 1.0]


# ------------------------------------------------------ statuses and runs
def test_assess_labels_failed_and_diverged_runs():
  task = bench.make_task("digits-mlp", **TINY_DIGITS)
  ok = np.linspace(2.3, 0.5, 50)
  assert bench.assess(task, ok, {"val_loss": 0.6}, 2) == ("ok", 0.6)
  assert bench.assess(task, ok[::-1], {"val_loss": 2.3}, 2)[0] == "failed"  # rose
  flat = np.full(50, 2.29)
  flat[0] = 2.4  # fell a little, but ends at chance (log 10 = 2.303)
  assert bench.assess(task, flat, {"val_loss": 2.3}, 2)[0] == "failed"
  assert bench.assess(task, np.r_[ok[:10], np.nan], {}, 2) == ("diverged", math.inf)
  assert bench.assess(task, ok, None, 2) == ("diverged", math.inf)  # params not finite


def test_tuned_run_records_trials_interior_and_speedup(tmp_path):
  task = bench.make_task("digits-mlp", **TINY_DIGITS)
  specs = bench.resolve_optimizers(["adamw", "lion"])
  res = bench.run_bench(task, specs, 40, seeds=2, tune=["learning_rate"], budget=4,
                        schedule="wsd", warmup=0.1, budgets=(0.5, 2), progress=False,
                        log=lambda s: None)
  assert res["baseline"] == "adamw" and res["schedule"] == "wsd"
  assert res["baseline_curve"]["steps"] == [20, 40, 80]
  for r in res["optimizers"]:
    t = r["tuning"]
    assert 3 <= t["runs"] <= 4 and len(t["trials"]) == t["runs"]
    assert isinstance(t["interior"], bool)
    scores = [x["score"] for x in t["trials"] if x["status"] == "ok"]
    assert r["score_per_seed"][0] == pytest.approx(min(scores))  # seed 0 is the best trial
    assert len(r["speedup"]["per_seed"]) == 2 and r["speedup"]["min"] <= r["speedup"]["max"]
  adamw = res["optimizers"][0]
  # the baseline's own speedup is read off its own curve: its mean score maps to 40 steps
  assert bench.steps_to_match(float(np.mean(adamw["score_per_seed"])),
                              res["baseline_curve"])[0] == pytest.approx(40, rel=1e-6)
  text = bench.markdown(res)
  assert "## Tuning (first seed)" in text and "Baseline `adamw` score by run length" in text


def test_tune_writes_a_table_that_bench_reuses(tmp_path, capsys):
  table = tmp_path / "t.json"
  args = ["--task", "quadratic-illcond", "--task-arg", "dim=8", "--optimizers", "adamw,lion",
          "--steps", "20", "--no-progress"]
  assert main(["tune", *args, "--budget", "3", "--out", str(table)]) == 0
  body = json.loads(table.read_text())
  assert body["task"] == "quadratic-illcond" and body["task_options"] == {"dim": 8}
  assert body["command"].startswith("optlab tune --task quadratic-illcond")
  for name in ("adamw", "lion"):
    entry = body["optimizers"][name]
    assert 1 <= entry["runs"] <= body["budget"] == 3
    assert "learning_rate" in entry["hparams"] and isinstance(entry["interior"], bool)
  capsys.readouterr()
  out = tmp_path / "o"
  assert main(["bench", *args, "--tuned", str(table), "--budgets", "none",
               "--out", str(out)]) == 0
  res = json.loads((out / "results.json").read_text())
  for r in res["optimizers"]:
    assert r["tuning"]["from"] == "tuned table"
    assert r["learning_rate"] == pytest.approx(body["optimizers"][r["name"]]["hparams"]
                                               ["learning_rate"])


def test_shipped_demo_tables_cover_the_demo():
  from optlab import demo
  for task_name, (preset, steps) in demo.PRESET.items():
    task = bench.make_task(task_name, preset)
    body = bench.read_tuned(demo.tuned_table_path(task_name), task.name, task.options)
    assert body["steps"] == steps and body["schedule"] == demo.SCHEDULE
    assert set(demo.DEFAULT) <= set(body["optimizers"])
    for name, entry in body["optimizers"].items():
      assert entry["runs"] <= body["budget"] and entry["hparams"]["learning_rate"] > 0, name
      assert f"--budget {body['budget']}" in body["command"] and "learning_rate" in entry["knobs"]


def test_bench_runs_real_soap_on_lm_stdlib():
  """The bench builds SOAP at its defaults: every layer of the default LM is rotated
  (the contract's test setting max_precond_dim=7 would rotate none: 8 B/param)."""
  task = bench.make_task("lm-stdlib", budget_bytes=40_000, val_batches=1)
  params = jax.eval_shape(task.init, 0)
  spec, = bench.resolve_optimizers(["soap"])
  bpp = bench.state_bytes_per_param(spec.build(1e-3, 0), params)
  assert bpp > 8.0 + 4.0


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, message", [
    (["--tune", "lr,not_a_knob"], "no optimizer given has the hyperparameter(s) ['not_a_knob']"),
    (["--tuned", "/nonexistent/t.json"], "does not exist"),
    (["--baseline", "lion"], "the baseline 'lion' is not among"),
    (["--preset", "huge"], "has no preset 'huge'"),
    (["--task-arg", "dim=1"], "option dim must be >= 2, got 1"),
])
def test_protocol_bad_input(capsys, tmp_path, argv, message):
  code, err = _cli(capsys, "bench", "--task", "rosenbrock", "--optimizers", "adamw",
                   "--steps", "2", "--no-progress", "--out", str(tmp_path), *argv)
  assert code == 2 and message in err and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1


def test_tuned_table_for_another_task_is_refused(capsys, tmp_path):
  table = tmp_path / "t.json"
  table.write_text(json.dumps({"task": "digits-mlp", "task_options": {}, "optimizers": {}}))
  code, err = _cli(capsys, "bench", "--task", "rosenbrock", "--optimizers", "adamw",
                   "--tuned", str(table), "--out", str(tmp_path / "o"))
  assert code == 2 and "is for task 'digits-mlp', not 'rosenbrock'" in err


@pytest.mark.parametrize("task, option, message", [
    ("digits-mlp", "hidden=-3", "option hidden must be >= 1, got -3"),
    ("digits-mlp", "batch_size=0", "option batch_size must be >= 1, got 0"),
    ("lm-stdlib", "context=0", "option context must be >= 1"),
    ("digits-mlp", "hidden='x'", "option hidden must be a number"),
])
def test_task_options_out_of_range(capsys, tmp_path, task, option, message):
  code, err = _cli(capsys, "bench", "--task", task, "--optimizers", "adamw",
                   "--task-arg", option, "--out", str(tmp_path))
  assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_out_is_checked_before_training(capsys, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  code, err = _cli(capsys, "bench", "--task", "rosenbrock", "--optimizers", "adamw",
                   "--steps", "100000000", "--out", str(blocker / "sub"))
  assert code == 2 and "--out" in err and "not a writable directory" in err


def test_catalog_cli(capsys, tmp_path):
  assert main(["catalog", "--list"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(optlab.catalog()) and lines[0].split()[0] == optlab.catalog()[0].name
  code, err = _cli(capsys, "catalog", "--write", str(tmp_path / "missing.md"))
  assert code == 2 and "no such file" in err
  plain = tmp_path / "plain.md"
  plain.write_text("# no markers\n")
  code, err = _cli(capsys, "catalog", "--write", str(plain))
  assert code == 2 and "markers" in err and "Traceback" not in err
  with pytest.raises(SystemExit) as e:
    main(["--version"])
  assert e.value.code == 0 and capsys.readouterr().out.strip() == f"optlab {optlab.__version__}"


def test_errors_keep_their_quotes(capsys):
  code, err = _cli(capsys, "bench", "--task", "nope", "--optimizers", "adamw")
  assert code == 2 and "unknown task 'nope'" in err


def test_list_tasks_shows_options_and_presets(capsys):
  assert main(["bench", "--list-tasks"]) == 0
  out = capsys.readouterr().out
  assert "lm-stdlib:" in out and "d_model=128" in out and "--preset large" in out
  for name in bench.TASKS:
    assert f"{name}:" in out


def test_every_bench_option_has_help_and_a_default():
  from optlab.cli import _parser
  sub = next(a for a in _parser()._actions if a.dest == "command")
  for name in ("bench", "tune", "demo"):
    for action in sub.choices[name]._actions:
      if action.dest in ("help",):
        continue
      assert action.help, f"{name} {action.option_strings} has no help"
      assert "default" in action.help or action.default in (None, False, []) or action.required, (
          f"{name} {action.option_strings}: the help does not state the default")
