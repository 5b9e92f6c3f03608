"""Complex momentum on a bilinear game (arXiv:2102.08431).

The game min_x max_y x^T A y has its equilibrium at x = y = 0. Simultaneous
gradient descent-ascent follows the joint field (A y, -A^T x), whose Jacobian
has purely imaginary eigenvalues: plain steps spiral outwards and real
momentum does not help. A complex momentum coefficient beta = |beta| e^{i theta}
rotates the buffer against the spiral and the iterates converge (the
coefficients here were picked from the spectral radius of the linearised
update, about 0.994 per step for this A).

Run: python examples/complex_momentum_game.py
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optlab


def joint_field(params, a):
  """Each player's gradient of its own loss: x minimises x^T A y, y maximises it."""
  x, y = params["x"], params["y"]
  return {"x": a @ y, "y": -(a.T @ x)}


STEPS = 1500


def run(tx, a, params, steps=STEPS):
  @jax.jit
  def train(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(joint_field(params, a), state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return jnp.sqrt(jnp.sum(params["x"] ** 2) + jnp.sum(params["y"] ** 2))

  return float(train(params))


def main():
  rng = np.random.default_rng(0)
  q1, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  q2, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a = jnp.asarray(q1 @ np.diag(np.linspace(0.5, 1.5, 5)) @ q2, jnp.float32)  # singular values 0.5..1.5
  params = {"x": jnp.ones(5, jnp.float32), "y": jnp.ones(5, jnp.float32)}
  start = float(jnp.sqrt(jnp.sum(params["x"] ** 2) + jnp.sum(params["y"] ** 2)))
  lr = 0.3
  results = {
      "gradient descent-ascent": optax.sgd(lr),
      "real momentum (beta=0.7)": optax.chain(
          optlab.scale_by_complex_momentum(0.7, 0.0), optlab.scale_by_learning_rate(lr)),
      "complex momentum (|beta|=0.7, arg=pi/3)": optax.chain(
          optlab.scale_by_complex_momentum(0.7, math.pi / 3), optlab.scale_by_learning_rate(lr)),
  }
  print(f"distance to the equilibrium at start: {start:.3f}")
  dist = {}
  for name, tx in results.items():
    dist[name] = run(tx, a, params)
    if not math.isfinite(dist[name]):
      dist[name] = math.inf  # diverged
    print(f"{name:>42}: distance after {STEPS} steps = {dist[name]:.3e}")
  best = min(dist, key=dist.get)
  print(f"closest to the equilibrium: {best}; converged (distance < 1e-2): "
        f"{dist[best] < 1e-2}")


if __name__ == "__main__":
  main()
