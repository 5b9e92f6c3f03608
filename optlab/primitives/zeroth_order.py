"""Zeroth-order gradient estimators: gradients from forward passes only.

A zeroth-order (ZO) method is a gradient *estimator*; its output feeds any
chain, so ZO-SGD is ``chain(scale_by_spsa(), scale_by_learning_rate(lr))``
and a "ZO-Adam" or "ZO-Lion" puts the estimator in front of an existing rule.

Every estimator here is an `optax.GradientTransformationExtraArgs` that takes
the extra argument ``obj_fn`` (params -> scalar loss on the current batch)
and **ignores the incoming gradient**: pass zeros (or anything with the
params' tree and dtypes), or use `zo_step`, which never builds a backward
pass at all. The output has the incoming update's dtype.

The random perturbations are never stored. They are regenerated from the key
in the state, as MeZO regenerates its perturbation from a seed, so the peak
memory stays at inference level (params, one perturbed copy, the estimate).
The key schedule is part of the interface (tests regenerate the draws from
it):

* ``state.key`` is ``jax.random.key_data(jax.random.key(seed))`` (uint32[2]);
  it never changes.
* At the 0-based step ``t`` (``state.count`` before the update), sample ``s``
  (0 <= s < n_samples) uses ``sample_key = fold_in(fold_in(key, t), s)``
  (`zo_sample_key`).
* The leaf at tree path ``path`` draws
  ``normal(fold_in(sample_key, crc32(keystr(path))), shape, float32)``, cast to
  the leaf's dtype (`zo_normals`, `zo_leaf_id`): ``keystr`` is
  `jax.tree_util.keystr` (``"['w1']"`` for a dict key ``w1``) and ``crc32``
  is `zlib.crc32` of its UTF-8 bytes, computed while tracing. Keying a leaf by
  its path, not its position, makes a leaf draw the same direction whatever
  else is in the tree, so a recipe inside `optax.masked` / `optax.partition`
  (which see the full tree with the other leaves masked out) takes the same
  steps as on the sub-tree alone. Drawing per leaf bounds the random-number
  generator's scratch memory by the largest leaf, not the whole model.

Estimators (the recipes in `optlab.recipes.zeroth_order` wrap them)::

    scale_by_spsa(eps, n_samples)             # MeZO (arXiv:2305.17333)
    scale_by_spsa(..., sparsity=0.75)         # Sparse MeZO (arXiv:2402.15751)
    scale_by_zo_adamu(eps, alpha, b1, b2)     # ZO-AdaMU (arXiv:2312.15184)
    scale_by_cge(mu, sparsity)                # DeepZero (arXiv:2310.02025)
    scale_by_quantized_spsa(eps, bits=8)      # QuZO (arXiv:2502.12346)

`spsa_gradient` also takes a ``point_fn`` (a quantised forward pass, as
QuZO), a ``direction_fn`` (momentum-shifted perturbations, as ZO-AdaMU) and a
``weight_fn`` (the vector the projected difference multiplies).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.random import fold_in, leaf_id, new_key, path_key, path_normals
from optlab._src.dtypes import accumulation_dtype, tree_accumulation_dtype
from optlab._src.numerics import value_at
from optlab._src.tree import cast_like, find_state, tree_zeros_like
from optlab.primitives.basis import COUNT, INVARIANT_STAT, LINEAR_MOMENT, OPAQUE_STAT, declare_state

__all__ = ["ZerothOrderState", "spsa_gradient", "scale_by_spsa", "SparseZerothOrderState",
    "small_magnitude_threshold", "small_magnitude_mask", "ZoAdaMUState", "scale_by_zo_adamu",
    "random_coordinates", "cge_gradient", "scale_by_cge", "scale_by_quantized_spsa", "zo_step"]

ObjFn = Callable[[Any], jax.Array]


# ------------------------------------------------------------------ key schedule
# One home for the key helpers (optlab/_src/random.py); the zo_* names are this
# module's documented key schedule. zo_new_key: the state's raw uint32[2] key;
# zo_leaf_id: a leaf's crc32 id; zo_normals: the leaf-path-keyed perturbation.
zo_new_key, zo_leaf_id, zo_normals = new_key, leaf_id, path_normals


def zo_step_key(key: jax.Array, step: Any) -> jax.Array:
  """The raw key of the 0-based step `step`: ``fold_in(key, step)``."""
  return fold_in(key, step)


def zo_sample_key(step_key: jax.Array, sample: Any) -> jax.Array:
  """The raw key of perturbation `sample` within a step: ``fold_in(step_key, sample)``."""
  return fold_in(step_key, sample)


# --------------------------------------------------------------------- helpers
def _axpy(a: Any, x: Any, y: Any) -> Any:
  """y + a * x leaf-wise, in y's dtype."""
  return jax.tree.map(lambda xi, yi: (yi + a * xi).astype(yi.dtype), x, y)


def _scalar_f32(x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 0:
    raise ValueError(f"optlab.spsa_gradient: obj_fn must return a scalar, got shape {x.shape}")
  return x


def small_magnitude_threshold(params: Any, sparsity: Any) -> jax.Array:
  """Sparse MeZO's per-tensor thresholds h, one per leaf in `jax.tree.leaves` order.

  For a tensor of n entries, h is its k-th smallest ``|p|`` (sorted, 0-based index
  k = ceil((1 - sparsity) n) - 1, clamped to [0, n - 1]), so that about the
  (1 - sparsity) fraction of smallest-magnitude entries lie at or below it;
  scalars and empty leaves get the dtype's largest finite value (always
  selected, and a state that stays finite). Returned in the leaves'
  accumulation dtype (float32, or float64 for float64 params)."""
  leaves = jax.tree.leaves(params)
  dt = tree_accumulation_dtype(leaves)

  def leaf(p):
    if jnp.ndim(p) == 0 or jnp.size(p) == 0:
      return jnp.asarray(jnp.finfo(dt).max, dt)
    a = jnp.sort(jnp.abs(p.astype(dt)).reshape(-1))
    n = a.shape[0]
    return a[jnp.clip(jnp.ceil((1.0 - sparsity) * n).astype(jnp.int32) - 1, 0, n - 1)]

  return jnp.stack([leaf(p) for p in leaves]) if leaves else jnp.zeros([0], dt)


def small_magnitude_mask(params: Any, sparsity: Any = None, *, threshold: Any = None) -> Any:
  """Sparse MeZO's selection: 1 where ``|p| <= h``, h its tensor's threshold.

  ``threshold`` is a vector of per-leaf thresholds (`small_magnitude_threshold`,
  as stored by the sparse `scale_by_spsa`); without it, h comes from
  ``params`` and ``sparsity``, so the mask keeps about the (1 - sparsity)
  fraction of smallest-magnitude entries of each tensor (ties may add a few;
  ``sparsity=0`` keeps every entry). Scalars are always kept. Returns a tree of
  booleans.
  """
  if threshold is None:
    threshold = small_magnitude_threshold(params, sparsity)
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(treedef, [jnp.abs(p.astype(threshold.dtype)) <= threshold[i]
                                      for i, p in enumerate(leaves)])


# ------------------------------------------------------------------ estimator
def spsa_gradient(obj_fn: ObjFn, params: Any, key: jax.Array, eps: Any = 1e-3,
                  n_samples: int = 1, *, mask: Any = None,
                  point_fn: Optional[Callable[[Any, jax.Array, int], Any]] = None,
                  direction_fn: Optional[Callable[[jax.Array], Any]] = None,
                  weight_fn: Optional[Callable[[jax.Array, Any], Any]] = None,
                  mean_direction: bool = False) -> tuple:
  """The two-point SPSA estimate of grad obj_fn(params), as MeZO computes it.

  For each sample s: z_s = the perturbation drawn from ``zo_sample_key(key, s)``
  (each leaf a standard normal keyed by its tree path, see the module
  docstring, `zo_normals`), times ``mask`` where given;
  c_s = (f(params + eps z_s) - f(params - eps z_s)) / (2 eps), and the
  estimate is mean_s c_s z_s. Returns ``(estimate, loss)``, with ``loss`` the
  mean of the 2 n_samples function values (an estimate of f(params)).

  The directions are never stored: a first pass over the samples keeps only
  the scalars c_s, a second pass regenerates z_s from its key to form the
  estimate. Peak memory is therefore the params plus one perturbed copy plus
  the estimate, independent of n_samples (checked with compiled memory
  analysis in tests/test_zeroth_order.py).

  Args:
    obj_fn: params -> scalar loss (on the current batch).
    params: the point.
    key: the raw uint32[2] key of this step (`zo_step_key`).
    eps: the perturbation scale (MeZO's epsilon).
    n_samples: number of perturbations averaged (a Python int).
    mask: optional tree of booleans or 0/1 values; perturbs (and so
      estimates) only the selected entries (Sparse MeZO).
    point_fn: optional ``(perturbed_params, sample_key, side) -> params`` applied
      to each perturbed point before obj_fn (side 0 for +eps, 1 for -eps);
      QuZO's quantised forward passes use it.
    direction_fn: optional ``sample_key -> z tree`` replacing the Gaussian
      draw (ZO-AdaMU's momentum-shifted perturbations use it).
    weight_fn: optional ``(sample_key, z) -> tree``: the vector that c_s
      multiplies in the estimate, in place of z_s (ZO-AdaMU divides z_s by
      its second-moment term); regenerated like z_s.
    mean_direction: also return mean_s z_s (accumulation dtype) as a third
      output, summed in the first pass, which draws the z_s anyway (ZO-AdaMU's
      new momentum; one more param-sized buffer, no more draws).
  """
  V.check_range("spsa_gradient", "n_samples", n_samples, 1)
  if direction_fn is None:
    direction_fn = lambda k: zo_normals(k, params)
  if mask is not None:
    raw_direction = direction_fn
    direction_fn = lambda k: jax.tree.map(
        lambda z, m: jnp.where(m, z, jnp.zeros_like(z)), raw_direction(k), mask)
  point_fn = point_fn or (lambda p, k, side: p)
  acc = lambda p: jnp.zeros(jnp.shape(p), accumulation_dtype(jnp.result_type(p)))

  def projected(total, s):
    k = zo_sample_key(key, s)
    z = direction_fn(k)
    f_plus = _scalar_f32(obj_fn(point_fn(_axpy(eps, z, params), k, 0)))
    # The second forward pass starts after the first has finished, so that
    # their activations are never live at the same time (inference memory).
    base, z, f_plus = jax.lax.optimization_barrier((params, z, f_plus))
    f_minus = _scalar_f32(obj_fn(point_fn(_axpy(-eps, z, base), k, 1)))
    c = (f_plus - f_minus) / (2 * eps)
    if total is not None:
      total = jax.tree.map(lambda a, x: a + x.astype(a.dtype), total, z)
    return total, (c, 0.5 * (f_plus + f_minus))

  total = jax.tree.map(acc, params) if mean_direction else None
  total, (c, f) = jax.lax.scan(projected, total, jnp.arange(n_samples))
  loss = jnp.mean(f)

  def accumulate(s, g):
    k = zo_sample_key(key, s)
    z = direction_fn(k) if weight_fn is None else weight_fn(k, direction_fn(k))
    return jax.tree.map(lambda a, x: a + c[s].astype(a.dtype) * x.astype(a.dtype), g, z)

  if n_samples == 1:
    g = accumulate(0, jax.tree.map(acc, params))
  else:
    g = jax.lax.fori_loop(0, n_samples, accumulate, jax.tree.map(acc, params))
    g = jax.tree.map(lambda a: a / n_samples, g)
  if mean_direction:
    return g, loss, jax.tree.map(lambda a: a / n_samples, total)
  return g, loss


# --------------------------------------------------------------- transformation
@declare_state(count=COUNT, key=INVARIANT_STAT, loss=INVARIANT_STAT)
class ZerothOrderState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  key: jax.Array    # [2], uint32: raw PRNG key from `seed` (constant; folded with the step)
  loss: jax.Array   # [], float32: mean of the loss values queried at the last step


@declare_state(count=COUNT, key=INVARIANT_STAT, loss=INVARIANT_STAT, threshold=OPAQUE_STAT)
class SparseZerothOrderState(NamedTuple):
  count: jax.Array      # [], int32: steps taken
  key: jax.Array        # [2], uint32: raw PRNG key from `seed` (constant; folded with the step)
  loss: jax.Array       # [], float32: mean of the loss values queried at the last step
  threshold: jax.Array  # [number of leaves]: each tensor's magnitude threshold, fixed at init


def _zo_init(seed: int):
  def init(params):
    del params
    return ZerothOrderState(jnp.zeros([], jnp.int32), zo_new_key(seed), jnp.zeros([], jnp.float32))
  return init


def _sparse_zo_init(seed: int, sparsity: Any):
  def init(params):
    return SparseZerothOrderState(*_zo_init(seed)(params),
                                  small_magnitude_threshold(params, sparsity))
  return init


def _require_obj_fn(where: str, extra: dict) -> ObjFn:
  return V.require_extra_arg(where, extra, "obj_fn",
                             "params -> scalar loss on the current batch")


def scale_by_spsa(eps: Any = 1e-3, n_samples: int = 1, *, seed: int = 0, sparsity: Any = None,
                  point_fn: Optional[Callable[[Any, jax.Array, int], Any]] = None,
                  where: str = "scale_by_spsa") -> optax.GradientTransformationExtraArgs:
  """Replaces the incoming gradient by the two-point SPSA estimate (MeZO).

  u = mean_s c_s z_s with c_s = (f(p + eps z_s) - f(p - eps z_s)) / (2 eps),
  z_s standard normal, regenerated from the key schedule of this module (see
  `spsa_gradient`). The incoming gradient is ignored (it may be zeros); the
  output has its dtype. Needs ``params`` and the extra arg ``obj_fn``.

  Args:
    eps: perturbation scale.
    n_samples: perturbations per step (a Python int; MeZO uses 1).
    seed: seeds the key kept in the state.
    sparsity: None, or Sparse MeZO's fraction of each tensor's entries left
      unperturbed: each tensor's threshold h (`small_magnitude_threshold`) is
      fixed from the params at init, and every step perturbs the entries with
      ``|p| <= h`` (`small_magnitude_mask`, recomputed, never stored). The state is
      then a `SparseZerothOrderState`.
    point_fn: see `spsa_gradient` (QuZO's quantised forward passes).
  """
  V.check_positive(where, "eps", eps)
  V.check_range(where, "n_samples", n_samples, 1)
  if sparsity is not None:
    V.check_range(where, "sparsity", sparsity, 0.0, 1.0, high_open=True)

  def update(updates, state, params=None, **extra):
    obj_fn = _require_obj_fn(where, extra)
    if sparsity is not None and len(jax.tree.leaves(updates)) != state.threshold.shape[0]:
      raise ValueError(f"optlab.{where}: updates has {len(jax.tree.leaves(updates))} leaves but "
                       f"the state holds thresholds for {state.threshold.shape[0]} tensors "
                       "(the trees do not match the params)")
    V.require_params(where, params)
    mask = None if sparsity is None else small_magnitude_mask(params, threshold=state.threshold)
    key = zo_step_key(state.key, state.count)
    g, loss = spsa_gradient(obj_fn, params, key, eps, n_samples, mask=mask, point_fn=point_fn)
    new_state = state._replace(count=optax.safe_increment(state.count),
                               loss=loss.astype(jnp.float32))
    return cast_like(g, updates), new_state

  init = _zo_init(seed) if sparsity is None else _sparse_zo_init(seed, sparsity)
  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------- ZO-AdaMU

@declare_state(count=COUNT, key=INVARIANT_STAT, loss=INVARIANT_STAT, m=LINEAR_MOMENT)
class ZoAdaMUState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  key: jax.Array    # [2], uint32: raw PRNG key from `seed` (constant; folded with the step)
  loss: jax.Array   # [], float32: mean of the two loss values queried at the last step
  m: Any            # params' shapes and dtypes: the last perturbation (momentum of perturbations)


def scale_by_zo_adamu(eps: Any = 1e-3, alpha: Any = 0.5, b1: Any = 0.9, b2: Any = 0.01,
                      sigma: Any = 1e-8, n_samples: int = 1, *, seed: int = 0,
                      where: str = "scale_by_zo_adamu") -> optax.GradientTransformationExtraArgs:
  """ZO-AdaMU's estimate: SPSA along a perturbation adapted by momentum and uncertainty.

  At the 0-based step t, for each sample s (0 <= s < n_samples), with
  k = ``zo_sample_key(zo_step_key(key, t), s)``, n1 and n2 the documented
  normal draws (`zo_normals`, module docstring) from ``zo_sample_key(k, 0)``
  and ``zo_sample_key(k, 1)``, and m the stored perturbation (zeros at the
  start)::

      z1 = sqrt(alpha) n1                  (zero-centred, variance alpha)
      z2 = m + sqrt(1 - alpha) n2          (momentum-centred, variance 1 - alpha)
      m_s = b1 z1 + (1 - b1) z2            (the perturbation)
      v_s = b2 z1^2 + (1 - b2) z2^2
      c_s = (f(p + eps m_s) - f(p - eps m_s)) / (2 eps)
      u = mean_s c_s m_s / sqrt(v_s^2 + sigma),   m <- mean_s m_s

  With n_samples = 1 (the paper) the stored m is the perturbation just used.
  ``alpha`` (the uncertainty), ``b1`` and ``b2`` may be schedules of the step
  (the paper anneals them in phases); ``eps`` and ``sigma`` are numbers. The
  perturbations are regenerated from the key and m, never stored per sample.
  The incoming gradient is ignored (it may be zeros); the output has its
  dtype. Needs ``params`` and the extra arg ``obj_fn``. The state holds m, one
  param-shaped buffer (ZO-AdaMU's only memory beyond MeZO's).
  """
  V.check_positive(where, "eps", eps)
  V.check_range(where, "alpha", alpha, 0.0, 1.0)
  V.check_range(where, "b1", b1, 0.0, 1.0)
  V.check_range(where, "b2", b2, 0.0, 1.0)
  V.check_positive(where, "sigma", sigma)
  V.check_range(where, "n_samples", n_samples, 1)

  def init(params):
    m = tree_zeros_like(params)
    return ZoAdaMUState(jnp.zeros([], jnp.int32), zo_new_key(seed),
                        jnp.zeros([], jnp.float32), m)

  def update(updates, state, params=None, **extra):
    obj_fn = _require_obj_fn(where, extra)
    V.require_params(where, params)
    a, w1, w2 = (value_at(h, state.count) for h in (alpha, b1, b2))
    step_key = zo_step_key(state.key, state.count)

    def parts(sample_key):
      """(z1, z2) of the sample whose key is `sample_key` (accumulation dtype)."""
      n1 = zo_normals(zo_sample_key(sample_key, 0), params)
      n2 = zo_normals(zo_sample_key(sample_key, 1), params)
      acc = lambda x: x.astype(accumulation_dtype(x.dtype))
      z1 = jax.tree.map(lambda x: jnp.sqrt(a) * acc(x), n1)
      z2 = jax.tree.map(lambda m, x: acc(m) + jnp.sqrt(1 - a) * acc(x), state.m, n2)
      return z1, z2

    def mix(z1, z2):
      return jax.tree.map(lambda x, y, p: (w1 * x + (1 - w1) * y).astype(p.dtype), z1, z2, params)

    def direction(sample_key):
      return mix(*parts(sample_key))

    def weight(sample_key, z):
      # z rebuilt from the same draws: XLA does not merge the two draws of
      # `parts`, so this takes the accumulation pass from four draws to two
      del z
      z1, z2 = parts(sample_key)
      return jax.tree.map(
          lambda zi, x, y: zi.astype(x.dtype) * jax.lax.rsqrt(
              jnp.square(w2 * x * x + (1 - w2) * y * y) + sigma), mix(z1, z2), z1, z2)

    g, loss, mean_m = spsa_gradient(obj_fn, params, step_key, eps, n_samples,
                                    direction_fn=direction, weight_fn=weight,
                                    mean_direction=True)
    new_m = jax.tree.map(lambda x, p: x.astype(p.dtype), mean_m, params)
    new_state = ZoAdaMUState(optax.safe_increment(state.count), state.key,
                             loss.astype(jnp.float32), new_m)
    return cast_like(g, updates), new_state

  return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------- DeepZero (CGE)
def random_coordinates(key: jax.Array, like: Any, sparsity: float) -> Any:
  """DeepZero's random sparse coordinate set: per leaf, k = max(1, ceil((1 - sparsity) n))
  distinct flat indices, the first k of ``permutation(fold_in(key, zo_leaf_id(path)), n)``.

  `sparsity` must be a Python number (k is a static shape). Returns a tree of
  int32 index vectors (scalars: ``[0]``; a zero-size leaf: none)."""
  def leaf(path, x):
    n = int(math.prod(jnp.shape(x)))
    if n == 0:
      return jnp.zeros([0], jnp.int32)
    k = max(1, math.ceil((1.0 - sparsity) * n))
    perm = jax.random.permutation(path_key(key, path), n)
    return perm[:k].astype(jnp.int32)

  return jax.tree_util.tree_map_with_path(leaf, like)


def cge_gradient(obj_fn: ObjFn, params: Any, coords: Any, mu: Any = 5e-3
                 ) -> tuple[Any, jax.Array]:
  """DeepZero's coordinate-wise gradient estimate (CGE) on a coordinate set.

  For every selected flat index j of a leaf (`coords`, e.g. `random_coordinates`):
  g_j = (f(params + mu e_j) - f(params)) / mu, a forward difference (as the
  official code); unselected entries are 0. Returns ``(estimate, f(params))``.
  The coordinates are visited one at a time (`lax.map`), so memory stays at
  one perturbed copy of one leaf plus the estimate; the cost is one forward
  pass per selected coordinate, plus one for f(params).
  """
  base = _scalar_f32(obj_fn(params))
  leaves, treedef = jax.tree.flatten(params)
  idx_leaves = treedef.flatten_up_to(coords)

  def leaf_estimate(i):
    x = leaves[i]
    acc = accumulation_dtype(x.dtype)
    if x.size == 0:  # no coordinate, no forward pass
      return jnp.zeros(x.shape, acc)

    def one(j):
      bumped = x.reshape(-1).at[j].add(jnp.asarray(mu, x.dtype)).reshape(x.shape)
      moved = jax.tree.unflatten(treedef, leaves[:i] + [bumped] + leaves[i + 1:])
      return (_scalar_f32(obj_fn(moved)) - base) / mu

    d = jax.lax.map(one, idx_leaves[i])
    flat = jnp.zeros([x.size], acc).at[idx_leaves[i]].set(d.astype(acc))
    return flat.reshape(x.shape)

  return jax.tree.unflatten(treedef, [leaf_estimate(i) for i in range(len(leaves))]), base


def scale_by_cge(mu: Any = 5e-3, sparsity: float = 0.0, mask_interval: int = 1, *, seed: int = 0,
                 where: str = "scale_by_cge") -> optax.GradientTransformationExtraArgs:
  """Replaces the incoming gradient by DeepZero's sparse coordinate-wise estimate.

  u_j = (f(p + mu e_j) - f(p)) / mu on a random coordinate set keeping
  ``1 - sparsity`` of each tensor's entries (at least one), drawn by
  `random_coordinates` from ``zo_step_key(key, t // mask_interval)`` at the
  0-based step t, so it is redrawn every ``mask_interval`` steps; 0 elsewhere.
  ``sparsity = 0`` estimates every coordinate (full CGE). The incoming
  gradient is ignored (it may be zeros); the output has its dtype. Needs
  ``params`` and the extra arg ``obj_fn``. ``sparsity`` and ``mask_interval``
  are Python numbers (they fix the number of forward passes).
  """
  V.check_positive(where, "mu", mu)
  V.check_range(where, "sparsity", sparsity, 0.0, 1.0, high_open=True)
  V.check_range(where, "mask_interval", mask_interval, 1)
  if not isinstance(sparsity, (int, float)) or not isinstance(mask_interval, int):
    raise TypeError(f"optlab.{where}: sparsity and mask_interval must be Python numbers")

  def update(updates, state, params=None, **extra):
    obj_fn = _require_obj_fn(where, extra)
    V.require_params(where, params)
    coords = random_coordinates(zo_step_key(state.key, state.count // mask_interval), params,
                                sparsity)
    g, loss = cge_gradient(obj_fn, params, coords, mu)
    new_state = ZerothOrderState(optax.safe_increment(state.count), state.key,
                                 loss.astype(jnp.float32))
    return cast_like(g, updates), new_state

  return optax.GradientTransformationExtraArgs(_zo_init(seed), update)


# ---------------------------------------------------------------------- QuZO
def quantize_stochastic(tree: Any, key: jax.Array, bits: Any) -> Any:
  """Simulated symmetric `bits`-bit quantisation with stochastic rounding, per tensor.

  Leaf x (at tree path ``path``): s = max|x| / (2^(bits-1) - 1) (1 where x is all
  zero), q = clip(floor(x / s + r), -(2^(bits-1) - 1), 2^(bits-1) - 1) s with r
  ``uniform(fold_in(key, zo_leaf_id(path)), shape, float32)``; computed in
  float32 (or wider), returned in x's dtype. Unbiased inside the range:
  E[q] = x. `key` is a raw uint32[2] key."""

  def leaf(path, x):
    acc = accumulation_dtype(jnp.result_type(x))
    xf = jnp.asarray(x).astype(acc)
    qmax = jnp.exp2(jnp.asarray(bits, acc) - 1) - 1  # bits may be traced (inject_hyperparams)
    top = jnp.max(jnp.abs(xf)) if xf.size else jnp.zeros([], acc)
    s = jnp.where(top > 0, top / qmax, jnp.ones([], acc))
    r = jax.random.uniform(path_key(key, path), xf.shape, jnp.float32).astype(acc)
    q = jnp.clip(jnp.floor(xf / s + r), -qmax, qmax) * s
    return q.astype(jnp.result_type(x))

  return jax.tree_util.tree_map_with_path(leaf, tree)


def scale_by_quantized_spsa(eps: Any = 1e-3, n_samples: int = 1, bits: Any = 8, *,
                            seed: int = 0, where: str = "scale_by_quantized_spsa"
                            ) -> optax.GradientTransformationExtraArgs:
  """QuZO's estimate: SPSA through simulated low-precision forward passes.

  For each sample s, with k = ``zo_sample_key(zo_step_key(key, t), s)`` and u
  the documented normal draw from k (`zo_normals`): two independent
  stochastic roundings of the direction, u1 = Q(u; zo_sample_key(k, 1)) and
  u2 = Q(u; zo_sample_key(k, 2)); the loss is queried at the perturbed points
  quantised again with stochastic rounding,
  c_s = (f(Q(p + eps u1; zo_sample_key(k, 3))) - f(Q(p - eps u1; zo_sample_key(k, 4)))) / (2 eps),
  and u = mean_s c_s u2. Q is `quantize_stochastic` with ``bits`` bits
  (int8: 8, int4: 4). Using u2, independent of the u1 that the loss saw,
  keeps the rounding of the direction from biasing the estimate. The incoming
  gradient is ignored (it may be zeros); the output has its dtype. Needs
  ``params`` and the extra arg ``obj_fn``.
  """
  V.check_positive(where, "eps", eps)
  V.check_range(where, "n_samples", n_samples, 1)
  V.check_range(where, "bits", bits, 2, 16)

  def update(updates, state, params=None, **extra):
    obj_fn = _require_obj_fn(where, extra)
    V.require_params(where, params)
    key = zo_step_key(state.key, state.count)
    direction = lambda k: quantize_stochastic(zo_normals(k, params), zo_sample_key(k, 1), bits)
    weight = lambda k, z: quantize_stochastic(zo_normals(k, params), zo_sample_key(k, 2), bits)
    point = lambda p, k, side: quantize_stochastic(p, zo_sample_key(k, 3 + side), bits)
    g, loss = spsa_gradient(obj_fn, params, key, eps, n_samples, point_fn=point,
                            direction_fn=direction, weight_fn=weight)
    new_state = ZerothOrderState(optax.safe_increment(state.count), state.key,
                                 loss.astype(jnp.float32))
    return cast_like(g, updates), new_state

  return optax.GradientTransformationExtraArgs(_zo_init(seed), update)


# ---------------------------------------------------------------------- helper
_ZO_STATES = (ZerothOrderState, SparseZerothOrderState, ZoAdaMUState)


def zo_step(tx: optax.GradientTransformation, obj_fn: ObjFn, params: Any, state: Any,
            **extra: Any) -> tuple[Any, Any, jax.Array]:
  """One zeroth-order step without any backward pass.

  Calls ``tx.update(zeros, state, params, obj_fn=obj_fn)`` (the ZO estimators
  ignore the incoming gradient, so zeros are passed; XLA folds them away) and
  applies the update. Returns ``(new_params, new_state, loss)``, where
  ``loss`` is the estimator's mean queried loss at this step (NaN when the
  chain holds no zeroth-order estimator's state). Jit it as a whole:
  ``jax.jit(functools.partial(zo_step, tx, obj_fn))``.
  """
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, state = tx.update(zeros, state, params, obj_fn=obj_fn, **extra)
  params = optax.apply_updates(params, updates)
  found = [f for f in (find_state(state, t) for t in _ZO_STATES) if f is not None]
  loss = found[0].loss if found else jnp.array(jnp.nan, jnp.float32)
  return params, state, loss
