"""Communication-efficient distributed recipes: Distributed Lion, 1-bit Adam and the
adaptive federated server optimizers (FedAdam, FedYogi, FedAdagrad).

Each takes ``axis_name``: the pmap / shard_map axis over which the workers
communicate, or None for a single worker running the same algorithm. Pass
each worker's *own* gradient (do not pmean it first): the recipe decides what
crosses the wire (1-bit votes, 1-bit compressed momentum, averaged client
deltas) and keeps every replica's parameters bit-identical.
`optlab.bytes_per_step` counts the bytes each method sends.
"""

from __future__ import annotations

from typing import Any, Optional

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.communication import (mean_over_workers, scale_by_onebit_adam,
                                             scale_by_sign_vote)
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.moments import scale_by_lion_momentum, scale_by_moments
from optlab.rules import ema, ema_sq, sum_sq, yogi_sq
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["distributed_lion", "onebit_adam", "fedadam", "fedyogi", "fedadagrad"]


def distributed_lion(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.99, mu_dtype: Any = None,
                     weight_decay: Any = 0.0, mask: Any = None,
                     axis_name: Optional[str] = None, aggregate: str = "vote",
                     *, abstain_zeros: bool = True):
  """Distributed Lion: "Communication Efficient Distributed Training with Distributed
  Lion" (arXiv:2404.00438), Algorithm 1.

  Each worker runs Lion's direction on its own momentum and gradient and
  sends only its signs; the update is their majority vote::

    worker i:  d_i = sign(b1 m_i + (1 - b1) g_i)
               m_i <- b2 m_i + (1 - b2) g_i           (sends d_i as bits)
    server:    D = sign(sum_i d_i)    (aggregate="vote"; ties give 0)
               D = sum_i d_i / N      (aggregate="average")
    every worker:  p <- p - lr (D + weight_decay p)

  The server step is computed on every replica from the all-gathered bits.
  With ``abstain_zeros`` (default) an entry whose direction is exactly 0
  abstains, which costs a second bit per entry; ``abstain_zeros=False`` sends
  the paper's single bit (0 votes +1). With one worker (``axis_name=None``)
  it is Lion (``optax.lion`` with the same decay).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: weight of the momentum in the interpolation whose sign is taken, in
      [0, 1).
    b2: decay of the momentum, in [0, 1).
    mu_dtype: dtype of the momentum accumulator; None keeps the params' dtype.
    weight_decay: decoupled weight decay, multiplied by the learning rate;
      >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    axis_name: the pmap / shard_map axis name over which the workers
      communicate, or None for a single worker running the same algorithm.
    aggregate: ``"vote"`` (majority vote, the default) or
      ``"average"`` (mean of the votes).
    abstain_zeros: keyword-only; True lets an exactly-zero direction abstain
      (two bits per entry); False sends one bit, a zero voting +1.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args; pass each worker's own
    gradient (not its pmean), inside ``pmap`` / ``shard_map`` over
    ``axis_name`` when that is set.

  References:
    "Communication Efficient Distributed Training with Distributed Lion",
    arXiv:2404.00438 (https://arxiv.org/abs/2404.00438).
  """
  V.check_learning_rate("distributed_lion", learning_rate)
  V.check_nonneg("distributed_lion", "weight_decay", weight_decay)
  return recipe_chain("distributed_lion", scale_by_lion_momentum(b1, b2, mu_dtype),
                      scale_by_sign_vote(axis_name, aggregate, abstain_zeros=abstain_zeros),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def onebit_adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                weight_decay: Any = 0.0, mask: Any = None, warmup_steps: int = 100000,
                axis_name: Optional[str] = None):
  """1-bit Adam: "1-bit Adam: Communication Efficient Large-Scale Training with Adam's
  Convergence Speed" (arXiv:2102.02888), as DeepSpeed's ``OnebitAdam``.

  Two stages:

  * warm-up (steps 1..``warmup_steps``, DeepSpeed's ``freeze_step``): Adam
    on the all-reduced gradient, ``m <- b1 m + (1 - b1) g``,
    ``v <- b2 v + (1 - b2) g^2``;
  * compression: ``v`` frozen; each worker updates ``m`` with its local
    gradient, then ``m`` is replaced by its 1-bit compressed mean over
    workers (sign times rms scale, with worker- and server-side error
    feedback, `optlab.primitives.communication.onebit_compressed_mean`).

  Both stages step ``p <- p - lr (m / (sqrt(v) + eps) + weight_decay p)``.

  Follows DeepSpeed where it differs from the paper: no bias correction; the
  compression scale is ``||x||_2 / sqrt(n)`` and ``sign(0) = +1``.
  Differences from DeepSpeed: its first ``step()`` call only allocates
  buffers and ignores the gradient (so it runs ``freeze_step - 1`` Adam
  steps); here every step is an update. Tensors are not zero-padded before
  compression, and one worker compresses too (DeepSpeed skips compression
  for a single worker), so ``axis_name=None`` is exactly one worker of the
  distributed algorithm. The error buffers persist in checkpoints (DeepSpeed
  resets them on load).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule (step -> step size).
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment (during the warm-up), in [0, 1).
    eps: added to ``sqrt(v)``, >= 0.
    weight_decay: decoupled weight decay, multiplied by the learning rate;
      >= 0.
    mask: a tree of booleans shaped like the params, or a function
      params -> such a tree, selecting the leaves that are decayed (optax's
      ``mask`` convention); None decays every leaf.
    warmup_steps: number of uncompressed Adam steps before ``v`` is frozen
      (DeepSpeed's ``freeze_step``, official default 100000); an int >= 0.
    axis_name: the pmap / shard_map axis name over which the workers
      communicate, or None for a single worker running the same algorithm.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the decay) and no extra args; pass each worker's own
    gradient (not its pmean), inside ``pmap`` / ``shard_map`` over
    ``axis_name`` when that is set.

  References:
    "1-bit Adam: Communication Efficient Large-Scale Training with Adam's
    Convergence Speed", arXiv:2102.02888 (https://arxiv.org/abs/2102.02888).

    Official code: DeepSpeed's ``OnebitAdam``.
  """
  V.check_learning_rate("onebit_adam", learning_rate)
  V.check_nonneg("onebit_adam", "weight_decay", weight_decay)
  return recipe_chain("onebit_adam",
                      scale_by_onebit_adam(b1, b2, eps, warmup_steps, axis_name),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def _fed(where, learning_rate, b1, eps, second, axis_name):
  """`second(tau^2)` builds the server's second-moment rule, after the checks
  (so that a bad eps is reported under the recipe's own name)."""
  V.check_learning_rate(where, learning_rate)
  V.check_decay(where, "b1", b1)
  V.check_nonneg(where, "eps", eps)
  return recipe_chain(where, mean_over_workers(axis_name),
                      scale_by_moments(ema(b1, debias=False), second(eps ** 2), eps=eps),
                      scale_by_learning_rate(learning_rate))


_FED_DOC = """

  Server update of Algorithm 2 of "Adaptive Federated Optimization"
  (arXiv:2003.00295). The input is the pseudo-gradient ``x_t - x_i`` of each
  client (its negated delta after local training; `optlab.federated`
  computes it); with ``axis_name`` the clients' inputs are averaged over the
  workers first (pmean), else the input is taken as already averaged::

    g = mean_i (x_t - x_i) = -Delta_t
    m <- b1 m + (1 - b1) g
    {rule}
    x <- x - lr m / (sqrt(v) + eps)

  No bias correction, ``v`` starts at ``eps^2`` (the paper's
  ``v_{{-1}} >= tau^2``; eps is the paper's tau, default 1e-3; b1 = 0.9,
  b2 = 0.99).

  Args:
    learning_rate: the server step size eta, a float >= 0 or an optax
      schedule (step -> step size).
    b1: decay of the server momentum, in [0, 1).
{b2}    eps: tau, the degree of adaptivity: added to ``sqrt(v)``, and its
      square is the initial ``v``; >= 0.
    axis_name: the pmap / shard_map axis name over which the clients'
      pseudo-gradients are averaged, or None when the input is already
      their average.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` takes the
    pseudo-gradient in place of a gradient; it needs no extra args, and
    ``params`` are optional.

  References:
    "Adaptive Federated Optimization", arXiv:2003.00295
    (https://arxiv.org/abs/2003.00295)."""


def fedadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.99, eps: Any = 1e-3,
            axis_name: Optional[str] = None):
  V.check_decay("fedadam", "b2", b2)
  return _fed("fedadam", learning_rate, b1, eps,
              lambda tau2: ema_sq(b2, debias=False, initial=tau2), axis_name)


def fedyogi(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.99, eps: Any = 1e-3,
            axis_name: Optional[str] = None):
  V.check_decay("fedyogi", "b2", b2)
  return _fed("fedyogi", learning_rate, b1, eps, lambda tau2: yogi_sq(b2, initial=tau2),
              axis_name)


def fedadagrad(learning_rate: Any, b1: Any = 0.9, eps: Any = 1e-3,
               axis_name: Optional[str] = None):
  return _fed("fedadagrad", learning_rate, b1, eps,
              lambda tau2: sum_sq(initial_accumulator_value=tau2, eps_root=0.0), axis_name)


fedadam.__doc__ = "FedAdam." + _FED_DOC.format(
    rule="v <- b2 v + (1 - b2) g^2",
    b2="    b2: decay of the server second moment, in [0, 1).\n")
fedyogi.__doc__ = "FedYogi." + _FED_DOC.format(
    rule="v <- v - (1 - b2) g^2 sign(v - g^2)",
    b2="    b2: rate of Yogi's additive second-moment update, in [0, 1).\n")
fedadagrad.__doc__ = "FedAdagrad." + _FED_DOC.format(rule="v <- v + g^2", b2="")


_FEDOPT = "Adaptive Federated Optimization"
_FED_NOTES = ("Server rule of the paper's Algorithm 2 (no bias correction, v_-1 = tau^2); the "
              "input is the averaged pseudo-gradient (negated client delta).")

RECIPES = (
    Recipe("distributed_lion", distributed_lion, "distributed",
           "Communication Efficient Distributed Training with Distributed Lion", "2404.00438",
           notes="Majority vote over all-gathered packed sign bits; an exact-zero direction "
                 "abstains by default (2 bits per entry), abstain_zeros=False sends 1 bit."),
    Recipe("onebit_adam", onebit_adam, "distributed",
           "1-bit Adam: Communication Efficient Large-Scale Training with Adam's Convergence "
           "Speed", "2102.02888",
           notes="DeepSpeed OnebitAdam: no bias correction, scale ||x|| / sqrt(n), sign(0) = +1; "
                 "no zero padding, every step updates, one worker also compresses."),
    Recipe("fedadam", fedadam, "distributed", _FEDOPT, "2003.00295", notes=_FED_NOTES),
    Recipe("fedyogi", fedyogi, "distributed", _FEDOPT, "2003.00295",
           notes=_FED_NOTES + " optax.yogi differs (bias correction, m starts at "
                 "initial_accumulator_value), so there is no optax comparison."),
    Recipe("fedadagrad", fedadagrad, "distributed", _FEDOPT, "2003.00295", notes=_FED_NOTES),
)
