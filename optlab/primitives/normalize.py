"""Normalisations of an update: sign, and (in later modules) RMS / trust ratio."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["scale_by_sign"]


def scale_by_sign() -> optax.GradientTransformationExtraArgs:
  """u <- sign(u), element-wise (0 stays 0), in the update's dtype."""

  def update(updates, state, params=None, **extra):
    del params, extra
    return jax.tree.map(jnp.sign, updates), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)
