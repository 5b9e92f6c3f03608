"""The layer-statistics curvature methods against AdamW: steps to AdamW's final
loss on the digits MLP and the char-LM, each method's learning rate tuned with the
same budget until its optimum is inside the grid; step time and optimizer-state
bytes per parameter as ratios to AdamW from the same run.

Each task is one ``optlab bench`` run (tuning, seeds, the baseline at several run
lengths for the speedups); the bench supplies ``layer_stats`` by capturing the
task's flax ``nn.Dense`` layers (`optlab.capture_linen`) in the same pass as the
gradient, and ``logits_fn`` from the task's logits. The per-task reports go to
``benchmarks/results/kfac_family/<task>/`` and one summary to
``benchmarks/results/kfac_family.md``.

    python benchmarks/kfac_family.py            # both tasks, as recorded
    python benchmarks/kfac_family.py --quick    # a smoke run (small budget, few steps)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from optlab.bench.report import lr_text, speedup_text  # noqa: E402
OPTIMIZERS = ("adamw", "kfac", "mkor", "adafisher", "egn", "natural_galore")
# task -> (bench arguments, steps, optimizers left out and why)
TASKS = {
    "digits-mlp": (["--preset", "demo"], 300, {}),
    "lm-stdlib": (["--preset", "demo"], 400, {
        "egn": "its batch-space system has (rows x vocabulary)^2 = (512 x 256)^2 entries "
               "per step here"}),
}


def _ratios(results: dict, baseline: str) -> dict[str, tuple[float, float]]:
  """name -> (step time, state bytes/param) relative to the baseline."""
  by_name = {r["name"]: r for r in results["optimizers"]}
  base = by_name[baseline]
  return {n: (r["median_step_ms"] / base["median_step_ms"],
              r["state_bytes_per_param"] / base["state_bytes_per_param"])
          for n, r in by_name.items()}


def summary(parts: dict[str, dict], command: str, baseline: str = "adamw") -> str:
  lines = ["# Layer-statistics curvature methods vs AdamW", "",
           f"Command: `{command}`. Every number below comes from that run; the per-task "
           "reports (tuning trials, seeds, plots) are in `kfac_family/<task>/report.md`.", ""]
  for task, results in parts.items():
    ratios = _ratios(results, baseline)
    lines += [f"## {task}", "", results["description"] + ".", "",
              "| optimizer | lr | final loss | score | speedup vs adamw | "
              "steps→target | step time × adamw | state bytes/param × adamw |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["optimizers"]:
      steps = r.get("steps_to_target")
      lines.append(
          f"| {r['name']} | {lr_text(r)} | {r['final_loss']:.4f} | {r['score']:.4f} | "
          f"{speedup_text(r.get('speedup'))} | {'-' if steps is None else steps} | "
          f"{ratios[r['name']][0]:.2f} | {ratios[r['name']][1]:.2f} |")
    for name, why in TASKS[task][2].items():
      lines += ["", f"`{name}` is left out on this task: {why}."]
    lines += ["", "lr* : the best learning rate is at the edge of what the tuning budget reached "
              "(not interior: no claim is made for it). Speedup: AdamW's steps to the same "
              "score over the run's steps, median over seeds (range).", ""]
  return "\n".join(lines)


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
  ap.add_argument("--tasks", default=",".join(TASKS))
  ap.add_argument("--budget", type=int, default=8)
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kfac_family"))
  args = ap.parse_args()
  if args.quick:
    args.budget, args.seeds = 3, 1
  out = Path(args.out)
  parts = {}
  for task in args.tasks.split(","):
    extra, steps, left_out = TASKS[task]
    steps = 40 if args.quick else steps
    names = [n for n in args.optimizers.split(",") if n not in left_out]
    cmd = [sys.executable, "-m", "optlab.cli", "bench", "--task", task, *extra,
           "--optimizers", ",".join(names), "--steps", str(steps), "--tune", "lr",
           "--budget", str(args.budget), "--seeds", str(args.seeds), "--schedule", "cosine",
           "--no-progress", "--out", str(out / task)]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"{task}: {time.time() - t0:.0f} s", flush=True)
    parts[task] = json.loads((out / task / "results.json").read_text())
  command = "python benchmarks/kfac_family.py" + (" --quick" if args.quick else "")
  md = out.with_suffix(".md")
  md.write_text(summary(parts, command))
  print(md.read_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
