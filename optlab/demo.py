"""`make demo`: the preset comparison, from the tuned tables that ship with optlab.

AdamW, Lion, SOAP, Sophia-H and Muon (whichever of them the catalogue holds) on
the character-level language model over CPython's stdlib (`lm-stdlib`, its
``demo`` preset: small enough for two CPU cores) and on the digits MLP
(mini-batches of 128). Every optimizer runs at the hyperparameters in
``optlab/bench/tuned/<task>-demo.json``, which `optlab tune` wrote with the
same budget of runs for each optimizer (the command is printed and stored in the
file), over 2 seeds and a cosine schedule; AdamW also runs at 1/4, 1/2 and 2
times the length, and each optimizer's speedup is read off that curve. Each task
writes its table, results.json, report.md and loss plots under ``out/<task>/``.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from optlab.bench import make_task, read_tuned, resolve_optimizers, run_bench, table, write_all
from optlab.bench.tuning import format_hparams
from optlab.catalog import catalog

DEFAULT = ("adamw", "lion", "soap", "sophia_h", "muon")
# task -> (preset, steps); the tuned tables were made at exactly these settings
PRESET = {"lm-stdlib": ("demo", 250), "digits-mlp": ("demo", 300)}
SCHEDULE, WARMUP, BUDGETS = "cosine", 0.05, (0.25, 0.5, 2.0)


def tuned_table_path(task: str) -> Path:
  """The shipped tuned table of a demo task."""
  preset, _ = PRESET[task]
  return Path(str(resources.files("optlab.bench") / "tuned" / f"{task}-{preset}.json"))


def main(names: Optional[Sequence[str]] = None, tasks: Optional[Sequence[str]] = None,
         seeds: int = 2, out: str = "bench_out/demo", *, progress: bool = True
         ) -> dict[str, dict]:
  known = {r.name for r in catalog()}
  names = list(names) if names else [n for n in DEFAULT if n in known]
  tasks = list(tasks) if tasks else list(PRESET)
  unknown = [t for t in tasks if t not in PRESET]
  if unknown:
    raise ValueError(f"the demo has no tuned tables for {unknown}; it covers {list(PRESET)} "
                     "(use `optlab tune` and `optlab bench --tuned FILE` for other tasks)")
  specs = resolve_optimizers(names)
  t0 = time.perf_counter()
  all_results, written = {}, []
  for name in tasks:
    preset, steps = PRESET[name]
    task = make_task(name, preset)
    path = tuned_table_path(name)
    tuned = read_tuned(path, task.name, task.options)
    missing = [n for n in names if n not in tuned["optimizers"]]
    if missing:
      raise ValueError(f"{path.name} has no tuned values for {missing}; tune them with "
                       f"`optlab tune --task {name} --preset {preset} --optimizers "
                       f"{','.join(missing)} --steps {steps} --out FILE`")
    print(f"\n== {task.description}: {steps} steps, {', '.join(names)}, {seeds} seeds")
    print(f"   hyperparameters from {path.name}: each optimizer's learning rate(s) tuned on "
          f"seed 0 with at most {tuned['budget']} runs, the same for all, by\n   "
          f"{tuned['command']}")
    for n in names:
      entry = tuned["optimizers"][n]
      flag = "interior" if entry["interior"] else f"NOT interior ({entry['note']})"
      print(f"   {n}: {format_hparams(entry['hparams'], entry['knobs'])}"
            + f" ({entry['runs']} runs, optimum {flag}); other arguments at their defaults")
    results = run_bench(task, specs, steps, seeds=seeds,
                        tuned={n: tuned["optimizers"][n] for n in names},
                        schedule=SCHEDULE, warmup=WARMUP, budgets=BUDGETS, progress=progress,
                        log=lambda s: None)
    results["tuned_table"] = {"file": path.name, "command": tuned["command"]}
    paths = write_all(results, Path(out) / name)
    print(table(results))
    written.append(paths)
    all_results[name] = results
  print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; plots:")
  for paths in written:
    for key, p in paths.items():
      if key.startswith("loss"):
        print(f"  {p}")
  print(f"reports: {', '.join(str(p['markdown']) for p in written)}")
  return all_results
