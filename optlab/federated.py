"""A small federated-learning simulation: K clients, local SGD, an optax server step.

Each round, every client starts from the server's weights x_t, runs
``local_steps`` steps of plain SGD on its own shard, and returns x_i. The
server forms the pseudo-gradient x_t - mean_i x_i (the negated mean client
delta) and applies any optax transformation to it -- `optlab.fedadam`,
`optlab.fedyogi`, `optlab.fedadagrad` ("Adaptive Federated Optimization",
arXiv:2003.00295), or ``optax.sgd(1.0)`` for FedAvg. Clients run in parallel
with `jax.vmap`; a whole round is one jitted function::

    shards = optlab.federated.digits_shards(8)
    params = optlab.federated.init_mlp(jax.random.key(0))
    params, losses = optlab.federated.simulate(optlab.fedadam(0.03), params, shards,
                                               rounds=30, local_steps=5, local_lr=0.3)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["digits_shards", "init_mlp", "mlp_loss", "client_update", "server_round",
           "simulate"]

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def digits_shards(n_clients: int, *, iid: bool = True, seed: int = 0
                  ) -> tuple[jax.Array, jax.Array]:
  """scikit-learn's digits split into `n_clients` equal shards.

  Returns ``(x, y)`` with shapes (K, m, 64) and (K, m): x scaled to [0, 1],
  m = 1792 // K examples per client (the first 1792 of the 1797 digits).
  With ``iid=False`` each client gets a label-sorted slice (mostly one or two
  classes), the usual non-IID split.
  """
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  if not iid:
    order = order[np.argsort(y[order], kind="stable")]
  m = 1792 // n_clients
  order = order[:m * n_clients]
  return (jnp.asarray(x[order].reshape(n_clients, m, 64)),
          jnp.asarray(y[order].reshape(n_clients, m)))


def init_mlp(key: jax.Array, hidden: int = 32) -> dict:
  """A 64 -> hidden -> 10 tanh MLP's parameters."""
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (64, hidden)) / 8.0, "b1": jnp.zeros(hidden),
          "w2": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden), "b2": jnp.zeros(10)}


def mlp_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy of the MLP of `init_mlp` on (x, y)."""
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])


def client_update(params: Any, x: jax.Array, y: jax.Array, *, local_steps: int,
                  local_lr: float, loss_fn: LossFn = mlp_loss,
                  batch_size: Optional[int] = None, key: Optional[jax.Array] = None) -> Any:
  """`local_steps` steps of SGD from `params` on one client's data.

  Full batch by default; with `batch_size`, step s uses a minibatch drawn
  from ``fold_in(key, s)``.

  Args:
    params: the starting weights (the server's x_t).
    x: the client's inputs, shape (m, ...).
    y: the client's labels, shape (m,).
    local_steps: the number of SGD steps.
    local_lr: the SGD step size.
    loss_fn: ``(params, x, y) -> scalar loss``.
    batch_size: the minibatch size, or None for full-batch steps.
    key: the PRNG key of the minibatches (needed with `batch_size`).

  Returns:
    The client's weights x_i after the local steps.
  """
  def step(p, s):
    if batch_size is None:
      xb, yb = x, y
    else:
      idx = jax.random.choice(jax.random.fold_in(key, s), x.shape[0], (batch_size,),
                              replace=False)
      xb, yb = x[idx], y[idx]
    g = jax.grad(loss_fn)(p, xb, yb)
    return jax.tree.map(lambda a, b: a - local_lr * b, p, g), None

  params, _ = jax.lax.scan(step, params, jnp.arange(local_steps))
  return params


def server_round(server_tx: optax.GradientTransformation, params: Any, state: Any,
                 data: tuple[jax.Array, jax.Array], *, local_steps: int, local_lr: float,
                 loss_fn: LossFn = mlp_loss, batch_size: Optional[int] = None,
                 key: Optional[jax.Array] = None) -> tuple[Any, Any]:
  """One round: every client trains locally (vmap), the server steps on x_t - mean x_i.

  Args:
    server_tx: the server's optax transformation (e.g. `optlab.fedadam`).
    params: the server's weights x_t.
    state: `server_tx`'s state.
    data: ``(x, y)`` with a leading client axis, as `digits_shards` returns.
    local_steps: SGD steps per client (`client_update`).
    local_lr: the clients' SGD step size.
    loss_fn: ``(params, x, y) -> scalar loss``.
    batch_size: the clients' minibatch size, or None for full-batch steps.
    key: the round's PRNG key, split over the clients (needed with `batch_size`).

  Returns:
    ``(params, state)`` after the server step.
  """
  x, y = data
  keys = None if key is None else jax.random.split(key, x.shape[0])
  local = jax.vmap(lambda xi, yi, ki: client_update(
      params, xi, yi, local_steps=local_steps, local_lr=local_lr, loss_fn=loss_fn,
      batch_size=batch_size, key=ki), in_axes=(0, 0, None if keys is None else 0))(x, y, keys)
  pseudo_grad = jax.tree.map(lambda p, c: p - jnp.mean(c, axis=0), params, local)
  updates, state = server_tx.update(pseudo_grad, state, params)
  return optax.apply_updates(params, updates), state


def simulate(server_tx: optax.GradientTransformation, params: Any,
             data: tuple[jax.Array, jax.Array], *, rounds: int, local_steps: int = 5,
             local_lr: float = 0.1, loss_fn: LossFn = mlp_loss,
             batch_size: Optional[int] = None, seed: int = 0) -> tuple[Any, np.ndarray]:
  """Runs `rounds` rounds of `server_round`, jitted as one scan.

  Args:
    server_tx: the server's optax transformation (e.g. `optlab.fedadam`).
    params: the initial weights (e.g. from `init_mlp`).
    data: ``(x, y)`` with a leading client axis, as `digits_shards` returns.
    rounds: the number of rounds.
    local_steps: SGD steps per client and round.
    local_lr: the clients' SGD step size.
    loss_fn: ``(params, x, y) -> scalar loss``.
    batch_size: the clients' minibatch size, or None for full-batch steps.
    seed: seeds the minibatch draws (round r uses ``fold_in(key(seed), r)``).

  Returns:
    ``(params, losses)``: the final params and the loss on all clients' data
    after each round (a NumPy array of length `rounds`).
  """
  x, y = data
  all_x, all_y = x.reshape(-1, x.shape[-1]), y.reshape(-1)
  key = jax.random.key(seed)

  @jax.jit
  def run(params):
    def body(carry, r):
      p, s = carry
      k = None if batch_size is None else jax.random.fold_in(key, r)
      p, s = server_round(server_tx, p, s, data, local_steps=local_steps, local_lr=local_lr,
                          loss_fn=loss_fn, batch_size=batch_size, key=k)
      return (p, s), loss_fn(p, all_x, all_y)

    (p, _), losses = jax.lax.scan(body, (params, server_tx.init(params)), jnp.arange(rounds))
    return p, losses

  params, losses = run(params)
  return params, np.asarray(losses)
