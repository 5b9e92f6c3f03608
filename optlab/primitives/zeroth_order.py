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
* Leaf ``i`` of the params (order of `jax.tree.leaves`) draws
  ``normal(fold_in(sample_key, i), shape, float32)``, cast to the leaf's dtype
  (`zo_normals`). Drawing per leaf bounds the random-number generator's
  scratch memory by the largest leaf, not the whole model.

Estimators (the recipes in `optlab.recipes.zeroth_order` wrap them):

    scale_by_spsa(eps, n_samples)             # MeZO (arXiv:2305.17333)
    scale_by_spsa(..., sparsity=0.75)         # Sparse MeZO (arXiv:2402.15751)

`spsa_gradient` also takes a ``point_fn`` (e.g. a quantised forward pass, as
QuZO) and a ``direction_fn`` (e.g. momentum-shifted perturbations, as
ZO-AdaMU); recipes for those are not written yet.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab.primitives.normalize import accumulation_dtype
from optlab.primitives.wrappers import find_state

__all__ = [
    "ZerothOrderState", "zo_new_key", "zo_step_key", "zo_sample_key", "zo_normals",
    "spsa_gradient",
    "scale_by_spsa", "small_magnitude_mask", "zo_step",
]

ObjFn = Callable[[Any], jax.Array]


# ------------------------------------------------------------------ key schedule
def zo_new_key(seed: int) -> jax.Array:
  """The state's raw key: ``key_data(jax.random.key(seed))``, uint32[2]."""
  return jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)


def zo_step_key(key: jax.Array, step: Any) -> jax.Array:
  """The raw key of the 0-based step `step`: ``fold_in(key, step)``."""
  base = jax.random.wrap_key_data(key)
  return jax.random.key_data(jax.random.fold_in(base, step))


def zo_sample_key(step_key: jax.Array, sample: Any) -> jax.Array:
  """The raw key of perturbation `sample` within a step: ``fold_in(step_key, sample)``."""
  base = jax.random.wrap_key_data(step_key)
  return jax.random.key_data(jax.random.fold_in(base, sample))


def zo_normals(sample_key: jax.Array, like: Any) -> Any:
  """The documented perturbation: leaf i of `like` (tree-leaves order) is
  ``normal(fold_in(sample_key, i), shape, float32)`` cast to the leaf's dtype."""
  base = jax.random.wrap_key_data(sample_key)
  leaves, treedef = jax.tree.flatten(like)
  out = [jax.random.normal(jax.random.fold_in(base, i), jnp.shape(x), jnp.float32
                           ).astype(jnp.result_type(x)) for i, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


# --------------------------------------------------------------------- helpers
def _axpy(a: Any, x: Any, y: Any) -> Any:
  """y + a * x leaf-wise, in y's dtype."""
  return jax.tree.map(lambda xi, yi: (yi + a * xi).astype(yi.dtype), x, y)


def _scalar_f32(x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 0:
    raise ValueError(f"optlab.spsa_gradient: obj_fn must return a scalar, got shape {x.shape}")
  return x


def small_magnitude_mask(params: Any, sparsity: Any) -> Any:
  """Sparse MeZO's selection: per tensor, 1 where |p| <= the (1 - sparsity) quantile.

  For a tensor of n entries, the threshold is the k-th smallest |p| (sorted,
  0-based index k = ceil((1 - sparsity) n) - 1, clamped to [0, n - 1]); the
  mask keeps the entries at or below it, i.e. about the (1 - sparsity)
  fraction of smallest-magnitude weights (ties may add a few). ``sparsity=0``
  keeps every entry. Scalars are always kept. Returns a tree of booleans.
  """
  def leaf(p):
    if jnp.ndim(p) == 0:
      return jnp.ones([], bool)
    a = jnp.abs(p.astype(accumulation_dtype(p.dtype))).reshape(-1)
    n = a.shape[0]
    k = jnp.clip(jnp.ceil((1.0 - sparsity) * n).astype(jnp.int32) - 1, 0, n - 1)
    threshold = jnp.sort(a)[k]
    return jnp.abs(p.astype(a.dtype)) <= threshold

  return jax.tree.map(leaf, params)


# ------------------------------------------------------------------ estimator
def spsa_gradient(obj_fn: ObjFn, params: Any, key: jax.Array, eps: Any = 1e-3,
                  n_samples: int = 1, *, mask: Any = None,
                  point_fn: Optional[Callable[[Any, jax.Array, int], Any]] = None,
                  direction_fn: Optional[Callable[[jax.Array], Any]] = None
                  ) -> tuple[Any, jax.Array]:
  """The two-point SPSA estimate of grad obj_fn(params), as MeZO computes it.

  For each sample s: z_s = the perturbation drawn from ``zo_sample_key(key, s)``
  (leaf i: standard normal from ``fold_in(sample_key, i)``, see the module
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
  """
  V.check_range("spsa_gradient", "n_samples", n_samples, 1)
  if direction_fn is None:
    direction_fn = lambda k: zo_normals(k, params)
  if mask is not None:
    raw_direction = direction_fn
    direction_fn = lambda k: jax.tree.map(
        lambda z, m: jnp.where(m, z, jnp.zeros_like(z)), raw_direction(k), mask)
  point_fn = point_fn or (lambda p, k, side: p)

  def projected(_, s):
    k = zo_sample_key(key, s)
    z = direction_fn(k)
    f_plus = _scalar_f32(obj_fn(point_fn(_axpy(eps, z, params), k, 0)))
    # The second forward pass starts after the first has finished, so that
    # their activations are never live at the same time (inference memory).
    base, z, f_plus = jax.lax.optimization_barrier((params, z, f_plus))
    f_minus = _scalar_f32(obj_fn(point_fn(_axpy(-eps, z, base), k, 1)))
    c = (f_plus - f_minus) / (2 * eps)
    return None, (c, 0.5 * (f_plus + f_minus))

  _, (c, f) = jax.lax.scan(projected, None, jnp.arange(n_samples))
  loss = jnp.mean(f)

  acc = lambda p: jnp.zeros(jnp.shape(p), accumulation_dtype(jnp.result_type(p)))

  def accumulate(s, g):
    z = direction_fn(zo_sample_key(key, s))
    return jax.tree.map(lambda a, x: a + c[s].astype(a.dtype) * x.astype(a.dtype), g, z)

  if n_samples == 1:
    g = accumulate(0, jax.tree.map(acc, params))
  else:
    g = jax.lax.fori_loop(0, n_samples, accumulate, jax.tree.map(acc, params))
    g = jax.tree.map(lambda a: a / n_samples, g)
  return g, loss


# --------------------------------------------------------------- transformation
class ZerothOrderState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  key: jax.Array    # [2], uint32: raw PRNG key from `seed` (constant; folded with the step)
  loss: jax.Array   # [], float32: mean of the loss values queried at the last step


def _zo_init(seed: int):
  def init(params):
    del params
    return ZerothOrderState(jnp.zeros([], jnp.int32), zo_new_key(seed), jnp.zeros([], jnp.float32))
  return init


def _cast_like(tree: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


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
      unperturbed (the largest in magnitude; `small_magnitude_mask`, taken from
      the current params at every step, never stored).
    point_fn: see `spsa_gradient` (QuZO's quantised forward passes).
  """
  V.check_positive(where, "eps", eps)
  V.check_range(where, "n_samples", n_samples, 1)
  if sparsity is not None:
    V.check_range(where, "sparsity", sparsity, 0.0, 1.0, high_open=True)

  def update(updates, state, params=None, **extra):
    obj_fn = _require_obj_fn(where, extra)
    V.require_params(where, params)
    mask = None if sparsity is None else small_magnitude_mask(params, sparsity)
    key = zo_step_key(state.key, state.count)
    g, loss = spsa_gradient(obj_fn, params, key, eps, n_samples, mask=mask, point_fn=point_fn)
    new_state = ZerothOrderState(optax.safe_increment(state.count), state.key,
                                 loss.astype(jnp.float32))
    return _cast_like(g, updates), new_state

  return optax.GradientTransformationExtraArgs(_zo_init(seed), update)


# ---------------------------------------------------------------------- helper
def zo_step(tx: optax.GradientTransformation, obj_fn: ObjFn, params: Any, state: Any,
            **extra: Any) -> tuple[Any, Any, jax.Array]:
  """One zeroth-order step without any backward pass.

  Calls ``tx.update(zeros, state, params, obj_fn=obj_fn)`` (the ZO estimators
  ignore the incoming gradient, so zeros are passed; XLA folds them away) and
  applies the update. Returns ``(new_params, new_state, loss)``, where
  ``loss`` is the estimator's mean queried loss at this step (NaN when the
  chain holds no `ZerothOrderState`). Jit it as a whole:
  ``jax.jit(functools.partial(zo_step, tx, obj_fn))``.
  """
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, state = tx.update(zeros, state, params, obj_fn=obj_fn, **extra)
  params = optax.apply_updates(params, updates)
  found = find_state(state, ZerothOrderState)
  loss = found.loss if found is not None else jnp.array(jnp.nan, jnp.float32)
  return params, state, loss
