"""optlab recipes in a flax NNX training loop, including one that needs extra args.

    python examples/flax_nnx.py

`nnx.Optimizer(model, tx, wrt=nnx.Param)` takes any optlab recipe. Recipes
that need more than the gradient (see `optlab.catalog()`: `needs_extra_args`)
get it through `optimizer.update(model, grads, **extra)`, which flax passes on
to `tx.update`. For ``obj_fn`` (params -> loss on the current batch) the
params are the pure arrays of the `wrt` filter, so the loss function merges
them back into a model with `nnx.merge`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits

import optlab


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, hidden: int = 64):
    self.hidden = nnx.Linear(64, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def cross_entropy(model, x, y):
  logits = model(x)
  return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def train_step_obj_fn(model, optimizer, x, y):
  """For recipes with needs_extra_args=("obj_fn",), e.g. optlab.sophia_h."""
  loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def obj_fn(params):  # params: the pure nnx.Param arrays that the optimizer updates
    return cross_entropy(nnx.merge(graphdef, params, rest), x, y)

  optimizer.update(model, grads, obj_fn=obj_fn)
  return loss


@nnx.jit
def train_step_layer_stats(model, optimizer, x, y):
  """For recipes with needs_extra_args=("layer_stats",), e.g. optlab.kfac: the loss,
  the gradient and every nnx.Linear layer's statistics from one pass."""
  loss, grads, stats = optlab.capture_nnx(model, x, targets=y)
  optimizer.update(model, grads, layer_stats=stats)
  return loss


def main(steps: int = 100) -> dict[str, float]:
  x, y = load_digits(return_X_y=True)
  x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32)
  needs_obj_fn = [r.name for r in optlab.catalog() if r.needs_extra_args == ("obj_fn",)]
  runs = {"adamw": (optlab.adamw(3e-3, weight_decay=1e-4), train_step)}
  if "sophia_h" in needs_obj_fn:
    runs["sophia_h (obj_fn)"] = (optlab.sophia_h(5e-3), train_step_obj_fn)
  elif needs_obj_fn:
    runs[f"{needs_obj_fn[0]} (obj_fn)"] = (
        optlab.get_recipe(needs_obj_fn[0]).build(learning_rate=5e-3), train_step_obj_fn)
  if "kfac" in {r.name for r in optlab.catalog()}:
    runs["kfac (layer_stats)"] = (optlab.kfac(0.03), train_step_layer_stats)
  finals = {}
  for name, (tx, step) in runs.items():
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    first = float(cross_entropy(model, x, y))
    for _ in range(steps):
      step(model, optimizer, x, y)
    finals[name] = float(cross_entropy(model, x, y))
    print(f"{name:<22} loss {first:.3f} -> {finals[name]:.4f} after {steps} steps")
  assert all(np.isfinite(v) for v in finals.values())
  return finals


if __name__ == "__main__":
  main()
