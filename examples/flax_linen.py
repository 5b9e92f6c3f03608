"""optlab recipes with flax linen's `TrainState`.

    python examples/flax_linen.py

`TrainState.create(apply_fn=..., params=..., tx=optlab.<recipe>(...))` works
as with any optax optimizer. `TrainState.apply_gradients(grads=g, **kwargs)`
passes its extra keyword arguments to the new state, not to `tx.update`, so a
recipe that needs extra args (``value``, ``obj_fn``, ``layer_stats``) calls
`tx.update` itself: see `apply_gradients_with_extras` below. K-FAC-style
recipes get ``layer_stats`` from `optlab.capture_linen`, which taps every
``nn.Dense`` of the module without changing it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training.train_state import TrainState
from sklearn.datasets import load_digits

import optlab


class MLP(nn.Module):
  hidden: int = 64

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(jnp.tanh(nn.Dense(self.hidden)(x)))


def loss_fn(params, apply_fn, x, y):
  logits = apply_fn({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def apply_gradients_with_extras(state: TrainState, grads, **extra) -> TrainState:
  """`state.apply_gradients` for recipes whose update needs extra args."""
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)


@jax.jit
def train_step(state: TrainState, x, y):
  loss, grads = jax.value_and_grad(loss_fn)(state.params, state.apply_fn, x, y)
  return state.apply_gradients(grads=grads), loss


def make_train_step_with_obj_fn():
  @jax.jit
  def train_step_obj_fn(state: TrainState, x, y):
    obj_fn = lambda p: loss_fn(p, state.apply_fn, x, y)
    loss, grads = jax.value_and_grad(obj_fn)(state.params)
    return apply_gradients_with_extras(state, grads, obj_fn=obj_fn), loss
  return train_step_obj_fn


def make_train_step_with_layer_stats(model: nn.Module):
  """For recipes with needs_extra_args=("layer_stats",), e.g. optlab.kfac: the loss,
  the gradient and every nn.Dense layer's statistics from one pass."""
  @jax.jit
  def train_step_layer_stats(state: TrainState, x, y):
    loss, grads, stats = optlab.capture_linen(model, state.params, x, targets=y)
    return apply_gradients_with_extras(state, grads, layer_stats=stats), loss
  return train_step_layer_stats


def main(steps: int = 100) -> dict[str, float]:
  x, y = load_digits(return_X_y=True)
  x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32)
  model = MLP()
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  runs = {"lion": (optlab.lion(3e-3), train_step)}
  names = {r.name for r in optlab.catalog()}
  if "sophia_h" in names:
    runs["sophia_h (obj_fn)"] = (optlab.sophia_h(5e-3), make_train_step_with_obj_fn())
  if "kfac" in names:
    runs["kfac (layer_stats)"] = (optlab.kfac(0.03), make_train_step_with_layer_stats(model))
  finals = {}
  for name, (tx, step) in runs.items():
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    for _ in range(steps):
      state, loss = step(state, x, y)
    finals[name] = float(loss_fn(state.params, model.apply, x, y))
    print(f"{name:<20} step {int(state.step)}: loss {finals[name]:.4f}")
  return finals


if __name__ == "__main__":
  main()
