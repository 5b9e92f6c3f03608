"""Decoupled weight decay (Loshchilov & Hutter, arXiv:1711.05101), and its cautious
variant (Chen et al., "Cautious Weight Decay", arXiv:2510.12402)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V

__all__ = ["add_decayed_weights", "add_cautious_decayed_weights"]

MaskOrFn = Optional[Union[Any, Callable[[Any], Any]]]


def add_decayed_weights(weight_decay: Any = 0.0,
                        mask: MaskOrFn = None) -> optax.GradientTransformationExtraArgs:
  """u <- u + weight_decay * p, on the leaves selected by `mask` (all by default).

  Placed before the learning-rate scaling, the decay is multiplied by the
  learning rate, as in AdamW. Needs `params` in update.
  """
  V.check_nonneg("add_decayed_weights", "weight_decay", weight_decay)

  def update(updates, state, params=None, **extra):
    del extra
    if params is None:
      raise ValueError("optlab.add_decayed_weights: update() needs `params` "
                       "(tx.update(grads, state, params))")
    new = jax.tree.map(lambda u, p: (u + weight_decay * p).astype(u.dtype), updates, params)
    return new, state

  tx = optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)
  return optax.masked(tx, mask) if mask is not None else tx


def add_cautious_decayed_weights(weight_decay: Any = 0.0, mask: MaskOrFn = None
                                 ) -> optax.GradientTransformationExtraArgs:
  """Cautious weight decay: u <- u + weight_decay * 1[u * p >= 0] * p.

  From "Cautious Weight Decay" (Chen, Li, Liang et al., arXiv:2510.12402), the
  decay rule by the Cautious Optimizers authors: decoupled decay is applied
  only to the coordinates where the incoming update u (the descent direction,
  before the learning rate) and the parameter agree in sign, so that the
  decay never opposes the optimizer's step; coordinates where u = 0 or p = 0
  count as agreeing (the paper's indicator is u * p >= 0). Same placement and
  `mask` as `add_decayed_weights`; put it after the direction and before
  `scale_by_learning_rate`. Needs `params` in update.
  """
  V.check_nonneg("add_cautious_decayed_weights", "weight_decay", weight_decay)

  def leaf(u, p):
    agree = (jnp.sign(u) * jnp.sign(p).astype(u.dtype)) >= 0
    return (u + weight_decay * jnp.where(agree, p, jnp.zeros_like(p))).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    del extra
    if params is None:
      raise ValueError("optlab.add_cautious_decayed_weights: update() needs `params` "
                       "(tx.update(grads, state, params))")
    return jax.tree.map(leaf, updates, params), state

  tx = optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)
  return optax.masked(tx, mask) if mask is not None else tx
