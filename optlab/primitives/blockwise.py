"""Block-shared second moments: one learning rate per block of entries.

Adam-mini (arXiv:2406.16793) shares one second moment per *block* (a head, an
output neuron, a whole LayerNorm vector); SlimAdam (arXiv:2503.01843) shares
the second moment along the dims where its signal-to-noise ratio is high;
Subset-Norm (arXiv:2411.07120) shares an AdaGrad-norm accumulator per subset.
All three keep, per tensor, the mean of g^2 over some axes of a (reshaped)
view of the tensor. A *block spec* says which::

    ()                      element-wise (plain Adam)
    (0,)                    mean over axis 0 (one value per column of a matrix)
    ((d, h, d // h), (0, 2))  view the tensor as (d, h, d/h), mean over axes 0, 2

Block statistics are stored in one flat float32 vector per state (see
`storage.pack_flat`), which `optax.tree_map_params` treats as non-param state;
first moments stay param-shaped and keep the params' sharding.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.numerics import bias_correction, bound_gradient, safe_div, safe_square, saturate
from optlab._src.tree import flat_dtype, pack_flat, unpack_flat
from optlab.primitives.basis import COUNT, LINEAR_MOMENT, OPAQUE_STAT, declare_state
from optlab.primitives.factored import safe_mean
from optlab.rules import MomentumState, ema

__all__ = ["adam_mini_partition", "BlockMomentsState", "scale_by_adam_mini", "adam_mini_mask",
    "scale_by_blockwise_adam", "subset_norm_partition", "slim_adam_partition", "slim_adam_mask"]


def path_names(path) -> tuple[str, ...]:
  """The keys of a jax key path as strings: ('params', 'Dense_0', 'kernel')."""
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def block_view(spec: Any, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(view shape, reduced axes) of a block spec for a tensor of `shape`."""
  if len(spec) == 2 and isinstance(spec[0], (tuple, list)):
    view, axes = tuple(int(s) for s in spec[0]), tuple(int(a) for a in spec[1])
    if int(np.prod(view, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
      raise ValueError(f"optlab: block view {view} does not fit a tensor of shape {shape}")
  else:
    view, axes = tuple(shape), tuple(int(a) for a in spec)
  axes = tuple(sorted(a % len(view) for a in axes)) if view else ()
  return view, axes


def block_stat_shape(view, axes):
  """The shape of a block statistic: `view` without the averaged `axes`."""
  return tuple(s for i, s in enumerate(view) if i not in axes)


_EMBED = ("embed", "embd", "wte", "embedding")
_QK = ("query", "key", "q_proj", "k_proj", "wq", "wk")
_V3 = ("value", "v_proj", "wv")


def adam_mini_partition(num_heads: Optional[int] = None) -> Callable:
  """Adam-mini's default blocks for flax parameter paths (official v1.1 rules).

  Returns ``partition(names, shape) -> block spec``, where `names` are the
  path's keys as strings (`path_names`):

  * a leaf named ``bias`` (or containing it): element-wise, as plain Adam;
  * embeddings (a path key containing embed / embd / wte, flax's
    ``embedding``): one value per token (row, axis 0);
  * attention query / key (query, key, q_proj, k_proj, wq, wk): one value per
    head. flax's DenseGeneral kernel (d, heads, head_dim) uses axis 1; a 2-D
    (d_in, d_out) kernel is split into `num_heads` heads along the output
    axis (per output neuron if `num_heads` is None);
  * attention value with a (d, heads, head_dim) kernel: one value per output
    neuron (heads x head_dim);
  * any other tensor with ndim >= 2 (dense, output head, attention out,
    conv): one value per output neuron, i.e. per entry of flax's last
    (output) axis. The official code (PyTorch, weights are (out, in)) uses
    rows; flax kernels are (in, out), so it is the last axis here;
  * everything else (LayerNorm scales, 1-D vectors, scalars): one value for
    the whole tensor.
  """

  def partition(names: tuple[str, ...], shape: tuple[int, ...]):
    lower = [n.lower() for n in names]
    leaf = lower[-1] if lower else ""
    nd = len(shape)
    if "bias" in leaf:
      return ()
    if any(e in n for n in lower for e in _EMBED) and nd >= 2:
      return tuple(range(1, nd))
    if nd >= 2 and any(n in _QK for n in lower):
      if nd == 3:
        return (0, 2)
      if nd == 2 and num_heads and shape[1] % num_heads == 0:
        return ((shape[0], num_heads, shape[1] // num_heads), (0, 2))
    if nd == 3 and any(n in _V3 for n in lower):
      return (0,)
    if nd >= 2:
      return tuple(range(nd - 1))
    return tuple(range(nd))

  return partition


def adam_mini_mask(params: Any) -> Any:
  """The official code's weight-decay rule: no decay for paths naming norm / ln_f."""
  def keep(path, _):
    return not any(("norm" in n.lower() or "ln_f" in n.lower()) for n in path_names(path))
  return jax.tree_util.tree_map_with_path(keep, params)


@declare_state(count=COUNT, mu=LINEAR_MOMENT, nu=OPAQUE_STAT)
class BlockMomentsState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # first moment, param-shaped (mu_dtype or the param dtype)
  nu: jax.Array     # [total number of blocks], float32: EMA of each block's mean g^2


def block_specs(where, partition, tree):
  """Per leaf (in tree order): (view, axes) from `partition(names, shape)`."""
  out = []
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    shape = tuple(jnp.shape(x))
    try:
      out.append(block_view(partition(path_names(path), shape), shape))
    except Exception as e:
      raise ValueError(f"optlab.{where}: bad block spec for params"
                       f"{jax.tree_util.keystr(path)} of shape {shape}: {e}") from e
  return out


def block_mean_sq(g: jax.Array, view, axes) -> jax.Array:
  """mean of g^2 over `axes` of g viewed as `view` (kept dims only)."""
  sq = safe_square(jnp.reshape(g, view))
  return safe_mean(sq, axes) if axes else sq


def broadcast_blocks(stat: jax.Array, view, axes, shape) -> jax.Array:
  """A block statistic expanded back to the tensor's `shape`."""
  full = jnp.expand_dims(stat, axes) if axes else stat
  return jnp.reshape(jnp.broadcast_to(full, view), shape)


def scale_by_blockwise_adam(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                            partition: Optional[Callable] = None, *, reduce: str = "mean",
                            eps_before_debias: bool = False, mu_dtype: Any = None,
                            where: str = "scale_by_blockwise_adam"
                            ) -> optax.GradientTransformationExtraArgs:
  """Adam with one second moment per block (Adam-mini, Subset-Norm).

  m <- b1 m + (1 - b1) g;  v_B <- b2 v_B + (1 - b2) r_B(g^2), where r_B is the
  mean (``reduce="mean"``, Adam-mini) or the sum (``"sum"``, Subset-Norm) over
  the block;  u = m_hat / (sqrt(v_B_hat) + eps), or with
  ``eps_before_debias`` m_hat / ((sqrt(v_B) + eps) / sqrt(1 - b2^t)) (the HF
  AdamW form). Blocks: ``partition(names, shape) -> block spec``, default
  element-wise. Both moments see g through `bound_gradient`, so one huge entry
  cannot saturate v_B while m follows it (the step stays within Adam's bound).
  """
  for name, value in (("b1", b1), ("b2", b2)):
    V.check_decay(where, name, value)
  V.check_nonneg(where, "eps", eps)
  V.check_choice(where, "reduce", reduce, ("mean", "sum"))
  partition = partition or (lambda names, shape: ())
  first = ema(b1, debias=True, dtype=mu_dtype)

  def init(params):
    specs = block_specs(where, partition, params)
    n = sum(int(np.prod(block_stat_shape(v, a), dtype=np.int64)) for v, a in specs)
    return BlockMomentsState(jnp.zeros([], jnp.int32), first.init(params).mu,
                             jnp.zeros([n], flat_dtype(jax.tree.leaves(params))))

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    specs = block_specs(where, partition, updates)
    updates = bound_gradient(updates)
    s1, m_hat = first.update(MomentumState(state.mu), updates, count)
    leaves, treedef = jax.tree.flatten(updates)
    nus = unpack_flat(state.nu, [block_stat_shape(v, a) for v, a in specs])
    c2 = bias_correction(b2, count)
    new_nu, out = [], []
    for g, m, nu, (view, axes) in zip(leaves, jax.tree.leaves(m_hat), nus, specs):
      g32 = g.astype(accumulation_dtype(g.dtype))
      stat = block_mean_sq(g32, view, axes)
      if reduce == "sum" and axes:
        stat = saturate(stat * float(np.prod([view[a] for a in axes])))
      nu = saturate(b2 * nu + (1 - b2) * stat).astype(nu.dtype)
      den = (jnp.sqrt(nu) + eps) / jnp.sqrt(c2) if eps_before_debias else jnp.sqrt(nu / c2) + eps
      den = broadcast_blocks(den, view, axes, g.shape)
      out.append(safe_div(m.astype(den.dtype), den).astype(g.dtype))
      new_nu.append(nu)
    return (jax.tree.unflatten(treedef, out),
            BlockMomentsState(count, s1.mu, pack_flat(new_nu, state.nu.dtype)))

  return optax.GradientTransformationExtraArgs(init, update)


def scale_by_adam_mini(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                       partition: Optional[Callable] = None, num_heads: Optional[int] = None,
                       mu_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Adam-mini's scaling: Adam with one second moment per block.

  m <- b1 m + (1 - b1) g;  v_B <- b2 v_B + (1 - b2) mean_{i in B} g_i^2;
  u = (m / (1 - b1^t)) / (sqrt(v_B / (1 - b2^t)) + eps). Blocks come from
  ``partition(names, shape) -> block spec`` (see the module docstring), by
  default `adam_mini_partition(num_heads)`.
  """
  return scale_by_blockwise_adam(b1, b2, eps, partition or adam_mini_partition(num_heads),
                                 mu_dtype=mu_dtype, where="scale_by_adam_mini")


_SLIM_FAN_IN = ("q_proj", "query", "k_proj", "key", "wq", "wk")
_SLIM_FAN_OUT = ("v_proj", "value", "wv", "o_proj", "output_proj", "out_proj", "out", "c_proj",
                 "mlp", "c_fc", "fc1", "fc2", "up_proj", "gate_proj", "down_proj", "mlp_up",
                 "mlp_proj", "mlp_down", "dense", "w1", "w2", "w3")
_SLIM_EMBED = ("wte", "wpe", "embed", "embedding", "pos_embed", "position_embedding",
               "token_embedding")
_SLIM_HEAD = ("lm_head", "output_layer", "classifier", "head")
_SLIM_NORM = ("ln_", "norm", "layer_norm", "layernorm")


def slim_adam_partition(names: tuple[str, ...], shape: tuple[int, ...]):
  """SlimAdam's default rules (Table 1 of arXiv:2503.01843, official layer map),
  translated to flax kernels (in..., out...) from PyTorch's (out, in) weights.

  Query / key: compress fan_in (mean over flax axis 0). Value, attention
  output and MLP layers: compress fan_out (mean over the output axes: the
  last axis; for a (d, heads, head_dim) value kernel, axes 1 and 2).
  Embeddings (vocab, d): mean over the embedding dim (axis 1). LM head /
  classifier (d, vocab): compress fan_in (axis 0). Norms, biases, 1-D and
  unmatched tensors: not compressed. Matching is on lower-case path keys, in
  the official order (head and embeddings before the generic MLP names).
  """
  lower = [n.lower() for n in names]
  nd = len(shape)
  has = lambda keys: any(k == n or (len(k) > 3 and k in n) for n in lower for k in keys)
  if nd < 2 or "bias" in (lower[-1] if lower else "") or has(_SLIM_NORM):
    return ()
  if has(_SLIM_EMBED):
    return tuple(range(1, nd))
  if has(_SLIM_HEAD):
    return tuple(range(nd - 1))
  if has(_SLIM_FAN_IN):
    return (0,)
  if has(_SLIM_FAN_OUT):
    if nd == 3 and has(("value", "v_proj", "wv")):
      return (1, 2)
    return (nd - 1,)
  return ()


def subset_norm_partition(names: tuple[str, ...], shape: tuple[int, ...]):
  """Subset-Norm's subsets (official AdamWSN): a matrix shares one value per entry
  of its larger dim (the sum runs over the smaller dim; rows on a tie); other
  tensors are element-wise."""
  if len(shape) != 2:
    return ()
  return (1,) if shape[0] >= shape[1] else (0,)


def slim_adam_mask(params: Any) -> Any:
  """The official SlimAdam decay rule: decay tensors with ndim >= 2 only."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)
