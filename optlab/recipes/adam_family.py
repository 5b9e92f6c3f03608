"""SGD and the Adam family."""

from __future__ import annotations

from typing import Any

import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab.catalog import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.moments import heavy_ball, scale_by_adam, scale_by_moments
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["sgd", "adam", "adamw"]


def sgd(learning_rate: Any, momentum: Any = None, nesterov: bool = False,
        weight_decay: Any = None, mask: Any = None):
  """Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

  Paper: "On the importance of initialization and momentum in deep learning"
  (Sutskever et al., ICML 2013; no arXiv id). m <- momentum * m + g;
  u = -lr * m, or -lr * (g + momentum * m) with Nesterov. Matches optax.sgd.
  Hyperparameters: learning_rate, momentum (None: no momentum), nesterov,
  weight_decay (None: none; else coupled L2 added to the gradient before
  momentum), mask.
  """
  V.check_learning_rate("sgd", learning_rate)
  if momentum is not None:
    V.check_decay("sgd", "momentum", momentum)
  steps = [add_decayed_weights(weight_decay, mask)] if weight_decay is not None else []
  if momentum is not None:
    steps.append(scale_by_moments(heavy_ball(momentum, nesterov), None))
  return recipe_chain("sgd", *steps, scale_by_learning_rate(learning_rate))


def adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
         eps_root: Any = 0.0, mu_dtype: Any = None, *, nesterov: bool = False):
  """Adam: "Adam: A Method for Stochastic Optimization" (arXiv:1412.6980).

  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
  u = -lr * m_hat / (sqrt(v_hat + eps_root) + eps), with bias-corrected hats.
  Hyperparameters: learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov.
  Matches optax.adam.
  """
  V.check_learning_rate("adam", learning_rate)
  V.check_nonneg("adam", "eps", eps)
  return recipe_chain("adam", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                      scale_by_learning_rate(learning_rate))


def adamw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
          mask: Any = None, *, nesterov: bool = False):
  """AdamW: "Decoupled Weight Decay Regularization" (arXiv:1711.05101).

  Adam's direction plus decoupled decay, u = -lr * (adam_dir + weight_decay * p).
  As in optax and PyTorch, the decay is multiplied by the learning rate (the
  paper's schedule multiplier eta_t is the learning-rate schedule).
  Hyperparameters: as `adam`, plus weight_decay and mask. Matches optax.adamw.
  """
  V.check_learning_rate("adamw", learning_rate)
  V.check_nonneg("adamw", "eps", eps)
  return recipe_chain("adamw", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("sgd", sgd, "adam",
           "On the importance of initialization and momentum in deep learning", "",
           reference="adam_family:sgd", optax=optax.sgd,
           hparams={"learning_rate": 0.01, "momentum": 0.9},
           cases=({"nesterov": True}, {"momentum": None})),
    Recipe("adam", adam, "adam", "Adam: A Method for Stochastic Optimization", "1412.6980",
           reference="adam_family:adam", optax=optax.adam, hparams={"learning_rate": 0.02},
           cases=({"b1": 0.8, "b2": 0.99, "eps": 1e-6}, {"nesterov": True})),
    Recipe("adamw", adamw, "adam", "Decoupled Weight Decay Regularization", "1711.05101",
           reference="adam_family:adamw", optax=optax.adamw,
           hparams={"learning_rate": 0.02, "weight_decay": 0.01},
           cases=({"weight_decay": 0.1, "b2": 0.95},)),
)
