"""Variational learning: IVON.

Family "second_order": IVON is a (variational) Newton method -- its update is
divided by a diagonal Hessian estimate h, kept up to date by Price's theorem
from gradients at sampled weights -- so it sits with the curvature methods
rather than with the Adam family, whose denominator is a gradient statistic.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.primitives.variational import scale_by_ivon

__all__ = ["ivon"]


def ivon(learning_rate: Any, ess: Any = 1e4, hess_init: Any = 1.0, b1: Any = 0.9,
         b2: Any = 0.99999, weight_decay: Any = 1e-4, mc_samples: Optional[int] = None,
         clip_radius: Any = math.inf, seed: Optional[int] = None,
         axis_name: Optional[str] = None):
  """IVON: "Variational Learning is Effective for Large Deep Networks" (Shen et al.,
  arXiv:2402.17641), official team-approx-bayes/ivon code.

  A Gaussian posterior ``N(m, 1 / (ess (h + wd)))`` over the weights. Per step,
  with g the gradient at sampled weights (from ``obj_fn``) and
  ``f = ess (h + wd) noise * g``::

    mu <- b1 mu + (1 - b1) g
    h <- b2 h + (1 - b2) f + (1 - b2)^2 (h - f)^2 / (2 (h + wd))
    m <- m - lr (h0 + wd) clip((mu / (1 - b1^t) + wd m) / (h + wd))

  See `scale_by_ivon`. Evaluate at the mean (the params) or average
  predictions over ``ivon_sample_params(state, params, s)``. The
  hyperparameters have the official names (b1, b2 for beta1, beta2). Only the
  'price' Hessian estimate is offered (the official code also has 'gradsq');
  the noise is drawn with jax.random (see `optlab.primitives.variational`).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    ess: the effective sample size, > 0: the training-set size (no official
      default; 1e4 here).
    hess_init: the initial Hessian estimate h0, > 0.
    b1: decay of the gradient EMA mu, in [0, 1).
    b2: decay of the Hessian estimate h, in [0, 1).
    weight_decay: the weight decay wd, > 0 (it also enters the posterior
      variance ``1 / (ess (h + wd))``).
    mc_samples: the number of sampled weights per step, an int >= 1; None
      means 1 (None so that `optax.inject_hyperparams` keeps it static).
    clip_radius: the bound of the elementwise clipping to
      ``[-clip_radius, clip_radius]`` in the step, > 0
      (``math.inf``: no clipping).
    seed: the integer seed of the noise; None means 0 (None so that
      `optax.inject_hyperparams` keeps it static).
    axis_name: a pmap axis name over which the sampled gradients are averaged
      (the official ``sync``); None averages nothing.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``, a function params -> scalar loss
    on the current batch: the gradients it uses are those of ``obj_fn`` at
    the sampled weights.

  References:
    "Variational Learning is Effective for Large Deep Networks",
    arXiv:2402.17641 (https://arxiv.org/abs/2402.17641). Official code:
    team-approx-bayes/ivon.
  """
  V.check_learning_rate("ivon", learning_rate)
  if seed is not None:
    V.check_seed("ivon", seed)
  return recipe_chain(
      "ivon", scale_by_ivon(ess, hess_init, b1, b2, weight_decay,
                            1 if mc_samples is None else mc_samples, clip_radius,
                            0 if seed is None else seed, axis_name=axis_name),
      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("ivon", ivon, "second_order", "Variational Learning is Effective for Large Deep "
           "Networks", "2402.17641", needs_extra_args=("obj_fn",),
           notes="Gradients at sampled weights come from obj_fn (or, with scale_by_ivon("
                 "use_obj_fn=False), from a forward pass at ivon_sample_params); noise "
                 "from jax.random."),
)
