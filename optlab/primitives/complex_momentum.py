"""Complex momentum for games ("Complex Momentum for Optimization in Games",
Lorraine, Acuna, Vicol & Duvenaud, arXiv:2102.08431).

The momentum buffer is complex, ``mu <- beta mu - g`` with
``beta = |beta| e^{i theta}``, and the parameters move by the real part,
``w <- w + lr Re(mu)``. A complex beta
damps the rotation that makes simultaneous gradient descent-ascent cycle or
diverge on adversarial games (bilinear games, GANs). The buffer is stored as
two real trees, so every dtype and transformation works unchanged.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.tree import tree_zeros_like, unzip_tree
from optlab.primitives.basis import LINEAR_MOMENT, declare_state

__all__ = ["ComplexMomentumState", "scale_by_complex_momentum"]


@declare_state(mu_re=LINEAR_MOMENT, mu_im=LINEAR_MOMENT)
class ComplexMomentumState(NamedTuple):
  mu_re: Any   # param-shaped, params' dtype: real part of the momentum buffer
  mu_im: Any   # param-shaped, params' dtype: imaginary part of the momentum buffer


def scale_by_complex_momentum(beta_abs: Any = 0.9, beta_arg: Any = math.pi / 8
                              ) -> optax.GradientTransformationExtraArgs:
  """Complex momentum: mu <- beta mu - g, u = -Re(mu), beta = beta_abs e^{i beta_arg}.

  Followed by ``scale_by_learning_rate(lr)`` the step is w <- w + lr Re(mu)
  (the paper's real step size alpha = lr). ``beta_arg=0`` is ordinary heavy-ball
  momentum (mu = -trace); the paper's GAN experiments use ``|beta| ~ 0.9`` with
  ``arg(beta) ~ pi/8``. For a game, feed the joint gradient field (each player's
  gradient of its own loss).
  """
  V.check_decay("scale_by_complex_momentum", "beta_abs", beta_abs)
  br, bi = beta_abs * jnp.cos(beta_arg), beta_abs * jnp.sin(beta_arg)

  def init(params):
    return ComplexMomentumState(tree_zeros_like(params), tree_zeros_like(params))

  def update(updates, state, params=None, **extra):
    del params, extra

    def leaf(g, re, im):
      dt = accumulation_dtype(g.dtype)
      re32, im32 = re.astype(dt), im.astype(dt)
      new_re = br * re32 - bi * im32 - g.astype(dt)
      new_im = bi * re32 + br * im32
      return (-new_re).astype(g.dtype), new_re.astype(re.dtype), new_im.astype(im.dtype)

    triples = jax.tree.map(leaf, updates, state.mu_re, state.mu_im)
    out, re, im = unzip_tree(updates, triples, 3)
    return out, ComplexMomentumState(re, im)

  return optax.GradientTransformationExtraArgs(init, update)
