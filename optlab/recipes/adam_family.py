"""SGD and the Adam family: Adam with every classic and recent moment rule.

Each recipe is one `scale_by_moments` (or a sibling primitive from
`optlab.primitives.moments`) plus decay and the learning rate.
"""

from __future__ import annotations

from typing import Any

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights, add_decayed_weights_after_step
from optlab.primitives.moments import (ademamix_alpha_warmup, ademamix_b3_warmup, scale_by_adam,
    scale_by_adopt, scale_by_exadam, scale_by_fadam, scale_by_moments)
from optlab.rules import (abs_max, adan_momentum, belief, centered_ema_sq, dual_ema, ema, ema_sq,
                          heavy_ball, max_ema_sq, momentum_sq, sum_sq)
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["sgd", "adam", "adamw", "adagrad", "rmsprop", "adamax", "amsgrad", "nadam",
           "adabelief", "laprop", "adopt", "ademamix", "exadam", "fadam", "adamomentum", "adan"]


def sgd(learning_rate: Any, momentum: Any = None, *, nesterov: bool = False,
        weight_decay: Any = None, mask: Any = None):
  """Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

  Paper: "On the importance of initialization and momentum in deep learning"
  (Sutskever et al., ICML 2013; no arXiv id). The update::

    m <- momentum * m + g
    u = -lr * m                        (heavy ball)
    u = -lr * (g + momentum * m)       (nesterov=True)

  Matches optax.sgd. With ``weight_decay`` a coupled L2 term
  ``weight_decay * p`` is added to the gradient before the momentum.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    momentum: decay of the momentum trace, in [0, 1); None (the default) gives
      plain SGD with no trace.
    nesterov: use Nesterov's look-ahead ``g + momentum * m`` instead of ``m``.
    weight_decay: the coupled L2 coefficient, >= 0; None (the default) adds no
      decay.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf. Used
      only with ``weight_decay``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args; it needs ``params`` when ``weight_decay`` is given.

  References:
    "On the importance of initialization and momentum in deep learning" (no
    arXiv id).
  """
  V.check_learning_rate("sgd", learning_rate)
  if momentum is not None:
    V.check_decay("sgd", "momentum", momentum)
  steps = [add_decayed_weights(weight_decay, mask)] if weight_decay is not None else []
  if momentum is not None:
    steps.append(scale_by_moments(heavy_ball(momentum, nesterov=nesterov), None))
  return recipe_chain("sgd", *steps, scale_by_learning_rate(learning_rate))


def adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
         eps_root: Any = 0.0, mu_dtype: Any = None, *, nesterov: bool = False):
  """Adam: "Adam: A Method for Stochastic Optimization" (arXiv:1412.6980).

  With the bias-corrected ``m_hat = m / (1 - b1^t)`` and ``v_hat = v / (1 - b2^t)``::

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    u = -lr * m_hat / (sqrt(v_hat + eps_root) + eps)

  Matches optax.adam.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to ``v_hat`` inside the root, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    nesterov: use the Nesterov look-ahead first moment (the `nadam` form).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Adam: A Method for Stochastic Optimization", arXiv:1412.6980
    (https://arxiv.org/abs/1412.6980).
  """
  V.check_learning_rate("adam", learning_rate)
  V.check_nonneg("adam", "eps", eps)
  return recipe_chain("adam", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                      scale_by_learning_rate(learning_rate))


def adamw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, mu_dtype: Any = None, weight_decay: Any = 1e-4,
          mask: Any = None, *, nesterov: bool = False):
  """AdamW: "Decoupled Weight Decay Regularization" (arXiv:1711.05101).

  Adam's direction (see `adam`) plus decoupled decay::

    u = -lr * (adam_dir + weight_decay * p)

  As in optax and PyTorch, the decay is multiplied by the learning rate (the
  paper's schedule multiplier ``eta_t`` is the learning-rate schedule). Matches
  optax.adamw.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to ``v_hat`` inside the root, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    weight_decay: the decoupled decay rate, >= 0 (multiplied by the learning
      rate).
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    nesterov: use the Nesterov look-ahead first moment (the `nadam` form).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params`` (for the weight decay).

  References:
    "Decoupled Weight Decay Regularization", arXiv:1711.05101
    (https://arxiv.org/abs/1711.05101).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.adamw(1e-3, weight_decay=1e-2)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape, updates["w"].dtype
    ((3, 2), dtype('float32'))
    >>> bool((updates["w"] < 0).all())
    True
  """
  V.check_learning_rate("adamw", learning_rate)
  V.check_nonneg("adamw", "eps", eps)
  return recipe_chain("adamw", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def _check(where: str, **decays: Any) -> None:
  for name, value in decays.items():
    V.check_decay(where, name, value)


def adagrad(learning_rate: Any, initial_accumulator_value: Any = 0.1, eps: Any = 1e-7):
  """Adagrad: "Adaptive Subgradient Methods for Online Learning and Stochastic
  Optimization" (Duchi, Hazan & Singer, JMLR 2011; no arXiv id).

  The update, with ``G_0 = initial_accumulator_value``::

    G <- G + g^2
    u = -lr * g / sqrt(G + eps)

  Matches optax.adagrad: eps sits inside the root and G starts at 0.1; the
  paper's diagonal variant uses ``diag(G)^(1/2) + delta`` with G starting at 0.

  G never forgets: after one huge gradient entry (clamped by `bound_gradient`,
  so the step itself stays below lr per entry) that coordinate barely moves for
  the rest of training. That stall is Adagrad's own math, not an overflow.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    initial_accumulator_value: the starting value of G, >= 0.
    eps: added to G inside the root, >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization" (no arXiv id).
  """
  V.check_learning_rate("adagrad", learning_rate)
  V.check_nonneg("adagrad", "initial_accumulator_value", initial_accumulator_value)
  V.check_nonneg("adagrad", "eps", eps)
  return recipe_chain("adagrad",
                      scale_by_moments(None, sum_sq(initial_accumulator_value, eps), eps=0.0),
                      scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: Any, decay: Any = 0.9, eps: Any = 1e-8, initial_scale: Any = 0.0,
            *, eps_in_sqrt: bool = True, centered: bool = False, momentum: Any = None,
            nesterov: bool = False, bias_correction: bool = False):
  """RMSProp: "Lecture 6.5 - rmsprop" (Tieleman & Hinton, Coursera 2012; no arXiv
  id); the centred form is from Graves, arXiv:1308.0850.

  The update, with ``v_0 = initial_scale``::

    v <- decay v + (1 - decay) g^2
    u = g / sqrt(v + eps)              (eps_in_sqrt=True)
    u = g / (sqrt(v) + eps)            (eps_in_sqrt=False)

  ``centered`` uses ``v - E[g]^2``; ``bias_correction`` divides the EMAs by
  ``1 - decay^t``; with ``momentum`` a heavy-ball (or ``nesterov``) trace
  follows. The hyperparameters are optax.rmsprop's, which this matches. As in
  optax the trace runs after the learning-rate scaling (the same as PyTorch's
  placement when the learning rate is constant).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    decay: decay of the squared-gradient EMA, in [0, 1).
    eps: the denominator constant, >= 0, inside or outside the root (see
      ``eps_in_sqrt``).
    initial_scale: the starting value of v, >= 0.
    eps_in_sqrt: add eps inside the root (True, optax's default) or to the
      root (False).
    centered: subtract the squared EMA of g from v (Graves' centred form).
    momentum: decay of the momentum trace, in [0, 1); None (the default) gives
      no trace.
    nesterov: use Nesterov's form of the momentum trace (only with
      ``momentum``).
    bias_correction: divide the EMAs by ``1 - decay^t``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Lecture 6.5 - rmsprop: Divide the gradient by a running average of its
    recent magnitude" (no arXiv id). Centred form: Graves, arXiv:1308.0850
    (https://arxiv.org/abs/1308.0850).
  """
  V.check_learning_rate("rmsprop", learning_rate)
  _check("rmsprop", decay=decay)
  V.check_nonneg("rmsprop", "eps", eps)
  V.check_nonneg("rmsprop", "initial_scale", initial_scale)
  if momentum is not None:
    V.check_decay("rmsprop", "momentum", momentum)
  root_eps, outer_eps = (eps, 0.0) if eps_in_sqrt else (0.0, eps)
  kind = centered_ema_sq if centered else ema_sq
  rule = kind(decay, debias=bias_correction, eps_root=root_eps, initial=initial_scale)
  trace = ([scale_by_moments(heavy_ball(momentum, nesterov=nesterov), None)]
           if momentum is not None else [])
  return recipe_chain("rmsprop", scale_by_moments(None, rule, eps=outer_eps),
                      scale_by_learning_rate(learning_rate), *trace)


def adamax(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8):
  """Adamax: "Adam: A Method for Stochastic Optimization" (arXiv:1412.6980, Sec. 7.1).

  The update, with ``m_hat = m / (1 - b1^t)``::

    m <- b1 m + (1 - b1) g
    u <- max(b2 u, |g| + eps)
    step = -lr * m_hat / u

  Matches optax.adamax, which adds eps inside the max (the paper's Algorithm 2
  has no eps).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the infinity norm u, in [0, 1).
    eps: added to ``|g|`` inside the max, >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Adam: A Method for Stochastic Optimization", arXiv:1412.6980
    (https://arxiv.org/abs/1412.6980).
  """
  V.check_learning_rate("adamax", learning_rate)
  _check("adamax", b1=b1, b2=b2)
  V.check_nonneg("adamax", "eps", eps)
  return recipe_chain("adamax", scale_by_moments(ema(b1), abs_max(b2, eps), eps=0.0),
                      scale_by_learning_rate(learning_rate))


def amsgrad(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
            eps_root: Any = 0.0, mu_dtype: Any = None, *, bias_correction_mu: bool = True,
            bias_correction_nu: bool = True):
  """AMSGrad: "On the Convergence of Adam and Beyond" (arXiv:1904.09237).

  Adam's moments (see `adam`) with a running maximum of the second one::

    v_max <- max(v_max, v_hat)
    u = -lr * m_hat / (sqrt(v_max + eps_root) + eps)

  Matches optax.amsgrad, bias corrections on by default. The paper's
  Algorithm 2 corrects neither moment and has no eps:
  ``bias_correction_mu=False, bias_correction_nu=False`` and ``eps -> 0``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to ``v_hat`` inside the root, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    bias_correction_mu: divide m by ``1 - b1^t``.
    bias_correction_nu: divide v by ``1 - b2^t`` before the running maximum.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "On the Convergence of Adam and Beyond", arXiv:1904.09237
    (https://arxiv.org/abs/1904.09237).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.amsgrad(1e-3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool((updates["w"] < 0).all())
    True
  """
  V.check_learning_rate("amsgrad", learning_rate)
  _check("amsgrad", b1=b1, b2=b2)
  V.check_nonneg("amsgrad", "eps", eps)
  V.check_nonneg("amsgrad", "eps_root", eps_root)
  return recipe_chain("amsgrad",
                      scale_by_moments(ema(b1, debias=bias_correction_mu, dtype=mu_dtype),
                                       max_ema_sq(b2, debias=bias_correction_nu,
                                                  eps_root=eps_root), eps=eps),
                      scale_by_learning_rate(learning_rate))


def nadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          eps_root: Any = 0.0, mu_dtype: Any = None):
  """NAdam: "Incorporating Nesterov Momentum into Adam" (Dozat, ICLR 2016
  workshop; no arXiv id).

  Adam (see `adam`) with the look-ahead first moment::

    m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)

  Matches optax.nadam: a constant momentum (the paper's ``mu_t`` schedule is
  not used) and no extra b2 factor on ``v_hat``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to ``v_hat`` inside the root, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Incorporating Nesterov Momentum into Adam" (no arXiv id).
  """
  V.check_learning_rate("nadam", learning_rate)
  V.check_nonneg("nadam", "eps", eps)
  return recipe_chain("nadam", scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=True),
                      scale_by_learning_rate(learning_rate))


def adabelief(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-16,
              eps_root: Any = 1e-16, *, nesterov: bool = False):
  """AdaBelief: "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
  Gradients" (arXiv:2010.07468).

  The second moment tracks the gradient's deviation from its EMA m::

    m <- b1 m + (1 - b1) g
    s <- b2 s + (1 - b2) (g - m_t)^2 + eps_root
    u = -lr * m_hat / (sqrt(s_hat) + eps)

  Matches optax.adabelief and the official code (eps=1e-16 added both inside s
  and outside the root); the paper's text uses eps=1e-8 for both.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of s, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to s at every step, >= 0.
    nesterov: use the Nesterov look-ahead first moment.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
    Gradients", arXiv:2010.07468 (https://arxiv.org/abs/2010.07468).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.adabelief(1e-3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool((updates["w"] < 0).all())
    True
  """
  V.check_learning_rate("adabelief", learning_rate)
  _check("adabelief", b1=b1, b2=b2)
  V.check_nonneg("adabelief", "eps", eps)
  V.check_nonneg("adabelief", "eps_root", eps_root)
  return recipe_chain("adabelief",
                      scale_by_moments(ema(b1, nesterov=nesterov), belief(b2, eps_root), eps=eps),
                      scale_by_learning_rate(learning_rate))


def laprop(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-15,
           weight_decay: Any = 0.0, mask: Any = None, mu_dtype: Any = None):
  """LaProp: "LaProp: Separating Momentum and Adaptivity in Adam" (arXiv:2002.04839).

  Momentum of the normalised gradient, then a decay of the updated weights
  that is not scaled by the learning rate::

    m <- b1 m + (1 - b1) g / (sqrt(v_hat) + eps)
    p <- p - lr * m / (1 - b1^t)
    p <- p - weight_decay * p

  Follows the official code (Z-T-WANG/LaProp-Optimizer ``laprop.py``): eps
  after the bias correction, as in the paper, and its weight decay
  ``p -= wd * p`` after the step (0 by default; the paper does not specify a
  decay). Remaining difference: the official code keeps the learning rate
  inside the momentum and debiases with an EMA of past learning rates, which
  equals this chain for a constant learning rate but not under a schedule; its
  amsgrad / centered options are not offered.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the momentum, in [0, 1).
    b2: decay of the second moment v, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0 (official default 1e-15).
    weight_decay: the decay of the weights after the step, >= 0, not multiplied
      by the learning rate.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params`` (for the weight decay).

  References:
    "LaProp: Separating Momentum and Adaptivity in Adam", arXiv:2002.04839
    (https://arxiv.org/abs/2002.04839). Official code:
    Z-T-WANG/LaProp-Optimizer (``laprop.py``).
  """
  V.check_learning_rate("laprop", learning_rate)
  _check("laprop", b1=b1, b2=b2)
  V.check_nonneg("laprop", "eps", eps)
  return recipe_chain("laprop",
                      scale_by_moments(ema(b1, dtype=mu_dtype), ema_sq(b2), eps=eps,
                                       order="laprop"),
                      scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, None, mask))


def adopt(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6,
          mu_dtype: Any = None, *, nesterov: bool = False, use_clipping: bool = True,
          clip_value_fn: Any = None):
  """ADOPT: "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
  Rate" (arXiv:2411.02853).

  Step 1 only sets ``v = g^2``. Then the gradient is normalised by the
  *previous* v, and v is updated only after the step::

    x = clip(g / max(sqrt(v_{t-1}), eps), (t-1)^0.25)
    m <- b1 m + (1 - b1) x
    u = -lr * m
    v <- b2 v + (1 - b2) g^2

  Matches optax.contrib.adopt and the current official code (iShohei220/adopt,
  ``clip_lambda = step**0.25`` of the 0-based step). The paper's Algorithm 1
  has no clipping (``use_clipping=False``); the official code's weight_decay /
  decouple options are not offered (chain `add_decayed_weights` for the
  decoupled form).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: lower bound of ``sqrt(v)`` in the denominator, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    nesterov: use the Nesterov look-ahead first moment.
    use_clipping: clip the normalised gradient (the official code and optax);
      False gives the paper's Algorithm 1.
    clip_value_fn: a function of the 0-based step giving the clipping bound;
      None means the default ``step ** 0.25`` (None rather than that function,
      so that `optax.inject_hyperparams` does not mistake it for a schedule).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal Rate",
    arXiv:2411.02853 (https://arxiv.org/abs/2411.02853). Official code:
    iShohei220/adopt.
  """
  V.check_learning_rate("adopt", learning_rate)
  V.check_nonneg("adopt", "eps", eps)
  return recipe_chain("adopt",
                      scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov,
                                     use_clipping=use_clipping, clip_value_fn=clip_value_fn),
                      scale_by_learning_rate(learning_rate))


def ademamix(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999,
             alpha: Any = 5.0, eps: Any = 1e-8, eps_root: Any = 0.0, mu_dtype: Any = None,
             weight_decay: Any = 0.0, mask: Any = None, *, t_alpha_b3: Any = None):
  """AdEMAMix: "The AdEMAMix Optimizer: Better, Faster, Older" (arXiv:2409.03350).

  A fast EMA m1 (decay b1, bias-corrected) and a slow EMA m2 (decay b3) of g::

    u = -lr * ((m1_hat + alpha m2) / (sqrt(v_hat + eps_root) + eps) + weight_decay * p)

  With ``t_alpha_b3`` (the paper's ``T_{alpha,beta3}``) alpha warms up
  linearly and b3 by a linear growth of its half-life from b1 (the official
  schedulers), over that many steps; ``alpha`` and ``b3`` may also be
  schedules of the 0-based step, as in optax. Matches optax.contrib.ademamix
  (plus ``t_alpha_b3``), except that ``mu_dtype`` here applies to m1 and m2
  only (optax also stores v in it). The official PyTorch default alpha is 2.0;
  5.0 is optax's.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the fast EMA m1, in [0, 1).
    b2: decay of the second moment v, in [0, 1).
    b3: decay of the slow EMA m2, in [0, 1), or a schedule of the 0-based
      step.
    alpha: weight of the slow EMA, >= 0, or a schedule of the 0-based step.
    eps: added to the root in the denominator, >= 0.
    eps_root: added to ``v_hat`` inside the root, >= 0.
    mu_dtype: storage dtype of m1 and m2; None keeps the params' dtype.
    weight_decay: the decoupled decay rate, >= 0 (multiplied by the learning
      rate).
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    t_alpha_b3: the number of warm-up steps of alpha and b3, > 0; None (the
      default) means no warm-up. Not combined with schedules for alpha or b3.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params`` (for the weight decay).

  References:
    "The AdEMAMix Optimizer: Better, Faster, Older", arXiv:2409.03350
    (https://arxiv.org/abs/2409.03350).
  """
  V.check_learning_rate("ademamix", learning_rate)
  _check("ademamix", b1=b1, b2=b2, b3=b3)
  V.check_nonneg("ademamix", "alpha", alpha)
  V.check_nonneg("ademamix", "eps", eps)
  V.check_nonneg("ademamix", "eps_root", eps_root)
  alpha, b3 = _ademamix_schedules("ademamix", alpha, b3, b1, t_alpha_b3)
  return recipe_chain("ademamix",
                      scale_by_moments(dual_ema(b1, b3, alpha, dtype=mu_dtype),
                                       ema_sq(b2, eps_root=eps_root), eps=eps),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def _ademamix_schedules(where, alpha, b3, b1, t_alpha_b3):
  if t_alpha_b3 is None:
    return alpha, b3
  V.check_positive(where, "t_alpha_b3", t_alpha_b3)
  if callable(alpha) or callable(b3):
    raise ValueError(f"optlab.{where}: give t_alpha_b3 or schedules for alpha / b3, not both")
  return ademamix_alpha_warmup(alpha, t_alpha_b3), ademamix_b3_warmup(b3, b1, t_alpha_b3)


def exadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
           weight_decay: Any = 0.0, mask: Any = None, *, dynamic_step_size: bool = False):
  """EXAdam: "EXAdam: The Power of Adaptive Cross-Moments" (arXiv:2412.20302).

  Cross-moment debiasing and gradient acceleration, with ``s_t = 1``::

    d1 = 1 + b2^t v / (v + eps)
    d2 = 1 + b1^t m^2 / (m^2 + eps)
    m~ = d1 m / (1 - b1^t)
    g~ = d1 g / (1 - b1^t)
    u = -lr * (s_t (m~ + g~) / (sqrt(d2 v / (1 - b2^t)) + eps) + weight_decay * p)

  The default follows the current official code (AhmedMostafa16/EXAdam) and
  arXiv v2; arXiv v1 and its code also grow the step size,
  ``s_t = ln(sqrt(2 (t + 1)))``: ``dynamic_step_size=True``.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the first moment m, in [0, 1).
    b2: decay of the second moment v, in [0, 1).
    eps: the constant of the debiasing ratios and of the denominator, >= 0.
    weight_decay: the decoupled decay rate, >= 0 (multiplied by the learning
      rate, not by ``s_t``, as the official code).
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    dynamic_step_size: use arXiv v1's growing ``s_t``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params`` (for the weight decay).

  References:
    "EXAdam: The Power of Adaptive Cross-Moments", arXiv:2412.20302
    (https://arxiv.org/abs/2412.20302). Official code:
    AhmedMostafa16/EXAdam.
  """
  V.check_learning_rate("exadam", learning_rate)
  V.check_nonneg("exadam", "eps", eps)
  return recipe_chain("exadam", scale_by_exadam(b1, b2, eps, dynamic_step_size=dynamic_step_size),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def fadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          clip: Any = 1.0, p: Any = 0.5, weight_decay: Any = 0.001, mask: Any = None, *,
          adaptive_eps: bool = True, mu_dtype: Any = None):
  """FAdam: "FAdam: Adam is a natural gradient optimizer using diagonal empirical
  Fisher information" (arXiv:2405.12807, Algorithm 1).

  With f the debiased EMA of ``g^2`` (the paper's ``beta2_hat`` recursion) and
  theta the weights, the natural gradient and the momentum on it (not
  debiased), then weight decay through the Fisher as well::

    g_nat = clip(g / (f^p + eps_t))
    m <- b1 m + (1 - b1) g_nat
    w_nat = clip(theta / (f^p + eps_t))
    u = -lr * (m + weight_decay * w_nat)

  where ``clip(x) = x / max(1, rms(x) / clip)`` per tensor and
  ``eps_t = eps * min(1, rms(g))`` (the later revisions' adaptive epsilon;
  ``adaptive_eps=False`` uses eps). There is no official code; the adaptive
  epsilon's exact form follows the public re-implementations and could not be
  checked against the paper's latest text here.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the momentum, in [0, 1).
    b2: decay of the Fisher estimate f, in [0, 1).
    eps: the denominator constant, >= 0.
    clip: the RMS bound of the per-tensor clipping, > 0.
    p: the exponent of the Fisher in the denominator, > 0 (0.5: its root).
    weight_decay: the decay rate, >= 0, applied through the Fisher.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    adaptive_eps: scale eps by ``min(1, rms(g))``.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params``.

  References:
    "FAdam: Adam is a natural gradient optimizer using diagonal empirical
    Fisher information", arXiv:2405.12807 (https://arxiv.org/abs/2405.12807).
  """
  V.check_learning_rate("fadam", learning_rate)
  return recipe_chain("fadam", scale_by_fadam(b1, b2, eps, clip, p, weight_decay, mask,
                                              adaptive_eps=adaptive_eps, mu_dtype=mu_dtype),
                      scale_by_learning_rate(learning_rate))


def adamomentum(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                mu_dtype: Any = None):
  """AdaMomentum: "Rethinking Adam: A Twofold Exponential Moving Average Approach"
  (arXiv:2106.11514).

  The second moment tracks the momentum, not the gradient::

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) m^2 + eps
    u = -lr * m_hat / sqrt(v_hat)

  eps is accumulated inside v, with no eps outside the root, as the paper's
  Algorithm. Weight decay is not part of the algorithm; chain
  `add_decayed_weights` for it.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the momentum m, in [0, 1).
    b2: decay of v, in [0, 1).
    eps: added to v at every step, >= 0.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args.

  References:
    "Rethinking Adam: A Twofold Exponential Moving Average Approach",
    arXiv:2106.11514 (https://arxiv.org/abs/2106.11514).
  """
  V.check_learning_rate("adamomentum", learning_rate)
  _check("adamomentum", b1=b1, b2=b2)
  V.check_nonneg("adamomentum", "eps", eps)
  return recipe_chain("adamomentum",
                      scale_by_moments(ema(b1, dtype=mu_dtype), momentum_sq(b2, eps), eps=0.0),
                      scale_by_learning_rate(learning_rate))


def adan(learning_rate: Any, b1: Any = 0.98, b2: Any = 0.92, b3: Any = 0.99, eps: Any = 1e-8,
         eps_root: Any = 0.0, weight_decay: Any = 0.0, mask: Any = None, mu_dtype: Any = None, *,
         no_prox: bool = False):
  """Adan: "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
  Models" (arXiv:2208.06677).

  With ``d = g - g_prev`` (0 on the first step)::

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) d
    n <- b3 n + (1 - b3) (g + b2 d)^2
    u = (m_hat + b2 v_hat) / (sqrt(n_hat + eps_root) + eps)
    p <- (p - lr u) / (1 + lr wd)

  The b_i are decays, as in the official code (the paper's ``beta_i`` is
  ``1 - b_i``). Follows the official code (sail-sg/Adan), including its bias
  corrections, which the paper's Algorithm 1 omits. optax.adan (0.2.8) weighs
  the difference terms by ``1 - b2`` instead of b2 (optax PR #1715) and decays
  as AdamW.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule of the
      0-based step.
    b1: decay of the gradient EMA m, in [0, 1).
    b2: decay of the difference EMA v, in [0, 1).
    b3: decay of the second moment n, in [0, 1).
    eps: added to the root in the denominator, >= 0.
    eps_root: added to ``n_hat`` inside the root, >= 0 (optax's; 0 in the
      official code).
    weight_decay: the decay rate, >= 0, multiplied by the learning rate.
    mask: a tree of bools, or a function of the params returning one, that
      selects the leaves to decay (as in optax); None decays every leaf.
    mu_dtype: storage dtype of the first moment; None keeps the params' dtype.
    no_prox: decay ``p <- p (1 - lr wd) - lr u``, as AdamW, instead of the
      proximal step.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs no extra
    args, but needs ``params`` (for the weight decay).

  References:
    "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
    Models", arXiv:2208.06677 (https://arxiv.org/abs/2208.06677). Official
    code: sail-sg/Adan.

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.adan(1e-3, weight_decay=0.02)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool((updates["w"] < 0).all())
    True
  """
  V.check_learning_rate("adan", learning_rate)
  _check("adan", b1=b1, b2=b2, b3=b3)
  V.check_nonneg("adan", "eps", eps)
  V.check_nonneg("adan", "eps_root", eps_root)
  V.check_nonneg("adan", "weight_decay", weight_decay)
  moments = scale_by_moments(adan_momentum(b1, b2, mu_dtype), ema_sq(b3, eps_root=eps_root),
                             eps=eps)
  if no_prox:
    return recipe_chain("adan", moments, add_decayed_weights(weight_decay, mask),
                        scale_by_learning_rate(learning_rate))
  return recipe_chain("adan", moments, scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, learning_rate, mask,
                                                     proximal=True))


RECIPES = (
    Recipe("sgd", sgd, "adam",
           "On the importance of initialization and momentum in deep learning", ""),
    Recipe("adam", adam, "adam", "Adam: A Method for Stochastic Optimization", "1412.6980"),
    Recipe("adamw", adamw, "adam", "Decoupled Weight Decay Regularization", "1711.05101"),
    Recipe("adagrad", adagrad, "adam",
           "Adaptive Subgradient Methods for Online Learning and Stochastic Optimization", "",
           notes="Matches optax: eps inside the root, accumulator starts at 0.1 (the "
                 "paper: delta outside the root, accumulator starts at 0)."),
    Recipe("rmsprop", rmsprop, "adam",
           "Lecture 6.5 - rmsprop: Divide the gradient by a running average of its recent "
           "magnitude", "",
           notes="Matches optax.rmsprop, momentum trace after the learning rate (as optax)."),
    Recipe("adamax", adamax, "adam", "Adam: A Method for Stochastic Optimization", "1412.6980",
           notes="Matches optax: eps inside the max (the paper has none)."),
    Recipe("amsgrad", amsgrad, "adam", "On the Convergence of Adam and Beyond", "1904.09237",
           notes="Matches optax (both bias corrections on by default); the paper's "
                 "Algorithm 2 corrects neither (bias_correction_mu/nu=False)."),
    Recipe("nadam", nadam, "adam", "Incorporating Nesterov Momentum into Adam", "",
           notes="Matches optax.nadam: constant momentum (no mu_t schedule), no extra b2 "
                 "factor on v_hat."),
    Recipe("adabelief", adabelief, "adam",
           "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
           "2010.07468",
           notes="Matches optax and the official code (eps=1e-16 inside s and outside the "
                 "root); the paper's text uses 1e-8."),
    Recipe("laprop", laprop, "adam", "LaProp: Separating Momentum and Adaptivity in Adam",
           "2002.04839",
           notes="Official code keeps lr inside the momentum (same as this chain for a "
                 "constant lr, not under a schedule); weight decay as the official code, "
                 "p -= wd * p after the step (not lr * wd). No optax version."),
    Recipe("adopt", adopt, "adam",
           "ADOPT: Modified Adam Can Converge with Any \u03b2_2 with the Optimal Rate",
           "2411.02853",
           notes="Matches optax.contrib.adopt and the current official code (clipping by "
                 "step**0.25); the paper's Algorithm 1 has no clipping."),
    Recipe("ademamix", ademamix, "adam", "The AdEMAMix Optimizer: Better, Faster, Older",
           "2409.03350",
           notes="Matches optax.contrib.ademamix (t_alpha_b3 builds the official warm-up "
                 "schedulers, which optax accepts as schedules); mu_dtype covers m1, m2 only."),
    Recipe("exadam", exadam, "adam", "EXAdam: The Power of Adaptive Cross-Moments",
           "2412.20302",
           notes="Follows the current official code and arXiv v2 (no growing step "
                 "size); arXiv v1's ln(sqrt(2(t+1))) is dynamic_step_size=True. "
                 "No optax version."),
    Recipe("fadam", fadam, "adam",
           "FAdam: Adam is a natural gradient optimizer using diagonal empirical Fisher "
           "information", "2405.12807",
           notes="Paper's Algorithm 1 (no official code); adaptive eps = eps * min(1, rms(g)) "
                 "as the public re-implementations. No optax version."),
    Recipe("adamomentum", adamomentum, "adam",
           "Rethinking Adam: A Twofold Exponential Moving Average Approach", "2106.11514",
           notes="Paper's algorithm: v tracks m^2 + eps, no eps outside the root. No optax "
                 "version."),
    Recipe("adan", adan, "adam",
           "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models",
           "2208.06677",
           notes="Official code: bias corrections, zero difference on step 1, proximal "
                 "weight decay (no_prox=True: AdamW's). optax.adan (0.2.8) weighs the "
                 "difference terms by 1 - b2 instead of b2 (optax PR #1715); they agree "
                 "at b2 = 0.5."),
)
