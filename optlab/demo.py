"""`make demo`: the preset bench comparison.

AdamW vs Lion vs SOAP vs Sophia-H (whichever of them this version's catalogue
holds) on the character-level language model over CPython's stdlib
(`lm-stdlib`, a smaller model than the bench default so the whole demo stays
within a few minutes on two CPU cores) and on the digits MLP (mini-batches,
three learning rates per recipe). Every recipe runs at its documented defaults,
with the bench's default learning rate (`optlab.bench.defaults`) scaled by the
task's lr_scale. Each task writes its table, results.json, report.md and loss
plots under `out/<task>/`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from optlab.bench import make_task, resolve_optimizers, run_bench, table, write_all
from optlab.catalog import catalog

DEFAULT = ("adamw", "lion", "soap", "sophia_h")

# task -> (task options, steps, learning rates tried per recipe)
PRESET = {
    "lm-stdlib": ({"d_model": 96, "n_layers": 3, "n_heads": 4, "context": 64,
                   "batch_size": 16}, 400, 1),
    "digits-mlp": ({"batch_size": 128}, 300, 3),
}


def main(names: Optional[Sequence[str]] = None, tasks: Optional[Sequence[str]] = None,
         steps: Optional[int] = None, out: str = "bench_out/demo", *, progress: bool = True
         ) -> dict[str, dict]:
  known = {r.name for r in catalog()}
  names = list(names) if names else [n for n in DEFAULT if n in known]
  missing = [n for n in DEFAULT if n not in known]
  if missing and not names:
    raise ValueError(f"none of the preset recipes {list(DEFAULT)} is in this catalogue")
  specs = resolve_optimizers(names)
  tasks = list(tasks) if tasks else list(PRESET)
  t0 = time.perf_counter()
  all_results, written = {}, []
  for name in tasks:
    options, default_steps, sweep = PRESET.get(name, ({}, 300, 1))
    task = make_task(name, **options)
    n = steps or default_steps
    print(f"\n== {task.name}: {task.description}, {n} steps, "
          f"{', '.join(s.name for s in specs)}" + (f", lr sweep {sweep}" if sweep > 1 else ""))
    results = run_bench(task, specs, n, lr_sweep=sweep, progress=progress)
    paths = write_all(results, Path(out) / name)
    print(table(results))
    written.append(paths)
    all_results[name] = results
  if missing and names == [n for n in DEFAULT if n in known]:
    print(f"\n(not in this catalogue yet, skipped: {', '.join(missing)})")
  print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; plots:")
  for paths in written:
    for key, p in paths.items():
      if key.startswith("loss"):
        print(f"  {p}")
  print(f"reports: {', '.join(str(p['markdown']) for p in written)}")
  return all_results
