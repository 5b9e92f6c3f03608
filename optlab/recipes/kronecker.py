"""Kronecker-factored natural-gradient methods fed by layer statistics: K-FAC and
MKOR (`optlab.primitives.kronecker`), each one chain with momentum, weight
decay and the learning rate.

Both need the keyword extra arg ``layer_stats`` (`optlab.layer_stats`): each
captured layer's inputs and output gradients, keyed by its kernel's path.
"""

from __future__ import annotations

from typing import Any, Optional

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.kronecker import clip_by_fisher_norm, scale_by_kfac, scale_by_mkor
from optlab.primitives.moments import scale_by_moments
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.rules import heavy_ball

__all__ = ["kfac", "mkor"]


def kfac(learning_rate: Any, damping: Any = 1e-3, decay: Any = 0.95,
         inverse_update_period: int = 5, momentum: Any = 0.9, weight_decay: Any = 0.0,
         norm_constraint: Any = None, *, mask: Any = None, max_dim: Optional[int] = None,
         axis_name: Optional[str] = None):
  """K-FAC: "Optimizing Neural Networks with Kronecker-factored Approximate
  Curvature" (Martens & Grosse, arXiv:1503.05671), with kfac-jax's factor
  conventions; the seed paper is "A New Way: Kronecker-Factored Approximate
  Curvature Deep Hedging and its Benefits".

  Per layer with statistics, ``W`` the joint ``[kernel; bias]`` matrix, ``a``
  its inputs (a trailing column of ones with a bias) and ``g`` its output
  gradients (n rows)::

    A <- EMA_decay(a^T a / n),  G <- EMA_decay(g^T g / n)     (bias-corrected, every step)
    every k steps:  pi^2 = (tr A / dim A) / (tr G / dim G)
                    A_inv = (A + pi sqrt(damping) I)^-1,  G_inv = (G + sqrt(damping) / pi I)^-1
    d = A_inv grad(W) G_inv
    d <- d * min(1, sqrt(norm_constraint / (lr^2 <d, g>)))   (with norm_constraint)
    m <- momentum m + d
    u = -lr * (m + weight_decay * p)

  (`optlab.scale_by_kfac`, `optlab.clip_by_fisher_norm`). Leaves without
  statistics (biases of layers not captured, norms, embeddings, scalars, and
  every leaf when ``layer_stats`` is empty) take the first-order rule: their
  raw gradient with the same momentum, weight decay and learning rate, i.e.
  SGD with heavy-ball momentum.

  Differences from kfac-jax's optimizer, which is not an optax transformation:
  no adaptive damping, learning rate or momentum (kfac-jax's quadratic-model
  options); the learning rate multiplies the momentum sum, kfac-jax's
  ``delta = momentum delta - lr d`` (the same for a constant learning rate);
  the weight decay is decoupled instead of kfac-jax's ``l2_reg`` (which it
  also adds to the damping); no burn-in steps.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    damping: the Tikhonov damping lambda, > 0.
    decay: the factors' EMA decay (kfac-jax's curvature_ema), in [0, 1).
    inverse_update_period: refresh the damped inverses every this many steps
      (from the first), an int >= 1.
    momentum: heavy-ball momentum on the preconditioned direction, in [0, 1).
    weight_decay: decoupled weight decay (multiplied by the learning rate), >= 0.
    norm_constraint: kfac-jax's bound on the squared Fisher norm of the step,
      > 0; None turns the clipping off.
    mask: the leaves that get Kronecker factors: a tree of bools or a function
      of the params returning one; None: every leaf with ndim >= 2 (those
      without statistics fall back to the first-order rule).
    max_dim: leave out kernels with d_in + 1 or d_out above it (their factors
      would be too large); None: no limit.
    axis_name: a pmap axis over which each step's statistics are averaged, or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs the extra
    arg ``layer_stats``: a mapping from each captured kernel's path
    (``jax.tree_util.keystr``) to its `optlab.layer_stats.LayerStats`, e.g. from
    ``optlab.capture_layer_stats``.

  References:
    "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
    arXiv:1503.05671 (https://arxiv.org/abs/1503.05671).
    "A New Way: Kronecker-Factored Approximate Curvature Deep Hedging and its
    Benefits" (the seed paper). kfac-jax (google-deepmind/kfac-jax): the factor
    EMA, the pi-adjusted damping and norm_constraint.

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2), "s": jnp.ones(())}
    >>> stats = {"['w']": optlab.LayerStats(jnp.eye(4, 3), jnp.ones((4, 2)), bias="['b']")}
    >>> tx = optlab.kfac(1e-2, damping=0.1)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2), "s": jnp.ones(())}
    >>> updates, state = tx.update(grads, state, params, layer_stats=stats)
    >>> updates["w"].shape, round(float(updates["s"]), 6)  # "s" has no statistics: SGD
    ((3, 2), -0.01)
  """
  V.check_learning_rate("kfac", learning_rate)
  V.check_decay("kfac", "momentum", momentum)
  V.check_nonneg("kfac", "weight_decay", weight_decay)
  pre = scale_by_kfac(damping, decay, inverse_update_period, mask=mask, max_dim=max_dim,
                      axis_name=axis_name)
  if norm_constraint is not None:
    pre = clip_by_fisher_norm(pre, norm_constraint, learning_rate)
  return recipe_chain(
      "kfac", pre, scale_by_moments(heavy_ball(momentum), None),
      add_decayed_weights(weight_decay), scale_by_learning_rate(learning_rate))


def mkor(learning_rate: Any, momentum: Any = 0.9, weight_decay: Any = 0.0, inv_freq: int = 10,
         stat_decay: Any = 0.95, stabilization_factor: Any = 0.1, norm_threshold: Any = 2.0,
         clipping_value: Any = 100.0, switch_rate: Any = None, switch_decay: Any = 0.95,
         switch_warmup: int = 20, *, mask: Any = None, max_dim: Optional[int] = None,
         axis_name: Optional[str] = None):
  """MKOR and MKOR-H: "MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer
  Using Rank-1 Updates" (arXiv:2306.01685), as the official code
  (Mohammad-Mozaffari/mkor, ``MKOR`` with its default SGD inner optimizer).

  Per layer with statistics (``W`` the joint ``[kernel; bias]`` matrix; a_bar,
  g_bar the batch means of its inputs and output gradients, entries clamped
  to +-clipping_value), on steps 0, f, 2f, ... (f = ``inv_freq``)::

    R_inv <- (P^-1 + a_bar a_bar^T)^-1,  P = stat_decay R_inv + (1 - stat_decay) I
    L_inv <- the same with g_bar                                  (Sherman-Morrison)
    (a factor flagged for reset becomes (1 - s) J + s I instead, s = stabilization_factor;
     a factor with an entry above norm_threshold flags both of its layer's factors)

  and every step::

    d = R_inv grad(W) L_inv,  d <- d (|grad_kernel| + |grad_bias|) / (|d_kernel| + |d_bias|)
    m <- momentum m + d + weight_decay p       (torch SGD: coupled decay, then momentum)
    u = -lr * m

  The factors start at I and the first refresh resets them (flags set), so
  the first f steps are SGD steps. In exact arithmetic a refreshed factor
  satisfies J <= P <= I, so no entry exceeds 1 and the official threshold 2
  only catches rounding (its factors are float16) and overflow; a threshold
  below 1 makes the stabiliser act. Leaves without statistics, and every leaf
  after MKOR-H switches, take that first-order rule: the raw gradient with the
  same decay, momentum and learning rate (the official ``sgd_layers``).

  MKOR-H (``switch_rate`` not None) switches for good to the first-order rule
  when the loss stops falling fast: the EMA (``switch_decay``) of the
  per-step decrease falls below ``switch_rate`` times the average decrease per
  step since the first step, after ``switch_warmup`` steps. The paper gives
  only "a loss-decrease-rate-based switching" and the official code has no
  hybrid mode, so this trigger is ours (`optlab.scale_by_mkor` describes it).

  Where the official code differs from the paper, this follows the code:
  the paper's factor update ``J_t^-1 = gamma J_{t-1}^-1 + (1 - gamma) v v^T``
  (Eqs. 3.5-3.6, by Sherman-Morrison) is ``J <- (P^-1 + v v^T)^-1`` with P
  the old inverse blended with I by a fixed 0.95 (here ``stat_decay``; the
  official ``stat_decay`` argument is unused); the norm-based stabiliser
  resets on the refresh *after* a factor exceeds 2 in absolute value, for
  both factors of the layer, instead of the update, while the paper blends
  before each update; the rescale uses the sum of the kernel's and the bias's
  norms. One official quirk is not followed: its reset tests
  ``module not in factor_dict`` on a list of tensors, which is always true, so
  every reset returns I; here a reset is ``(1 - s) J + s I`` as that code
  intends (``stabilization_factor=1`` gives I). The factors are kept in float32
  (float64 for float64 params; the official default is float16), and a
  rank-1 update that is not finite resets the factor to I.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    momentum: heavy-ball momentum of the inner SGD, in [0, 1).
    weight_decay: coupled weight decay of the inner SGD (added to the
      preconditioned direction), >= 0.
    inv_freq: refresh the inverse factors every this many steps, an int >= 1.
    stat_decay: the weight of the old inverse factor against I before each
      rank-1 update, in [0, 1].
    stabilization_factor: the weight s of I in a factor reset, in [0, 1].
    norm_threshold: the entry size that flags a layer's factors for reset, > 0.
    clipping_value: the clamp on the entries of the statistics, > 0.
    switch_rate: MKOR-H's threshold on the ratio of the recent to the average
      loss decrease, >= 0; None: plain MKOR.
    switch_decay: the decay of MKOR-H's EMA of the loss decrease, in [0, 1).
    switch_warmup: MKOR-H never switches in the first this many steps, an int >= 1.
    mask: the leaves that get factors: a tree of bools or a function of the
      params returning one; None: every leaf with ndim >= 2.
    max_dim: leave out kernels with d_in + 1 or d_out above it; None: no limit.
    axis_name: a pmap axis over which the rank-1 statistics (and MKOR-H's
      loss) are averaged, or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (weight decay), the extra arg ``layer_stats`` (as for
    `optlab.kfac`) and, with ``switch_rate``, the extra arg ``value``: the loss
    on the current batch.

  References:
    "MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using Rank-1
    Updates", arXiv:2306.01685 (https://arxiv.org/abs/2306.01685).
    Official code: Mohammad-Mozaffari/mkor (mkor/mkor.py).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> stats = {"['w']": optlab.LayerStats(jnp.eye(4, 3), jnp.ones((4, 2)), bias="['b']")}
    >>> tx = optlab.mkor(1e-2, switch_rate=0.1)  # MKOR-H: needs the loss as `value`
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params, layer_stats=stats, value=jnp.asarray(2.3))
    >>> updates["w"].shape
    (3, 2)
  """
  V.check_learning_rate("mkor", learning_rate)
  V.check_decay("mkor", "momentum", momentum)
  V.check_nonneg("mkor", "weight_decay", weight_decay)
  return recipe_chain(
      "mkor",
      scale_by_mkor(inv_freq, stat_decay, stabilization_factor, norm_threshold, clipping_value,
                    switch_rate, switch_decay, switch_warmup, mask=mask, max_dim=max_dim,
                    axis_name=axis_name),
      add_decayed_weights(weight_decay), scale_by_moments(heavy_ball(momentum), None),
      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("kfac", kfac, "second_order",
           "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
           "1503.05671", needs_extra_args=("layer_stats",),
           static=("inverse_update_period",),
           notes="kfac-jax's factor EMA, pi-adjusted damping and norm_constraint, as one optax "
                 "chain (fixed damping, learning rate and momentum; decoupled weight decay). "
                 "Leaves without layer statistics take SGD with momentum. Factors and the "
                 "preconditioned direction are checked against kfac-jax in "
                 "tests/test_kronecker.py."),
    Recipe("mkor", mkor, "second_order",
           "MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using Rank-1 Updates",
           "2306.01685", needs_extra_args=("layer_stats", "value"),
           static=("inv_freq",),
           notes="Official code's factor refresh (inverse blended with I by 0.95, then a "
                 "Sherman-Morrison rank-1 update; reset on the refresh after an entry exceeds "
                 "2) and norm rescale, inner SGD with momentum. MKOR-H's switch rule is ours "
                 "(the paper only names it; the official code has none): it needs `value` "
                 "only when switch_rate is set. Leaves without layer statistics take SGD."),
)
