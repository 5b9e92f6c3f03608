"""Zeroth-order recipes against first-order AdamW on the digits MLP.

For each method: steps to reach a target training loss, wall time per step,
and the compiled step's memory (XLA memory analysis: scratch, and the peak of
scratch + arguments + outputs - aliased). ZO methods run through
`optlab.zo_step` (no backward pass); AdamW uses jax.grad.

Two starting points: the random init (training from scratch), and a
"fine-tuning" start, the params after ``--finetune-from`` AdamW steps, the
setting the ZO papers target (Sparse MeZO's claim is about it).

    python benchmarks/zeroth_order.py                 # writes benchmarks/results/zeroth_order.{json,md}
    python benchmarks/zeroth_order.py --steps 2000 --target 0.5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import optax  # noqa: E402

import optlab  # noqa: E402
from optlab import federated  # noqa: E402

METHODS = {
    "adamw": lambda: optax.adamw(3e-3),
    "mezo": lambda: optlab.mezo(0.05, eps=1e-2, n_samples=16),
    "mezo_n1": lambda: optlab.mezo(0.01, eps=1e-2, n_samples=1),
    "sparse_mezo": lambda: optlab.sparse_mezo(0.05, sparsity=0.5, eps=1e-2, n_samples=16),
    "zo_adamu": lambda: optlab.zo_adamu(0.05, eps=1e-2, sigma=1.0, n_samples=16),
    "quzo_int8": lambda: optlab.quzo(0.05, eps=1e-2, n_samples=16, bits=8),
    "quzo_int4": lambda: optlab.quzo(0.05, eps=5e-2, n_samples=16, bits=4),
    "deepzero": lambda: optlab.deepzero(0.05, mu=1e-2, sparsity=0.95),
}


def _memory(step, params, state):
  m = jax.jit(step, donate_argnums=(0, 1)).lower(params, state).compile().memory_analysis()
  return {"temp_bytes": int(m.temp_size_in_bytes),
          "peak_bytes": int(m.temp_size_in_bytes + m.argument_size_in_bytes
                            + m.output_size_in_bytes - m.alias_size_in_bytes)}


def _problem():
  x, y = federated.digits_shards(1)
  x, y = x[0][:1536], y[0][:1536]
  return lambda p: federated.mlp_loss(p, x, y)


def pretrained(steps):
  """The MLP after `steps` full-batch AdamW steps (lr 3e-3) from the benchmark's init."""
  loss, tx = _problem(), optax.adamw(3e-3)
  params = federated.init_mlp(jax.random.key(0), 32)

  @jax.jit
  def many(p):
    def body(c, _):
      p, s = c
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[0][0]

  return many(params)


def run(name, steps, target, chunk, params):
  loss = _problem()
  tx = METHODS[name]()
  if name == "adamw":
    def step(p, s):
      value, g = jax.value_and_grad(loss)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, value
  else:
    step = lambda p, s: optlab.zo_step(tx, loss, p, s)

  @jax.jit
  def many(p, s):
    def body(c, _):
      p, s, _ = step(*c)
      return (p, s), None
    (p, s), _ = jax.lax.scan(body, (p, s), None, length=chunk)
    return p, s, loss(p)

  state = tx.init(params)
  memory = _memory(step, params, state)
  p, s = params, state
  jax.block_until_ready(many(p, s))  # compile
  reached, losses, t0 = None, [], time.perf_counter()
  for k in range(steps // chunk):
    p, s, value = many(p, s)
    losses.append(float(value))
    if reached is None and losses[-1] <= target:
      reached = (k + 1) * chunk
  seconds = time.perf_counter() - t0
  return {"name": name, "steps": steps, "final_loss": losses[-1],
          "initial_loss": float(loss(params)), "steps_to_target": reached,
          "ms_per_step": 1000 * seconds / steps, **memory,
          "loss_every_chunk": losses}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=1500)
  ap.add_argument("--chunk", type=int, default=50)
  ap.add_argument("--target", type=float, default=0.6)
  ap.add_argument("--finetune-from", type=int, default=30, help="AdamW steps before fine-tuning")
  ap.add_argument("--finetune-steps", type=int, default=1000)
  ap.add_argument("--finetune-target", type=float, default=0.3)
  ap.add_argument("--out", default=os.path.join(_ROOT, "benchmarks/results/zeroth_order.json"))
  args = ap.parse_args()
  init = federated.init_mlp(jax.random.key(0), 32)
  warm = pretrained(args.finetune_from)
  scenarios = {
      "from scratch": (init, args.steps, args.target),
      f"fine-tuning after {args.finetune_from} AdamW steps": (warm, args.finetune_steps,
                                                              args.finetune_target)}
  meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
          "machine": platform.platform(), "jax": jax.__version__,
          "devices": str(jax.devices()), "task": "digits MLP 64-32-10, 1536 examples, full batch"}
  results, lines = {}, [f"# Zeroth-order vs AdamW ({meta['task']})", "",
                        f"{meta['date']}, {meta['machine']}, jax {meta['jax']}."]
  for title, (params, steps, target) in scenarios.items():
    rows = [run(n, steps, target, args.chunk, params) for n in METHODS]
    base = next(r for r in rows if r["name"] == "adamw")
    for r in rows:
      r["peak_vs_adamw"] = r["peak_bytes"] / base["peak_bytes"]
      r["step_time_vs_adamw"] = r["ms_per_step"] / base["ms_per_step"]
    results[title] = {"target_loss": target, "steps": steps, "rows": rows}
    lines += ["", f"## {title}: {steps} steps, target loss {target} "
              f"(initial loss {rows[0]['initial_loss']:.3f})", "",
              "| method | steps to target | final loss | ms/step | x AdamW step | "
              "peak KiB | x AdamW peak |", "|---|---|---|---|---|---|---|"]
    for r in rows:
      lines.append(f"| {r['name']} | {r['steps_to_target']} | {r['final_loss']:.3f} | "
                   f"{r['ms_per_step']:.2f} | {r['step_time_vs_adamw']:.2f} | "
                   f"{r['peak_bytes'] / 1024:.0f} | {r['peak_vs_adamw']:.2f} |")
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "scenarios": results}, f, indent=1)
  text = "\n".join(lines) + "\n"
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
