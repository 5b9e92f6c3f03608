"""Compose an optimizer no paper wrote down, and compare it with AdamW on digits.

    python examples/custom_chain.py

Cautious Lion with MARS variance reduction and global-norm clipping is four
primitives in a chain; the recipes it is made from are tested against their
papers, so the combination needs no new code.
"""

import jax
import jax.numpy as jnp
import optax
from sklearn.datasets import load_digits

import optlab


def main(steps: int = 200) -> None:
  x, y = load_digits(return_X_y=True)
  x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"w1": jax.random.normal(k1, (64, 64)) / 8.0, "b1": jnp.zeros(64),
            "w2": jax.random.normal(k2, (64, 10)) / 8.0, "b2": jnp.zeros(10)}

  def loss(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  custom = optax.chain(
      optlab.add_mars_correction(b1=0.9, gamma=0.025),
      optlab.clip_by_global_norm(1.0),
      optlab.cautious(optlab.scale_by_lion_momentum(0.9, 0.99)),
      optlab.add_decayed_weights(1e-3),
      optlab.scale_by_learning_rate(3e-3),
  )
  for name, tx in [("adamw", optlab.adamw(1e-2)), ("mars + cautious lion", custom)]:
    @jax.jit
    def step(p, s):
      value, g = jax.value_and_grad(loss)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, value

    p, s = params, tx.init(params)
    for _ in range(steps):
      p, s, value = step(p, s)
    print(f"{name:<22} loss after {steps} steps: {float(loss(p)):.4f}")


if __name__ == "__main__":
  main()
