"""IVON in NumPy, from the official team-approx-bayes/ivon code (hess_approx='price')."""

import math

import numpy as np


def ivon(params, grad_fn, steps, *, learning_rate, ess=1e4, hess_init=1.0, b1=0.9,
         b2=0.99999, weight_decay=1e-4, mc_samples=None, clip_radius=math.inf, seed=None):
  """The noise is the one random draw: taken with jax.random so that it equals
  optlab's documented draw (step t, sample s, leaf i of the sorted params dict:
  float32 normals from fold_in(fold_in(fold_in(key(seed), t), s), i)); the rest
  is NumPy."""
  import jax
  mc = 1 if mc_samples is None else mc_samples
  base = jax.random.key(0 if seed is None else seed)
  wd = weight_decay
  m = {k: np.array(v, np.float64) for k, v in params.items()}
  mom = {k: np.zeros_like(v) for k, v in m.items()}
  hess = {k: np.full_like(v, hess_init) for k, v in m.items()}
  out = []
  for t in range(steps):
    avg_g = {k: np.zeros_like(v) for k, v in m.items()}
    avg_nxg = {k: np.zeros_like(v) for k, v in m.items()}
    for s in range(mc):
      ks = jax.random.fold_in(jax.random.fold_in(base, t), s)
      noise = {}
      for i, k in enumerate(sorted(m)):
        e = np.asarray(jax.random.normal(jax.random.fold_in(ks, i), np.shape(m[k]),
                                         np.float32), np.float64)
        noise[k] = e / np.sqrt(ess * (hess[k] + wd))
      g = grad_fn({k: m[k] + noise[k] for k in m}, t)
      for k in m:  # Welford means, as the official code
        avg_g[k] += (g[k] - avg_g[k]) / (s + 1)
        avg_nxg[k] += (noise[k] * g[k] - avg_nxg[k]) / (s + 1)
    for k in m:
      mom[k] = b1 * mom[k] + (1 - b1) * avg_g[k]
      f = avg_nxg[k] * (hess[k] + wd) * ess
      hess[k] = b2 * hess[k] + (1 - b2) * f + 0.5 * (1 - b2) ** 2 * (hess[k] - f) ** 2 / (
          hess[k] + wd)
      debias = 1 - b1 ** (t + 1)
      step = np.clip((mom[k] / debias + wd * m[k]) / (hess[k] + wd), -clip_radius, clip_radius)
      m[k] = m[k] - learning_rate * (hess_init + wd) * step
    out.append({k: v.copy() for k, v in m.items()})
  return out
