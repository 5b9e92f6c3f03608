"""Variance reduction: MARS's corrected gradient; AdamP / SGDP's first-moment rules.

MARS (Yuan et al., arXiv:2411.10438) replaces the stochastic gradient by a
variance-reduced estimate before any moment sees it. In its approximate form
(the official default, one gradient per step) that estimate needs only the
previous step's gradient, so it is a stateful pre-transform that sits ahead of
the moments::

    optax.chain(add_mars_correction(b1, gamma), scale_by_adam(b1, b2), ...)
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.tree import tree_zeros_like
from optlab.primitives.basis import LINEAR_STAT, declare_state
from optlab.primitives.clipping import clip_leaf_by_norm

__all__ = ["MarsState", "add_mars_correction"]


@declare_state(prev_grad=LINEAR_STAT)
class MarsState(NamedTuple):
  prev_grad: Any  # param-shaped tree, param dtype: the gradient of the previous step (0 at first)


def add_mars_correction(b1: Any = 0.95, gamma: Any = 0.025, max_norm: Optional[Any] = 1.0,
                        *, matrices_only: bool = False) -> optax.GradientTransformationExtraArgs:
  """MARS's corrected gradient (arXiv:2411.10438; official AGI-Arena/MARS, approximate form).

  c_t = g_t + gamma * b1 / (1 - b1) * (g_t - g_{t-1}), then, per tensor,
  c_t <- c_t * min(1, max_norm / ||c_t||) (the official code rescales c_t to
  norm 1 when its norm exceeds 1). g_0 = 0, as in the official code, so the
  first step gives (1 + gamma b1 / (1 - b1)) g_1 before clipping.

  Args:
    b1: the first-moment decay rate of the optimizer that follows (MARS scales
      the correction with b1 / (1 - b1)).
    gamma: strength of the correction (0 gives back the gradient, clipped).
    max_norm: per-tensor clipping of c_t; None disables it.
    matrices_only: correct (and clip) only 2-d tensors and pass the others
      through unchanged; the official code does this when ``optimize_1d`` is
      False. The previous gradient is stored for every tensor either way.
  """
  V.check_decay("add_mars_correction", "b1", b1)
  V.check_nonneg("add_mars_correction", "gamma", gamma)
  if max_norm is not None:
    V.check_positive("add_mars_correction", "max_norm", max_norm)

  def init(params):
    return MarsState(prev_grad=tree_zeros_like(params))

  def update(updates, state, params=None, **extra):
    del params, extra
    scale = gamma * b1 / (1.0 - b1)

    def correct(g, prev):
      if matrices_only and jnp.ndim(g) != 2:
        return g
      dt = accumulation_dtype(g.dtype)
      c = g.astype(dt) + scale * (g.astype(dt) - prev.astype(dt))
      if max_norm is not None:
        c = clip_leaf_by_norm(c, max_norm)
      return c.astype(g.dtype)

    new = jax.tree.map(correct, updates, state.prev_grad)
    prev = jax.tree.map(lambda g, old: g.astype(old.dtype), updates, state.prev_grad)
    return new, MarsState(prev_grad=prev)

  return optax.GradientTransformationExtraArgs(init, update)
