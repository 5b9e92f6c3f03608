"""Learning-rate schedules: linear decay with warm-up, and schedules refined from
the gradient norms of a previous run.

Both come from "When, Why and How Much? Adaptive Learning Rate Scheduling by
Refinement" (Defazio, Cutkosky, Mehta, Mishchenko; arXiv:2310.07831, later
titled "Optimal Linear Decay Learning Rate Schedules and Further
Refinements"):

* `linear_decay` -- the worst-case optimal schedule for the last iterate,
  eta_t proportional to 1 - t / T, here with an optional linear warm-up. An
  optax schedule (a function of the 0-based step).
* `refine_schedule` -- the paper's schedule refinement: given the gradient
  norms ||g_t|| observed in a previous run of T steps, smooth them with a
  median filter, set w_t = 1 / ||g_t||^2 and
  eta_t proportional to w_t * sum_{p > t} w_p, normalised to peak 1. Constant
  norms give linear decay back; norms that fall during training give a
  warm-up; the schedule always anneals to 0 at the last step.

Every schedule here is a multiplier times ``peak_value``; pass it as the
``learning_rate`` of any recipe (for the step-size-free recipes, whose
learning rate is a multiplier, keep ``peak_value=1``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from optlab import _validate as V

__all__ = ["linear_decay", "median_filter", "refined_multipliers", "refine_schedule"]

Schedule = Callable[[Any], Any]


def linear_decay(peak_value: float, total_steps: int, warmup_steps: int = 0,
                 init_value: float = 0.0, end_value: float = 0.0) -> Schedule:
  """Linear warm-up then linear decay (to 0 by default), as an optax schedule.

  For the 0-based step t: init_value + (peak_value - init_value) t / W while
  t < W = warmup_steps; then peak_value + (end_value - peak_value) (t - W) /
  (T - W), held at end_value from t = T = total_steps on. With W = 0 this is
  the paper's eta_t = peak_value (1 - t / T).

  Args:
    peak_value: the learning rate at the end of the warm-up.
    total_steps: T, the step from which `end_value` is held.
    warmup_steps: W, the length of the linear warm-up (0: none).
    init_value: the learning rate at step 0 of the warm-up.
    end_value: the learning rate from step T on.

  Returns:
    An optax schedule, step -> learning rate.
  """
  where = "linear_decay"
  V.check_nonneg(where, "peak_value", peak_value)
  V.check_nonneg(where, "init_value", init_value)
  V.check_nonneg(where, "end_value", end_value)
  if int(total_steps) != total_steps or total_steps < 1:
    raise ValueError(f"optlab.{where}: total_steps must be a positive integer, got {total_steps!r}")
  if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps < total_steps:
    raise ValueError(f"optlab.{where}: warmup_steps must be an integer in [0, total_steps), "
                     f"got {warmup_steps!r}")
  w, t_total = int(warmup_steps), int(total_steps)

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warm = init_value + (peak_value - init_value) * t / max(w, 1)
    frac = jnp.clip((t - w) / (t_total - w), 0.0, 1.0)
    decay = peak_value + (end_value - peak_value) * frac
    return jnp.where(t < w, warm, decay)

  return schedule


def median_filter(x: Sequence[float], width: int) -> np.ndarray:
  """The running median of `x` over a centred window of `width` points.

  At the ends the window is cut to the points that exist (no padding), so a
  constant input stays constant and a monotone one stays monotone.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise ValueError(f"optlab.median_filter: expected a 1-D sequence, got shape {x.shape}")
  width = max(int(width), 1)
  half_lo, half_hi = (width - 1) // 2, width // 2
  out = np.empty_like(x)
  for t in range(x.size):
    out[t] = np.median(x[max(0, t - half_lo):t + half_hi + 1])
  return out


def refined_multipliers(grad_norms: Sequence[float], smoothing: float = 0.1,
                        norm_power: float = 2.0) -> np.ndarray:
  """The refined schedule of arXiv:2310.07831 (Algorithm 1) as an array of T multipliers.

  G = median_filter(grad_norms, width = max(1, round(smoothing * T)));
  w_t = G_t^(-norm_power);  eta_t = w_t * sum_{p=t+1}^{T} w_p;  eta / max(eta).

  Args:
    grad_norms: ||g_t|| for t = 1..T from a previous run (any schedule);
      non-finite or non-positive entries are replaced by the smallest
      positive finite norm (they carry no information about the scale).
    smoothing: the median filter's width as a fraction of T (the paper's tau).
    norm_power: 2 for SGD-type methods with Euclidean gradient norms (the
      paper's SGD refinement, w_t = 1 / ||g_t||_2^2). The paper's refinement
      for coordinate-wise methods such as Adam uses w_t = 1 / ||g_t||_1:
      pass l1 norms and norm_power=1.

  Returns:
    float64 array of length T, max 1, last entry 0.
  """
  where = "refined_multipliers"
  g = np.asarray(grad_norms, np.float64)
  if g.ndim != 1 or g.size < 2:
    raise ValueError(f"optlab.{where}: grad_norms must be a 1-D sequence of at least 2 "
                     f"norms, got shape {g.shape}")
  V.check_range(where, "smoothing", smoothing, 0.0, 1.0)
  V.check_positive(where, "norm_power", norm_power)
  good = np.isfinite(g) & (g > 0)
  if not good.any():
    raise ValueError(f"optlab.{where}: grad_norms has no positive finite entry")
  g = np.where(good, g, g[good].min())
  smooth = median_filter(g, max(1, int(round(smoothing * g.size))))
  w = smooth ** (-float(norm_power))
  tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{p > t} w_p
  eta = w * tail
  return eta / eta.max()


def refine_schedule(grad_norms: Sequence[float], peak_value: float = 1.0, *,
                    smoothing: float = 0.1, norm_power: float = 2.0) -> Schedule:
  """A refined learning-rate schedule (arXiv:2310.07831) from a previous run's gradient norms.

  Returns an optax schedule: step t (0-based) -> peak_value * eta_t with eta
  from `refined_multipliers`, for a new run of the same length T; steps
  beyond T get the last value, 0.

  Args:
    grad_norms: the previous run's gradient norms, as `refined_multipliers`
      takes them.
    peak_value: the largest learning rate of the schedule.
    smoothing: the median filter's width as a fraction of T
      (`refined_multipliers`).
    norm_power: the power of the norms in the weights (`refined_multipliers`).

  Returns:
    An optax schedule, step -> learning rate.
  """
  V.check_nonneg("refine_schedule", "peak_value", peak_value)
  table = jnp.asarray(refined_multipliers(grad_norms, smoothing, norm_power), jnp.float32)
  last = table.shape[0] - 1

  def schedule(step):
    return peak_value * table[jnp.clip(jnp.asarray(step, jnp.int32), 0, last)]

  return schedule
