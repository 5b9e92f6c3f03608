"""Scaling with Gradient Grouping (SGG) around any inner chain.

"Taming LLMs by Scaling Learning Rates with Gradient Grouping" (Li et al.,
arXiv:2506.01049). Every `recluster_interval` steps the entries of each tensor
are grouped by the magnitude of a gradient statistic (1-D k-means), and each
group's update is rescaled by how its mean magnitude compares with the
tensor's, so that groups share a collective step size while every entry keeps
its own adaptive one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.tree import zeros_like
from optlab.primitives.basis import (COUNT, LINEAR_MOMENT, NESTED, OPAQUE_STAT, declare_state,
                                     iter_fields)

__all__ = ["SGGState", "sgg"]


@declare_state(count=COUNT, labels=OPAQUE_STAT, centers=OPAQUE_STAT, means=OPAQUE_STAT,
               scales=OPAQUE_STAT, inner_state=NESTED)
class SGGState(NamedTuple):
  count: jax.Array   # [], int32: steps taken
  labels: Any        # param-shaped, int32: the cluster of every entry
  centers: jax.Array  # [n_leaves, n_clusters], float32: k-means centres (warm start)
  means: jax.Array   # [n_leaves, n_clusters], float32: EMA of each cluster's mean |m|
  scales: jax.Array  # [n_leaves, n_clusters], float32: EMA of each cluster's scale
  inner_state: Any   # the wrapped transformation's state


def find_first_moment(state: Any, like: Any) -> Any:
  """The first field declared (LINEAR, MOMENT) in a (nested) state whose tree
  matches `like`, or None."""
  for field in iter_fields(state):
    if ((field.kind, field.role) == LINEAR_MOMENT
        and jax.tree.structure(field.value) == jax.tree.structure(like)):
      return field.value
  return None


def kmeans_1d(x: jax.Array, centers: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means on the values of `x` from `centers`; returns (labels, centers).

  A centre whose cluster empties keeps its value. Labels have `x`'s shape.
  """
  flat = x.reshape(-1)
  k = centers.shape[0]

  def assign(c):
    return jnp.argmin(jnp.abs(flat[:, None] - c[None, :]), axis=1)

  def body(_, c):
    lab = assign(c)
    sums = jnp.zeros(k, flat.dtype).at[lab].add(flat)
    counts = jnp.zeros(k, flat.dtype).at[lab].add(1.0)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), c)

  centers = jax.lax.fori_loop(0, iters, body, centers)
  return assign(centers).reshape(x.shape).astype(jnp.int32), centers


def sgg(inner: optax.GradientTransformation, n_clusters: int = 3,
        recluster_interval: int = 500, ema_decay_clusters: Any = 0.999,
        ema_decay_scale: Any = 0.999, eps: Any = 1e-8, scale_min: Any = 0.1,
        scale_max: Any = 10.0, kmeans_iters: int = 10
        ) -> optax.GradientTransformationExtraArgs:
  """Scaling with Gradient Grouping (SGG, arXiv:2506.01049) around any inner chain.

  Follows the official AdamW-SGG code. The statistic is ``|m|``, m the
  first field of `inner`'s state declared linear (the momentum; ``|u|``, the
  inner update, when there is none). Every `recluster_interval` steps, per
  tensor: cluster the entries of ``|m|`` into `n_clusters` groups; with c the
  tensor's mean ``|m|`` and c_i group i's (c for an empty group),
  ``mu_i <- d_c mu_i + (1 - d_c) c_i``,
  ``s_i <- d_s s_i + (1 - d_s) c / max(mu_i, eps)``, s_i clipped into
  [scale_min, scale_max] (mu and s start at 1). Every step the update of
  `inner` is multiplied by s of each entry's group.

  Differences from the official code: the clustering is a deterministic
  Lloyd k-means (`kmeans_iters` passes over all entries, started from the
  previous centres, the first time from centres spread evenly between the
  smallest and largest value) instead of scikit-learn's MiniBatchKMeans
  (random_state 42, batch 128); the official code also keeps an EMA of the
  centres that it never uses, which is omitted.
  """
  V.check_range("sgg", "n_clusters", n_clusters, 1)
  V.check_range("sgg", "recluster_interval", recluster_interval, 1)
  V.check_decay("sgg", "ema_decay_clusters", ema_decay_clusters)
  V.check_decay("sgg", "ema_decay_scale", ema_decay_scale)
  V.check_nonneg("sgg", "eps", eps)
  V.check_positive("sgg", "scale_min", scale_min)
  V.check_range("sgg", "scale_max", scale_max, V._concrete(scale_min))
  V.check_range("sgg", "kmeans_iters", kmeans_iters, 0)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    n = len(jax.tree.leaves(params))
    ones = lambda: jnp.ones((n, n_clusters), jnp.float32)  # separate buffers (donation)
    return SGGState(jnp.zeros([], jnp.int32), jax.tree.map(lambda p: zeros_like(p, jnp.int32),
                                                           params),
                    jnp.zeros((n, n_clusters), jnp.float32), ones(), ones(), inner.init(params))

  def recluster(stat, state):
    leaves = jax.tree.leaves(stat)
    first = state.count < recluster_interval  # no centres yet
    labels, centers, means, scales = [], [], [], []
    for i, m in enumerate(leaves):
      f = jnp.abs(m.astype(jnp.float32))
      f = jnp.where(jnp.isfinite(f), f, jnp.finfo(jnp.float32).max)
      lo, hi = jnp.min(f), jnp.max(f)
      spread = lo + (hi - lo) * (jnp.arange(n_clusters, dtype=jnp.float32) + 0.5) / n_clusters
      lab, c = kmeans_1d(f, jnp.where(first, spread, state.centers[i]), kmeans_iters)
      centre = jnp.mean(f)
      onehot = jax.nn.one_hot(lab.reshape(-1), n_clusters, dtype=jnp.float32)
      counts = jnp.sum(onehot, axis=0)
      cm = jnp.where(counts > 0, (f.reshape(-1) @ onehot) / jnp.maximum(counts, 1.0), centre)
      mu = ema_decay_clusters * state.means[i] + (1 - ema_decay_clusters) * cm
      raw = centre / jnp.maximum(mu, eps)
      s = ema_decay_scale * state.scales[i] + (1 - ema_decay_scale) * raw
      labels.append(lab)
      centers.append(c)
      means.append(mu)
      scales.append(jnp.clip(s, scale_min, scale_max))
    labels = jax.tree.unflatten(jax.tree.structure(stat), labels)
    stack = lambda xs: jnp.stack(xs) if xs else state.centers
    return labels, stack(centers), stack(means), stack(scales)

  def update(updates, state, params=None, **extra):
    moment = find_first_moment(state.inner_state, updates)
    new, inner_state = inner.update(updates, state.inner_state, params, **extra)
    count = optax.safe_increment(state.count)
    if moment is not None:  # the moment after this step's update
      stat = find_first_moment(inner_state, updates)
    else:
      stat = new
    keep = lambda: (state.labels, state.centers, state.means, state.scales)
    labels, centers, means, scales = jax.lax.cond(
        count % recluster_interval == 0, lambda: recluster(stat, state), keep)
    leaves, treedef = jax.tree.flatten(new)
    lab_leaves = jax.tree.leaves(labels)
    out = [(u.astype(jnp.float32) * scales[i][lab]).astype(u.dtype)
           for i, (u, lab) in enumerate(zip(leaves, lab_leaves))]
    return (jax.tree.unflatten(treedef, out),
            SGGState(count, labels, centers, means, scales, inner_state))

  return optax.GradientTransformationExtraArgs(init, update)
