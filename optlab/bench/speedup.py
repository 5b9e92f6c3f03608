"""Speedup over a baseline, as the optimizer literature defines it.

The baseline runs at several lengths (e.g. 1/4, 1/2, 1 and 2 times the run
length, each with its own full schedule). Its end-of-run scores make a curve of
score against steps. An optimizer's speedup is the number of baseline steps
needed to reach the optimizer's score, read off that curve (linear in log
steps), divided by the optimizer's own steps: 2.0 means the baseline needs
twice as many steps for the same result. Past the ends of the curve only a
bound is known (">" beyond the longest baseline run, "<" below the shortest).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["baseline_curve", "steps_to_match", "speedup"]


def baseline_curve(scores_by_steps: dict[int, Sequence[float]]) -> dict:
  """{"steps": [...], "score": [...]} sorted by steps: the mean score over seeds,
  made non-increasing (a longer run is credited with the best shorter result, so
  the curve can be inverted; noise otherwise makes it ragged)."""
  steps = sorted(scores_by_steps)
  means = [float(np.mean(scores_by_steps[n])) for n in steps]
  mono = np.minimum.accumulate(np.asarray(means, float)).tolist()
  return {"steps": steps, "score": mono, "raw_score": means,
          "per_seed": {str(n): list(map(float, scores_by_steps[n])) for n in steps}}


def steps_to_match(score: float, curve: dict) -> tuple[float, str]:
  """(baseline steps to reach `score`, "=" | ">" | "<"): "=" interpolated,
  ">" the baseline does not reach it in its longest run, "<" it reaches it
  before its shortest."""
  steps = np.asarray(curve["steps"], float)
  ys = np.asarray(curve["score"], float)
  if not math.isfinite(score) or score < ys[-1]:
    return float(steps[-1]), ">"
  if score >= ys[0]:
    return float(steps[0]), "<" if score > ys[0] else "="
  k = int(np.flatnonzero(ys <= score)[0])  # first length whose score reaches it; k >= 1
  x0, x1, y0, y1 = np.log(steps[k - 1]), np.log(steps[k]), ys[k - 1], ys[k]
  frac = 1.0 if y0 == y1 else (y0 - score) / (y0 - y1)
  return float(np.exp(x0 + frac * (x1 - x0))), "="


def speedup(scores: Sequence[float], steps: int, curve: dict) -> dict:
  """Per-seed speedups of runs of `steps` steps that ended at `scores`, their
  median and range. ``bound`` is ">" or "<" when some seed lies beyond the
  curve (its value is then a bound, not a measurement); a failed run (inf)
  counts as "<" the shortest baseline."""
  per_seed, bounds = [], []
  for s in scores:
    if not math.isfinite(s):
      per_seed.append(curve["steps"][0] / steps)
      bounds.append("<")
      continue
    n, how = steps_to_match(s, curve)
    per_seed.append(n / steps)
    bounds.append(how)
  b = sorted(set(bounds) - {"="})
  return {"median": float(np.median(per_seed)), "min": float(np.min(per_seed)),
          "max": float(np.max(per_seed)), "per_seed": per_seed, "bounds": bounds,
          "bound": b[0] if len(b) == 1 else ("mixed" if b else None)}
