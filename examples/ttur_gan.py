"""TTUR: two time-scale updates for a GAN with `optax.partition`.

"GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (Heusel et al., arXiv:1706.08500) trains the discriminator with a
larger learning rate than the generator. In optax that is one
`optax.partition`: a label per parameter subtree picks its optimizer, here
two `optlab.adam` recipes with different learning rates, and a single
``tx.update`` call steps both players:

    labels = {"gen": "generator", "disc": "discriminator"}
    tx = optax.partition({"generator": optlab.adam(1e-3, b1=0.5),
                          "discriminator": optlab.adam(4e-3, b1=0.5)}, labels)

Each player's gradient is taken of its own loss (the generator's of the
non-saturating generator loss, the discriminator's of the usual
cross-entropy) and the two gradient subtrees are passed together.

The task is 1-D: real data ~ N(3, 0.5^2); the generator is x = a z + b with
z ~ N(0, 1); the discriminator is logistic regression on (x, x^2). The
generator's mean b reliably moves to the data's (the check below). Its spread
|a| does not settle at 0.5 with so small a discriminator: the players chase
each other around the curvature of the discriminator and the generator's
spread shrinks (partial mode collapse); the script prints it for information.

Run: python examples/ttur_gan.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import optlab

REAL_MEAN, REAL_STD = 3.0, 0.5
BATCH, STEPS = 256, 3000


def generate(gen, z):
  return gen["a"] * z + gen["b"]


def logits(disc, x):
  feats = jnp.stack([x, x * x], axis=-1)
  return feats @ disc["w"] + disc["c"]


def disc_loss(disc, gen, real, z):
  fake = generate(gen, z)
  return jnp.mean(jax.nn.softplus(-logits(disc, real)) + jax.nn.softplus(logits(disc, fake)))


def gen_loss(gen, disc, z):
  return jnp.mean(jax.nn.softplus(-logits(disc, generate(gen, z))))  # non-saturating


def make_optimizer(gen_lr=1e-3, disc_lr=4e-3):
  """TTUR as a partition: the discriminator learns 4x faster than the generator."""
  labels = {"gen": "generator", "disc": "discriminator"}
  return optax.partition({"generator": optlab.adam(gen_lr, b1=0.5),
                          "discriminator": optlab.adam(disc_lr, b1=0.5)}, labels)


def train(seed=0):
  params = {"gen": {"a": jnp.array(1.0), "b": jnp.array(0.0)},
            "disc": {"w": jnp.zeros(2), "c": jnp.array(0.0)}}
  tx = make_optimizer()

  def step(carry, key):
    params, state = carry
    k_real, k_z = jax.random.split(key)
    real = REAL_MEAN + REAL_STD * jax.random.normal(k_real, (BATCH,))
    z = jax.random.normal(k_z, (BATCH,))
    grads = {"gen": jax.grad(gen_loss)(params["gen"], params["disc"], z),
             "disc": jax.grad(disc_loss)(params["disc"], params["gen"], real, z)}
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  keys = jax.random.split(jax.random.PRNGKey(seed), STEPS)
  (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), keys))(params)
  return params


def main():
  params = train()
  mean, std = float(params["gen"]["b"]), abs(float(params["gen"]["a"]))
  print(f"generator after {STEPS} steps: mean {mean:.3f} (real {REAL_MEAN}), "
        f"std {std:.3f} (real {REAL_STD})")
  ok = abs(mean - REAL_MEAN) < 0.3
  print(f"generator mean matches the data (|mean error| < 0.3): {ok}")


if __name__ == "__main__":
  main()
