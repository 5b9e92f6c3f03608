"""Fine-tune a digits MLP with MeZO (forward passes only) and compare its memory
with first-order AdamW.

    python examples/mezo_finetune.py

The MLP is first trained briefly with AdamW ("pre-training"), then fine-tuned
with `optlab.mezo` through `optlab.zo_step`, which never builds a backward
pass. The memory figures are XLA's compiled memory analysis of one jitted
training step: the scratch (temp) buffers it needs plus its arguments and
outputs. MeZO's step needs no activations for a backward pass, no gradient
tree and no optimizer moments; AdamW's needs all three.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optlab
from optlab import federated


def memory_of(step, *args) -> dict:
  """Bytes of one compiled step: temp (scratch), arguments, outputs (aliased not counted twice)."""
  m = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile().memory_analysis()
  return {"temp": m.temp_size_in_bytes, "arguments": m.argument_size_in_bytes,
          "outputs": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
          "peak": m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
                  - m.alias_size_in_bytes}


def init_mlp(key, widths):
  keys = jax.random.split(key, len(widths) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, widths[:-1], widths[1:])]


def logits_of(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(params, x, y):
  logits = logits_of(params, x)
  return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])


def main(hidden: int = 256, depth: int = 4, pretrain_steps: int = 30, steps: int = 200) -> dict:
  x, y = federated.digits_shards(1)
  x, y = x[0], y[0]
  x_train, y_train, x_test, y_test = x[:1536], y[:1536], x[1536:], y[1536:]
  widths = [64] + [hidden] * depth + [10]
  loss = lambda p: cross_entropy(p, x_train, y_train)
  accuracy = lambda p: float(jnp.mean(jnp.argmax(logits_of(p, x_test), -1) == y_test))

  # Pre-training with AdamW (first order).
  adamw = optax.adamw(3e-3)

  def adamw_step(p, s):
    value, g = jax.value_and_grad(loss)(p)
    u, s = adamw.update(g, s, p)
    return optax.apply_updates(p, u), s, value

  params = init_mlp(jax.random.key(0), widths)
  s = adamw.init(params)
  fo_step = jax.jit(adamw_step)
  for _ in range(pretrain_steps):
    params, s, _ = fo_step(params, s)
  print(f"after {pretrain_steps} AdamW steps: loss {float(loss(params)):.3f}, "
        f"test accuracy {accuracy(params):.3f}")

  # Fine-tuning with MeZO: no backward pass at all.
  tx = optlab.mezo(1e-2, eps=1e-3, n_samples=2)
  mezo_step = lambda p, s: optlab.zo_step(tx, loss, p, s)
  zo = jax.jit(mezo_step)
  state = tx.init(params)
  start = time.perf_counter()
  for t in range(steps):
    params, state, value = zo(params, state)
    if (t + 1) % 100 == 0:
      print(f"MeZO step {t + 1}: loss {float(value):.3f}")
  jax.block_until_ready(params)
  print(f"after {steps} MeZO steps ({time.perf_counter() - start:.1f} s): "
        f"loss {float(loss(params)):.3f}, test accuracy {accuracy(params):.3f}")

  fresh = init_mlp(jax.random.key(0), widths)
  zo_mem = memory_of(mezo_step, fresh, tx.init(fresh))
  fo_mem = memory_of(adamw_step, fresh, adamw.init(fresh))
  n_bytes = sum(np.size(v) * 4 for v in jax.tree.leaves(fresh))
  print(f"\nparams: {n_bytes / 1024:.1f} KiB;  batch {x_train.shape[0]}, widths {widths}")
  print(f"{'compiled step':>14} {'temp KiB':>9} {'peak KiB':>9}")
  for name, mem in (("MeZO", zo_mem), ("AdamW", fo_mem)):
    print(f"{name:>14} {mem['temp'] / 1024:9.1f} {mem['peak'] / 1024:9.1f}")
  print(f"AdamW / MeZO peak memory: {fo_mem['peak'] / zo_mem['peak']:.2f}x")
  return {"mezo": zo_mem, "adamw": fo_mem, "param_bytes": n_bytes}


if __name__ == "__main__":
  main()
