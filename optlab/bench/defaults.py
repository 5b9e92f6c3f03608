"""The bench's settings of each catalogue recipe: its documented defaults.

The bench builds a recipe from its factory's own defaults, never from the
contract tests' settings (those are tuned to tiny test problems). Most recipes
take a required ``learning_rate``, as in optax; the bench then starts from a
typical published rate and multiplies it by the task's ``lr_scale``:

* `BASE_LEARNING_RATE`, Adam's default 1e-3 (Kingma & Ba, arXiv:1412.6980),
  for the Adam-like methods (an adaptive, roughly unit-size step per entry);
* `LEARNING_RATES`, the recipes whose step has another size, with the reason.

A recipe whose factory has a default ``learning_rate`` (the step-size-free
methods, where it multiplies the method's own step-size estimate, and
Adafactor's relative step, ``None``) runs at that default, without the
task's scale: it is a calibrated setting of the method, not an Adam-sized step.
"""

from __future__ import annotations

import inspect
from typing import Optional

__all__ = ["BASE_LEARNING_RATE", "LEARNING_RATES", "default_learning_rate", "default_kwargs"]

BASE_LEARNING_RATE = 1e-3

LEARNING_RATES = {
    # SGD-type steps: lr * g, not lr * sign-like unit steps; 1e-2 is a common
    # setting (optax's examples, the papers' small-model runs).
    "sgd": 1e-2,
    "sgdp": 1e-2,
    "shampoo": 1e-2,  # its default grafting (graft_type="sgd") takes SGD's step size
    "adagrad": 1e-2,  # PyTorch's and optax's examples' default
    "madgrad": 1e-2,  # the official code's default
    "adamax": 2e-3,  # the Adam paper's default for AdaMax
    # Sign steps have norm sqrt(d) per tensor: the Lion paper uses 3-10x smaller
    # rates than AdamW (arXiv:2302.06675, section 5); the bench takes 3x.
    "lion": 3e-4,
    "cautious_lion": 3e-4,
    "mars_lion": 3e-4,
    "distributed_lion": 3e-4,
    "soap_lion": 1e-3,  # a third of SOAP's rate
    "mars_adamw": 3e-3,  # the official MARS default (variance reduction allows more)
    "mars_shampoo": 3e-3,
    "soap": 3e-3,  # the SOAP paper's rate (arXiv:2409.11321)
    "soap_adopt": 3e-3,
    "soap_ademamix": 3e-3,
    "soap_laprop": 3e-3,
    "muon": 0.02,  # Keller Jordan's default: orthogonalised steps of unit spectral norm
    # LARS: lr times the trust ratio ||w|| / ||g|| times trust_coefficient (1e-3 by
    # default), so lr 1 moves each layer by ~1e-3 of its norm, as Adam's 1e-3.
    "lars": 1.0,
    "adahessian": 0.15,  # the official default: a Newton-like step m / |diag H|
    # Natural-gradient directions of gradient size (K-FAC's damped A^-1 g G^-1;
    # MKOR rescales its direction to the gradient's norm): SGD's 1e-2.
    "kfac": 1e-2,
    "mkor": 1e-2,
    # A damped Gauss-Newton step, Newton-sized where the model is near-linear;
    # the official examples take rates of order 0.1-1.
    "egn": 0.1,
    "ivon": 0.1,  # the IVON paper's rates for its ResNet runs are 0.1-0.2
    "gravity": 0.1,  # the official default
    # Federated server rules: the paper's grids put the best server rates at
    # 1e-2 and above (arXiv:2003.00295, appendix).
    "fedadam": 1e-2,
    "fedyogi": 1e-2,
    "fedadagrad": 1e-2,
    # Zeroth-order estimates have norm ~sqrt(d) times the gradient's, so their
    # rates are far smaller: MeZO uses 1e-6 to 1e-7 for language models
    # (arXiv:2305.17333, appendix D); the coordinate-wise DeepZero is an SGD-like
    # step on exact finite differences.
    "mezo": 1e-6,
    "quzo": 1e-6,
    "sparse_mezo": 1e-6,
    "zo_adamu": 1e-5,
    "deepzero": 1e-2,
}


def default_learning_rate(recipe) -> tuple[Optional[float], bool]:
  """(learning rate, whether the task's lr_scale applies) for a catalogue recipe."""
  param = inspect.signature(recipe.factory).parameters.get("learning_rate")
  if param is not None and param.default is not inspect.Parameter.empty:
    return param.default, False
  return LEARNING_RATES.get(recipe.name, BASE_LEARNING_RATE), True


def default_kwargs(recipe, lr_scale: float = 1.0, seed: Optional[int] = None) -> dict:
  """The keyword arguments the bench passes to `recipe`'s factory: the default
  learning rate (times `lr_scale` where it applies) and, where the factory takes
  one and `seed` is given, the seed. Every other argument keeps its default."""
  lr, scaled = default_learning_rate(recipe)
  kwargs = {"learning_rate": lr * lr_scale if scaled and lr is not None else lr}
  if seed is not None and "seed" in inspect.signature(recipe.factory).parameters:
    kwargs["seed"] = seed
  return kwargs
