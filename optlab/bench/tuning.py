"""Hyperparameter tuning for a fair comparison: every optimizer gets the same
budget of runs, and its best learning rate must end up inside the grid.

Why: a comparison at a fixed grid around each default favours whichever method's
default happens to sit near its optimum. "Fantastic Pretraining Optimizers and
Where to Find Them" (arXiv:2509.02046) shows most reported speedups over AdamW
vanish once AdamW is tuned as carefully as the new method. So the search here
starts at the default rate times the task's scale, tries half a decade either
side, and keeps extending by half-decades towards the better side until the best
rate has a worse neighbour on both sides (it is *interior*) or the budget runs
out; the report flags every optimum that is not interior.

Other hyperparameters (``--tune lr,weight_decay,b2``) are tuned afterwards by
coordinate descent over the same neighbour rule, and the learning rate is
re-checked around its optimum at the final values. "Interior" then means: the
reported learning rate has worse neighbours at the reported values of the other
knobs, and each other knob had worse neighbours when it was searched (at the
learning rate of that moment). Neighbours of a value:

* ``learning_rate`` and positive floats: times 10**(+-1/2);
* decay rates (names ``b1``, ``b2``, ``beta*``, ``decay``...) in (0, 1): ``1 - b``
  times 10**(+-1/2), so 0.999 -> 0.99684 / 0.99968;
* integers (intervals, frequencies): halved / doubled, at least 1;
* a weight decay of 0: 1e-2 upwards (then the float rule);
* a second rate that defaults to None, i.e. tied to the learning rate (Muon's
  ``adam_learning_rate``): it starts at the tuned learning rate, then the float rule.

A trial whose loss is not finite, or that ends at or above its starting loss
(or at the task's chance level), is a failure: it scores ``inf`` and is never
chosen.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = ["TUNABLE_ALIASES", "Trial", "neighbours", "tune", "parse_knobs", "check_knobs",
           "format_hparams", "write_tuned", "read_tuned"]

# short names accepted by --tune
TUNABLE_ALIASES = {"lr": "learning_rate", "wd": "weight_decay"}
_DECAY_NAMES = ("b1", "b2", "b3", "beta", "beta1", "beta2", "beta3", "decay", "momentum", "rho_ema")
HALF_DECADE = 10 ** 0.5


@dataclasses.dataclass
class Trial:
  """One tuning run on the first seed."""
  hparams: dict
  score: float  # the comparison's measure; inf for a failed run
  status: str  # "ok", "diverged" or "failed"
  final_loss: float

  def to_json(self) -> dict:
    return {"hparams": self.hparams, "score": self.score, "status": self.status,
            "final_loss": self.final_loss}


def parse_knobs(text: str) -> tuple[str, ...]:
  """``"lr,weight_decay"`` -> ("learning_rate", "weight_decay"); learning rate first."""
  names = [TUNABLE_ALIASES.get(n.strip(), n.strip()) for n in text.split(",") if n.strip()]
  if names in ([], ["none"]):
    return ()
  if "none" in names:
    raise ValueError("--tune: 'none' cannot be combined with other names")
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"--tune names {dupes} more than once")
  return tuple(sorted(names, key=lambda n: n != "learning_rate"))


def check_knobs(knobs: Sequence[str], specs) -> dict[str, tuple[str, ...]]:
  """The knobs each optimizer tunes. A knob no optimizer has is an error; one that
  only some have is tuned where it exists (the report lists each one's knobs)."""
  out = {}
  for spec in specs:
    params = spec.tunable()
    out[spec.name] = tuple(k for k in knobs if k in params)
  unknown = [k for k in knobs if not any(k in v for v in out.values())]
  if unknown:
    raise ValueError(f"--tune: no optimizer given has the hyperparameter(s) {unknown}; "
                     "use the factories' argument names, e.g. lr, weight_decay, b2")
  return out


def tunable_defaults(factory) -> dict[str, Any]:
  """A factory's numeric keyword defaults (the values coordinate descent starts
  from), and its ``*_learning_rate`` arguments that default to None (tied to the
  learning rate, as Muon's ``adam_learning_rate``)."""
  out = {}
  for p in inspect.signature(factory).parameters.values():
    if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
      out[p.name] = p.default
    elif p.default is None and p.name.endswith("_learning_rate"):
      out[p.name] = None
  return out


def neighbours(name: str, value) -> tuple[Optional[Any], Optional[Any]]:
  """(lower, higher) neighbour of a hyperparameter value (module docstring)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"cannot tune {name}: its value {value!r} is not a number")
  if isinstance(value, int) and name not in ("learning_rate", "weight_decay"):
    return (max(1, value // 2) if value > 1 else None), 2 * value
  if name in _DECAY_NAMES and 0.0 < value < 1.0:
    gap = 1.0 - value
    return 1.0 - min(0.9, gap * HALF_DECADE), 1.0 - gap / HALF_DECADE
  if value == 0.0:
    return None, 1e-2
  if value < 0.0:
    raise ValueError(f"cannot tune {name}: negative value {value!r}")
  return value / HALF_DECADE, value * HALF_DECADE


def _key(hp: dict) -> tuple:
  """Equal up to float rounding (a rate divided, then multiplied by sqrt 10)."""
  return tuple(sorted((k, float(f"{v:.9g}") if isinstance(v, float) else v)
                      for k, v in hp.items()))


def tune(evaluate: Callable[[dict], Trial], start: dict, knobs: Sequence[str], budget: int,
         log: Callable[[str], None] = lambda s: None) -> dict:
  """Search `knobs` from `start` (which holds every knob's starting value) with at most
  `budget` evaluations. Returns {"hparams", "trials", "interior", "note", "runs"}.

  `evaluate(hparams) -> Trial` runs one training run. The learning rate (if tuned)
  gets the budget minus two runs per other knob, then each other knob is moved by
  coordinate descent, then the rate is re-checked at the final values.
  """
  if budget < 1:
    raise ValueError(f"--budget must be positive, got {budget}")
  trials: dict[tuple, Trial] = {}

  def run(hp) -> Optional[Trial]:
    k = _key(hp)
    if k not in trials:
      if len(trials) >= budget:
        return None
      trials[k] = evaluate(dict(hp))
      t = trials[k]
      log(f"      {format_hparams(hp, knobs)}: {t.status}"
          + (f", score {t.score:.4f}" if math.isfinite(t.score) else ""))
    return trials[k]

  def line_search(hp: dict, name: str, reserve: int) -> tuple[dict, bool, str]:
    """Walk `name` down, then up, while the score improves; keep `reserve` runs."""
    best, short = dict(hp), False
    if run(best) is None:
      return best, False, "budget reached"
    for direction in (0, 1):  # 0: lower values, 1: higher values
      while True:
        nxt = neighbours(name, best[name])[direction]
        if nxt is None:  # the ladder ends (an interval of 1, a weight decay of 0)
          break
        cand = {**best, name: nxt}
        if _key(cand) not in trials and len(trials) >= budget - reserve:
          short = True
          break
        t, b = run(cand).score, trials[_key(best)].score
        # a failing rate keeps the walk going down: a smaller rate may train
        if t < b or (direction == 0 and name == "learning_rate" and math.isinf(b)):
          best = cand
        else:
          break
    b = trials[_key(best)].score
    if not math.isfinite(b):
      return best, False, f"{name}: every value tried failed"
    sides = [trials.get(_key({**best, name: v})) for v in neighbours(name, best[name])]
    if all(s is not None and s.score > b for s in sides):
      return best, True, ""
    return best, False, (f"{name}: the budget ran out before the optimum was interior" if short
                         else f"{name}: the optimum is at the end of its range")

  hp = dict(start)
  others = [k for k in knobs if k != "learning_rate"]
  found: dict[str, tuple[bool, str]] = {}  # knob -> (interior, note)
  if "learning_rate" in knobs:
    hp, *found["learning_rate"] = line_search(hp, "learning_rate", reserve=2 * len(others))
  for name in others:
    if hp[name] is None:  # a rate tied to the learning rate: start from the tuned one
      hp[name] = hp["learning_rate"]
    hp, *found[name] = line_search(hp, name, reserve=2 if "learning_rate" in knobs else 0)
  if "learning_rate" in knobs and others:  # the re-check at the final values supersedes
    hp, *found["learning_rate"] = line_search(hp, "learning_rate", reserve=0)
  interior = all(ok for ok, _ in found.values())
  note = "; ".join(n for _, n in found.values() if n)
  return {"hparams": hp, "knobs": list(knobs), "interior": bool(interior) if knobs else None,
          "note": note,
          "runs": len(trials), "trials": [t.to_json() for t in trials.values()]}


def format_hparams(hp: dict, names: Optional[Sequence[str]] = None, sep: str = ", ") -> str:
  """``learning_rate=0.00632, b2=0.99`` (floats to 3 digits), for logs and reports;
  only `names` where given."""
  return sep.join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v!r}"
                  for k, v in hp.items() if names is None or k in names)


# ------------------------------------------------------------ tuned tables
def write_tuned(path, task: str, task_options: dict, steps: int, schedule: str, warmup: float,
                budget: int, command: str, tuned: dict[str, dict]) -> Path:
  """A tuned table: per optimizer, its hyperparameters and how they were found."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  body = {"task": task, "task_options": task_options, "steps": steps, "schedule": schedule,
          "warmup": warmup, "budget": budget, "command": command,
          "optimizers": {n: {"hparams": t["hparams"], "knobs": t["knobs"],
                             "interior": t["interior"], "note": t["note"], "runs": t["runs"]}
                         for n, t in tuned.items()}}
  path.write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
  return path


def read_tuned(path, task: str, task_options: dict) -> dict:
  """Read a tuned table, refusing one made for another task or other task options."""
  try:
    body = json.loads(Path(path).read_text())
  except FileNotFoundError:
    raise ValueError(f"tuned file {str(path)!r} does not exist") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"tuned file {str(path)!r} is not JSON: {e}") from None
  if not isinstance(body, dict) or not isinstance(body.get("optimizers"), dict):
    raise ValueError(f"tuned file {str(path)!r} has no 'optimizers' table")
  if body.get("task") != task:
    raise ValueError(f"tuned file {str(path)!r} is for task {body.get('task')!r}, not {task!r}")
  if body.get("task_options", {}) != task_options:
    raise ValueError(f"tuned file {str(path)!r} was tuned with task options "
                     f"{body.get('task_options')}, this run uses {task_options}")
  return body
