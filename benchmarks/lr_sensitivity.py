"""Learning-rate sensitivity of the step-size-free methods against AdamW.

On the built-in tasks of tests/problems.py (the ill-conditioned quadratic, the
Rosenbrock valley and the digits MLP, each with its contract step budget),
every method is run at 5 learning rates log-spaced over one decade around its
documented default, lr0 * 10^{-1/2, -1/4, 0, 1/4, 1/2} (for the step-size-free
methods the learning rate is a multiplier of the adapted step; lr0 is 1 for
most of them; AdamW has no default and runs around 1e-2, see `SETTINGS`), every
other argument at its default, and the final loss is recorded. The summary per method and
task is the spread of the final loss over that decade (max / min), and how
many of the 5 runs reach the contract's target (e.g. 5% of the initial loss
on the quadratic).

All 5 learning rates of one method run in one compiled program: the recipe
is wrapped in `optax.inject_hyperparams` and the runs are `vmap`-ped over the
injected learning rate.

    python benchmarks/lr_sensitivity.py                      # all methods, ~minutes on CPU
    python benchmarks/lr_sensitivity.py --only dog,adamw --out /tmp/lr.json

Writes benchmarks/results/lr_sensitivity.{json,md} by default.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optlab  # noqa: E402
from tests import extras, problems  # noqa: E402

METHODS = ("adamw", "dog", "ldog", "dadapt_sgd", "dadapt_adam", "dadapt_lion", "momo",
           "momo_adam", "sps", "sania")
FACTORS = tuple(10.0 ** e for e in (-0.5, -0.25, 0.0, 0.25, 0.5))
# Explicit settings where a method has no documented default learning rate:
# AdamW at the bench's rate for full-batch toy problems (1e-3 x lr_scale 10).
SETTINGS = {"adamw": {"learning_rate": 1e-2}}


def settings(recipe) -> dict:
  """The method's keyword arguments: `SETTINGS`, else its default learning rate."""
  if recipe.name in SETTINGS:
    return dict(SETTINGS[recipe.name])
  return {"learning_rate": float(
      inspect.signature(recipe.factory).parameters["learning_rate"].default)}


def run_method(name: str, task: str) -> dict:
  recipe = optlab.get_recipe(name)
  params, loss, steps, passes = problems.TASKS[task]()
  hp = settings(recipe)
  lr0 = float(hp["learning_rate"])
  floats = {k for k, v in hp.items() if isinstance(v, float) and not isinstance(v, bool)}
  tx = optax.inject_hyperparams(recipe.factory, static_args=tuple(k for k in hp if k not in floats))(
      **hp)

  def train(lr):
    state = tx.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)

    def body(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p, **extras.extra_args(recipe.needs_extra_args, loss, p))
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (params, state), None, length=steps)
    return loss(p)

  lrs = jnp.asarray([lr0 * f for f in FACTORS], jnp.float32)
  start = time.perf_counter()
  finals = np.asarray(jax.jit(jax.vmap(train))(lrs), np.float64)
  seconds = time.perf_counter() - start
  initial = float(loss(params))
  ok = [bool(np.isfinite(f) and passes(f, initial)) for f in finals]
  finite = finals[np.isfinite(finals)]
  spread = (float(finite.max() / finite.min()) if finite.size == len(finals) and finite.min() > 0
            else math.inf)
  return {"method": name, "task": task, "steps": steps, "lr0": lr0,
          "learning_rates": [float(x) for x in lrs], "initial_loss": initial,
          "final_loss": [float(x) for x in finals], "reaches_target": ok,
          "n_reach_target": int(sum(ok)), "spread_max_over_min": spread, "seconds": seconds}


def _fmt(x: float) -> str:
  if not np.isfinite(x):
    return "nan" if np.isnan(x) else "inf"
  return f"{x:.2e}"


def markdown(rows: list[dict], meta: dict) -> str:
  tasks = sorted({r["task"] for r in rows})
  out = ["# Learning-rate sensitivity: step-size-free methods vs AdamW", "",
         "Final loss after each task's contract step budget at 5 learning rates "
         "lr0 * 10^(-1/2 .. 1/2) (one decade around the catalog value lr0; for the "
         "step-size-free methods a multiplier of the adapted step). `target` counts the "
         "runs that reach the contract's convergence target; `spread` is max/min final "
         "loss over the decade (lower = less sensitive).", "",
         f"Machine: {meta['machine']}; jax {meta['jax']}; {meta['date']}.", ""]
  for task in tasks:
    out += [f"## {task}", "",
            "| method | lr0 | " + " | ".join(f"x{f:.2f}" for f in FACTORS) +
            " | target (of 5) | spread |",
            "|---|---|" + "---|" * len(FACTORS) + "---|---|"]
    for r in [r for r in rows if r["task"] == task]:
      out.append(f"| {r['method']} | {r['lr0']:g} | " +
                 " | ".join(_fmt(x) for x in r["final_loss"]) +
                 f" | {r['n_reach_target']} | {_fmt(r['spread_max_over_min'])} |")
    out.append("")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated method names")
  parser.add_argument("--out", default="benchmarks/results/lr_sensitivity.json")
  args = parser.parse_args()
  methods = [m for m in args.only.split(",") if m] or list(METHODS)
  rows = []
  for name in methods:
    for task in sorted(problems.TASKS):
      row = run_method(name, task)
      rows.append(row)
      print(f"{name:12s} {task:10s} " + " ".join(_fmt(x) for x in row["final_loss"]) +
            f"  target {row['n_reach_target']}/5  ({row['seconds']:.1f}s)", flush=True)
  meta = {"machine": f"{platform.machine()} {platform.processor() or ''} "
                     f"{jax.devices()[0].platform} x{jax.device_count()}".strip(),
          "jax": jax.__version__, "optax": optax.__version__,
          "date": time.strftime("%Y-%m-%d %H:%M:%S"), "factors": list(FACTORS)}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(markdown(rows, meta) + "\n")
  print(markdown(rows, meta))


if __name__ == "__main__":
  main()
