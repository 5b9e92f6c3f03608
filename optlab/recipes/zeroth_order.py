"""Zeroth-order recipes: training with forward passes only.

Each recipe is a zeroth-order gradient estimator (`optlab.primitives.
zeroth_order`) followed by an ordinary update rule. They take the extra arg
``obj_fn`` (params -> scalar loss on the current batch) and ignore the
incoming gradient, which may be zeros: use ``optlab.zo_step(tx, obj_fn,
params, state)`` to never build a backward pass.

Their random perturbations come from a key in the state (seeded by ``seed=``)
through a documented key schedule (see `optlab.primitives.zeroth_order`); the
NumPy references regenerate the same draws with ``jax.random`` from that
schedule and implement the rest of each algorithm independently.
"""

from __future__ import annotations

from typing import Any

import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.moments import scale_by_moments
from optlab.rules import heavy_ball
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.primitives.zeroth_order import (scale_by_cge, scale_by_quantized_spsa, scale_by_spsa,
                                            scale_by_zo_adamu)

__all__ = ["mezo", "sparse_mezo", "zo_adamu", "deepzero", "quzo"]


def _momentum(where: str, momentum: Any, nesterov: bool = False):
  """torch.optim.SGD's momentum on the estimate (plus decay), or nothing for momentum=0."""
  V.check_decay(where, "momentum", momentum)
  if isinstance(momentum, (int, float)) and momentum == 0:
    return optax.identity()
  return scale_by_moments(heavy_ball(momentum, nesterov=nesterov), None)


def mezo(learning_rate: Any, eps: Any = 1e-3, n_samples: int = 1, weight_decay: Any = 0.0,
         mask: Any = None, momentum: Any = 0.0, seed: int = 0):
  """MeZO: "Fine-Tuning Language Models with Just Forward Passes" (arXiv:2305.17333).

  ZO-SGD with the two-point SPSA estimate, regenerating the perturbation from
  a key instead of storing it::

    z ~ N(0, I)      (from the key schedule)
    c = (f(p + eps z) - f(p - eps z)) / (2 eps)
    p <- p - lr (c z + weight_decay p)

  averaged over ``n_samples`` perturbations when > 1. ``momentum`` > 0 adds
  heavy-ball momentum to the estimate (plus decay), ``m <- momentum m + u``,
  as ``torch.optim.SGD``: ZO-SGD with momentum, a variant the paper
  discusses; the official trainer and the default (0) are plain ZO-SGD with
  no optimizer state beyond the key. With momentum the state holds one
  param-shaped buffer.

  Differences from the official princeton-nlp/MeZO trainer: the perturbed
  points are evaluated functionally (``p + eps z``, ``p - eps z``), not by
  moving the weights in place and back, so no rounding drift accumulates in
  low precision; draws come from ``jax.random``, not torch's generator.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    eps: the perturbation scale, > 0 (official default 1e-3).
    n_samples: number of perturbations averaged per step, an int >= 1.
    weight_decay: weight decay added to the estimate (``+ weight_decay p``,
      inside the momentum when there is one); >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf. The official trainer decays
      every tensor whose name contains neither "bias" nor "layer_norm".
    momentum: heavy-ball momentum on the estimate (see above), in [0, 1);
      0 (default) is plain ZO-SGD.
    seed: int seed of the state's PRNG key (the perturbations' key schedule).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``, a function params -> scalar loss
    on the current batch; the incoming gradient is ignored (pass zeros, or
    use `optlab.zo_step`).

  References:
    "Fine-Tuning Language Models with Just Forward Passes",
    arXiv:2305.17333 (https://arxiv.org/abs/2305.17333).

    Official code: princeton-nlp/MeZO.

  Example:
    >>> import jax, jax.numpy as jnp, optax, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = optlab.mezo(1e-2)
    >>> state = tx.init(params)
    >>> zeros = jax.tree.map(jnp.zeros_like, params)  # the gradient is not used
    >>> updates, state = tx.update(zeros, state, params, obj_fn=loss)
    >>> updates["w"].shape
    (3, 2)
    >>> bool(loss(optax.apply_updates(params, updates)) < loss(params))
    True
  """
  V.check_learning_rate("mezo", learning_rate)
  V.check_nonneg("mezo", "weight_decay", weight_decay)
  V.check_seed("mezo", seed)
  return recipe_chain("mezo", scale_by_spsa(eps, n_samples, seed=seed, where="mezo"),
                      add_decayed_weights(weight_decay, mask), _momentum("mezo", momentum),
                      scale_by_learning_rate(learning_rate))


def sparse_mezo(learning_rate: Any, sparsity: Any = 0.75, eps: Any = 1e-3, n_samples: int = 1,
                weight_decay: Any = 0.0, mask: Any = None, momentum: Any = 0.0, seed: int = 0):
  """Sparse MeZO: "Sparse MeZO: Less Parameters for Better Performance in
  Zeroth-Order LLM Fine-Tuning" (arXiv:2402.15751).

  MeZO that perturbs, and so updates, only the small-magnitude weights. Each
  tensor's threshold ``h`` is fixed at init, from the weights being
  fine-tuned, as the ``(1 - sparsity)`` quantile of their magnitudes
  (`small_magnitude_threshold`); at every step::

    s = 1[|p| <= h]                 (small_magnitude_mask)
    z ~ N(0, I)                     (from the key schedule)
    c = (f(p + eps s z) - f(p - eps s z)) / (2 eps)
    p <- p - lr (c s z + weight_decay p)

  Scalars are always perturbed. The mask is recomputed at every step, never
  stored, as in the paper's memory-efficient implementation; the state keeps
  one threshold per tensor. No official code was available to check
  against. Held out of `catalog()`: a weight that must grow past its
  tensor's initial threshold is frozen, so the method fine-tunes but cannot
  train the contract's problems from scratch (``known_failures`` in its
  catalogue entry). It passes the contract's fine-tuning task
  (``digits_finetune``: an MLP pre-trained on other data).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    sparsity: the fraction of each tensor's entries above its threshold at
      init (the largest in magnitude, never perturbed while they stay
      above it), in [0, 1).
    eps: the perturbation scale, > 0.
    n_samples: number of perturbations averaged per step, an int >= 1.
    weight_decay: weight decay added to the estimate (``+ weight_decay p``,
      inside the momentum when there is one); >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    momentum: optional heavy-ball momentum on the estimate (plus decay),
      ``m <- momentum m + u`` as ``torch.optim.SGD``, in [0, 1); 0 (default)
      for none, as `mezo`.
    seed: int seed of the state's PRNG key (the perturbations' key schedule).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``, a function params -> scalar loss
    on the current batch; the incoming gradient is ignored (pass zeros, or
    use `optlab.zo_step`).

  References:
    "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM
    Fine-Tuning", arXiv:2402.15751 (https://arxiv.org/abs/2402.15751).
  """
  V.check_learning_rate("sparse_mezo", learning_rate)
  V.check_nonneg("sparse_mezo", "weight_decay", weight_decay)
  V.check_seed("sparse_mezo", seed)
  return recipe_chain("sparse_mezo", scale_by_spsa(eps, n_samples, seed=seed, sparsity=sparsity,
                                                   where="sparse_mezo"),
                      add_decayed_weights(weight_decay, mask), _momentum("sparse_mezo", momentum),
                      scale_by_learning_rate(learning_rate))


def zo_adamu(learning_rate: Any, eps: Any = 1e-3, alpha: Any = 0.5, b1: Any = 0.9,
             b2: Any = 0.01, sigma: Any = 1e-8, n_samples: int = 1, weight_decay: Any = 0.0,
             mask: Any = None, momentum: Any = 0.0, seed: int = 0):
  """ZO-AdaMU: "ZO-AdaMU Optimizer: Adapting Perturbation by the Momentum and
  Uncertainty in Zeroth-order Optimization" (arXiv:2312.15184).

  ZO-SGD whose perturbation carries momentum (`scale_by_zo_adamu`)::

    m <- b1 z1 + (1 - b1) z2,   z1 ~ N(0, alpha),  z2 ~ N(m, 1 - alpha)
    c = (f(p + eps m) - f(p - eps m)) / (2 eps)
    v = b2 z1^2 + (1 - b2) z2^2
    p <- p - lr (c m / sqrt(v^2 + sigma) + weight_decay p)

  ``momentum`` > 0 adds heavy-ball momentum on the estimate (plus decay), as
  `mezo`'s option: an optlab variant, not the paper's method (which puts its
  momentum in the perturbation instead); the default 0 is the paper's.

  Differences from the paper: it anneals alpha, b1 and b2 over three phases
  of a known step budget (T1, T2, T3); here they are constants by default
  (0.5, 0.9, 0.01: the annealing's end values) and the annealing is left to
  a schedule passed in their place. No official code was available to check
  against; the update follows the paper's equations, including ``v^2``
  under the square root. ``n_samples`` > 1 (an optlab extension; the paper
  uses one) averages the scaled estimates of several perturbations that
  share the centre ``m``, and stores their mean as the next ``m``. The state
  holds the perturbation ``m`` (one param-shaped buffer).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    eps: the perturbation scale, > 0.
    alpha: the uncertainty, the variance split between ``z1`` and ``z2``,
      in [0, 1]; a float or a schedule of the step.
    b1: smoothing weight of the perturbation, in [0, 1]; a float or a
      schedule of the step.
    b2: smoothing weight of ``v``, in [0, 1]; a float or a schedule of the
      step.
    sigma: added to ``v^2`` under the square root, > 0.
    n_samples: number of perturbations averaged per step, an int >= 1.
    weight_decay: weight decay added to the estimate (``+ weight_decay p``,
      inside the momentum when there is one); >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    momentum: optional heavy-ball momentum on the estimate (plus decay),
      ``m <- momentum m + u`` as ``torch.optim.SGD``, in [0, 1); 0 (default)
      for none, as `mezo`.
    seed: int seed of the state's PRNG key (the perturbations' key schedule).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``, a function params -> scalar loss
    on the current batch; the incoming gradient is ignored (pass zeros, or
    use `optlab.zo_step`).

  References:
    "ZO-AdaMU Optimizer: Adapting Perturbation by the Momentum and
    Uncertainty in Zeroth-order Optimization", arXiv:2312.15184
    (https://arxiv.org/abs/2312.15184).
  """
  V.check_learning_rate("zo_adamu", learning_rate)
  V.check_nonneg("zo_adamu", "weight_decay", weight_decay)
  V.check_seed("zo_adamu", seed)
  return recipe_chain("zo_adamu", scale_by_zo_adamu(eps, alpha, b1, b2, sigma, n_samples,
                                                    seed=seed, where="zo_adamu"),
                      add_decayed_weights(weight_decay, mask), _momentum("zo_adamu", momentum),
                      scale_by_learning_rate(learning_rate))


def deepzero(learning_rate: Any, mu: Any = 5e-3, sparsity: float = 0.0, mask_interval: int = 1,
             momentum: Any = 0.9, *, nesterov: bool = False, weight_decay: Any = 5e-4,
             mask: Any = None, seed: int = 0):
  """DeepZero: "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model
  Training" (arXiv:2310.02025).

  Coordinate-wise gradient estimation (CGE, `scale_by_cge`) on a random
  sparse coordinate set, fed to ``torch.optim.SGD``::

    g_j = (f(p + mu e_j) - f(p)) / mu     (selected coordinates j; 0 elsewhere)
    d = g + weight_decay p
    b <- momentum b + d
    p <- p - lr b                         (nesterov: p <- p - lr (d + momentum b))

  One forward pass per selected coordinate per step, plus one: meant for
  small models or sparse coordinate sets, as in the paper. Defaults are the
  official ones.

  Differences from the official OPTML-Group/DeepZero code: the coordinate
  set is uniform-random with the same sparsity in every tensor (the official
  "layer_wise_random" score, without the ZO-GraSP layer-wise ratios, which
  come from a separate pruning run), redrawn every ``mask_interval`` steps
  (officially every few epochs); no feature reuse or forward parallelism
  (they change speed, not the numbers).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    mu: the finite-difference step, > 0 (official 5e-3).
    sparsity: the fraction of each tensor's coordinates not estimated, in
      [0, 1) (official 0); a Python float, static under
      ``optax.inject_hyperparams``.
    mask_interval: steps between redraws of the coordinate set, an int
      >= 1; static under ``optax.inject_hyperparams``.
    momentum: the SGD momentum, in [0, 1) (official 0.9).
    nesterov: keyword-only; True uses the Nesterov form (official False).
    weight_decay: keyword-only; L2 coefficient added to the estimate, >= 0
      (official 5e-4).
    mask: keyword-only; a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    seed: keyword-only; int seed of the state's PRNG key (the coordinate
      sets' key schedule).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``, a function params -> scalar loss
    on the current batch; the incoming gradient is ignored (pass zeros, or
    use `optlab.zo_step`).

  References:
    "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model
    Training", arXiv:2310.02025 (https://arxiv.org/abs/2310.02025).

    Official code: OPTML-Group/DeepZero.
  """
  V.check_learning_rate("deepzero", learning_rate)
  V.check_nonneg("deepzero", "weight_decay", weight_decay)
  V.check_seed("deepzero", seed)
  return recipe_chain("deepzero", scale_by_cge(mu, sparsity, mask_interval, seed=seed,
                                               where="deepzero"),
                      add_decayed_weights(weight_decay, mask),
                      _momentum("deepzero", momentum, nesterov),
                      scale_by_learning_rate(learning_rate))


def quzo(learning_rate: Any, eps: Any = 1e-3, n_samples: int = 1, bits: Any = 8,
         weight_decay: Any = 0.0, mask: Any = None, momentum: Any = 0.0, seed: int = 0):
  """QuZO: "QuZO: Quantized Zeroth-Order Fine-Tuning for Large Language Models"
  (arXiv:2502.12346).

  ZO-SGD whose loss queries run at simulated ``bits``-bit precision with
  stochastic rounding (`scale_by_quantized_spsa`)::

    u ~ N(0, I);  u1, u2 two independent stochastic roundings of u
    c = (f(Q(p + eps u1)) - f(Q(p - eps u1))) / (2 eps)
    p <- p - lr (mean_s c_s u2_s + weight_decay p)

  Differences from the paper: the paper keeps the weights themselves in the
  low-precision format and stochastically rounds the update ``Q(lr c u2)``;
  here the params stay in their own dtype (keep them wherever you like, e.g.
  with a storage wrapper) and the low-precision forward pass is simulated by
  quantising each perturbed point, per tensor with a symmetric max-abs scale
  and stochastic rounding (no official code was available to check the
  quantiser against: per-tensor scaling is our choice).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    eps: the perturbation scale, > 0.
    n_samples: the paper's n, number of perturbations averaged per step, an int >= 1.
    bits: the simulated precision, in [2, 16] (8 for INT8, 4 for INT4).
    weight_decay: weight decay added to the estimate (``+ weight_decay p``,
      inside the momentum when there is one); >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    momentum: optional heavy-ball momentum on the estimate (plus decay),
      ``m <- momentum m + u`` as ``torch.optim.SGD``, in [0, 1); 0 (default)
      for none, as `mezo`.
    seed: int seed of the state's PRNG key (the perturbations' key schedule).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and the extra arg ``obj_fn``, a function params -> scalar loss
    on the current batch; the incoming gradient is ignored (pass zeros, or
    use `optlab.zo_step`).

  References:
    "QuZO: Quantized Zeroth-Order Fine-Tuning for Large Language Models",
    arXiv:2502.12346 (https://arxiv.org/abs/2502.12346).
  """
  V.check_learning_rate("quzo", learning_rate)
  V.check_nonneg("quzo", "weight_decay", weight_decay)
  V.check_seed("quzo", seed)
  return recipe_chain("quzo", scale_by_quantized_spsa(eps, n_samples, bits, seed=seed,
                                                      where="quzo"),
                      add_decayed_weights(weight_decay, mask), _momentum("quzo", momentum),
                      scale_by_learning_rate(learning_rate))


_KEY_NOTE = ("Random draws follow optlab's documented key schedule (state key from seed, "
             "fold_in(step), fold_in(sample), fold_in(crc32 of the leaf's tree path), float32 "
             "normals); the NumPy reference regenerates them with jax.random and implements "
             "the rest independently. On the quadratic reference problem the two-point "
             "difference equals the directional derivative exactly, so the reference computes "
             "loss differences as <grad at the midpoint, difference of points>.")

RECIPES = (
    Recipe("mezo", mezo, "zeroth_order", "Fine-Tuning Language Models with Just Forward Passes",
           "2305.17333", needs_extra_args=("obj_fn",),
           notes=_KEY_NOTE + " Perturbed points are evaluated functionally, not in place. "
                 "Optional heavy-ball momentum (default 0 = MeZO); the test hparams use "
                 "momentum 0.9 and 32 samples so one learning rate trains all three "
                 "contract problems (plain ZO-SGD cannot: Rosenbrock needs lr <= 0.01, digits "
                 "lr >= 0.06), and eps = 0.1 because a float32 finite difference carries a "
                 "rounding error of about ulp(f) / eps: with eps = 1e-3 a different "
                 "summation order of the same loss (optax.masked, sharding) moves the "
                 "estimate by ~1e-4 relative."),
    Recipe("zo_adamu", zo_adamu, "zeroth_order",
           "ZO-AdaMU Optimizer: Adapting Perturbation by the Momentum and Uncertainty in "
           "Zeroth-order Optimization", "2312.15184", needs_extra_args=("obj_fn",),
           notes=_KEY_NOTE + " alpha, b1, b2 are constants (the paper's annealing end values) "
                 "or schedules, not the paper's built-in three-phase annealing. The test "
                 "hparams use sigma = 1 (the paper's 1e-8 lets coordinates whose v is near 0 "
                 "take steps up to 1e4 times larger, which diverges on the contract "
                 "problems), 32 samples and the optional heavy-ball momentum (an optlab "
                 "variant) so one learning rate trains all three problems."),
    Recipe("quzo", quzo, "zeroth_order",
           "QuZO: Quantized Zeroth-Order Fine-Tuning for Large Language Models",
           "2502.12346", needs_extra_args=("obj_fn",),
           notes=_KEY_NOTE + " Stochastic roundings use jax.random uniforms keyed like the "
                 "normals (fold_in(sample key, 1..4)). Simulated quantisation of the perturbed "
                 "points (per-tensor symmetric scale); params and the update stay in the "
                 "params' dtype. Test hparams as mezo's."),
    Recipe("deepzero", deepzero, "zeroth_order",
           "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model Training",
           "2310.02025", needs_extra_args=("obj_fn",), static=("sparsity", "mask_interval"),
           notes="Coordinate sets follow optlab's documented key schedule (first k of a "
                 "jax.random permutation per leaf, keyed by the step // mask_interval and "
                 "crc32 of the leaf path); the NumPy reference regenerates them with "
                 "jax.random. Uniform per-tensor sparsity (no ZO-GraSP layer ratios). A "
                 "float32 forward difference carries ~ulp(f) / mu of rounding per coordinate, "
                 "so the test hparams use mu = 0.1 (the official 5e-3 amplifies rounding "
                 "50x more) and the contract compares its masked and sharded runs with "
                 "that absolute tolerance (tests/test_contract.py, FINITE_DIFFERENCE_ATOL)."),
    Recipe("sparse_mezo", sparse_mezo, "zeroth_order",
           "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM "
           "Fine-Tuning", "2402.15751", needs_extra_args=("obj_fn",),
           notes=_KEY_NOTE + " Plain ZO-SGD on the masked directions (momentum 0, as the "
                 "paper) with the default sparsity 0.75 in the tests. Passes the contract's "
                 "fine-tuning task (digits_finetune); fails only training from scratch.",
           known_failures={
               "quadratic": "all 20 coordinates start at 1 = the threshold; the first noisy "
                            "step lifts about half of them above it, where they stay frozen: "
                            "the loss stalls at 0.09 of its start (0.05 needed), at lr "
                            "0.005-0.05, sparsity 0.25-0.75, with or without momentum",
               "digits": "training from scratch grows the MLP's weights past their initial "
                         "thresholds, which freezes them: 0.94 of the initial loss after 250 "
                         "steps (0.3 needed) on the 256-example problem; on 768 examples "
                         "0.95, and 0.49 at best (sparsity 0.25, momentum 0.9)",
           }),
)
