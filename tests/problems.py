"""Small shared problems for the tests: the reference problem and the contract
convergence problems (ill-conditioned quadratic, Rosenbrock valley, digits MLP)."""

from __future__ import annotations

import functools

import numpy as np

SHAPES = {"w1": (8, 6), "b1": (6,), "w2": (6, 8), "scale": ()}


def reference_problem(seed: int = 0):
  """Params (float64) and a NumPy gradient: a diagonal quadratic plus step-dependent noise.

  g_t = a * (p - c) + 0.3 * n_t, with curvatures a in [0.1, 10].
  """
  rng = np.random.default_rng(seed)
  params = {k: np.asarray(rng.normal(size=s)) for k, s in SHAPES.items()}
  curv = {k: np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=s)) for k, s in SHAPES.items()}
  centre = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  noise = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(64)]

  def grad_fn(p, t):
    return {k: curv[k] * (np.asarray(p[k]) - centre[k]) + 0.3 * noise[t % 64][k] for k in p}

  def loss_fn(p, t):
    return sum(float(np.sum(0.5 * curv[k] * (np.asarray(p[k]) - centre[k]) ** 2
                            + 0.3 * noise[t % 64][k] * np.asarray(p[k]))) for k in p)

  return params, grad_fn, loss_fn
