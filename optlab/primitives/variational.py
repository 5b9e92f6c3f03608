"""IVON: the variational online Newton step (arXiv:2402.17641, official
team-approx-bayes/ivon code), as a primitive with its sampling helper.

IVON keeps a Gaussian posterior N(m, 1 / (ess (h + wd))) over the weights: the
params are its mean m, `h` a diagonal Hessian estimate. Each step takes the
gradient at sampled weights m + noise. Two ways to supply it in a chain:

* ``use_obj_fn=True`` (the default, and the `ivon` recipe): pass ``obj_fn``
  (params -> loss on the batch); the primitive draws the sample(s) from the
  key in its state and differentiates `obj_fn` there itself (the incoming
  gradient, at the mean, is ignored);
* ``use_obj_fn=False``: run the forward pass at ``ivon_sample_params(state,
  params)`` and pass that gradient as usual; the update recomputes the same
  noise from the same key.

Noise for step t (0-based) and sample s: leaf i of the params tree draws
float32 normals from fold_in(fold_in(fold_in(key(seed), t), s), i), so a run
is reproducible and independent of sharding.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype, statistics_dtype
from optlab._src.numerics import bias_correction
from optlab._src.random import fold_in, leaf_normals, new_key
from optlab._src.tree import full_like, require_state, statistics_zeros_like, unzip_tree
from optlab.primitives.basis import COUNT, INVARIANT_STAT, LINEAR_MOMENT, SECOND_STAT, declare_state

__all__ = ["IvonState", "scale_by_ivon", "ivon_sample_params"]


# hess starts at h0 > 0 and sets the posterior's variance: a statistic, never reset.
@declare_state(count=COUNT, key=INVARIANT_STAT, ess=INVARIANT_STAT,
               weight_decay=INVARIANT_STAT, mu=LINEAR_MOMENT, hess=SECOND_STAT)
class IvonState(NamedTuple):
  count: jax.Array         # [], int32: steps taken
  key: jax.Array           # [2], uint32: the seed's key (noise is folded from it)
  ess: jax.Array           # [], float32 (float64 for float64 params): effective sample
                           # size (for the helper)
  weight_decay: jax.Array  # [], same dtype: the prior precision delta (for the helper)
  mu: Any                  # param-shaped, params' dtype (float32 for float16): momentum of
                           # the sampled gradients (not debiased)
  hess: Any                # param-shaped, same dtype: diagonal Hessian estimate h


def _noise(key, count, sample, params, hess, ess, wd):
  eps = leaf_normals(fold_in(fold_in(key, count), sample), params)
  return jax.tree.map(
      lambda e, h: (e.astype(accumulation_dtype(h.dtype))
                    / jnp.sqrt(ess * (h.astype(accumulation_dtype(h.dtype)) + wd))), eps, hess)


def _perturb(params, noise):
  return jax.tree.map(lambda p, n: (p.astype(n.dtype) + n).astype(p.dtype), params, noise)


def ivon_sample_params(state: Any, params: Any, sample: int = 0) -> Any:
  """Weights drawn from IVON's posterior, m + noise, for the forward pass of the
  next step (`state`: an IVON state or a chain containing one)."""
  st = require_state("ivon_sample_params", state, IvonState)
  return _perturb(params, _noise(st.key, st.count, sample, params, st.hess, st.ess,
                                 st.weight_decay))


def scale_by_ivon(ess: Any, hess_init: Any = 1.0, b1: Any = 0.9, b2: Any = 0.99999,
                  weight_decay: Any = 1e-4, mc_samples: int = 1,
                  clip_radius: Any = math.inf, seed: int = 0, *, use_obj_fn: bool = True,
                  axis_name: Optional[str] = None) -> optax.GradientTransformationExtraArgs:
  """IVON's update direction per unit learning rate (official code).

  With g the gradient at m + noise (noise ~ N(0, 1 / (ess (h + wd))), averaged
  over `mc_samples` samples, as is noise * g):
  mu <- b1 mu + (1 - b1) g;  f = ess (h + wd) * mean(noise * g)  (Price's theorem);
  h <- b2 h + (1 - b2) f + (1 - b2)^2 (h - f)^2 / (2 (h + wd));
  u = (hess_init + wd) * clip((mu / (1 - b1^t) + wd m) / (h + wd), clip_radius).
  Then ``scale_by_learning_rate(lr)`` gives the official step (the factor
  hess_init + wd makes the first step an SGD step). With `axis_name`, the
  sampled gradients are averaged over that pmap axis (the official ``sync``).
  Computed in float32 (or wider); mu and h are kept in float32 for float16
  params (`normalize.statistics_dtype`).
  """
  where = "scale_by_ivon"
  V.check_positive(where, "ess", ess)
  V.check_positive(where, "hess_init", hess_init)
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_positive(where, "weight_decay", weight_decay)
  V.check_range(where, "mc_samples", mc_samples, 1)
  V.check_positive(where, "clip_radius", clip_radius)

  def init(params):
    dt = jnp.result_type(jnp.float32, *jax.tree.leaves(params))  # never the x64 default
    return IvonState(jnp.zeros([], jnp.int32), new_key(seed), jnp.asarray(ess, dt),
                     jnp.asarray(weight_decay, dt),
                     statistics_zeros_like(params),
                     jax.tree.map(lambda p: full_like(p, hess_init, statistics_dtype(p.dtype)),
                                  params))

  def update(updates, state, params=None, **extra):
    V.require_params(where, params)
    n = mc_samples if use_obj_fn else 1
    if use_obj_fn:
      obj_fn = V.require_extra_arg(where, extra, "obj_fn",
                                   "the loss on the current batch, params -> scalar")
    grads, nxgs = [], []
    for s in range(n):
      noise = _noise(state.key, state.count, s, params, state.hess, ess, weight_decay)
      if use_obj_fn:
        g = jax.grad(obj_fn)(_perturb(params, noise))
        g = jax.tree.map(lambda x, u: jnp.asarray(x).astype(accumulation_dtype(u.dtype)), g,
                         updates)
      else:
        g = updates
      if axis_name is not None:
        g = jax.lax.pmean(g, axis_name)
      grads.append(g)
      nxgs.append(jax.tree.map(lambda a, b: a * b.astype(a.dtype), noise, g))
    mean = lambda trees: jax.tree.map(lambda *xs: sum(xs[1:], xs[0]) / len(xs), *trees)
    g, nxg = mean(grads), mean(nxgs)
    count = optax.safe_increment(state.count)
    debias = bias_correction(b1, count.astype(float))

    def leaf(gi, nx, m, h, p):
      dt = accumulation_dtype(h.dtype)
      m32 = b1 * m.astype(dt) + (1 - b1) * gi.astype(dt)
      h32 = h.astype(dt)
      f = nx.astype(dt) * (h32 + weight_decay) * ess
      h_new = b2 * h32 + (1 - b2) * f + 0.5 * (1 - b2) ** 2 * jnp.square(h32 - f) / (
          h32 + weight_decay)
      step = (m32 / debias + weight_decay * p.astype(dt)) / (h_new + weight_decay)
      u = (hess_init + weight_decay) * jnp.clip(step, -clip_radius, clip_radius)
      return u, m32.astype(m.dtype), h_new.astype(h.dtype)

    triples = jax.tree.map(leaf, g, nxg, state.mu, state.hess, params)
    out, mu, hess = unzip_tree(updates, triples, 3)
    out = jax.tree.map(lambda u, x: u.astype(x.dtype), out, updates)
    return out, IvonState(count, state.key, state.ess, state.weight_decay, mu, hess)

  return optax.GradientTransformationExtraArgs(init, update)
