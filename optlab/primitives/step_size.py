"""Step-size rules: the learning rate (constant or schedule)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V

__all__ = ["ScaleByLearningRateState", "scale_by_learning_rate"]


class ScaleByLearningRateState(NamedTuple):
  count: jax.Array  # [], int32: steps taken (the schedule's argument)


def scale_by_learning_rate(learning_rate: Any, *, flip_sign: bool = True
                           ) -> optax.GradientTransformationExtraArgs:
  """u <- -lr * u; `learning_rate` is a number or a schedule ``step -> lr``."""
  V.check_learning_rate("scale_by_learning_rate", learning_rate)
  sign = -1.0 if flip_sign else 1.0

  def init(params):
    del params
    return ScaleByLearningRateState(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, **extra):
    del params, extra
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    step = sign * jnp.asarray(lr)
    new = jax.tree.map(lambda u: (step * u).astype(u.dtype), updates)
    return new, ScaleByLearningRateState(optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init, update)
