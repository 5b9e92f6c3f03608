"""Layer-wise adaptive methods: NovoGrad, LAMB, LARS, and MADGRAD."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.layerwise import scale_by_layerwise_second_moment, scale_by_madgrad
from optlab.primitives.moments import scale_by_adam, scale_by_moments
from optlab.rules import ema, heavy_ball
from optlab.primitives.normalize import scale_by_trust_ratio
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["novograd", "lamb", "lars", "madgrad"]


def _check(where: str, learning_rate: Any, decays: dict[str, Any] = {},
           nonneg: dict[str, Any] = {}) -> None:  # pylint: disable=dangerous-default-value
  V.check_learning_rate(where, learning_rate)
  for name, value in decays.items():
    V.check_decay(where, name, value)
  for name, value in nonneg.items():
    V.check_nonneg(where, name, value)


def _decay(weight_decay: Any, mask: Any = None) -> list[Any]:
  """[add_decayed_weights], or [] for a Python-number 0 (as optax skips it).

  Adding 0 * p is not free: XLA does not fold it, and reading the params
  there makes it copy the donated params and state on CPU. Only Python
  numbers are skipped, so that the chain (and its state) has the same shape
  when `optax.inject_hyperparams` passes the value as an array at init and as
  a tracer at update. optax's `True` mask (every leaf) is add_decayed_weights'
  None.
  """
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:
    return []
  return [add_decayed_weights(weight_decay, None if mask is True else mask)]


def novograd(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.25, eps: Any = 1e-6,
             eps_root: Any = 0.0, weight_decay: Any = 0.0, mu_dtype: Any = None, *,
             grad_averaging: bool = False):
  """NovoGrad: "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
  Training of Deep Networks" (arXiv:1905.11286).

  Per tensor (layer) ``l``, with one scalar second moment ``v_l``::

    v_l <- b2 v_l + (1 - b2) ||g_l||^2     (v_l <- ||g_l||^2 while v_l is 0)
    m_l <- b1 m_l + (g_l / (sqrt(v_l + eps_root) + eps) + weight_decay * p_l)
    u_l = -lr * m_l

  No bias correction (the first-step initialisation of ``v`` replaces it).

  Defaults and differences:

  * The defaults are optax's (``b1=0.9``, ``b2=0.25``, ``eps=1e-6`` outside
    the root), so this is a drop-in for ``optax.novograd``. The official code
    (NVIDIA OpenSeq2Seq, NovoGrad2) uses ``b1=0.95``, ``b2=0.98`` and its
    epsilon 1e-8 INSIDE the root: pass ``b1=0.95, b2=0.98, eps=0.0,
    eps_root=1e-8`` (the catalog's hparams do). The paper writes eps outside
    the root; both are available.
  * ``v`` is initialised with ``||g||^2`` while it is still 0 (the official
    code's test), not strictly at step 1 (paper, optax); they differ only for
    a layer whose first gradients are exactly zero.
  * ``v`` is kept as one vector of per-tensor scalars (float32 or wider), and
    the squared norm saturates instead of overflowing (see
    `scale_by_layerwise_second_moment`).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the momentum, in [0, 1).
    b2: decay of the per-tensor second moment, in [0, 1).
    eps: added outside the root, to ``sqrt(v_l + eps_root)``; >= 0.
    eps_root: added inside the root, to ``v_l``; >= 0.
    weight_decay: applied to the normalised gradient, inside the momentum,
      as in the paper; >= 0.
    mu_dtype: dtype of the momentum accumulator; None keeps the params' dtype.
    grad_averaging: keyword-only; the official option
      ``m <- b1 m + (1 - b1) (...)`` in place of ``m <- b1 m + (...)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no
    extra args, and ``params`` only when ``weight_decay`` is non-zero.

  References:
    "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
    Training of Deep Networks", arXiv:1905.11286
    (https://arxiv.org/abs/1905.11286).

    Official code: NVIDIA OpenSeq2Seq (NovoGrad2).
  """
  _check("novograd", learning_rate, {"b1": b1, "b2": b2},
         {"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay})
  first = (ema(b1, debias=False, dtype=mu_dtype) if grad_averaging
           else heavy_ball(b1, dtype=mu_dtype))
  return recipe_chain("novograd", scale_by_layerwise_second_moment(b2, eps, eps_root),
                      *_decay(weight_decay), scale_by_moments(first, None),
                      scale_by_learning_rate(learning_rate))


def lamb(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
         eps_root: Any = 0.0, weight_decay: Any = 0.0, mask: Any = None, mu_dtype: Any = None):
  """LAMB: "Large Batch Optimization for Deep Learning: Training BERT in 76
  minutes" (arXiv:1904.00962), Algorithm 2.

  Adam's bias-corrected ratio, rescaled per tensor by the trust ratio
  ``||p|| / ||d||``::

    r = m_hat / (sqrt(v_hat + eps_root) + eps)
    d = r + weight_decay * p
    u = -lr * (||p|| / ||d||) * d

  with the trust ratio 1 where ``||p||`` or ``||d||`` is 0. Matches
  ``optax.lamb`` (same defaults).

  Differences from the paper: its scaling function ``phi(||p||)`` is the
  identity (the paper allows clipping ``||p||`` to ``[gamma_l, gamma_u]``);
  the zero-norm guard (ratio 1) is not in the paper. There is no official
  code by the authors; this follows the paper with optax's conventions.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added outside the root, to ``sqrt(v_hat + eps_root)``; >= 0.
    eps_root: added inside the root, to ``v_hat``; >= 0.
    weight_decay: decoupled weight decay, added to ``r`` before the trust
      ratio; >= 0.
    mask: which leaves are decayed: a tree of booleans shaped like the
      params, or a function params -> such a tree; None decays every leaf.
      The trust ratio applies to all leaves.
    mu_dtype: dtype of the momentum accumulator; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the trust ratio) and no extra args.

  References:
    "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes", arXiv:1904.00962 (https://arxiv.org/abs/1904.00962).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.lamb(1e-3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> # the trust ratio makes each tensor's step lr * ||p|| long
    >>> bool(jnp.allclose(jnp.linalg.norm(updates["w"]), 1e-3 * jnp.linalg.norm(params["w"])))
    True
  """
  _check("lamb", learning_rate, {"b1": b1, "b2": b2},
         {"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay})
  return recipe_chain("lamb", scale_by_adam(b1, b2, eps, eps_root, mu_dtype),
                      *_decay(weight_decay, mask), scale_by_trust_ratio(),
                      scale_by_learning_rate(learning_rate))


def lars(learning_rate: Any, weight_decay: Any = 0.0, *, weight_decay_mask: Any = True,
         trust_coefficient: Any = 0.001, eps: Any = 0.0, trust_ratio_mask: Any = True,
         momentum: Any = 0.9, nesterov: bool = False):
  """LARS: "Large Batch Training of Convolutional Networks" (arXiv:1708.03888).

  Per tensor, a local learning rate ``lambda`` scales the step, then heavy-ball
  momentum::

    d = g + weight_decay * p
    lambda = trust_coefficient * ||p|| / (||d|| + eps)   (1 where a norm is 0)
    v <- momentum v + lr * lambda * d
    u = -v                       (Nesterov: u = -(lr lambda d + momentum v))

  Uses optax's names and defaults and matches ``optax.lars``.

  Differences from the paper: the local lr divides by ``||g + wd p||``
  (optax, and the common LARS code) instead of the paper's
  ``||g|| + wd ||p||``; the two agree without weight decay. The masks, eps,
  Nesterov and the zero-norm guard are optax's additions. There is no
  official code by the authors.

  LARS is meant for non-zero-initialised weights: the local lr is
  proportional to ``||p||``, and for a tensor that is all zeros the
  zero-norm guard sets it to 1, so that tensor takes the full step
  ``lr * d`` (a ``trust_coefficient / ||d|| * ||p||`` times larger step than
  LARS gives it once it is non-zero). That is the method, not an error, but
  with an lr tuned for the trust ratio it overshoots: on a 10-d Rosenbrock
  valley from ``x = 0`` at lr 0.5 the loss climbs from 9 to 6e4 by step 12
  before it recovers. ``init`` therefore warns (``UserWarning``) when its
  params are concrete arrays and a tensor with ``ndim >= 2`` that the trust
  ratio applies to is all zeros; it says nothing under tracing
  (``jax.jit``, ``jax.eval_shape``) and costs nothing in ``update``.
  Zero-initialised biases (ndim 1) are usual and not reported. Initialise
  such kernels randomly, or leave them out through ``trust_ratio_mask``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size). The
      paper's polynomial decay is a schedule.
    weight_decay: L2 coefficient added to the gradient before the trust
      ratio; >= 0.
    weight_decay_mask: keyword-only; which leaves are decayed: True (all),
      a tree of booleans shaped like the params, or a function params ->
      such a tree.
    trust_coefficient: keyword-only; the paper's eta (default 0.001); >= 0.
    eps: keyword-only; added to ``||d||`` in the local lr; >= 0.
    trust_ratio_mask: keyword-only; which leaves get the local lr (the
      others use lr alone): True (all), a tree of booleans or a function
      params -> such a tree.
    momentum: keyword-only; the heavy-ball momentum, in [0, 1).
    nesterov: keyword-only; True uses the Nesterov form.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the trust ratio) and no extra args.

  References:
    "Large Batch Training of Convolutional Networks", arXiv:1708.03888
    (https://arxiv.org/abs/1708.03888).
  """
  _check("lars", learning_rate, {"momentum": momentum},
         {"weight_decay": weight_decay, "trust_coefficient": trust_coefficient, "eps": eps})
  trust = scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
  if trust_ratio_mask is not True:
    trust = optax.masked(trust, trust_ratio_mask)
  tx = recipe_chain("lars", *_decay(weight_decay, weight_decay_mask), trust,
                    scale_by_learning_rate(learning_rate),
                    scale_by_moments(heavy_ball(momentum, nesterov=nesterov), None))

  def init(params):
    state = tx.init(params)  # checks params first
    zero = _zero_kernels(params, trust_ratio_mask)
    if zero:
      warnings.warn(
          f"optlab.lars: {', '.join(zero)} {'is' if len(zero) == 1 else 'are'} all zeros; "
          "the trust ratio (proportional to ||p||) then falls back to 1, so a zero tensor "
          "takes the full step lr * g (LARS is meant for non-zero-initialised weights: "
          "initialise them randomly or leave them out through trust_ratio_mask)",
          UserWarning, stacklevel=2)
    return state

  return optax.GradientTransformationExtraArgs(init, tx.update)


def _zero_kernels(params: Any, trust_ratio_mask: Any) -> list[str]:
  """Paths of the concrete, all-zero tensors with ndim >= 2 that get LARS's trust
  ratio; [] while tracing. Only one bool per tensor leaves the device."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  if any(isinstance(x, jax.core.Tracer) for _, x in leaves):
    return []
  mask = trust_ratio_mask(params) if callable(trust_ratio_mask) else trust_ratio_mask
  if mask is True:
    masked = [True] * len(leaves)
  else:
    # optax.masked takes a mask with params' structure or a prefix of it.
    try:
      flags = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params)
    except (ValueError, TypeError, jax.errors.ConcretizationTypeError):
      return []  # an unusual (or traced) mask: the warning is advice, not a check
    masked = jax.tree.leaves(flags)
    if len(masked) != len(leaves):
      return []
  found = [(path, x) for (path, x), m in zip(leaves, masked)
           if m and np.ndim(x) >= 2 and np.size(x) > 0 and isinstance(x, (jax.Array, np.ndarray))
           and getattr(x, "is_fully_addressable", True)]
  # dispatch every reduction first, then read the bools back together
  nonzero = [np.any(x) if isinstance(x, np.ndarray) else jnp.any(x != 0) for _, x in found]
  if any(isinstance(nz, jax.core.Tracer) for nz in nonzero):
    return []  # concrete params closed over by a trace (jit, eval_shape): stay silent
  nonzero = jax.device_get(nonzero)
  return [V.path_str(path) for (path, _), nz in zip(found, nonzero) if not nz]


def madgrad(learning_rate: Any, momentum: Any = 0.9, weight_decay: Any = 0.0, eps: Any = 1e-6,
            *, decouple_decay: bool = False):
  """MADGRAD: "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
  Averaged Gradient Method for Stochastic Optimization" (arXiv:2101.11075).

  Dual averaging with a cube-root denominator, with the 0-based step ``k``,
  ``lambda_k = (lr_k + eps) sqrt(k + 1)`` and ``x0`` the initial params::

    s <- s + lambda_k g
    nu <- nu + lambda_k g^2
    z = x0 - s / (cbrt(nu) + eps)
    x <- momentum x + (1 - momentum) z

  The chain has no `scale_by_learning_rate`: the learning rate enters
  through ``lambda_k``, so `scale_by_madgrad` returns the change of ``x``.
  Official names and defaults.

  Follows the official code (facebookresearch/madgrad) where it differs from
  the paper: eps is added to the learning rate in ``lambda_k`` (not when lr
  is 0); ``weight_decay`` is an L2 term added to the gradient (the paper has
  no decay); ``decouple_decay=True`` is the official AdamW-style mode,
  ``x <- x_new - (lr + eps) weight_decay x_old``. Differences from
  ``optax.contrib.madgrad`` (which otherwise agrees): optax always adds eps
  to the learning rate (so it moves with lr = 0), has no decoupled decay,
  and keeps its state in the params' dtype (here float32 for 16-bit params,
  as in the official code). Also as in the official code: with momentum 0
  and ``decouple_decay`` the decay accumulates (the official code rebuilds
  ``x0`` from ``x`` each step; `scale_by_madgrad` shifts ``x0`` instead),
  and with ``eps = 0`` coordinates whose ``nu`` is 0 do not move (the
  official rebuild of ``x0`` would divide 0 by 0 there on the first step).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule,
      evaluated at the 0-based step ``k``.
    momentum: weight of the previous iterate in the averaging, in [0, 1).
    weight_decay: L2 coefficient added to the gradient, or with
      ``decouple_decay`` the decoupled decay; >= 0.
    eps: added to the learning rate in ``lambda_k`` and to
      ``cbrt(nu)``; >= 0.
    decouple_decay: keyword-only; True applies the decay AdamW-style
      (official option).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` and no extra args.

  References:
    "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
    Gradient Method for Stochastic Optimization", arXiv:2101.11075
    (https://arxiv.org/abs/2101.11075).

    Official code: facebookresearch/madgrad.
  """
  _check("madgrad", learning_rate, {"momentum": momentum},
         {"weight_decay": weight_decay, "eps": eps})
  if decouple_decay:
    return recipe_chain("madgrad", scale_by_madgrad(learning_rate, momentum, eps, weight_decay))
  return recipe_chain("madgrad", *_decay(weight_decay),
                      scale_by_madgrad(learning_rate, momentum, eps))


# ------------------------------------------------------------- optax adapters
RECIPES = (
    Recipe("novograd", novograd, "layerwise",
           "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of "
           "Deep Networks", "1905.11286",
           notes="Defaults are optax's; the contract tests run the official code's "
                 "(b1=0.95, b2=0.98, eps 1e-8 inside the root). v is initialised while it is "
                 "0 (official), not at step 1 (optax)."),
    Recipe("lamb", lamb, "layerwise",
           "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
           "1904.00962"),
    Recipe("lars", lars, "layerwise", "Large Batch Training of Convolutional Networks",
           "1708.03888",
           notes="The local lr divides by ||g + wd p|| (optax) rather than the paper's "
                 "||g|| + wd ||p||. Meant for non-zero-initialised weights: an all-zero "
                 "tensor's trust ratio falls back to 1, so it takes the full step lr * g "
                 "(init warns for such matrices)."),
    Recipe("madgrad", madgrad, "layerwise",
           "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged Gradient "
           "Method for Stochastic Optimization", "2101.11075",
           notes="Follows the official code: lr + eps in lambda_k (not when lr = 0), L2 decay "
                 "or decouple_decay; float32 state for 16-bit params. optax.contrib.madgrad "
                 "always adds eps and has no decoupled mode (the test adapter emulates it); the "
                 "adapter gives optax a float step count, as optax takes sqrt of the int32 "
                 "count in float32 even under x64."),
)
