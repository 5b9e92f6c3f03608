"""Train optimizers on a bench task and record what a comparison needs.

For each optimizer: an optional learning-rate sweep on the first seed, then every
seed at the best rate. Each run compiles one jitted step ahead of time (the
compile time), then steps with a tqdm bar, recording the training loss, the
step time and, at the end, the task's held-out metrics.
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
from optlab.bench.tasks import Task
from optlab.catalog import catalog, held_out

__all__ = ["BenchError", "OptimizerSpec", "resolve_optimizers", "load_spec_file",
           "run_bench", "train", "lr_grid", "state_bytes_per_param", "smooth"]


class BenchError(Exception):
  """A user-facing bench error: the CLI prints its message, not a traceback."""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """How to build one optimizer at a given learning rate (and seed).

  `learning_rate` is the rate the sweep centres on; with `scale_lr` the bench
  multiplies it by the task's ``lr_scale`` first (catalogue recipes with an
  Adam-sized step; see `optlab.bench.defaults`), otherwise it is used as given.
  """
  name: str
  build: Callable[..., optax.GradientTransformation]  # (learning_rate, seed) -> tx
  learning_rate: Optional[float]  # default rate; None = fixed (no sweep)
  extra_args: tuple[str, ...] = ()
  source: str = "catalog"
  scale_lr: bool = False


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

  def build(learning_rate, seed):
    return recipe.build(learning_rate=learning_rate, **({"seed": seed} if takes_seed else {}))

  return OptimizerSpec(recipe.name, build, None if lr is None else float(lr),
                       tuple(recipe.needs_extra_args), scale_lr=scale_lr)


def load_spec_file(path: str) -> dict[str, OptimizerSpec]:
  """Optimizers from a small Python file.

  The file defines ``OPTIMIZERS``, a dict from a name to either
  - a callable ``learning_rate -> GradientTransformation`` (swept around
    ``LEARNING_RATES[name]``, default 1e-3, used as given: the task's
    ``lr_scale`` does not apply to a spec file's rates), or
  - a ready ``GradientTransformation`` (run as is, never swept),
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
      build, lr = (lambda tx: lambda learning_rate, seed: tx)(value), None
    elif callable(value):
      build = (lambda f: lambda learning_rate, seed: f(learning_rate))(value)
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


def lr_grid(lr: Optional[float], n: int) -> list[Optional[float]]:
  """`n` rates log-spaced over one decade centred on `lr` (half a decade either side)."""
  if lr is None or n <= 1:
    return [lr]
  return [float(lr * 10 ** e) for e in np.linspace(-0.5, 0.5, n)]


def smooth(losses: np.ndarray, window: int) -> np.ndarray:
  """Trailing running mean (for noisy mini-batch losses); NaN stays NaN."""
  if window <= 1:
    return np.asarray(losses, float)
  x = np.asarray(losses, float)
  c = np.cumsum(np.concatenate([[0.0], x]))
  idx = np.arange(1, len(x) + 1)
  lo = np.maximum(idx - window, 0)
  return (c[idx] - c[lo]) / (idx - lo)


def _extras(names, task: Task, batch, loss_b, value) -> dict[str, Any]:
  out = {}
  for n in names:
    if n == "obj_fn":
      out[n] = loss_b
    elif n == "value":
      out[n] = value
    elif n == "logits_fn":
      out[n] = lambda p: task.logits(p, batch)
    else:
      raise BenchError(f"the bench cannot supply the extra arg {n!r}")
  return out


def _check_extras(spec: OptimizerSpec, task: Task):
  for n in spec.extra_args:
    if n not in ("obj_fn", "value", "logits_fn"):
      raise BenchError(f"{spec.name} needs the extra arg {n!r}, which the bench cannot supply "
                       "(it supplies obj_fn, value and logits_fn)")
    if n == "logits_fn" and task.logits is None:
      raise BenchError(f"{spec.name} needs logits_fn, but task {task.name!r} has no logits")


def train(task: Task, spec: OptimizerSpec, learning_rate, seed: int, steps: int,
          progress: bool = True, desc: str = "") -> dict:
  """One run: returns losses (per step, the loss at the params before the step),
  step times, compile time, state bytes per parameter and held-out metrics."""
  from tqdm import tqdm  # not tqdm.auto: in Jupyter without ipywidgets it warns (IProgress)

  try:
    tx = spec.build(learning_rate, seed)
  except Exception as e:
    raise BenchError(f"{spec.name}: building it at learning_rate={learning_rate} failed: "
                     f"{type(e).__name__}: {e}") from None
  if not isinstance(tx, optax.GradientTransformation):
    raise BenchError(f"{spec.name} did not return a GradientTransformation "
                     f"(got {type(tx).__name__})")
  params = task.init(seed)
  bpp = state_bytes_per_param(tx, params)
  key = jax.random.PRNGKey(1000 + seed)

  def step(params, state, data, i):
    batch = task.batch(data, key, i)
    loss_b = lambda p: task.loss(p, batch)
    value, grads = jax.value_and_grad(loss_b)(params)
    extra = _extras(spec.extra_args, task, batch, loss_b, value)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, value

  state = tx.init(params)
  t0 = time.perf_counter()
  compiled = jax.jit(step).lower(params, state, task.data, jnp.int32(0)).compile()
  compile_s = time.perf_counter() - t0
  losses = np.full(steps, np.nan)
  times = np.zeros(steps)
  bar = tqdm(range(steps), desc=desc or spec.name, leave=False, disable=not progress,
             mininterval=0.5)
  for i in bar:
    t0 = time.perf_counter()
    params, state, value = compiled(params, state, task.data, jnp.int32(i))
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
  metrics = task.evaluate(params) if finite and np.isfinite(losses[-1]) else {}
  return {"learning_rate": learning_rate, "seed": seed, "losses": losses,
          "step_times": times, "compile_s": compile_s, "state_bytes_per_param": bpp,
          "metrics": metrics}


def _final(losses: np.ndarray, window: int) -> float:
  """The smoothed loss at the end of a run (inf if it diverged)."""
  if not np.all(np.isfinite(losses)):
    return math.inf
  return float(smooth(losses, window)[-1])


def _summarise(spec: OptimizerSpec, runs: list[dict], sweep: list[dict], window: int) -> dict:
  finals = [_final(r["losses"], window) for r in runs]
  metric_names = sorted({k for r in runs for k in r["metrics"]})
  metrics = {k: float(np.mean([r["metrics"][k] for r in runs if k in r["metrics"]]))
             for k in metric_names}
  all_times = np.concatenate([r["step_times"] for r in runs])
  return {
      "name": spec.name, "source": spec.source, "extra_args": list(spec.extra_args),
      "learning_rate": runs[0]["learning_rate"],
      "default_learning_rate": spec.learning_rate, "lr_scaled": spec.scale_lr,
      "sweep": [{"learning_rate": s["learning_rate"],
                 "final_loss": _final(s["losses"], window)} for s in sweep],
      "final_loss": float(np.mean(finals)), "final_loss_per_seed": finals,
      "metrics": metrics,
      "median_step_ms": 1e3 * float(np.median(all_times)) if len(all_times) else math.nan,
      "compile_s": float(np.median([r["compile_s"] for r in runs])),
      "state_bytes_per_param": runs[0]["state_bytes_per_param"],
      "runs": [{"seed": r["seed"], "losses": r["losses"].tolist(),
                "step_times": r["step_times"].tolist(), "compile_s": r["compile_s"],
                "metrics": r["metrics"]} for r in runs],
  }


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


def run_bench(task: Task, specs: Sequence[OptimizerSpec], steps: int, seeds: int = 1,
              lr_sweep: int = 1, target: Optional[float] = None, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
  """Sweep, train and compare `specs` on `task`; returns the results dict."""
  if steps < 1 or seeds < 1 or lr_sweep < 1:
    raise BenchError("steps, seeds and lr_sweep must be positive")
  for spec in specs:
    _check_extras(spec, task)
  window = max(1, steps // 25) if task.stochastic else 1
  results = []
  for spec in specs:
    sweep = []
    scale = task.lr_scale if spec.scale_lr and spec.learning_rate is not None else 1.0
    centre = None if spec.learning_rate is None else spec.learning_rate * scale
    if centre is not None:
      how = (f"{spec.learning_rate:.3g} x task lr_scale {scale:g}" if spec.scale_lr
             else "as given")
      log(f"  {spec.name}: learning rate {centre:.3g} ({how})")
    grid = lr_grid(centre, lr_sweep)
    for lr in grid:
      desc = f"{spec.name} lr={lr:.3g}" if lr is not None else spec.name
      sweep.append(train(task, spec, lr, 0, steps, progress, desc))
    best = min(sweep, key=lambda r: _final(r["losses"], window))
    runs = [best] + [train(task, spec, best["learning_rate"], s, steps, progress,
                           f"{spec.name} seed {s}") for s in range(1, seeds)]
    summary = _summarise(spec, runs, sweep if len(grid) > 1 else [], window)
    results.append(summary)
    lr_txt = f" at lr {best['learning_rate']:.3g}" if best["learning_rate"] is not None else ""
    log(f"  {spec.name}: final loss {summary['final_loss']:.4f}{lr_txt}")
  if target is None:
    # the baseline's final loss at its best rate, worst over seeds (every seed reaches it)
    base = ([r for r in results if r["name"] == "adamw"] or results[:1])[0]
    target = float(max(base["final_loss_per_seed"]))
    target_from = f"{base['name']}'s final loss, worst seed"
  else:
    target_from = "--target"
  for r in results:
    runs = [{"losses": np.asarray(x["losses"]), "step_times": np.asarray(x["step_times"])}
            for x in r["runs"]]
    r["steps_to_target"], r["seconds_to_target"] = (
        _to_target(runs, target, window) if math.isfinite(target) else (None, None))
  return {"task": task.name, "description": task.description, "task_info": task.info,
          "steps": steps, "seeds": seeds, "lr_sweep": lr_sweep, "smoothing_window": window,
          "target": target, "target_from": target_from, "log_loss": task.log_loss,
          "lr_scale": task.lr_scale,
          "device": str(jax.devices()[0]), "jax": jax.__version__, "optimizers": results}
