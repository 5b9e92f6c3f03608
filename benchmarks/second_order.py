"""Second-order benchmark: SOAP / Shampoo / Muon step time, compile time, convergence.

    python benchmarks/second_order.py            # a few minutes on CPU
    python benchmarks/second_order.py --quick    # smaller sizes, for a smoke run

1. Step time of soap and shampoo (preconditioning every 10 steps, amortised
   over >= 20 steps that include two refreshes) against adamw, on 4 matrices
   of n x n (n=1024) plus 1-d leaves, measured side by side in one process.
2. Compile time of init + update for a 100-leaf model.
3. optlab.muon against optax.contrib.muon at equal settings (step time).
4. Steps to reach AdamW's final loss on the digits MLP (tests/problems.py),
   full batch, each method with a small learning-rate sweep.

Writes benchmarks/results/second_order.{json,md}. Ratios, not bare times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optlab  # noqa: E402
from tests import problems  # noqa: E402


def _block(tree):
  jax.tree.map(lambda x: x.block_until_ready(), tree)


def step_time(tx, params, steps, repeats=1):
  """Seconds per step: `steps` jitted steps inside one lax.scan (after a warm-up run
  that also compiles), best of `repeats`."""
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype) * 0.01,
                       params)

  @jax.jit
  def run(p, s):
    def body(carry, t):
      p, s = carry
      g = jax.tree.map(lambda x: x * (1.0 + 0.01 * t), grads)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(body, (p, s), jnp.arange(steps, dtype=jnp.float32))
    return p, s

  state = tx.init(params)
  _block(run(params, state))  # compile + warm-up
  best = np.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    _block(run(params, state))
    best = min(best, time.perf_counter() - t0)
  return best / steps


def bench_step_time(n, steps):
  rng = np.random.default_rng(1)
  params = {f"w{i}": jnp.asarray(rng.normal(size=(n, n)) / np.sqrt(n), jnp.float32)
            for i in range(4)}
  params.update({f"b{i}": jnp.zeros((n,), jnp.float32) for i in range(4)})
  txs = {
      "adamw": optlab.adamw(1e-3),
      "soap": optlab.soap(1e-3, precondition_frequency=10),
      "shampoo (block 1024)": optlab.shampoo(1e-3, block_size=1024,
                                             preconditioning_compute_steps=10),
  }
  times = {name: step_time(tx, params, steps) for name, tx in txs.items()}
  base = times["adamw"]
  return {name: {"seconds_per_step": t, "ratio_vs_adamw": t / base} for name, t in times.items()}


def bench_compile_time(leaves=100):
  rng = np.random.default_rng(2)
  params = {}
  for i in range(leaves // 2):
    d = 16 + 8 * (i % 8)
    params[f"w{i}"] = jnp.asarray(rng.normal(size=(d, d + 8)), jnp.float32)
    params[f"b{i}"] = jnp.zeros((d + 8,), jnp.float32)
  out = {}
  for name, tx in {"adamw": optlab.adamw(1e-3), "soap": optlab.soap(1e-3),
                   "shampoo": optlab.shampoo(1e-3), "muon": optlab.muon(0.02)}.items():
    state = jax.eval_shape(tx.init, params)
    t0 = time.perf_counter()
    jax.jit(tx.init).lower(params).compile()
    jax.jit(tx.update).lower(params, state, params).compile()
    out[name] = time.perf_counter() - t0
  return {k: {"seconds": v, "ratio_vs_adamw": v / out["adamw"]} for k, v in out.items()}


def bench_muon(n, steps):
  rng = np.random.default_rng(3)
  params = {f"w{i}": jnp.asarray(rng.normal(size=(n, n)) / np.sqrt(n), jnp.float32)
            for i in range(4)}
  params.update({f"b{i}": jnp.zeros((n,), jnp.float32) for i in range(4)})
  kw = dict(beta=0.95, adam_b1=0.9, adam_b2=0.95)
  mine = step_time(optlab.muon(0.02, nesterov=True, **kw), params, steps)
  theirs = step_time(optax.contrib.muon(0.02, nesterov=True, **kw), params, steps)
  return {"optlab.muon": mine, "optax.contrib.muon": theirs, "ratio": mine / theirs}


def _trajectory(tx, steps):
  params, loss, _, _ = problems.TASKS["digits"]()

  @jax.jit
  def train(p):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      p = optax.apply_updates(p, u)
      return (p, s), loss(p)

    _, losses = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
    return losses

  return np.asarray(train(params))


def bench_convergence(steps=250):
  lrs = {
      "adamw": [1e-3, 3e-3, 1e-2, 3e-2],
      "soap": [1e-3, 3e-3, 1e-2, 3e-2],
      "shampoo": [0.01, 0.03, 0.1, 0.3],
      "muon": [0.003, 0.01, 0.03, 0.1],
  }
  build = {
      "adamw": lambda lr: optlab.adamw(lr, weight_decay=0.0),
      "soap": lambda lr: optlab.soap(lr, weight_decay=0.0),
      "shampoo": lambda lr: optlab.shampoo(lr),
      "muon": lambda lr: optlab.muon(lr, adam_learning_rate=lr / 3),
  }
  curves = {name: {lr: _trajectory(build[name](lr), steps) for lr in lrs[name]} for name in lrs}
  best_adam_lr = min(curves["adamw"], key=lambda lr: curves["adamw"][lr][-1])
  target = float(curves["adamw"][best_adam_lr][-1])
  adam_steps = int(np.argmax(curves["adamw"][best_adam_lr] <= target)) + 1
  out = {"target_loss": target, "adamw_best_lr": best_adam_lr, "steps_budget": steps,
         "methods": {}}
  for name, by_lr in curves.items():
    rows = {}
    for lr, c in by_lr.items():
      hit = np.nonzero(c <= target)[0]
      rows[str(lr)] = {"final_loss": float(c[-1]),
                       "steps_to_target": int(hit[0]) + 1 if hit.size else None}
    reached = [r["steps_to_target"] for r in rows.values() if r["steps_to_target"]]
    best = min(reached) if reached else None
    out["methods"][name] = {"by_lr": rows, "best_steps_to_target": best,
                            "ratio_vs_adamw": best / adam_steps if best else None}
  return out


def _markdown(res):
  lines = ["# Second-order benchmark", "",
           f"Machine: {res['machine']}. Ratios are against AdamW measured in the same run.", "",
           f"## Step time: 4 x {res['n']}^2 matrices + 4 vectors of {res['n']} "
           f"(preconditioning every 10 steps, amortised over {res['steps']} steps)", "",
           "| method | s / step | ratio vs adamw |", "|---|---|---|"]
  for k, v in res["step_time"].items():
    lines.append(f"| {k} | {v['seconds_per_step']:.4f} | {v['ratio_vs_adamw']:.2f} |")
  lines += ["", "## Compile time (init + update), 100-leaf model", "",
            "| method | seconds | ratio vs adamw |", "|---|---|---|"]
  for k, v in res["compile_time"].items():
    lines.append(f"| {k} | {v['seconds']:.2f} | {v['ratio_vs_adamw']:.2f} |")
  m = res["muon"]
  lines += ["", f"## Muon vs optax.contrib.muon (4 x {res['muon_n']}^2 + vectors)", "",
            "| optlab.muon s/step | optax.contrib.muon s/step | ratio |", "|---|---|---|",
            f"| {m['optlab.muon']:.4f} | {m['optax.contrib.muon']:.4f} | {m['ratio']:.2f} |"]
  c = res["convergence"]
  lines += ["", f"## Steps to AdamW's final loss on the digits MLP (full batch, "
            f"{c['steps_budget']} steps; target {c['target_loss']:.4f} = AdamW lr "
            f"{c['adamw_best_lr']})", "",
            "| method | best steps to target | ratio vs adamw | final loss by lr |",
            "|---|---|---|---|"]
  for k, v in c["methods"].items():
    finals = ", ".join(f"{lr}: {r['final_loss']:.4f}" for lr, r in v["by_lr"].items())
    ratio = "n/a" if v["ratio_vs_adamw"] is None else f"{v['ratio_vs_adamw']:.2f}"
    lines.append(f"| {k} | {v['best_steps_to_target']} | {ratio} | {finals} |")
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  n, steps, muon_n = (256, 20, 256) if args.quick else (1024, 20, 512)
  res = {"machine": f"{platform.machine()} {platform.processor() or ''} "
                    f"{os.cpu_count()} cpus, jax {jax.__version__} on "
                    f"{jax.devices()[0].platform}".strip(),
         "n": n, "steps": steps, "muon_n": muon_n}
  out = ROOT / "benchmarks" / "results"
  out.mkdir(parents=True, exist_ok=True)
  suffix = "_quick" if args.quick else ""

  def save():  # after every section, so that a long run leaves partial results
    (out / f"second_order{suffix}.json").write_text(json.dumps(res, indent=1))

  sections = (("step_time", lambda: bench_step_time(n, steps)),
              ("compile_time", bench_compile_time),
              ("muon", lambda: bench_muon(muon_n, steps)),
              ("convergence", bench_convergence))
  for name, fn in sections:
    res[name] = fn()
    print(name, json.dumps(res[name], indent=1), flush=True)
    save()
  (out / f"second_order{suffix}.md").write_text(_markdown(res))
  print(_markdown(res))


if __name__ == "__main__":
  main()
