"""Decoupled weight decay (Loshchilov & Hutter, arXiv:1711.05101), and its cautious
variant (Chen et al., "Cautious Weight Decay", arXiv:2510.12402)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab.primitives.basis import COUNT, declare_state

__all__ = ["add_decayed_weights", "add_cautious_decayed_weights", "DecayAfterStepState",
           "add_decayed_weights_after_step"]

MaskOrFn = Optional[Union[Any, Callable[[Any], Any]]]


def add_decayed_weights(weight_decay: Any = 0.0,
                        mask: MaskOrFn = None) -> optax.GradientTransformationExtraArgs:
  """u <- u + weight_decay * p, on the leaves selected by `mask` (all by default).

  Placed before the learning-rate scaling, the decay is multiplied by the
  learning rate, as in AdamW. Needs `params` in update.

  Args:
    weight_decay: the decay rate, >= 0.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  V.check_nonneg("add_decayed_weights", "weight_decay", weight_decay)

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params("add_decayed_weights", params)
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
    V.require_params("add_cautious_decayed_weights", params)
    return jax.tree.map(leaf, updates, params), state

  tx = optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)
  return optax.masked(tx, mask) if mask is not None else tx


@declare_state(count=COUNT)
class DecayAfterStepState(NamedTuple):
  count: jax.Array  # [], int32: steps taken (the learning-rate schedule's argument); unused
                    # when the learning rate is a number or None


def add_decayed_weights_after_step(weight_decay: Any = 0.0, learning_rate: Any = None,
                                   mask: Optional[Union[Any, Callable[[Any], Any]]] = None,
                                   *, proximal: bool = False
                                   ) -> optax.GradientTransformationExtraArgs:
  """Weight decay of the weights *after* the step: d <- d - c * (p + d).

  Goes last in a chain, after `scale_by_learning_rate`, where d is the final
  (already negated, lr-scaled) update; the new weights are then
  (p + d) * (1 - c). With c = weight_decay * learning_rate this is the
  official SPAM code's ``p -= lr * wd * p`` after ``p -= lr * step``; with
  ``learning_rate=None``, c = weight_decay, the official LaProp code's
  ``p -= wd * p`` (not scaled by the learning rate). It differs from
  AdamW's decay of the weights before the step (`add_decayed_weights`) by
  c * d, a term of order lr^2 * weight_decay.

  With ``proximal`` the new weights are (p + d) / (1 + c) instead, the
  proximal step of the L2 penalty, d <- (d - c * p) / (1 + c) (Adan's
  default, arXiv:2208.06677 Algorithm 1 and its official code).

  Args:
    weight_decay: the decay rate.
    learning_rate: None, a number or a schedule of the 0-based step (the same
      as given to `scale_by_learning_rate`).
    mask: a tree of bools or a function of params selecting the leaves that
      decay (as optax); all by default.
    proximal: divide by 1 + c instead of multiplying by 1 - c.
  """
  V.check_nonneg("add_decayed_weights_after_step", "weight_decay", weight_decay)
  if learning_rate is not None:
    V.check_learning_rate("add_decayed_weights_after_step", learning_rate)
  scheduled = callable(learning_rate)

  def init(params):
    del params
    return DecayAfterStepState(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, **extra):
    del extra
    V.require_params("add_decayed_weights_after_step", params)
    lr = learning_rate(state.count) if scheduled else learning_rate
    rate = weight_decay if lr is None else weight_decay * jnp.asarray(lr)

    def leaf(d, p):
      dt = accumulation_dtype(d.dtype)
      d32, p32 = d.astype(dt), p.astype(dt)
      if proximal:
        return ((d32 - rate * p32) / (1 + rate)).astype(d.dtype)
      return (d32 - rate * (p32 + d32)).astype(d.dtype)

    new = jax.tree.map(leaf, updates, params)
    return new, DecayAfterStepState(optax.safe_increment(state.count))

  tx = optax.GradientTransformationExtraArgs(init, update)
  return optax.masked(tx, mask) if mask is not None else tx
