"""Memory-efficient methods: factored, block-shared, sparse and quantised state.

Each recipe is a short chain of primitives from `optlab.primitives.factored`,
`blockwise`, `matricized`, `sparse_window`, `subspace`, `block_coordinate` and
`storage`; the storage wrappers
(`with_state_dtype`, `with_quantized_state`) work around any other recipe too.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.block_coordinate import with_block_coordinate
from optlab.primitives.blockwise import (
    adam_mini_mask, scale_by_adam_mini, scale_by_blockwise_adam, slim_adam_mask,
    slim_adam_partition, subset_norm_partition)
from optlab.primitives.decay import add_decayed_weights, add_decayed_weights_after_step
from optlab.primitives.factored import (
    clip_by_block_rms, last_two_dims, relative_step_size, scale_by_came, scale_by_factored_rms,
    scale_by_param_block_rms)
from optlab.primitives.matricized import scale_by_smmf
from optlab.primitives.moments import scale_by_adam, scale_by_moments
from optlab.rules import ema
from optlab.primitives.sparse_window import scale_by_microadam
from optlab.primitives.step_size import scale_by_learning_rate
from optlab.primitives.storage import with_quantized_state
from optlab.primitives.subspace import scale_by_subspace_momentum
from optlab.recipes.adam_family import adamw

__all__ = ["adafactor", "adamw_8bit", "adam_mini", "came", "adalomo",
           "adam_subset_norm", "slim_adam", "badam", "smmf", "microadam"]


def _momentum(b1: Any, dtype: Any = None):
  """A raw (not debiased) EMA of the update, m <- b1 m + (1 - b1) u."""
  return scale_by_moments(ema(b1, debias=False, dtype=dtype), None)


def adafactor(learning_rate: Any = None, min_dim_size_to_factor: int = 128,
              decay_rate: Any = 0.8, decay_offset: int = 0,
              *, multiply_by_parameter_scale: bool = True, clipping_threshold: Any = 1.0,
              momentum: Any = None, dtype_momentum: Any = jnp.float32,
              weight_decay_rate: Any = None, eps: Any = 1e-30, factored: bool = True,
              weight_decay_mask: Any = None):
  """Adafactor: "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"
  (arXiv:1804.04235).

  With ``d = clipping_threshold``::

    V_hat = factored EMA of g^2 + eps   (rows x columns / mean row,
                                         beta2_t = 1 - t^-decay_rate)
    U = g / sqrt(V_hat);  U <- U / max(1, rms(U) / d)
    step = -lr_t * max(rms(p), 1e-3) * U

  optionally followed by momentum (an un-debiased EMA of the step) and weight
  decay. The hyperparameters and their order are `optax.adafactor`'s, which
  this matches. ``learning_rate=None`` is the paper's relative step size
  ``rho_t = min(1e-2, 1/sqrt(t))`` (optax's None means no learning-rate factor
  at all, i.e. ``rho_t = 1``).

  Differences from the paper and the official T2T code, all following optax:
  tensors are factored over their two largest dims, and only if both are >=
  min_dim_size_to_factor (T2T factors the last two dims of every tensor with
  ndim >= 2); weight decay (not in the paper) is added after the learning
  rate, so it is not multiplied by it. Statistics are stored in float32
  (optax: param dtype).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule; None:
      the relative step size ``min(1e-2, 1/sqrt(t))``.
    min_dim_size_to_factor: factor a tensor only if its two largest dims are
      both at least this, an int >= 0.
    decay_rate: the exponent of ``beta2_t = 1 - t^-decay_rate``, >= 0.
    decay_offset: ``t`` counts from this step (``t = step + 1 -
      decay_offset``), an int >= 0.
    multiply_by_parameter_scale: scale the step by ``max(rms(p), 1e-3)``.
    clipping_threshold: d of the update clip ``U / max(1, rms(U) / d)``, > 0;
      None disables it.
    momentum: decay of the optional momentum of the step, in [0, 1); None: no
      momentum.
    dtype_momentum: the dtype of the momentum.
    weight_decay_rate: weight decay added after the learning rate (not
      multiplied by it), >= 0; None: no decay.
    eps: added to ``g^2``, >= 0.
    factored: False keeps an element-wise second moment for every tensor.
    weight_decay_mask: the leaves that decay: a tree of bools or a function of
      the params returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the default parameter scale, and for weight decay) and no
    extra args.

  References:
    "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
    arXiv:1804.04235 (https://arxiv.org/abs/1804.04235).

  Example:
    >>> import jax.numpy as jnp, optlab
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = optlab.adafactor()  # the relative step size
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)
    >>> bool(jnp.all(updates["w"] < 0))
    True
  """
  V.check_learning_rate("adafactor", learning_rate)
  V.check_nonneg("adafactor", "eps", eps)
  if momentum is not None:
    V.check_decay("adafactor", "momentum", momentum)
  V.check_range("adafactor", "decay_offset", decay_offset, 0)
  V.check_nonneg("adafactor", "weight_decay_rate", weight_decay_rate)
  steps = [scale_by_factored_rms(factored=factored, decay_rate=decay_rate, step_offset=decay_offset,
                                 min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps)]
  if clipping_threshold is not None:
    V.check_positive("adafactor", "clipping_threshold", clipping_threshold)
    steps.append(clip_by_block_rms(clipping_threshold))
  lr = relative_step_size if learning_rate is None else learning_rate
  steps.append(scale_by_learning_rate(lr, flip_sign=False))
  if multiply_by_parameter_scale:
    steps.append(scale_by_param_block_rms(1e-3))
  if momentum is not None:
    steps.append(_momentum(momentum, dtype_momentum))
  if weight_decay_rate is not None:
    steps.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
  return recipe_chain("adafactor", *steps, scale_by_learning_rate(1.0))


def adamw_8bit(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
               weight_decay: Any = 1e-2, mask: Any = None, *, block_size: int = 2048,
               min_size: int = 4096):
  """8-bit AdamW: "8-bit Optimizers via Block-wise Quantization" (arXiv:2110.02861).

  `adamw` inside `with_quantized_state`: m and v are stored as uint8 codes of
  the dynamic tree map (signed for m, unsigned for v) with one float32 absmax
  per block of ``block_size`` entries; each step dequantises, takes the AdamW
  step in full precision and re-quantises. The hyperparameters are `adamw`'s
  (weight_decay defaults to bitsandbytes' 1e-2), plus block_size and
  min_size. Deviation: the paper's stable embedding layer is a model change
  and is not part of this.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0.
    weight_decay: AdamW's decoupled weight decay, multiplied by the learning
      rate, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    block_size: entries per quantisation block, an int >= 1 (the paper's 2048;
      current bitsandbytes kernels use 256).
    min_size: tensors with fewer entries keep float32 state (bitsandbytes'
      min_8bit_size=4096), an int >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "8-bit Optimizers via Block-wise Quantization", arXiv:2110.02861
    (https://arxiv.org/abs/2110.02861).
  """
  V.check_learning_rate("adamw_8bit", learning_rate)
  inner = adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay, mask=mask)
  return recipe_chain("adamw_8bit", with_quantized_state(inner, 8, block_size,
                                                         min_size=min_size))


def adam_mini(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
              weight_decay: Any = 0.0, mask: Any = None, *, num_heads: Any = None,
              partition: Any = None, mu_dtype: Any = None):
  """Adam-mini: "Adam-mini: Use Fewer Learning Rates To Gain More" (arXiv:2406.16793).

  AdamW with one second moment per parameter block B::

    v_B <- b2 v_B + (1 - b2) mean_B(g^2)
    u = -lr * (m_hat / (sqrt(v_B_hat) + eps) + weight_decay * p)

  Blocks follow the official code (zyushun/Adam-mini, v1.1) translated to
  flax paths by ``adam_mini_partition(num_heads)``: biases element-wise,
  embeddings per token, query/key per head (needs ``num_heads`` for 2-D
  kernels), other matrices per output neuron, LayerNorm-like vectors per
  tensor. Differences from the official code: output neurons are flax's last
  kernel axis (PyTorch's rows); the official code's distributed all-reduce of
  block sums is what jit/pmap do by themselves; its v dtype follows the
  params, here it is float32.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the block second moments, in [0, 1).
    eps: added to ``sqrt(v_B_hat)``, >= 0.
    weight_decay: decoupled weight decay, multiplied by the learning rate,
      >= 0 (official default 0).
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None: the official rule, no decay on
      paths naming norm / ln_f (`adam_mini_mask`).
    num_heads: the number of attention heads, an int >= 1, for the per-head
      blocks of 2-D query/key kernels; None: those kernels get one block per
      output neuron.
    partition: ``partition(names, shape) -> block spec``, overriding the
      default blocks; None: ``adam_mini_partition(num_heads)``.
    mu_dtype: the dtype of the first moment; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "Adam-mini: Use Fewer Learning Rates To Gain More", arXiv:2406.16793
    (https://arxiv.org/abs/2406.16793).
    Official code: zyushun/Adam-mini (v1.1).
  """
  V.check_learning_rate("adam_mini", learning_rate)
  V.check_nonneg("adam_mini", "weight_decay", weight_decay)
  V.check_range("adam_mini", "num_heads", num_heads, 1)
  return recipe_chain("adam_mini",
                      scale_by_adam_mini(b1, b2, eps, partition, num_heads, mu_dtype),
                      add_decayed_weights(weight_decay, adam_mini_mask if mask is None else mask),
                      scale_by_learning_rate(learning_rate))


def came(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999,
         eps1: Any = 1e-30, eps2: Any = 1e-16, clip_threshold: Any = 1.0,
         weight_decay: Any = 0.0, mask: Any = None, mu_dtype: Any = None):
  """CAME: "CAME: Confidence-guided Adaptive Memory Efficient Optimization"
  (arXiv:2307.02047).

  Adafactor's factored, clipped update u (constant b2, no relative step), a
  momentum, then the confidence term: the factored EMA (b3) S of the
  instability scales the step::

    m <- b1 m + (1 - b1) u
    S <- factored EMA_b3 of (u - m)^2 + eps2
    p <- p - lr * (m / sqrt(S_hat) + weight_decay * p)

  The hyperparameters and defaults are the official code's (yangluo7/CAME:
  betas (0.9, 0.999, 0.9999), eps (1e-30, 1e-16), clip_threshold 1,
  weight_decay 0). As the official code: tensors with ndim >= 2 are factored
  over their last two dims; 0-/1-D tensors use an element-wise v and plain
  momentum (no confidence term); no bias correction; decoupled decay scaled by
  lr.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the momentum, in [0, 1).
    b2: decay of the factored second moment of g, in [0, 1).
    b3: decay of the factored instability EMA S, in [0, 1).
    eps1: added to ``g^2``, >= 0.
    eps2: added to the instability ``(u - m)^2``, >= 0.
    clip_threshold: d of the update clip ``u / max(1, rms(u) / d)``, > 0.
    weight_decay: decoupled weight decay, multiplied by the learning rate,
      >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    mu_dtype: the dtype of the momentum; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "CAME: Confidence-guided Adaptive Memory Efficient Optimization",
    arXiv:2307.02047 (https://arxiv.org/abs/2307.02047).
    Official code: yangluo7/CAME.
  """
  V.check_learning_rate("came", learning_rate)
  V.check_nonneg("came", "weight_decay", weight_decay)
  return recipe_chain("came", scale_by_came(b1, b2, b3, eps1, eps2, clip_threshold, mu_dtype),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


def adalomo(learning_rate: Any, eps1: Any = 1e-30, eps2: Any = 1e-3,
            clip_threshold: Any = 1.0, decay_rate: Any = 0.8, weight_decay: Any = 0.0,
            mask: Any = None):
  """AdaLomo: "AdaLomo: Low-memory Optimization with Adaptive Learning Rate"
  (arXiv:2310.10195).

  Adafactor's factored second moment without momentum, grouped update
  normalisation and a parameter-scaled step::

    u = g / sqrt(V_hat)          (factored EMA of g^2 + eps1, beta2_t = 1 - t^-decay_rate)
    u <- u / max(1, rms(u) / clip_threshold)          (per tensor)
    p <- p - lr * max(eps2, rms(p)) * (u + weight_decay * p)

  The hyperparameters and defaults are the official code's (OpenLMLab/LOMO,
  AdaLomo; the code's decay_rate=-0.8 is this 0.8). As the code: every tensor
  with ndim >= 2 is factored over its last two dims. Not included: LOMO's
  fused update inside the backward pass (a framework matter: under jit XLA
  frees gradients itself), its loss scaling for fp16, and its two-pass global
  gradient-norm clipping (chain `clip_by_global_norm`).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    eps1: added to ``g^2``, >= 0.
    eps2: the floor of ``rms(p)`` in the parameter scale, >= 0.
    clip_threshold: the bound of the per-tensor RMS of ``u``, > 0.
    decay_rate: the exponent of ``beta2_t = 1 - t^-decay_rate``, >= 0.
    weight_decay: weight decay, multiplied by ``lr * max(eps2, rms(p))`` as in
      the code, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the parameter scale) and no extra args.

  References:
    "AdaLomo: Low-memory Optimization with Adaptive Learning Rate",
    arXiv:2310.10195 (https://arxiv.org/abs/2310.10195).
    Official code: OpenLMLab/LOMO (AdaLomo).
  """
  V.check_learning_rate("adalomo", learning_rate)
  V.check_nonneg("adalomo", "weight_decay", weight_decay)
  V.check_nonneg("adalomo", "eps1", eps1)
  V.check_nonneg("adalomo", "eps2", eps2)
  V.check_positive("adalomo", "clip_threshold", clip_threshold)
  return recipe_chain("adalomo",
                      scale_by_factored_rms(decay_rate=decay_rate, min_dim_size_to_factor=0, epsilon=eps1,
                            dims_fn=last_two_dims),
                      clip_by_block_rms(clip_threshold),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_param_block_rms(eps2),
                      scale_by_learning_rate(learning_rate))


def adam_subset_norm(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
                     weight_decay: Any = 0.0, mask: Any = None, *, partition: Any = None,
                     momentum_rank: Any = None, momentum_update_every: int = 200,
                     projector: Any = None, seed: int = 0):
  """AdamW with Subset-Norm step sizes: "Efficient Adaptive Optimization via
  Subset-Norm and Subspace-Momentum" (arXiv:2411.07120), official AdamWSN.

  For a matrix, v is shared along its smaller dim (one value per entry i of
  the larger dim); other tensors keep Adam's element-wise v::

    v_i <- b2 v_i + (1 - b2) sum_j g_ij^2
    u = -lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    p <- p - lr * weight_decay * p       (on the updated weights)

  The hyperparameters and defaults are the official code's (timmytonga/sn-sm,
  eps 1e-6, eps before the bias correction, decay after the step). The
  official code applies subset-norm to the parameter group the user marks (the
  LLaMA linear layers); here every 2-D tensor by default.

  Subspace-Momentum (the paper's second technique, official GenericOptim with
  momentum_type="sm", second_moment_type="sn"): with ``momentum_rank=r`` the
  first moment of every matrix with min dim > r is kept only in a rank-r
  subspace (SVD of the gradient, or ``projector``, refreshed every
  ``momentum_update_every`` steps, momentum restarted on refresh) and the
  complement takes a plain SGD step: the numerator is
  ``P m_low + (g - P P^T g)``, divided by the same Subset-Norm denominator of
  the raw gradient, with the same bias correction (which the official code
  also applies to the complement). Difference from the official code: the
  projector is refreshed on steps 1, k+1, 2k+1, ... (the `in_subspace`
  schedule shared with GaLore/APOLLO), the official code on steps 1, k, 2k,
  ... (its first period is one step shorter).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v)`` before the bias correction, >= 0.
    weight_decay: decay of the updated weights, ``p <- p - lr *
      weight_decay * p`` after the step, >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    partition: ``partition(names, shape) -> block spec`` overriding the
      subsets (see `optlab.primitives.blockwise`); None:
      `subset_norm_partition`.
    momentum_rank: the rank r of Subspace-Momentum, an int >= 1; None: no
      Subspace-Momentum (a full first moment).
    momentum_update_every: refresh the projector every this many steps, an int
      >= 1 (with ``momentum_rank``).
    projector: the projector of Subspace-Momentum (see
      `optlab.primitives.subspace`); None: the SVD of the gradient.
    seed: the int seed of random projectors.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "Efficient Adaptive Optimization via Subset-Norm and Subspace-Momentum:
    Fast, Memory-Reduced Training with Convergence Guarantees",
    arXiv:2411.07120 (https://arxiv.org/abs/2411.07120).
    Official code: timmytonga/sn-sm (AdamWSN, GenericOptim).
  """
  V.check_learning_rate("adam_subset_norm", learning_rate)
  V.check_nonneg("adam_subset_norm", "weight_decay", weight_decay)
  V.check_range("adam_subset_norm", "momentum_rank", momentum_rank, 1)
  V.check_range("adam_subset_norm", "momentum_update_every", momentum_update_every, 1)
  V.check_seed("adam_subset_norm", seed)
  if momentum_rank is None:
    core = scale_by_blockwise_adam(b1, b2, eps, partition or subset_norm_partition,
                                   reduce="sum", eps_before_debias=True,
                                   where="adam_subset_norm")
  else:
    core = scale_by_subspace_momentum(b1, b2, eps, momentum_rank, momentum_update_every,
                                      partition or subset_norm_partition,
                                      projector=projector, seed=seed)
  return recipe_chain("adam_subset_norm", core,
                      scale_by_learning_rate(learning_rate),
                      add_decayed_weights_after_step(weight_decay, learning_rate, mask))


def slim_adam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.95, eps: Any = 1e-8,
              weight_decay: Any = 0.1, mask: Any = None, *, partition: Any = None,
              mu_dtype: Any = None):
  """SlimAdam: "When Can You Get Away with Low Memory Adam?" (arXiv:2503.01843).

  AdamW whose second moment is averaged along the dims where its
  signal-to-noise ratio is high::

    v <- b2 v + (1 - b2) mean_dims(g^2)
    u = -lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)

  The dims come from ``partition(names, shape) -> block spec``, by default the
  paper's Table 1 rules (`slim_adam_partition`, the official layer map
  translated to flax's (in, out) kernels); rules measured by the official SNR
  script can be passed the same way. The hyperparameters and defaults are the
  official code's (dayal-kalra/low-memory-adam: betas (0.9, 0.95), eps 1e-8,
  weight_decay 0.1 on tensors with ndim >= 2 only, the default ``mask``), plus
  mu_dtype. Difference: biases are never compressed (the official name
  matching would compress a bias of an MLP layer to one value).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the compressed second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0.
    weight_decay: decoupled weight decay, multiplied by the learning rate,
      >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None: the tensors with ndim >= 2
      (`slim_adam_mask`).
    partition: ``partition(names, shape) -> block spec``, the dims to average
      over; None: `slim_adam_partition`.
    mu_dtype: the dtype of the first moment; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "When Can You Get Away with Low Memory Adam?", arXiv:2503.01843
    (https://arxiv.org/abs/2503.01843).
    Official code: dayal-kalra/low-memory-adam.
  """
  V.check_learning_rate("slim_adam", learning_rate)
  V.check_nonneg("slim_adam", "weight_decay", weight_decay)
  return recipe_chain("slim_adam",
                      scale_by_blockwise_adam(b1, b2, eps, partition or slim_adam_partition,
                                              mu_dtype=mu_dtype, where="slim_adam"),
                      add_decayed_weights(weight_decay, slim_adam_mask if mask is None else mask),
                      scale_by_learning_rate(learning_rate))


def badam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
          weight_decay: Any = 0.0, *, switch_every: int = 50, order: str = "ascending",
          blocks: Any = None, seed: int = 0):
  """BAdam: "BAdam: A Memory Efficient Full Parameter Training Method for Large
  Language Models" (arXiv:2404.02827).

  Block coordinate descent with AdamW as the inner solver: the blocks are
  trained one at a time for ``switch_every`` steps each (BAdam's K), in
  ``order``; the other blocks get no update at all (not even weight decay), and
  on every switch the Adam state (moments and step count) starts afresh, as
  the official code (Ledzy/BAdam) clears it. Blocks: by default one per
  top-level module (`block_by_layer`; BAdam's default is one per transformer
  layer).

  What JAX forces: the inactive blocks' state cannot be freed inside one
  compiled function, so the Adam state lives on a flat buffer sized to the
  largest block, re-initialised on each switch (the same peak memory as
  BAdam: 2 x largest block); the buffer is replicated, not sharded like the
  params. Weight-decay masks are not offered (the buffer has no leaf names).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: Adam's eps, >= 0.
    weight_decay: decoupled weight decay of the active block, multiplied by
      the learning rate, >= 0.
    switch_every: steps between block switches (BAdam's K), an int >= 1.
    order: "ascending" or "descending" (blocks in tree order, cycling) or
      "random" (a new permutation each epoch, seeded by ``seed``).
    blocks: ``blocks(names, shape) -> label``; leaves with the same label form
      a block; None: `block_by_layer`.
    seed: the int seed of the random order.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "BAdam: A Memory Efficient Full Parameter Training Method for Large
    Language Models", arXiv:2404.02827 (https://arxiv.org/abs/2404.02827).
    Official code: Ledzy/BAdam.
  """
  V.check_learning_rate("badam", learning_rate)
  V.check_nonneg("badam", "eps", eps)
  V.check_nonneg("badam", "weight_decay", weight_decay)
  V.check_seed("badam", seed)
  inner = optax.chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay),
                      scale_by_learning_rate(learning_rate))
  return recipe_chain("badam", with_block_coordinate(inner, switch_every, order, blocks, seed))


def smmf(learning_rate: Any, b1: Any = 0.9, eps: Any = 1e-8, weight_decay: Any = 0.0,
         mask: Any = None, *, decay_rate: Any = 0.5, growth_rate: Any = 0.999,
         vector_reshape: bool = True, weight_decay_mode: str = "adamw"):
  """SMMF: "SMMF: Square-Matricized Momentum Factorization for Memory-Efficient
  Optimization" (arXiv:2412.08894).

  Each tensor is reshaped to its most nearly square matrix; m and v are kept
  as rank-1 non-negative factors (row and column sums), m's signs as one bit
  per entry. Per step: decompress, update, compress again::

    m <- b1_t m + (1 - b1_t) g,    b1_t = b1 * growth_rate^(t-1)
    v <- b2_t v + (1 - b2_t) g^2,  b2_t = 1 - t^(-decay_rate)
    p <- p - lr * (m / (sqrt(v) + eps) + weight_decay * p)

  The hyperparameters and defaults are the official code's (eai-lab/SMMF, as
  published in KwangryeolPark/Official.SMMF). Following the official code
  where it differs from the paper: the step uses the freshly updated full m
  and v (compression happens after it), there is no bias correction, and every
  tensor, scalars included, is matricized by default. Differences from the
  official code: the moments are computed in float32 (the code uses the param
  dtype) and m's signs are stored as packed bits (the code keeps a bool
  tensor, one byte per entry); the step is clipped to the largest finite value
  so that a huge m over a tiny rank-1 v cannot give inf.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: the first-moment decay (the code's beta), in [0, 1]; None: no first
      moment, the step is ``g / (sqrt(v) + eps)``.
    eps: added to ``sqrt(v)``, >= 0.
    weight_decay: the weight decay, >= 0 (how it enters: ``weight_decay_mode``).
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    decay_rate: the exponent of ``b2_t = 1 - t^(-decay_rate)``, in [0, 1]
      (the code's -0.5 is this 0.5).
    growth_rate: the per-step factor of ``b1_t``, in [0, 1].
    vector_reshape: False keeps element-wise moments for 1-D tensors.
    weight_decay_mode: "adamw" (decoupled, lr-scaled) or "adam" (added to the
      gradient before the moments).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "SMMF: Square-Matricized Momentum Factorization for Memory-Efficient
    Optimization", arXiv:2412.08894 (https://arxiv.org/abs/2412.08894).
    Official code: eai-lab/SMMF (KwangryeolPark/Official.SMMF).
  """
  V.check_learning_rate("smmf", learning_rate)
  V.check_nonneg("smmf", "weight_decay", weight_decay)
  V.check_choice("smmf", "weight_decay_mode", weight_decay_mode, ("adamw", "adam"))
  decay = add_decayed_weights(weight_decay, mask)
  core = scale_by_smmf(b1, eps, decay_rate, growth_rate, vector_reshape=vector_reshape)
  steps = (decay, core) if weight_decay_mode == "adam" else (core, decay)
  return recipe_chain("smmf", *steps, scale_by_learning_rate(learning_rate))


def microadam(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
              weight_decay: Any = 0.0, mask: Any = None, *, m: int = 10,
              k_init: Any = None, quant_block_size: int = 100_000,
              topk_block_size: int = 16_384, values_dtype: Any = jnp.bfloat16):
  """MicroAdam: "MicroAdam: Accurate Adaptive Optimization with Low Space Overhead
  and Provable Convergence" (arXiv:2405.15593).

  Per tensor, with ``Q`` the 4-bit quantiser of the error ``e``::

    a = g + Q^-1(e)
    the top k_init fraction of abs(a) (per block) goes into a ring window of
    the last m sparse gradients; the rest is kept as e = Q(a - top-k(a))
    m_hat, v_hat = Adam's debiased moments recomputed from the window
                   (the row of age j weighted b1^j, b2^j)
    p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)

  The hyperparameters and defaults are the official code's
  (IST-DASLab/ISTA-DASLab-Optimizers, MicroAdam, with its GLUE script's
  quant_block_size 100000). Differences from the official code: its top-k
  block size comes from the GPU's shared memory (here ``topk_block_size``, at
  most 32768 for the int16 indices); a, the error's min/max and the moments
  are float32 (the code: bfloat16 gradients and min/max); an error block whose
  min equals its max stores code 0 (the code divides by zero there; any code
  decodes to the same value).

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0.
    weight_decay: decoupled weight decay, multiplied by the learning rate,
      >= 0.
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    m: the window length (sparse gradients kept), an int >= 1.
    k_init: the density of the top-k, in (0, 1]; None: the official 0.01. It
      sets the state's shapes, so it must be a static arg of
      `optax.inject_hyperparams`.
    quant_block_size: entries per min/max pair of the 4-bit error, an int
      >= 1.
    topk_block_size: entries per top-k block, an int in [1, 32768].
    values_dtype: the dtype of the window's values (bfloat16 as the code);
      None: the statistics' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (for the weight decay) and no extra args.

  References:
    "MicroAdam: Accurate Adaptive Optimization with Low Space Overhead and
    Provable Convergence", arXiv:2405.15593 (https://arxiv.org/abs/2405.15593).
    Official code: IST-DASLab/ISTA-DASLab-Optimizers (MicroAdam).
  """
  V.check_learning_rate("microadam", learning_rate)
  V.check_nonneg("microadam", "weight_decay", weight_decay)
  return recipe_chain("microadam",
                      scale_by_microadam(b1, b2, eps, m, k_init, quant_block_size,
                                         topk_block_size, values_dtype),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("adafactor", adafactor, "memory_efficient",
           "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", "1804.04235",
           notes="Matches optax.adafactor (factoring over the two largest dims >= "
                 "min_dim_size_to_factor; weight decay not scaled by the learning rate). "
                 "learning_rate=None is the paper's relative step min(1e-2, 1/sqrt(t)) "
                 "(optax: no factor). Statistics in float32 flat vectors."),
    Recipe("adam_mini", adam_mini, "memory_efficient",
           "Adam-mini: Use Fewer Learning Rates To Gain More", "2406.16793",
           notes="Official v1.1 block rules on flax paths (output neurons = last kernel "
                 "axis); block statistics in one float32 vector."),
    Recipe("came", came, "memory_efficient",
           "CAME: Confidence-guided Adaptive Memory Efficient Optimization", "2307.02047",
           notes="Official code: last two dims factored, 0-/1-D tensors without the "
                 "confidence term, no bias correction. Statistics in float32 vectors."),
    Recipe("adalomo", adalomo, "memory_efficient",
           "AdaLomo: Low-memory Optimization with Adaptive Learning Rate", "2310.10195",
           notes="Official code's step (last two dims factored, decay scaled by "
                 "lr * param scale); LOMO's fused backward, fp16 loss scaling and two-pass "
                 "gradient-norm clipping are not part of the recipe."),
    Recipe("adam_subset_norm", adam_subset_norm, "memory_efficient",
           "Efficient Adaptive Optimization via Subset-Norm and Subspace-Momentum: Fast, "
           "Memory-Reduced Training with Convergence Guarantees", "2411.07120",
           notes="Official AdamWSN: sum of g^2 over the smaller dim of every 2-D tensor, "
                 "eps before the bias correction, decay after the step. momentum_rank=r adds "
                 "Subspace-Momentum (official GenericOptim sm+sn; projector refreshed on "
                 "steps 1, k+1, ... instead of 1, k, 2k)."),
    Recipe("slim_adam", slim_adam, "memory_efficient",
           "When Can You Get Away with Low Memory Adam?", "2503.01843",
           notes="Official step; Table 1 rules translated to flax kernels by default (the "
                 "contract tests use fixed rules, as their problem has no layer "
                 "names). Biases never compressed."),
    Recipe("badam", badam, "memory_efficient",
           "BAdam: A Memory Efficient Full Parameter Training Method for Large Language Models",
           "2404.02827",
           notes="One block per top-level leaf/module; Adam state on a flat buffer sized to "
                 "the largest block, re-initialised on each switch (static shapes: inactive "
                 "state cannot be freed)."),
    Recipe("smmf", smmf, "memory_efficient",
           "SMMF: Square-Matricized Momentum Factorization for Memory-Efficient Optimization",
           "2412.08894",
           notes="Official code's step (rank-1 factors of the square-matricized m and v, "
                 "m's signs as packed bits, no bias correction); factors and signs in flat "
                 "vectors."),
    Recipe("microadam", microadam, "memory_efficient",
           "MicroAdam: Accurate Adaptive Optimization with Low Space Overhead and Provable "
           "Convergence", "2405.15593",
           notes="Official algorithm: top-k per block into a ring of m sparse rows, 4-bit "
                 "min/max error feedback, Adam moments recomputed from the window. Tests "
                 "use small top-k blocks (k_init 0.01 keeps 1 of 4), small error blocks, float "
                 "values; k_init (default None = 0.01) sets shapes: a static arg of "
                 "inject_hyperparams."),
    Recipe("adamw_8bit", adamw_8bit, "memory_efficient",
           "8-bit Optimizers via Block-wise Quantization", "2110.02861",
           notes="with_quantized_state(adamw): dynamic tree map, nearest rounding, new "
                 "absmax from the new state, as bitsandbytes. Tests use tiny blocks and "
                 "min_size=0 so that every tensor is quantised."),
)
