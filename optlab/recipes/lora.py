"""LoRA optimizers: LoRA-Pro, Adam on each adapter's best full-rank approximation.

`lora_pro` is `in_lora_pairs` (optlab/primitives/lora.py, which documents the
A / B shape convention) around Adam, then the decay and the learning rate.
"""

from __future__ import annotations

from typing import Any

from optlab import _validate as V
from optlab._recipe import recipe_chain
from optlab._registry import Recipe
from optlab.primitives.decay import add_decayed_weights
from optlab.primitives.lora import in_lora_pairs
from optlab.primitives.moments import scale_by_adam
from optlab.primitives.step_size import scale_by_learning_rate

__all__ = ["lora_pro"]


def lora_pro(learning_rate: Any, pairs: Any = None, scaling: Any = 2.0, b1: Any = 0.9,
             b2: Any = 0.999, eps: Any = 1e-8, weight_decay: Any = 0.0, mask: Any = None, *,
             delta: Any = 1e-8):
  """LoRA-Pro: "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?" (arXiv:2407.18242).

  For each LoRA pair (A: r x n, B: m x r, W = W0 + s B A; see
  `optlab.primitives.lora` for the layouts of PEFT and flax), Adam runs on the
  equivalent full gradient, the projection of the full gradient g onto what a
  LoRA step can reach, and its output D is handed back to A and B as the
  adjusted gradients with the paper's optimal X::

    g~ = P_B g + (I - P_B) g P_A       (from g_A = s B^T g, g_B = s g A^T)
    D = adam(g~)                       (moments of shape (m, n) per pair)
    u_A = (B^T B)^{-1} B^T D / s + X A
    u_B = (I - P_B) D A^T (A A^T)^{-1} / s - B X
    B^T B X + X A A^T = -(B^T B)^{-1} B^T D A^T / s
    (A, B) -= lr * (u_A + weight_decay * A, u_B + weight_decay * B)

  so the adapter's update s (B u_A + u_B A) is the projection of Adam's full
  fine-tuning direction. Leaves in no pair get plain AdamW (optax.adamw's
  form).

  Follows the official code (mrflogs/LoRA-Pro, ``lorapro_full_adjustment`` in
  its DeepSpeed ZeRO optimizer): full (m, n) Adam moments per pair fed the
  equivalent gradient, eps 1e-8 after the bias correction, pseudo-inverses
  ``pinv(M + 1e-8 I)``, the X of the Sylvester equation, then a plain step
  (its trainer runs SGD without momentum on the adjusted gradients).
  Deliberate differences: the bias correction uses the step count t = 1, 2,
  ... (the code's is t + 1, as its counter is incremented before it is read;
  its branches for the first step, written for a counter starting at 0, are
  never taken); the second moment is not rounded through bfloat16; the
  pseudo-inverses and the Sylvester equation are computed from thin SVDs of
  A and B (the code forms B^T B and A A^T and uses a general complex
  eigensolver; same values, rounding amplified by cond(B) instead of
  cond(B)^2, see `optlab.primitives.lora`); the
  decoupled weight decay (AdamW's, default 0 as the official scripts) and the
  plain AdamW of unpaired leaves are ours: the official code trains the
  adapters only.

  Args:
    learning_rate: the step size, a float >= 0 or an optax schedule.
    pairs: the LoRA pairs: None for the naming convention (sibling leaves
      ``lora_A``/``lora_B`` as in PEFT, or ``lora_a``/``lora_b`` as in flax);
      else a sequence of ``(A path, B path)``, a mapping of names to such
      pairs, or a function of the params returning either (see
      `find_lora_pairs` for the path spellings). A LoRA leaf without a
      partner, or factors whose ranks do not chain, raise a ValueError naming
      the parameter path.
    scaling: s, the adapter's scaling (PEFT's ``lora_alpha / r``), > 0
      (default 2.0: the official scripts' 16 / 8).
    b1: decay of Adam's first moment, in [0, 1).
    b2: decay of Adam's second moment, in [0, 1).
    eps: added to ``sqrt(v_hat)``, >= 0 (1e-8).
    weight_decay: decoupled weight decay, multiplied by the learning rate,
      >= 0 (0.0, the official scripts).
    mask: the leaves that decay: a tree of bools or a function of the params
      returning one, as optax's masks; None decays every leaf.
    delta: the damping of the pseudo-inverses of B^T B and A A^T, >= 0
      (1e-8, the official code).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs
    ``params`` (A and B enter the adjustment) and no extra args.

  References:
    "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?", arXiv:2407.18242
    (https://arxiv.org/abs/2407.18242). Official code: mrflogs/LoRA-Pro.

  Example:
    A frozen base weight stays out of the optimizer; the adapter's two leaves
    are found by their names:

    >>> import jax.numpy as jnp, optlab
    >>> params = {"lora_A": jnp.ones((2, 5)) / 5, "lora_B": jnp.ones((4, 2)) / 4}
    >>> tx = optlab.lora_pro(1e-3)
    >>> state = tx.init(params)
    >>> grads = {"lora_A": jnp.ones((2, 5)), "lora_B": jnp.ones((4, 2))}
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["lora_A"].shape, updates["lora_B"].shape
    ((2, 5), (4, 2))
  """
  V.check_learning_rate("lora_pro", learning_rate)
  V.check_decay("lora_pro", "b1", b1)
  V.check_decay("lora_pro", "b2", b2)
  V.check_nonneg("lora_pro", "eps", eps)
  V.check_nonneg("lora_pro", "weight_decay", weight_decay)
  return recipe_chain("lora_pro", in_lora_pairs(scale_by_adam(b1, b2, eps), pairs, scaling,
                                                delta=delta),
                      add_decayed_weights(weight_decay, mask),
                      scale_by_learning_rate(learning_rate))


RECIPES = (
    Recipe("lora_pro", lora_pro, "memory_efficient",
           "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?", "2407.18242",
           notes="Adam on each pair's equivalent full gradient ((m, n) moments per pair, as "
                 "the official code); bias correction at t (the official code's is t + 1); "
                 "unpaired leaves get plain AdamW."),
)
