"""Step-time overhead of each optlab wrapper relative to its inner chain.

For every wrapper (lookahead, schedule_free, with_gradient_noise, switch,
xgrad, sgg) this times one jitted training step of ``wrapper(inner)`` and of
``inner`` alone, alternately, pair by pair in one process (the order inside
each pair swapped every pair), on the transformer-shaped tree of
`step_time.py` (``--size`` float32 parameters in 20 leaves), with params and
state donated. The inner chain is ``optlab.adamw(1e-3)``. The report gives
each median step time and the median of the per-pair ratios wrapper / inner.

    python benchmarks/wrapper_overhead.py                  # 2M params
    python benchmarks/wrapper_overhead.py --size 10000000 --steps 40

`switch` never fires here (its trigger is ``after_steps`` past the run), so
it measures the cost of carrying the second chain's state and the
`lax.cond`; `sgg` reclusters every 500 steps, outside the timed window (its
k-means step is timed separately as ``sgg (recluster step)``).
Writes ``--out`` (JSON) and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (_ROOT, os.path.join(_ROOT, "benchmarks")):
  if path not in sys.path:
    sys.path.insert(0, path)

import jax  # noqa: E402
import optax  # noqa: E402

import optlab  # noqa: E402
from step_time import copy_like, make_tree, transformer_shapes  # noqa: E402

DEFAULT_OUT = os.path.join("benchmarks", "results", "wrapper_overhead.json")


def inner():
  return optlab.adamw(1e-3, weight_decay=0.01)


WRAPPERS = {
    "with_lookahead": lambda: optlab.with_lookahead(inner(), 5, 0.5),
    "schedule_free": lambda: optlab.schedule_free(
        optlab.adamw(1e-3, b1=0.0, weight_decay=0.01), 1e-3),
    "with_gradient_noise": lambda: optlab.with_gradient_noise(inner(), 0.01),
    "switch": lambda: optlab.switch(inner(), optlab.sgd(1e-3), optlab.after_steps(10 ** 9)),
    "xgrad": lambda: optlab.xgrad(inner()),
    "sgg": lambda: optlab.sgg(inner(), recluster_interval=500),
    "sgg (recluster step)": lambda: optlab.sgg(inner(), recluster_interval=1),
}


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def measure(name, build, params, grads, steps, warmup=3):
  pair = {}
  for key, tx in (("wrapper", build()), ("inner", inner())):
    p = copy_like(params)
    pair[key] = [make_step(tx), p, tx.init(p)]
  for _ in range(warmup):
    for key in pair:
      f, p, s = pair[key]
      p, s = f(p, s, grads)
      jax.block_until_ready(p)
      pair[key][1:] = [p, s]
  times = {"wrapper": [], "inner": []}
  for i in range(steps):
    order = ("wrapper", "inner") if i % 2 == 0 else ("inner", "wrapper")
    for key in order:
      f, p, s = pair[key]
      t0 = time.perf_counter()
      p, s = f(p, s, grads)
      jax.block_until_ready((p, s))
      times[key].append(time.perf_counter() - t0)
      pair[key][1:] = [p, s]
  ratios = [a / b for a, b in zip(times["wrapper"], times["inner"])]
  return {"wrapper": name, "median_ms": 1e3 * statistics.median(times["wrapper"]),
          "inner_median_ms": 1e3 * statistics.median(times["inner"]),
          "ratio": statistics.median(ratios)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=2_000_000)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--out", default=DEFAULT_OUT)
  args = parser.parse_args(argv)
  shapes = transformer_shapes(args.size)
  params = make_tree(shapes, 0)
  grads = make_tree(shapes, 1)
  n = sum(x.size for x in jax.tree.leaves(params))
  rows = []
  for name, build in WRAPPERS.items():
    row = measure(name, build, params, grads, args.steps)
    rows.append(row)
    print(f"{name:>22}: {row['median_ms']:8.2f} ms vs inner {row['inner_median_ms']:8.2f} ms "
          f"-> ratio {row['ratio']:.3f}", flush=True)
  meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "device": str(jax.devices()[0]), "machine": platform.platform(),
          "params": int(n), "steps": args.steps, "inner": "optlab.adamw(1e-3, weight_decay=0.01)"}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "results": rows}, f, indent=1)
  lines = [f"# Wrapper overhead ({meta['backend']}, {n:,} params, {args.steps} timed pairs)", "",
           f"Inner chain: `{meta['inner']}`. Ratio = median over pairs of wrapper / inner "
           "step time (1.00 = no overhead).", "",
           "| wrapper | step (ms) | inner (ms) | ratio |", "|---|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['wrapper']} | {r['median_ms']:.2f} | {r['inner_median_ms']:.2f} | "
                 f"{r['ratio']:.3f} |")
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
