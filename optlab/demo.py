"""`make demo`: a side-by-side comparison of recipes on built-in data.

Trains a small MLP on scikit-learn's digits (shipped with the package, nothing
is downloaded) with each recipe for a fixed number of full-batch steps, then
prints final training loss, validation accuracy, steps to reach AdamW's final
loss, and the median step time. The full bench CLI builds on this.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.catalog import get_recipe

DEFAULT = ("adamw", "adam", "lion", "cautious_adamw", "ademamix", "lamb", "sgd")


def _digits():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm].astype(np.int32)
  return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _init(key):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (64, 128)) / 8.0, "b1": jnp.zeros(128),
          "w2": jax.random.normal(k2, (128, 10)) / jnp.sqrt(128.0), "b2": jnp.zeros(10)}


def _logits(p, x):
  return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _loss(p, x, y):
  z = _logits(p, x)
  return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0])


def train(name: str, steps: int, data) -> dict:
  (xt, yt), (xv, yv) = data
  recipe = get_recipe(name)
  tx = recipe.build()
  loss = lambda p: _loss(p, xt, yt)

  @jax.jit
  def step(p, s):
    value, g = jax.value_and_grad(loss)(p)
    extra = {"value": value} if "value" in recipe.needs_extra_args else {}
    if "obj_fn" in recipe.needs_extra_args:
      extra["obj_fn"] = loss
    u, s = tx.update(g, s, p, **extra)
    return optax.apply_updates(p, u), s, value

  params = _init(jax.random.PRNGKey(0))
  state = tx.init(params)
  t0 = time.perf_counter()
  params, state, _ = jax.block_until_ready(step(params, state))
  compile_s = time.perf_counter() - t0
  losses, times = [], []
  for _ in range(steps - 1):
    t0 = time.perf_counter()
    params, state, value = jax.block_until_ready(step(params, state))
    times.append(time.perf_counter() - t0)
    losses.append(float(value))
  acc = float(jnp.mean(jnp.argmax(_logits(params, xv), -1) == yv))
  losses.append(float(loss(params)))  # losses[i]: training loss after i + 1 steps
  return {"recipe": name, "losses": losses, "final_loss": losses[-1],
          "val_accuracy": acc, "median_step_ms": 1e3 * float(np.median(times)),
          "compile_s": compile_s}


def main(names=DEFAULT, steps: int = 300, out: str = "bench_out") -> list[dict]:
  data = _digits()
  results = [train(n, steps, data) for n in names]
  target = next((r["final_loss"] for r in results if r["recipe"] == "adamw"), None)
  print(f"digits MLP, {steps} full-batch steps" +
        (f"; target = AdamW's final loss ({target:.4f})" if target else ""))
  print(f"{'recipe':<16}{'final loss':>12}{'val acc':>9}{'steps to target':>17}{'ms/step':>9}")
  for r in results:
    hit = next((i + 1 for i, v in enumerate(r["losses"]) if target and v <= target), None)
    r["steps_to_target"] = hit
    print(f"{r['recipe']:<16}{r['final_loss']:>12.4f}{r['val_accuracy']:>9.3f}"
          f"{str(hit or '-'):>17}{r['median_step_ms']:>9.2f}")
  Path(out).mkdir(parents=True, exist_ok=True)
  path = Path(out) / "demo.json"
  path.write_text(json.dumps({"device": str(jax.devices()[0]), "steps": steps,
                              "results": results}, indent=1))
  print(f"wrote {path}")
  return results
