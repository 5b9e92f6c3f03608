"""Decoupled weight decay (Loshchilov & Hutter, arXiv:1711.05101)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import optax

from optlab import _validate as V

__all__ = ["add_decayed_weights"]

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
