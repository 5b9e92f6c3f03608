"""Train optimizers on a bench task and record what a fair comparison needs.

For each optimizer: tuning on the first seed (`optlab.bench.tuning`: the same
budget of runs for everyone, until the best learning rate is interior), then
every seed at the tuned hyperparameters; then the baseline at several run
lengths, from which each optimizer's speedup is read (`optlab.bench.speedup`).

Every run follows the same learning-rate schedule shape (`schedule_factors`:
constant, cosine or warm-up-stable-decay, with one warm-up fraction for all),
applied as a factor on each optimizer's update, so it reaches every recipe the
same way whatever its internal use of the learning rate. The comparison is made
at the end of the runs.

The train step takes the learning rate and the schedule factor as arguments,
so one compilation serves all of an optimizer's learning rates, run lengths
and (for recipes without a seed) seeds; the compile time reported is that one
compilation.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.bench.defaults import default_learning_rate
from optlab.bench.speedup import baseline_curve, speedup
from optlab.bench.tasks import Task
from optlab.bench.tuning import (Trial, check_knobs, format_hparams, tune as tune_search,
                                 tunable_defaults)
from optlab.catalog import catalog, held_out

__all__ = ["BenchError", "OptimizerSpec", "SCHEDULES", "resolve_optimizers", "load_spec_file",
           "run_bench", "train", "schedule_factors", "state_bytes_per_param", "smooth"]

#: The schedule shapes `schedule_factors` knows (``--schedule``).
SCHEDULES = ("constant", "cosine", "wsd")


class BenchError(Exception):
  """A user-facing bench error: the CLI prints its message, not a traceback."""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """How to build one optimizer at a given learning rate (and seed).

  `learning_rate` is the rate tuning starts from; with `scale_lr` the bench
  multiplies it by the task's ``lr_scale`` first (catalogue recipes with an
  Adam-sized step; see `optlab.bench.defaults`), otherwise it is used as given.
  """
  name: str
  build: Callable[..., optax.GradientTransformation]  # (learning_rate, seed, **hparams) -> tx
  learning_rate: Optional[float]  # default rate; None = fixed (never tuned)
  extra_args: tuple[str, ...] = ()
  source: str = "catalog"
  scale_lr: bool = False
  defaults: dict = dataclasses.field(default_factory=dict)  # other tunable numeric defaults
  takes_seed: bool = False

  def tunable(self) -> dict[str, Any]:
    """Hyperparameters `--tune` may move, with their defaults (the rate unscaled)."""
    rate = {} if self.learning_rate is None else {"learning_rate": self.learning_rate}
    return {**rate, **self.defaults}

  def start(self, task: Task) -> dict[str, Any]:
    """The hyperparameters a run starts from: every tunable default, the learning
    rate times the task's scale where it applies (`optlab.bench.defaults`)."""
    hp = self.tunable()
    if "learning_rate" in hp and self.scale_lr:
      hp["learning_rate"] = hp["learning_rate"] * task.lr_scale
    return hp


def _accepts(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _from_recipe(recipe) -> OptimizerSpec:
  """A catalogue recipe at its factory's defaults: the bench sets only the learning
  rate (`optlab.bench.defaults`) and, where the factory takes one, the run's seed."""
  lr, scale_lr = default_learning_rate(recipe)
  takes_seed = _accepts(recipe.factory, "seed")

  def build(learning_rate, seed, **hparams):
    return recipe.build(learning_rate=learning_rate, **hparams,
                        **({"seed": seed} if takes_seed else {}))

  others = {k: v for k, v in tunable_defaults(recipe.factory).items()
            if k not in ("learning_rate", "seed")}
  return OptimizerSpec(recipe.name, build, None if lr is None else float(lr),
                       tuple(recipe.needs_extra_args), scale_lr=scale_lr, defaults=others,
                       takes_seed=takes_seed)


def load_spec_file(path: str) -> dict[str, OptimizerSpec]:
  """Optimizers from a small Python file.

  The file defines ``OPTIMIZERS``, a dict from a name to either:

  - a callable ``learning_rate -> GradientTransformation`` (tuned from
    ``LEARNING_RATES[name]``, default 1e-3, used as given: the task's
    ``lr_scale`` does not apply to a spec file's rates; only the learning rate
    is tunable), or
  - a ready ``GradientTransformation`` (run as is, never tuned);

  and optionally ``EXTRA_ARGS = {name: ("obj_fn", ...)}`` for chains that need
  extra args. See ``examples/bench_spec.py``.
  """
  try:
    spec = importlib.util.spec_from_file_location("optlab_bench_spec", path)
    if spec is None:
      raise BenchError(f"spec file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except FileNotFoundError:
    raise BenchError(f"spec file {path!r} does not exist") from None
  except BenchError:
    raise
  except Exception as e:  # a syntax or import error in the user's file
    raise BenchError(f"spec file {path!r} failed to load: {type(e).__name__}: {e}") from None
  table = getattr(module, "OPTIMIZERS", None)
  if not isinstance(table, dict) or not table:
    raise BenchError(f"spec file {path!r} must define OPTIMIZERS, a non-empty dict "
                     "from names to `learning_rate -> transformation` callables")
  rates = getattr(module, "LEARNING_RATES", {})
  extras = getattr(module, "EXTRA_ARGS", {})
  out = {}
  for name, value in table.items():
    if not isinstance(name, str) or not name or "," in name:
      raise BenchError(f"spec file {path!r}: optimizer names must be non-empty strings "
                       f"without commas, got {name!r}")
    if isinstance(value, optax.GradientTransformation):
      build, lr = (lambda tx: lambda learning_rate, seed, **hp: tx)(value), None
    elif callable(value):
      build = (lambda f: lambda learning_rate, seed, **hp: f(learning_rate))(value)
      lr = float(rates.get(name, 1e-3))
    else:
      raise BenchError(f"spec file {path!r}: OPTIMIZERS[{name!r}] is a "
                       f"{type(value).__name__}, not a transformation or a callable")
    out[name] = OptimizerSpec(name, build, lr, tuple(extras.get(name, ())), source=path)
  return out


def resolve_optimizers(names: Optional[Sequence[str]], spec_path: Optional[str] = None
                       ) -> list[OptimizerSpec]:
  """Catalog (and held-out) recipes and spec-file chains by name (all spec entries if no
  names)."""
  known = {r.name: r for r in catalog() + held_out()}
  spec = load_spec_file(spec_path) if spec_path else {}
  if not names:
    if not spec:
      raise BenchError("no optimizers given: use --optimizers a,b or --spec FILE")
    names = list(spec)
  unknown = [n for n in names if n not in spec and n not in known]
  if unknown:
    raise BenchError(f"unknown optimizers {unknown}; `optlab catalog` lists the recipes"
                     + (f", {spec_path!r} defines {sorted(spec)}" if spec_path else ""))
  dupes = sorted({n for n in names if list(names).count(n) > 1})
  if dupes:
    raise BenchError(f"optimizers listed twice: {dupes}")
  return [spec[n] if n in spec else _from_recipe(known[n]) for n in names]


# ---------------------------------------------------------------- measures
def state_bytes_per_param(tx, params) -> float:
  """Optimizer-state bytes per parameter, from shapes only (`optlab.state_bytes`)."""
  import optlab
  return optlab.state_bytes(tx, params).per_param


def schedule_factors(kind: str, steps: int, warmup: float = 0.0, decay: float = 0.2
                     ) -> np.ndarray:
  """The factor on each step's update: a linear warm-up over the first `warmup`
  fraction of the steps, then constant, a cosine to 0 (``cosine``), or constant
  until the last `decay` fraction, which decays linearly to 0 (``wsd``,
  warm-up-stable-decay)."""
  if kind not in SCHEDULES:
    raise BenchError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
  if not 0.0 <= warmup < 1.0:
    raise BenchError(f"warmup must be a fraction in [0, 1), got {warmup}")
  i = np.arange(steps, dtype=np.float64)
  w = int(round(warmup * steps))
  out = np.ones(steps)
  if kind == "cosine":
    progress = (i - w) / max(steps - w, 1)
    out = 0.5 * (1.0 + np.cos(np.pi * np.clip(progress, 0.0, 1.0)))
  elif kind == "wsd":
    d = max(int(round(decay * steps)), 1)
    out = np.clip((steps - i) / d, 0.0, 1.0)
  if w:
    out = np.where(i < w, (i + 1) / w, out)
  return out.astype(np.float32)


def smooth(losses: np.ndarray, window: int) -> np.ndarray:
  """Trailing running mean (for noisy mini-batch losses); NaN stays NaN."""
  if window <= 1:
    return np.asarray(losses, float)
  x = np.asarray(losses, float)
  c = np.cumsum(np.concatenate([[0.0], x]))
  idx = np.arange(1, len(x) + 1)
  lo = np.maximum(idx - window, 0)
  return (c[idx] - c[lo]) / (idx - lo)


SUPPLIED = ("obj_fn", "value", "logits_fn", "layer_stats")  # the extra args the bench gives


def _extras(names, task: Task, batch, loss_b, value, stats) -> dict[str, Any]:
  out = {}
  for n in names:
    if n == "obj_fn":
      out[n] = loss_b
    elif n == "value":
      out[n] = value
    elif n == "logits_fn":
      out[n] = lambda p: task.logits(p, batch)
    elif n == "layer_stats":
      out[n] = stats
    else:
      raise BenchError(f"the bench cannot supply the extra arg {n!r}")
  return out


def _check_extras(spec: OptimizerSpec, task: Task):
  for n in spec.extra_args:
    if n not in SUPPLIED:
      raise BenchError(f"{spec.name} needs the extra arg {n!r}, which the bench cannot supply "
                       f"(it supplies {', '.join(SUPPLIED)})")
    if n == "logits_fn" and task.logits is None:
      raise BenchError(f"{spec.name} needs logits_fn, but task {task.name!r} has no logits")
    if n == "layer_stats" and task.layer_stats is None:
      raise BenchError(f"{spec.name} needs layer_stats, but task {task.name!r} captures none")



class StepCache:
  """Compiled train steps of one task, shared by the runs of a bench.

  Keyed by the optimizer, its fixed (non-rate) hyperparameters and, for recipes
  that take one, the seed. The learning rate is traced where the recipe builds
  with a traced rate (all catalogue recipes do); otherwise it is baked in and is
  part of the key.
  """

  def __init__(self, task: Task):
    self.task = task
    self._steps: dict[tuple, tuple[Callable, float]] = {}
    self._concrete: set[tuple] = set()  # chains that cannot take a traced rate

  def get(self, spec: OptimizerSpec, hparams: dict, seed: int, params, state):
    rate, fixed = _split_rate(hparams)
    base = (spec.name, tuple(sorted(fixed.items())), seed if spec.takes_seed else None)
    for traced in (True, False) if base not in self._concrete else (False,):
      key = base + ((None,) if traced else (rate,))
      if key in self._steps:
        return self._steps[key]
      try:
        compiled = self._compile(spec, fixed, rate, seed, traced, params, state)
      except Exception:
        if traced and rate is not None:  # this chain needs a concrete rate
          self._concrete.add(base)
          continue
        raise
      self._steps[key] = compiled
      return compiled
    raise AssertionError("unreachable")

  def _compile(self, spec, fixed, rate, seed, traced, params, state):
    task = self.task

    def step(params, state, data, key, i, lr, factor):
      tx = spec.build(lr if traced else rate, seed, **fixed)
      batch = task.batch(data, key, i)
      loss_b = lambda p: task.loss(p, batch)
      stats = None
      if "layer_stats" in spec.extra_args:  # the gradient and the statistics from one pass
        value, grads, stats = task.layer_stats(params, batch)
      else:
        value, grads = jax.value_and_grad(loss_b)(params)
      extra = _extras(spec.extra_args, task, batch, loss_b, value, stats)
      updates, state = tx.update(grads, state, params, **extra)
      updates = jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)
      return optax.apply_updates(params, updates), state, value

    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        params, state, task.data, jax.random.PRNGKey(0), jnp.int32(0),
        jnp.float32(0.0 if rate is None else rate), jnp.float32(1.0)).compile()
    return compiled, time.perf_counter() - t0


def _split_rate(hparams: dict) -> tuple[Any, dict]:
  """(learning rate, the other hyperparameters): `spec.build`'s arguments."""
  return hparams.get("learning_rate"), {k: v for k, v in hparams.items() if k != "learning_rate"}


def _build(spec: OptimizerSpec, hparams: dict, seed: int) -> optax.GradientTransformation:
  rate, fixed = _split_rate(hparams)
  try:
    tx = spec.build(rate, seed, **fixed)
  except Exception as e:
    shown = ", ".join(f"{k}={v!r}" for k, v in hparams.items())
    raise BenchError(f"{spec.name}: building it with {shown} failed: "
                     f"{type(e).__name__}: {e}") from None
  if not isinstance(tx, optax.GradientTransformation):
    raise BenchError(f"{spec.name} did not return a GradientTransformation "
                     f"(got {type(tx).__name__})")
  return tx


def assess(task: Task, losses: np.ndarray, metrics: dict, window: int) -> tuple[str, float]:
  """(status, score) of a run. The score is the held-out ``val_loss`` where the task
  reports one, else the smoothed training loss at the end. A run whose loss is not
  finite has diverged; one that ends at or above its first loss, or at the task's
  chance level, has failed; both score inf."""
  losses = np.asarray(losses, float)
  final = _final(losses, window)
  if not math.isfinite(final) or metrics is None:
    return "diverged", math.inf
  if final >= losses[0] or (task.chance_loss is not None and final >= 0.99 * task.chance_loss):
    return "failed", math.inf
  score = float(metrics.get("val_loss", final))
  return ("ok", score) if math.isfinite(score) else ("diverged", math.inf)


def train(task: Task, spec: OptimizerSpec, hparams: dict, seed: int, steps: int, *,
          schedule: str = "constant", warmup: float = 0.0, cache: Optional[StepCache] = None,
          progress: bool = True, desc: str = "") -> dict:
  """One run at `hparams` (``learning_rate`` and any other factory argument):
  losses (per step, at the params before the step), step times, compile time,
  state bytes per parameter, held-out metrics, status and score (`assess`)."""
  from tqdm import tqdm  # not tqdm.auto: in Jupyter without ipywidgets it warns (IProgress)

  tx = _build(spec, hparams, seed)
  params = task.init(seed)
  bpp = state_bytes_per_param(tx, params)
  state = tx.init(params)
  cache = cache or StepCache(task)
  compiled, compile_s = cache.get(spec, hparams, seed, params, state)
  factors = schedule_factors(schedule, steps, warmup)
  key = jax.random.PRNGKey(1000 + seed)
  rate = jnp.float32(hparams.get("learning_rate") or 0.0)
  losses = np.full(steps, np.nan)
  times = np.zeros(steps)
  bar = tqdm(range(steps), desc=desc or spec.name, leave=False, disable=not progress,
             mininterval=0.5)
  for i in bar:
    t0 = time.perf_counter()
    params, state, value = compiled(params, state, task.data, key, jnp.int32(i), rate,
                                    jnp.float32(factors[i]))
    value = float(value)  # blocks until the step is done
    times[i] = time.perf_counter() - t0
    losses[i] = value
    if not np.isfinite(value):  # diverged: the rest of the curve stays NaN
      times = times[: i + 1]
      break
    if i % 50 == 0:
      bar.set_postfix(loss=f"{value:.4f}", refresh=False)
  bar.close()
  finite = all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))
  metrics = task.evaluate(params) if finite and np.isfinite(losses[-1]) else None
  window = smoothing_window(task, steps)
  status, score = assess(task, losses, metrics, window)  # metrics None: params not finite
  return {"learning_rate": hparams.get("learning_rate"), "hparams": dict(hparams),
          "seed": seed, "steps": steps, "losses": losses, "step_times": times,
          "compile_s": compile_s, "state_bytes_per_param": bpp, "metrics": metrics or {},
          "status": status, "score": score,
          "final_loss": _final(losses, window)}


def smoothing_window(task: Task, steps: int) -> int:
  """Mini-batch losses are averaged over the last 4% of the steps before comparing."""
  return max(1, steps // 25) if task.stochastic else 1


def _final(losses: np.ndarray, window: int) -> float:
  """The smoothed loss at the end of a run (inf if it diverged)."""
  if not np.all(np.isfinite(losses)):
    return math.inf
  return float(smooth(losses, window)[-1])


def _to_target(runs: list[dict], target: float, window: int):
  """Median over seeds of (steps, seconds) to reach `target` with the smoothed loss."""
  steps, secs = [], []
  for r in runs:
    curve = smooth(np.asarray(r["losses"], float), window)
    hit = np.flatnonzero(curve <= target)
    if len(hit) == 0:
      return None, None
    steps.append(int(hit[0]) + 1)
    secs.append(float(np.sum(r["step_times"][: hit[0] + 1])))
  return int(np.median(steps)), float(np.median(secs))


def _run_json(r: dict) -> dict:
  return {"seed": r["seed"], "losses": np.asarray(r["losses"]).tolist(),
          "step_times": np.asarray(r["step_times"]).tolist(), "compile_s": r["compile_s"],
          "metrics": r["metrics"], "status": r["status"], "score": r["score"]}


def _summarise(spec: OptimizerSpec, runs: list[dict], tuning: dict) -> dict:
  ok = [r for r in runs if r["status"] == "ok"]
  metric_names = sorted({k for r in runs for k in r["metrics"]})
  metrics = {k: float(np.mean([r["metrics"][k] for r in runs if k in r["metrics"]]))
             for k in metric_names}
  all_times = np.concatenate([r["step_times"] for r in runs])
  statuses = sorted({r["status"] for r in runs})
  return {
      "name": spec.name, "source": spec.source, "extra_args": list(spec.extra_args),
      "hparams": runs[0]["hparams"], "learning_rate": runs[0]["learning_rate"],
      "default_learning_rate": spec.learning_rate, "lr_scaled": spec.scale_lr,
      "tuning": tuning,
      "status": "ok" if len(ok) == len(runs) else "/".join(s for s in statuses if s != "ok"),
      "final_loss": float(np.mean([r["final_loss"] for r in runs])),
      "final_loss_per_seed": [r["final_loss"] for r in runs],
      "score": float(np.mean([r["score"] for r in runs])),
      "score_per_seed": [r["score"] for r in runs],
      "metrics": metrics,
      "median_step_ms": 1e3 * float(np.median(all_times)) if len(all_times) else math.nan,
      "compile_s": float(runs[0]["compile_s"]),
      "state_bytes_per_param": runs[0]["state_bytes_per_param"],
      "runs": [_run_json(r) for r in runs],
  }


def run_bench(task: Task, specs: Sequence[OptimizerSpec], steps: int, *, seeds: int = 1,
              tune: Sequence[str] = (), budget: int = 8, tuned: Optional[dict] = None,
              schedule: str = "constant", warmup: float = 0.0,
              baseline: Optional[str] = None, budgets: Sequence[float] = (),
              target: Optional[float] = None, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
  """Tune, train and compare `specs` on `task`; returns the results dict.

  Args:
    task: a `Task` (`make_task`).
    specs: the optimizers (`resolve_optimizers`).
    steps: steps of every run (tuning runs included).
    seeds: seeds per optimizer at its tuned hyperparameters (tuning uses seed 0).
    tune: hyperparameters to tune (factory argument names, learning rate first;
      `optlab.bench.tuning`); empty: run at the starting values.
    budget: the most tuning runs per optimizer.
    tuned: name -> entry of a tuned table (`read_tuned`'s ``optimizers``: its
      ``hparams``, and how they were found); these optimizers run at them, untuned.
    schedule, warmup: the update-factor schedule shared by all runs
      (`schedule_factors`).
    baseline: the optimizer the speedups are relative to (default: ``adamw`` if
      listed, else the first).
    budgets: run-length multiples at which the baseline also runs (e.g.
      ``(0.25, 0.5, 2)``; 1 is its main run); empty: no speedups.
    target: the training loss for steps-to-target (default: the baseline's final
      loss, worst seed).
  """
  if steps < 1 or seeds < 1 or budget < 1:
    raise BenchError("steps, seeds and budget must be positive")
  schedule_factors(schedule, 1, warmup)  # validates both before any training
  for spec in specs:
    _check_extras(spec, task)
  knobs = check_knobs(tuple(tune), specs) if tune else {s.name: () for s in specs}
  names = [s.name for s in specs]
  base_name = baseline or ("adamw" if "adamw" in names else names[0])
  if base_name not in names:
    raise BenchError(f"the baseline {base_name!r} is not among the optimizers {names}")
  if any(b <= 0 for b in budgets):
    raise BenchError(f"budgets must be positive multiples of the run length, got {list(budgets)}")
  tuned = tuned or {}
  window = smoothing_window(task, steps)
  cache = StepCache(task)
  results, base_runs = [], []
  for spec in specs:
    def evaluate(hp, seed=0, n=steps, spec=spec):
      desc = f"{spec.name} {format_hparams(hp, sep=' ')}" + (f" seed {seed}" if seed else "")
      return train(task, spec, hp, seed, n, schedule=schedule, warmup=warmup, cache=cache,
                   progress=progress, desc=desc)

    start = spec.start(task)
    seen: dict = {}
    if spec.name in tuned:
      entry = tuned[spec.name]
      hp = {**start, **entry["hparams"]}
      tuning = {"from": "tuned table", "interior": entry.get("interior"),
                "note": entry.get("note", ""), "runs": entry.get("runs")}
      log(f"  {spec.name}: tuned table: {format_hparams(hp)}")
    elif knobs[spec.name]:
      log(f"  {spec.name}: tuning {', '.join(knobs[spec.name])} with a budget of {budget} "
          f"runs, from learning rate {start.get('learning_rate', 0):.3g} "
          f"({_rate_origin(spec, task)})")

      def trial(hp, spec=spec, seen=seen):
        r = evaluate(hp)
        seen[repr(sorted(hp.items()))] = r
        return Trial(hp, r["score"], r["status"], r["final_loss"])

      tuning = tune_search(trial, start, knobs[spec.name], budget, log)
      hp = tuning["hparams"]
    else:
      hp, tuning = start, None
      if "learning_rate" in hp:
        log(f"  {spec.name}: learning rate {hp['learning_rate']:.3g} "
            f"({_rate_origin(spec, task)})")
    first = seen.get(repr(sorted(hp.items()))) or evaluate(hp)
    runs = [first] + [evaluate(hp, s) for s in range(1, seeds)]
    summary = _summarise(spec, runs, tuning)
    results.append(summary)
    log(f"  {spec.name}: final loss {summary['final_loss']:.4f}, score {summary['score']:.4f}"
        + ("" if summary["status"] == "ok" else f" ({summary['status']})"))
    if spec.name == base_name:
      base_runs = runs
      base_spec, base_hp = spec, hp
  curve = None
  if budgets:
    log(f"  {base_name}: the baseline at {', '.join(f'{b:g}' for b in budgets)} x {steps} steps")
    by_len = {steps: [r["score"] for r in base_runs]}
    for b in budgets:
      n = max(1, int(round(b * steps)))
      if n not in by_len:
        by_len[n] = [train(task, base_spec, base_hp, s, n, schedule=schedule, warmup=warmup,
                           cache=cache, progress=progress,
                           desc=f"{base_name} {n} steps seed {s}")["score"]
                     for s in range(seeds)]
    curve = baseline_curve(by_len)
  target, target_from = _compare(results, base_name, steps, window, curve, target)
  return {"task": task.name, "description": task.description, "task_info": task.info,
          "task_options": task.options, "steps": steps, "seeds": seeds,
          "tune": {n: list(k) for n, k in knobs.items()}, "budget": budget,
          "schedule": schedule, "warmup": warmup, "baseline": base_name,
          "baseline_curve": curve, "smoothing_window": window,
          "score_name": ("held-out val_loss" if any("val_loss" in r["metrics"] for r in results)
                         else "final training loss"),
          "target": target, "target_from": target_from, "log_loss": task.log_loss,
          "lr_scale": task.lr_scale, "device": str(jax.devices()[0]), "jax": jax.__version__,
          "optimizers": results}


def merge_results(parts: Sequence[dict], baseline: Optional[str] = None,
                  curve: Optional[dict] = None) -> dict:
  """One comparison from several `run_bench` results of the same task and protocol
  (e.g. one process per optimizer, sharing a GPU). The part that holds the
  baseline's run-length curve supplies the speedups, unless `curve` (a
  ``baseline_curve`` measured in a separate run of the baseline at the same
  hyperparameters) is given; the steps-to-target target is recomputed as the
  baseline's worst final loss."""
  if not parts:
    raise BenchError("nothing to merge")
  keys = ("task", "task_options", "steps", "seeds", "schedule", "warmup", "budget")
  for p in parts[1:]:
    diff = [k for k in keys if p.get(k) != parts[0].get(k)]
    if diff:
      raise BenchError(f"cannot merge results that differ in {diff}")
  optimizers = [r for p in parts for r in p["optimizers"]]
  names = [r["name"] for r in optimizers]
  if len(set(names)) != len(names):
    raise BenchError(f"an optimizer appears in two parts: {names}")
  curves = [p for p in parts if p.get("baseline_curve")]
  base = baseline or (curves[0]["baseline"] if curves else names[0])
  source = next((p for p in curves if p["baseline"] == base), None)
  curve = curve or (source["baseline_curve"] if source else None)
  for r in optimizers:  # from results.json, inf was written as null
    for k in ("score_per_seed", "final_loss_per_seed"):
      r[k] = [math.inf if v is None else v for v in r[k]]
    r.pop("speedup", None)
  out = {**parts[0], "optimizers": optimizers, "baseline": base, "baseline_curve": curve,
         "tune": {n: k for p in parts for n, k in p["tune"].items()},
         "merged_from": len(parts)}
  out["target"], out["target_from"] = _compare(optimizers, base, out["steps"],
                                               out["smoothing_window"], curve)
  return out


def _rate_origin(spec: OptimizerSpec, task: Task) -> str:
  return (f"{spec.learning_rate:.3g} x task lr_scale {task.lr_scale:g}" if spec.scale_lr
          else "as given")


def _compare(results: list[dict], base_name: str, steps: int, window: int,
             curve: Optional[dict], target: Optional[float] = None) -> tuple[float, str]:
  """Adds each optimizer's speedup (when there is a baseline curve) and steps and
  seconds to `target` (default: the baseline's final loss, worst seed); returns
  (target, where it came from)."""
  if curve:
    for r in results:
      r["speedup"] = speedup(r["score_per_seed"], steps, curve)
  if target is None:
    base = next(r for r in results if r["name"] == base_name)
    target, target_from = float(max(base["final_loss_per_seed"])), (
        f"{base_name}'s final loss, worst seed")
  else:
    target_from = "--target"
  for r in results:
    runs = [{"losses": np.asarray(x["losses"], float),
             "step_times": np.asarray(x["step_times"], float)} for x in r["runs"]]
    r["steps_to_target"], r["seconds_to_target"] = (
        _to_target(runs, target, window) if math.isfinite(target) else (None, None))
  return target, target_from
