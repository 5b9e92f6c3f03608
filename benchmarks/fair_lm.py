"""A fair comparison on lm-stdlib's ``large`` preset (3.3M parameters), one
process per optimizer sharing one machine, merged into one report.

Each optimizer is an ``optlab bench`` run of its own: its learning rate tuned
with the same budget, then every seed at the tuned rate, all under one cosine
schedule. The baseline's process also runs it at 1/4, 1/2 and 2 times the run
length; `optlab.bench.merge_results` reads every optimizer's speedup off that
curve. Running the processes side by side shares the accelerator, so the
step times in the merged report are contended: only the losses, scores and
speedups are comparisons.

    python benchmarks/fair_lm.py --out benchmarks/results/lm_large_fair --parallel 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HEADLINE = ("adamw", "soap", "muon", "sophia_h", "lion", "mars_adamw", "cautious_adamw",
            "adam_mini")


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--optimizers", default=",".join(HEADLINE))
  ap.add_argument("--baseline", default="adamw")
  ap.add_argument("--preset", default="large")
  ap.add_argument("--task-arg", action="append", default=[])
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--budget", type=int, default=6)
  ap.add_argument("--tune", default="lr,adam_learning_rate",
                  help="knobs to tune; each optimizer tunes those it has (Muon: both rates)")
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--parallel", type=int, default=4)
  ap.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                  help="stop unfinished optimizers after this long and merge the rest")
  ap.add_argument("--work", default="/tmp/fair_lm_parts")
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  names = args.optimizers.split(",")
  work = Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}

  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from optlab import bench
  from optlab.bench.tuning import parse_knobs

  def knobs(name: str) -> str:
    has = bench.resolve_optimizers([name])[0].tunable()
    return ",".join(k for k in parse_knobs(args.tune) if k in has) or "none"

  def one(name: str) -> tuple[str, int, float]:
    base = name == args.baseline
    cmd = [sys.executable, "-m", "optlab.cli", "bench", "--task", "lm-stdlib", "--preset",
           args.preset, "--optimizers", name, "--steps", str(args.steps), "--budget",
           str(args.budget), "--tune", knobs(name), "--seeds", str(args.seeds),
           "--schedule", "cosine",
           "--budgets", "0.25,0.5,2" if base else "none", "--out", str(work / name),
           "--no-progress", *[a for t in args.task_arg for a in ("--task-arg", t)]]
    t0 = time.time()
    with open(work / f"{name}.log", "w") as log:
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
      left = None if args.deadline is None else max(1.0, start + args.deadline - time.time())
      try:
        code = proc.wait(timeout=left)
      except subprocess.TimeoutExpired:
        proc.kill()
        code = "killed at the deadline"
    return name, code, time.time() - t0

  start = time.time()
  # the baseline first: it has the most runs
  order = [args.baseline] + [n for n in names if n != args.baseline]
  with ThreadPoolExecutor(args.parallel) as pool:
    for name, code, secs in pool.map(one, order):
      print(f"{name}: exit {code} after {secs:.0f} s", flush=True)
  parts = [json.loads((work / n / "results.json").read_text()) for n in order
           if (work / n / "results.json").exists()]
  merged = bench.merge_results(parts, args.baseline)
  merged["note"] = (f"{len(parts)} processes ({args.parallel} at a time) shared the device: "
                    "step and compile times are contended")
  out = Path(args.out)
  paths = bench.write_all(merged, out)
  (out / "runs.log").write_text("".join((work / f"{n}.log").read_text() for n in order))
  print(bench.table(merged))
  print("wrote", ", ".join(str(p) for p in paths.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
