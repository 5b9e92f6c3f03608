"""Communication-efficient distributed recipes on 8 host devices.

1. Bytes each worker sends per step (`optlab.bytes_per_step`, ring collectives),
   per recipe, against a plain all-reduce of f32 gradients, for the digits MLP
   and a 10M-parameter tree.
2. Convergence: the digits MLP trained data-parallel under `jax.pmap` on 8
   host devices, every device with its own shard (so its own gradient):
   AdamW with an f32 all-reduce (pmean) of the gradients, against
   distributed_lion, onebit_adam and fedadam/fedyogi/fedadagrad (5 local SGD
   steps per round), all with ``axis_name``. Reports the training loss after
   the same number of gradient evaluations per device, and checks that the
   replicas' parameters stayed bit-identical.

    python benchmarks/distributed.py      # writes benchmarks/results/distributed.{json,md}
"""

from __future__ import annotations

import os

# Long collective time-outs: on a loaded machine the 8 host "devices" (threads) can
# reach an all-reduce tens of seconds apart, which XLA:CPU otherwise aborts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_cpu_collective_timeout_seconds=1200"
                           + " --xla_cpu_collective_call_terminate_timeout_seconds=1200").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optlab  # noqa: E402
from optlab import federated  # noqa: E402

N = 8
LOCAL_STEPS = 5


def bytes_table(params, steps, warmup):
  f32 = optlab.bytes_per_step("allreduce_f32", params, N)
  onebit = optlab.bytes_per_step("onebit_adam", params, N)
  rows = {
      "allreduce_f32 (AdamW, data parallel)": f32,
      "distributed_lion (2 bits: sign + abstain)": optlab.bytes_per_step("sign_vote", params, N),
      "distributed_lion (abstain_zeros=False, 1 bit)":
          optlab.bytes_per_step("sign_vote_1bit", params, N),
      "onebit_adam, compression stage (as implemented)": onebit,
      "onebit_adam, compression stage (DeepSpeed's all-to-all scheme)":
          optlab.bytes_per_step("onebit_adam_deepspeed", params, N),
      f"onebit_adam, average over {steps} steps with {warmup} warm-up":
          (warmup * f32 + (steps - warmup) * onebit) / steps,
      f"fedadam / fedyogi / fedadagrad ({LOCAL_STEPS} local steps per round)":
          optlab.bytes_per_step("federated", params, N, local_steps=LOCAL_STEPS),
  }
  return {k: {"bytes": v, "vs_allreduce_f32": v / f32} for k, v in rows.items()}


def shards():
  x, y = federated.digits_shards(N)  # (8, 224, 64)
  return x, y


def train_pmap(name, make_tx, steps, x, y, params):
  """Data-parallel training; returns (loss after each 25 steps, replicas identical)."""
  all_x, all_y = x.reshape(-1, 64), y.reshape(-1)
  rep = lambda tree: jax.tree.map(lambda a: jnp.stack([a] * N), tree)
  fed = name.startswith("fed")
  tx = make_tx()

  def step(p, s, xi, yi):
    if fed:
      local = federated.client_update(p, xi, yi, local_steps=LOCAL_STEPS, local_lr=0.3)
      g = jax.tree.map(lambda a, b: a - b, p, local)  # this client's pseudo-gradient
    else:
      g = jax.grad(federated.mlp_loss)(p, xi, yi)   # this device's own gradient
      if name == "adamw_allreduce":
        g = jax.lax.pmean(g, "d")
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  pstep = jax.pmap(step, axis_name="d")
  p, s = rep(params), jax.pmap(tx.init)(rep(params))
  calls = steps // LOCAL_STEPS if fed else steps
  every = 25 // LOCAL_STEPS if fed else 25
  losses, identical = [], True
  start = time.perf_counter()
  for t in range(calls):
    p, s = pstep(p, s, x, y)
    if (t + 1) % every == 0:
      p0 = jax.tree.map(lambda a: a[0], p)
      losses.append(float(federated.mlp_loss(p0, all_x, all_y)))
  for leaf in jax.tree.leaves(p):
    arr = np.asarray(leaf)
    identical &= all(np.array_equal(arr[0], arr[i]) for i in range(1, N))
  return losses, bool(identical), time.perf_counter() - start


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--warmup", type=int, default=30)
  ap.add_argument("--out", default=os.path.join(_ROOT, "benchmarks/results/distributed.json"))
  args = ap.parse_args()
  assert len(jax.devices()) >= N, jax.devices()
  x, y = shards()
  params = federated.init_mlp(jax.random.key(0))
  big = {f"layer{i}": np.zeros((1000, 1000), np.float32) for i in range(10)}
  table = {"digits_mlp (2,442 params)": bytes_table(params, args.steps, args.warmup),
           "10M params (10 x 1000x1000)": bytes_table(big, args.steps, args.warmup)}
  methods = {
      "adamw_allreduce": lambda: optax.adamw(3e-3),
      "distributed_lion": lambda: optlab.distributed_lion(3e-3, axis_name="d"),
      "onebit_adam": lambda: optlab.onebit_adam(3e-3, warmup_steps=args.warmup, axis_name="d"),
      "fedadam": lambda: optlab.fedadam(0.01, axis_name="d"),
      "fedyogi": lambda: optlab.fedyogi(0.01, axis_name="d"),
      "fedadagrad": lambda: optlab.fedadagrad(0.05, axis_name="d"),
  }
  runs = {}
  for name, make in methods.items():
    losses, identical, seconds = train_pmap(name, make, args.steps, x, y, params)
    runs[name] = {"loss_every_25_steps": losses, "final_loss": losses[-1],
                  "replicas_bit_identical": identical, "seconds": seconds}
    print(f"{name:>18}: final loss {losses[-1]:.4f}, identical replicas {identical}, "
          f"{seconds:.1f} s", flush=True)
  base = runs["adamw_allreduce"]["final_loss"]
  for r in runs.values():
    r["final_loss_vs_adamw"] = r["final_loss"] / base
  meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
          "machine": platform.platform(), "jax": jax.__version__, "workers": N,
          "steps": args.steps, "warmup": args.warmup,
          "task": "digits MLP 64-32-10, 8 shards of 224 examples, full local batch",
          "bytes_model": "bytes sent per worker per step, ring collectives (see "
                         "optlab.bytes_per_step)"}
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "bytes_per_step": table, "convergence": runs}, f, indent=1)
  lines = ["# Distributed recipes on 8 host devices", "",
           f"{meta['date']}, {meta['machine']}, jax {meta['jax']}.", "",
           "## Bytes sent per worker per step (8 workers)", ""]
  for model, rows in table.items():
    lines += [f"**{model}**", "", "| scheme | bytes/step | x f32 all-reduce |", "|---|---|---|"]
    lines += [f"| {k} | {v['bytes']:.0f} | {v['vs_allreduce_f32']:.4f} |" for k, v in rows.items()]
    lines.append("")
  lines += [f"## Convergence ({meta['task']}, {args.steps} gradient evaluations per device)",
            "", "| method | final loss | x AdamW+all-reduce | replicas bit-identical |",
            "|---|---|---|---|"]
  lines += [f"| {k} | {r['final_loss']:.4f} | {r['final_loss_vs_adamw']:.2f} | "
            f"{r['replicas_bit_identical']} |" for k, r in runs.items()]
  text = "\n".join(lines) + "\n"
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
