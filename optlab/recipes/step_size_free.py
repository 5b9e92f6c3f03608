"""Step-size-free methods: distance-based (DoG, D-Adaptation) and model-based
(MoMo, preconditioned stochastic Polyak, SANIA) step sizes.

Each recipe is a chain of the primitives in `optlab.primitives.parameter_free`
with the usual decay and learning-rate pieces. Where a method's learning rate
enters non-linearly (D-Adaptation, MoMo), the primitive takes it and the chain
has no separate `scale_by_learning_rate`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.parameter_free import (
    adagrad_diagonal, adam_diagonal, hutchinson_diagonal_ema, scale_by_dadapt_adam,
    scale_by_dadapt_lion, scale_by_dadapt_sgd, scale_by_dog, scale_by_momo,
    scale_by_polyak_step)
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["dog", "ldog", "dadapt_sgd", "dadapt_adam", "dadapt_lion", "momo", "momo_adam",
           "sps", "sania"]


# ---------------------------------------------------------------- DoG / LDoG
def _dog_chain(name: str, learning_rate: Any, init_step: Any, eps: Any, weight_decay: Any,
               mask: Any, layerwise: bool):
  V.check_learning_rate(name, learning_rate)
  decay = [add_decayed_weights(weight_decay, mask)] if weight_decay is not None else []
  return recipe_chain(name, *decay,
                      scale_by_dog(init_step, eps, layerwise=layerwise),
                      scale_by_learning_rate(learning_rate))


def dog(learning_rate: Any = 1.0, init_step: tuple[str, Any] = ("heuristic", 1e-6),
        eps: Any = 1e-8, weight_decay: Any = None, mask: Any = None):
  """DoG: "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size Schedule"
  (arXiv:2302.12022), following the official formll/dog code.

  SGD whose step size is the distance travelled from the start over the root
  of the summed squared gradient norms (norms over all params together)::

    x_{t+1} = x_t - c * eta_t g_t
    eta_t = max(r_eps, max_{i<=t} ||x_i - x_0||) / sqrt(eps + sum_{i<=t} ||g_i||^2)

  Uses ``optax.contrib.dog``'s names.

  Differences: ``x_0`` is taken from the params at the first update (as the
  official code), not at init (optax). With ``("learning_rate", eta_0)`` the
  first step is ``c * eta_0`` here and in optax; the official code ignores
  ``c`` on that step (the same for ``c = 1``). The paper's recommended
  iterate averaging is not part of the update (use a weight-averaging
  wrapper).

  Args:
    learning_rate: the paper's c, a multiplier of the step (1
      recommended), a float >= 0 or an optax schedule (step -> c).
    init_step: how the first step is set, a pair ``(tag, value)`` with
      ``value >= 0``: ``("heuristic", a)``: ``r_eps = a (1 + ||x_0||)`` (the
      official ``reps_rel``, default 1e-6); ``("distance", r)``:
      ``r_eps = r``; ``("learning_rate", eta_0)``: the first step size is
      ``eta_0`` (the official ``init_eta``).
    eps: added to the sum of squared gradient norms, >= 0.
    weight_decay: None for no decay; else a coupled L2 coefficient >= 0,
      added to the gradient and counted in the gradient norms, as the
      official code.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and no extra args.

  References:
    "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
    Schedule", arXiv:2302.12022 (https://arxiv.org/abs/2302.12022).

    Official code: formll/dog.
  """
  return _dog_chain("dog", learning_rate, init_step, eps, weight_decay, mask, False)


def ldog(learning_rate: Any = 1.0, init_step: tuple[str, Any] = ("heuristic", 1e-6),
         eps: Any = 1e-8, weight_decay: Any = None, mask: Any = None):
  """LDoG, the layer-wise DoG of "DoG is SGD's Best Friend" (arXiv:2302.12022),
  following the official formll/dog code.

  DoG's rule applied to every tensor (leaf) separately: for each layer
  ``l``::

    eta_t^l = max(r_eps^l, max_i ||x_i^l - x_0^l||) / sqrt(eps + sum_i ||g_i^l||^2)
    x^l <- x^l - c * eta_t^l g^l

  with ``r_eps^l = a (1 + ||x_0^l||)``. Arguments as `dog`. No optax
  version.

  Args:
    learning_rate: the paper's c, a multiplier of the step (1
      recommended), a float >= 0 or an optax schedule (step -> c).
    init_step: how the first step is set, a pair ``(tag, value)`` with
      ``value >= 0``: ``("heuristic", a)``: ``r_eps = a (1 + ||x_0||)`` (the
      official ``reps_rel``, default 1e-6); ``("distance", r)``:
      ``r_eps = r``; ``("learning_rate", eta_0)``: the first step size is
      ``eta_0`` (the official ``init_eta``).
    eps: added to the sum of squared gradient norms, >= 0.
    weight_decay: None for no decay; else a coupled L2 coefficient >= 0,
      added to the gradient and counted in the gradient norms, as the
      official code.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and no extra args.

  References:
    "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
    Schedule", arXiv:2302.12022 (https://arxiv.org/abs/2302.12022).

    Official code: formll/dog.
  """
  return _dog_chain("ldog", learning_rate, init_step, eps, weight_decay, mask, True)


# -------------------------------------------------------------- D-Adaptation
def dadapt_sgd(learning_rate: Any = 1.0, momentum: Any = 0.0, weight_decay: Any = 0.0,
               d0: Any = 1e-6, growth_rate: Any = math.inf):
  """D-Adapted SGD: "Learning-Rate-Free Learning by D-Adaptation" (arXiv:2301.07733),
  following facebookresearch/dadaptation's DAdaptSGD.

  Dual averaging with the step ``dlr_k = d_k lr_k / ||g_0||``, ``d_k`` a
  growing lower bound on the distance to the solution::

    s <- s + dlr_k g_k
    x <- momentum x + (1 - momentum) (x_0 - s)
    d_{k+1} = max(d_k, 2 sum_i dlr_i <g_i, s_{i-1}> / ||s||)

  Official names. Differences: ``||g_0||`` is the first non-zero gradient
  norm (the official code divides by zero if ``g_0 = 0``); as the official
  code it is measured before the decay term is added. No optax version.

  Args:
    learning_rate: a multiplier of the adapted step (1 recommended), a float
      >= 0 or an optax schedule (step -> multiplier).
    momentum: weight of the previous iterate in the averaging, in [0, 1).
    weight_decay: coupled L2 coefficient, added to the gradient; >= 0.
    d0: the initial estimate of the distance to the solution, > 0.
    growth_rate: cap on d's growth per step (``d_{k+1} <= growth_rate d_k``),
      >= 1; ``math.inf`` (default) for no cap.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and no extra args.

  References:
    "Learning-Rate-Free Learning by D-Adaptation", arXiv:2301.07733
    (https://arxiv.org/abs/2301.07733).

    Official code: facebookresearch/dadaptation, ``DAdaptSGD``.
  """
  return recipe_chain("dadapt_sgd",
                      scale_by_dadapt_sgd(learning_rate, momentum, weight_decay, d0, growth_rate))


def dadapt_adam(learning_rate: Any = 1.0, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                weight_decay: Any = 0.0, d0: Any = 1e-6, growth_rate: Any = math.inf, *,
                decouple: bool = False, use_bias_correction: bool = False):
  """D-Adapted Adam: "Learning-Rate-Free Learning by D-Adaptation" (arXiv:2301.07733),
  following facebookresearch/dadaptation's DAdaptAdam.

  Adam whose step ``dlr_k = d_k lr_k`` (times Adam's bias correction with
  ``use_bias_correction``) sits inside the first moment::

    m <- b1 m + (1 - b1) dlr_k g_k
    u = -m / (sqrt(v) + eps)

  ``d_k`` grows as the ratio of an EMA of
  ``dlr_k <g_k, s / (sqrt(v) + eps)>`` to ``(1 - sqrt(b2)) ||s||_1``, with
  ``s`` an EMA (rate ``sqrt(b2)``) of ``dlr_k g_k``.

  The defaults are the official code's: no bias correction, coupled decay.
  ``optax.contrib.dadapt_adamw`` always bias-corrects and always decouples
  and has no ``growth_rate``; the catalog's ``optax=`` adapter maps the
  official settings onto it (dividing its learning rate by the bias
  correction, chaining ``add_decayed_weights`` for coupled decay).

  Args:
    learning_rate: a multiplier of the adapted step (1 recommended), a float
      >= 0 or an optax schedule (step -> multiplier).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1); ``sqrt(b2)`` is the rate of
      ``s`` and of the numerator.
    eps: added to ``sqrt(v)``, >= 0.
    weight_decay: coupled L2 coefficient added to the gradient by default;
      with ``decouple`` the AdamW-style decay ``-dlr_k weight_decay x``;
      >= 0.
    d0: the initial estimate of the distance to the solution, > 0 (optax: ``estim_lr0``).
    growth_rate: cap on d's growth per step (``d_{k+1} <= growth_rate d_k``),
      >= 1; ``math.inf`` (default) for no cap.
    decouple: keyword-only; True decouples the weight decay (AdamW-style).
    use_bias_correction: keyword-only; True multiplies ``dlr_k`` by Adam's
      bias correction ``sqrt(1 - b2^k) / (1 - b1^k)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and no extra args.

  References:
    "Learning-Rate-Free Learning by D-Adaptation", arXiv:2301.07733
    (https://arxiv.org/abs/2301.07733).

    Official code: facebookresearch/dadaptation, ``DAdaptAdam``.

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.dadapt_adam()  # no learning rate to tune: 1.0 by default
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool(jnp.all(updates["w"] < 0))  # a step against the gradient
    True
  """
  return recipe_chain("dadapt_adam", scale_by_dadapt_adam(
      learning_rate, b1, b2, eps, weight_decay, d0, growth_rate, decouple=decouple,
      use_bias_correction=use_bias_correction))


def dadapt_lion(learning_rate: Any = 1.0, b1: Any = 0.9, b2: Any = 0.99,
                weight_decay: Any = 0.0, d0: Any = 1e-6):
  """D-Adapted Lion, facebookresearch/dadaptation's DAdaptLion (the D-Adaptation
  paper, arXiv:2301.07733, has the SGD and Adam variants; Lion's is in the code).

  Lion with the step ``dlr_k = d_k lr_k``::

    u_k = sign(b1 m + (1 - b1) g)
    x <- x (1 - dlr_k weight_decay) - dlr_k u_k
    m <- b2 m + (1 - b2) dlr_k g

  ``d_k`` grows as the ratio of an EMA of ``dlr_k <u_k, s>`` to
  ``(1 - sqrt(b2)) ||s||_1``, ``s`` an EMA (rate ``sqrt(b2)``) of the steps
  ``dlr_k u_k``. As the official code, ``m`` accumulates ``dlr_k g_k``, so
  the sign mixes a dlr-scaled momentum with the raw gradient. No optax
  version.

  Args:
    learning_rate: a multiplier of the adapted step (1 recommended), a float
      >= 0 or an optax schedule (step -> multiplier).
    b1: weight of the momentum in the interpolation whose sign is taken, in
      [0, 1).
    b2: decay of the momentum, in [0, 1); ``sqrt(b2)`` is the rate of ``s``
      and of the numerator.
    weight_decay: decoupled weight decay, multiplied by ``dlr_k``; >= 0.
    d0: the initial estimate of the distance to the solution, > 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and no extra args.

  References:
    "Learning-Rate-Free Learning by D-Adaptation", arXiv:2301.07733
    (https://arxiv.org/abs/2301.07733).

    Official code: facebookresearch/dadaptation, ``DAdaptLion``.
  """
  return recipe_chain("dadapt_lion", scale_by_dadapt_lion(learning_rate, b1, b2, weight_decay,
                                                          d0))


# ---------------------------------------------------------------------- MoMo
def momo(learning_rate: Any = 1.0, beta: Any = 0.9, lower_bound: Any = 0.0,
         weight_decay: Any = 0.0, *, adapt_lower_bound: bool = False,
         bias_correction: bool = False):
  """MoMo: "MoMo: Momentum Models for Adaptive Learning Rates" (arXiv:2305.07583),
  following the official fabian-sp/MoMo code.

  SGD with momentum whose step is the truncated model's Polyak step::

    tau_k = min(lr_k / rho_k,
                max(c (fbar_k - rho_k lb) + <x_k, d_k> - c gamma_k, 0) / ||d_k||^2)
    x <- (x - tau_k d_k) / c

  with EMAs (rate ``beta``) ``fbar`` of the loss values, ``d`` of the
  gradients, ``gamma`` of ``<g, x>``, and ``c = 1 + lr_k weight_decay``.
  Uses ``optax.contrib.momo``'s names.

  Differences from ``optax.contrib.momo``: with weight decay optax does not
  divide the step ``tau_k d_k`` by ``c`` (the official code does, so does
  this), and it has no ``bias_correction``; the two agree otherwise. Where
  ``||d|| = 0`` the step is 0.

  Args:
    learning_rate: the cap on the step (1 recommended), a float >= 0 or an
      optax schedule (step -> cap).
    beta: rate of the EMAs, in [0, 1).
    lower_bound: a lower bound ``lb`` of the loss (0 suits most losses).
    weight_decay: proximal weight decay, >= 0.
    adapt_lower_bound: keyword-only; re-estimate the bound online, never
      below ``lower_bound`` (the official ``use_fstar``).
    bias_correction: keyword-only; True starts the EMAs from 0 with
      ``rho_k = 1 - beta^k``; False (default) starts them at the first
      sample, ``rho_k = 1``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``value``, the loss at the current params.

  References:
    "MoMo: Momentum Models for Adaptive Learning Rates", arXiv:2305.07583
    (https://arxiv.org/abs/2305.07583).

    Official code: fabian-sp/MoMo.
  """
  V.check_learning_rate("momo", learning_rate)
  return recipe_chain("momo", scale_by_momo(
      learning_rate, beta, lower_bound, weight_decay, adapt_lower_bound=adapt_lower_bound,
      bias_correction=bias_correction))


def momo_adam(learning_rate: Any = 1e-2, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
              lower_bound: Any = 0.0, weight_decay: Any = 0.0, *, adapt_lower_bound: bool = False,
              divide: bool = True):
  """MoMo-Adam: "MoMo: Momentum Models for Adaptive Learning Rates" (arXiv:2305.07583),
  following the official fabian-sp/MoMo MomoAdam code.

  MoMo's step in Adam's geometry::

    D_k = sqrt(v_k / (1 - b2^k)) + eps
    tau_k = min(lr_k / rho_k,
                max(c (fbar_k - rho_k lb) + <x_k, d_k> - c gamma_k, 0) / <d_k, D_k^-1 d_k>)
    x <- (x - tau_k D_k^-1 d_k) / c                          (divide)
    x <- x (1 - lr_k weight_decay) - tau_k D_k^-1 d_k        (divide=False)

  with ``rho_k = 1 - b1^k`` (all EMAs rate ``b1`` from 0) and
  ``c = 1 + lr_k weight_decay``. Uses ``optax.contrib.momo_adam``'s names,
  plus the official ``divide``. Differences from ``optax.contrib.momo_adam``:
  with weight decay optax neither divides the step by ``c`` nor offers
  ``divide=False``; the two agree otherwise.

  Args:
    learning_rate: the cap on the step (official default 1e-2), a float >= 0
      or an optax schedule (step -> cap).
    b1: rate of the EMAs of the loss, the gradients and ``<g, x>``, in
      [0, 1).
    b2: decay of Adam's second moment ``v``, in [0, 1).
    eps: added to ``sqrt(v_hat)`` in ``D_k``, >= 0.
    lower_bound: a lower bound ``lb`` of the loss (0 suits most losses).
    weight_decay: weight decay, proximal (``divide``) or AdamW-style; >= 0.
    adapt_lower_bound: keyword-only; re-estimate the bound online, never
      below ``lower_bound`` (the official ``use_fstar``).
    divide: keyword-only; True divides the step by ``c`` (proximal decay),
      False decays AdamW-style (see above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``value``, the loss at the current params.

  References:
    "MoMo: Momentum Models for Adaptive Learning Rates", arXiv:2305.07583
    (https://arxiv.org/abs/2305.07583).

    Official code: fabian-sp/MoMo (``MomoAdam``).
  """
  V.check_learning_rate("momo_adam", learning_rate)
  V.check_decay("momo_adam", "b1", b1)
  V.check_decay("momo_adam", "b2", b2)
  V.check_nonneg("momo_adam", "eps", eps)
  return recipe_chain("momo_adam", scale_by_momo(
      learning_rate, b1, lower_bound, weight_decay, adapt_lower_bound=adapt_lower_bound,
      bias_correction=True, preconditioner=adam_diagonal(b2, eps), divide=divide))


# ------------------------------------------------------ Polyak steps: SPS, SANIA
_PRECONDITIONERS = ("hutchinson", "adam", "adagrad", "none")


def _diagonal(where: str, name: str, *, b2: Any, floor: Any, power: Any,
              probes: tuple[int, int], axis_name: Optional[str]):
  """The diagonal preconditioner rule named `name`: D = max(floor, S)^power."""
  V.check_choice(where, "preconditioner", name, _PRECONDITIONERS)
  V.check_decay(where, "b2", b2)
  if name == "hutchinson":
    if not (isinstance(probes, (tuple, list)) and len(probes) == 2
            and all(isinstance(n, int) and n >= 1 for n in probes)):
      raise ValueError(f"optlab.{where}: probes must be a pair of positive integers (per "
                       f"step, at the first step), got {probes!r}")
    return hutchinson_diagonal_ema(b2, floor, power, n_probes=probes[0],
                                   init_probes=probes[1], axis_name=axis_name)
  if name == "adam":
    return adam_diagonal(b2, floor=floor, power=power)
  if name == "adagrad":
    return adagrad_diagonal(floor=floor, power=power)
  return None


def sps(learning_rate: Any = 1.0, preconditioner: str = "hutchinson", lower_bound: Any = 0.0,
        slack: Optional[str] = None, lmd: Any = 0.01, b2: Any = 0.999, alpha: Any = 0.1,
        probes: tuple[int, int] = (1, 100), seed: int = 0, axis_name: Optional[str] = None):
  """Preconditioned SPS: "Stochastic Gradient Descent with Preconditioned Polyak
  Step-size" (arXiv:2310.02093), following the authors' PSPS code.

  The Polyak step in a diagonal preconditioner's norm::

    x <- x - lr * gamma_t D_t^-1 g_t
    gamma_t = (f_t - lower_bound) / <g_t, D_t^-1 g_t>

  with ``D_t = max(alpha, |diag estimate|)`` and optional slack
  (``slack="l1"`` / ``"l2"``, parameter ``lmd``; see
  `scale_by_polyak_step`). Preconditioners (``preconditioner``), each
  truncated at alpha (``D = max(alpha, D)``):

  * ``"hutchinson"`` (default, the official code's):
    ``D_t = b2 D_{t-1} + (1 - b2) z * (H z)`` (``probes[0]`` samples a
    step), started at the mean of ``probes[1]`` samples at the first step;
    needs the extra arg ``obj_fn``;
  * ``"adam"``: ``D_t = sqrt(v_t / (1 - b2^t))``, ``v`` the EMA of ``g^2``;
  * ``"adagrad"``: ``D_t = sqrt(sum g^2)``;
  * ``"none"``: plain SPS (``D = I``).

  Differences: the official code has only the Hutchinson preconditioner; the
  Adam and AdaGrad ones follow the paper's description (undebiased moments
  are not an option). As the code, a loss below ``lower_bound`` gives a
  negative (uphill) step: choose ``lower_bound`` at or below the loss (0 for
  non-negative losses). Steps with ``<g, D^-1 g> < 1e-13`` are skipped, as
  the code. No optax version.

  Args:
    learning_rate: a multiplier of the Polyak step (1 as published), a
      float >= 0 or an optax schedule (step -> multiplier).
    preconditioner: ``"hutchinson"``, ``"adam"``, ``"adagrad"`` or
      ``"none"`` (see above).
    lower_bound: f*, a lower bound of the loss (0 in the paper).
    slack: None, ``"l1"`` or ``"l2"``: the slack variant of the step.
    lmd: the slack's parameter lambda, >= 0.
    b2: decay of the Hutchinson or Adam estimate, in [0, 1) (the official
      0.999).
    alpha: the floor of ``D``, > 0 (the official 0.1).
    probes: ``(n_step, n_first)``, the Hutchinson samples per step and at
      the first step, positive ints (official ``(1, 100)``); a tuple, so that
      ``optax.inject_hyperparams`` keeps it static.
    seed: int seed of the Hutchinson probes' PRNG key.
    axis_name: a pmap / shard_map axis name over which the Hutchinson
      estimate is averaged, or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs the
    extra arg ``value`` (the loss at the current params) and, with the
    Hutchinson preconditioner, ``obj_fn`` (params -> loss on the current
    batch) and ``params``; a missing one raises an error that names it. The
    catalog declares both extra args.

  References:
    "Stochastic Gradient Descent with Preconditioned Polyak Step-size",
    arXiv:2310.02093 (https://arxiv.org/abs/2310.02093).
  """
  where = "sps"
  V.check_learning_rate(where, learning_rate)
  V.check_positive(where, "alpha", alpha)
  V.check_seed(where, seed)
  power = 1.0 if preconditioner == "hutchinson" else 0.5
  rule = _diagonal(where, preconditioner, b2=b2, floor=alpha ** (1.0 / power), power=power,
                   probes=probes, axis_name=axis_name)
  return recipe_chain(where, scale_by_polyak_step(rule, lower_bound, rule="sps", slack=slack,
                                                  lmd=lmd, seed=seed),
                      scale_by_learning_rate(learning_rate))


def sania(learning_rate: Any = 1.0, preconditioner: str = "adam", b2: Any = 0.999,
          eps: Any = 0.1, *, is_sqrt: bool = False, lower_bound: Any = 0.0,
          probes: tuple[int, int] = (1, 100), seed: int = 0, axis_name: Optional[str] = None):
  """SANIA: "SANIA: Polyak-type Optimization Framework Leads to Scale Invariant
  Stochastic Algorithms" (arXiv:2312.17369), following the authors' code.

  The Polyak step to the root of a quadratic model in the preconditioner's
  norm: with ``G = <g, B^-1 g>`` and ``f`` the loss minus ``lower_bound``::

    gamma = 1 - sqrt(1 - 2 f / G)   where 2 f <= G, else 1
    x <- x - lr gamma B^-1 g

  Preconditioners ``B`` (``preconditioner``), each ``max(eps, S)``, or its
  root with ``is_sqrt``:

  * ``"adam"`` (default; official Adam-SQR): ``S = v_t / (1 - b2^t)``,
    ``v`` the EMA of ``g^2``;
  * ``"adagrad"`` (official AdaGrad-SQR): ``S`` = the sum of ``g^2``;
  * ``"hutchinson"``: ``S`` = the smoothed Hutchinson estimate of
    ``diag(H)`` (as `sps`; needs the extra arg ``obj_fn``);
  * ``"none"``: ``B = I``.

  Differences: ``lower_bound`` is an addition (the official code uses
  ``f* = 0``; as there, a loss below it gives an uphill step); the official
  AdaGrad-SQR ignores lr (always 1), here lr multiplies every variant. No
  optax version.

  Args:
    learning_rate: a multiplier of the step (1 as published), a float >= 0
      or an optax schedule (step -> multiplier).
    preconditioner: ``"adam"``, ``"adagrad"``, ``"hutchinson"`` or
      ``"none"`` (see above).
    b2: decay of the Adam or Hutchinson estimate, in [0, 1).
    eps: the floor of ``S``, > 0 (the official 0.1).
    is_sqrt: keyword-only; True uses the root of ``max(eps, S)``.
    lower_bound: keyword-only; f*, a lower bound of the loss (0 in the
      code).
    probes: keyword-only; ``(n_step, n_first)``, the Hutchinson samples per step and at
      the first step, positive ints (official ``(1, 100)``); a tuple, so that
      ``optax.inject_hyperparams`` keeps it static.
    seed: keyword-only; int seed of the Hutchinson probes' PRNG key.
    axis_name: keyword-only; a pmap / shard_map axis name over which the Hutchinson
      estimate is averaged, or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs the
    extra arg ``value`` (the loss at the current params) and, with the
    Hutchinson preconditioner, ``obj_fn`` (params -> loss on the current
    batch) and ``params``.

  References:
    "SANIA: Polyak-type Optimization Framework Leads to Scale Invariant
    Stochastic Algorithms", arXiv:2312.17369
    (https://arxiv.org/abs/2312.17369).
  """
  where = "sania"
  V.check_learning_rate(where, learning_rate)
  V.check_positive(where, "eps", eps)
  V.check_seed(where, seed)
  rule = _diagonal(where, preconditioner, b2=b2, floor=eps, power=0.5 if is_sqrt else 1.0,
                   probes=probes, axis_name=axis_name)
  return recipe_chain(where, scale_by_polyak_step(rule, lower_bound, rule="sania", seed=seed),
                      scale_by_learning_rate(learning_rate))


# ------------------------------------------------------------------ registry
_DOG_PAPER = "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size Schedule"
_DADAPT_PAPER = "Learning-Rate-Free Learning by D-Adaptation"
_MOMO_PAPER = "MoMo: Momentum Models for Adaptive Learning Rates"
_SPS_PAPER = "Stochastic Gradient Descent with Preconditioned Polyak Step-size"
_SANIA_PAPER = ("SANIA: Polyak-type Optimization Framework Leads to Scale Invariant Stochastic "
                "Algorithms")

RECIPES = (
    Recipe("dog", dog, "step_size_free", _DOG_PAPER, "2302.12022",
           notes="Follows the official code (x_0 captured at the first update). Matches "
                 "optax.contrib.dog."),
    Recipe("ldog", ldog, "step_size_free", _DOG_PAPER, "2302.12022",
           notes="Follows the official LDoG code: one DoG step size per tensor. No optax "
                 "version."),
    Recipe("dadapt_sgd", dadapt_sgd, "step_size_free", _DADAPT_PAPER, "2301.07733",
           notes="Follows the official DAdaptSGD (dual averaging; ||g_0|| without the decay "
                 "term); ||g_0|| is the first non-zero gradient norm. The contract tests use "
                 "momentum 0.9 (official default 0, which diverges on the contract "
                 "problems). No optax version."),
    Recipe("dadapt_adam", dadapt_adam, "step_size_free", _DADAPT_PAPER, "2301.07733",
           notes="Official DAdaptAdam defaults (no bias correction, coupled decay); the "
                 "contract tests turn bias correction on (as optax), which trains the digits "
                 "MLP at learning_rate 1. optax.contrib.dadapt_adamw always bias-corrects and "
                 "decouples the decay; the tests' optax adapter maps the official settings "
                 "onto it (growth_rate has no optax counterpart and is checked against the "
                 "reference only)."),
    Recipe("dadapt_lion", dadapt_lion, "step_size_free", _DADAPT_PAPER, "2301.07733",
           notes="Follows the official DAdaptLion (dlr inside the momentum). At the "
                 "recommended learning_rate 1 its estimate of d overshoots on the contract "
                 "problems (digits diverges); the contract tests use 0.12. No optax version."),
    Recipe("momo", momo, "step_size_free", _MOMO_PAPER, "2305.07583", needs_extra_args=("value",),
           notes="Follows the official code. optax.contrib.momo agrees without weight decay "
                 "(it does not divide the step by 1 + lr * wd) and has no bias_correction; "
                 "those options are checked against the reference only "
                 "(tests/test_parameter_free.py)."),
    Recipe("momo_adam", momo_adam, "step_size_free", _MOMO_PAPER, "2305.07583",
           needs_extra_args=("value",),
           notes="Follows the official MomoAdam. optax.contrib.momo_adam agrees without weight "
                 "decay; weight decay (both divide modes) is checked against the reference "
                 "only (tests/test_parameter_free.py)."),
    Recipe("sps", sps, "step_size_free", _SPS_PAPER, "2310.02093",
           needs_extra_args=("value", "obj_fn"),
           notes="Needs value and, with the default Hutchinson preconditioner, obj_fn (the "
                 "catalog declares both; the other preconditioners ignore obj_fn). Follows "
                 "the authors' PSPS code (Hutchinson only); the Adam / AdaGrad "
                 "preconditioners follow the paper's description. No optax version."),
    Recipe("sania", sania, "step_size_free", _SANIA_PAPER, "2312.17369",
           needs_extra_args=("value",),
           notes="Follows the authors' SANIA code (Adam-SQR / AdaGrad-SQR, max(eps, S) "
                 "truncation); lr multiplies the AdaGrad-SQR step too. The Hutchinson "
                 "preconditioner (extra arg obj_fn) is tested separately. No optax version."),
)
