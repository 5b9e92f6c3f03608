"""Bench output: terminal table, results.json, a markdown report and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from optlab.bench.runner import smooth
from optlab.bench.tuning import format_hparams

__all__ = ["table", "markdown", "write_json", "plot", "write_all", "fmt", "speedup_text", "lr_text"]

_COLUMNS = ("optimizer", "lr", "score", "final loss", "val", "speedup", "steps→target",
            "ms/step", "compile s", "state B/param")


def fmt(x, spec: str = ".4f") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-" if x is None else ("diverged" if x == math.inf else "nan")
  return format(x, spec)


def speedup_text(s) -> str:
  """``1.93x (1.80-2.05)``; a bound shows as ``>2.00x`` / ``<0.25x``."""
  if not s:
    return "-"
  mark = {">": ">", "<": "<"}.get(s["bound"] or "", "")
  if s["bound"] == "mixed":
    mark = "~"
  spread = f" ({s['min']:.2f}-{s['max']:.2f})" if len(s["per_seed"]) > 1 else ""
  return f"{mark}{s['median']:.2f}x{spread}"


def lr_text(r) -> str:
  if r["learning_rate"] is None:
    return "-"
  tuning = r.get("tuning") or {}
  flag = "*" if tuning.get("interior") is False else ""
  return fmt(r["learning_rate"], ".3g") + flag


def _rows(results: dict) -> list[tuple[str, ...]]:
  rows = []
  for r in results["optimizers"]:
    val = r["metrics"].get("val_acc", r["metrics"].get("val_loss"))
    name = r["name"] + ("" if r["status"] == "ok" else f" ({r['status']})")
    rows.append((name, lr_text(r), fmt(r["score"]), fmt(r["final_loss"]), fmt(val),
                 speedup_text(r.get("speedup")), fmt(r["steps_to_target"], "d"),
                 fmt(r["median_step_ms"], ".2f"), fmt(r["compile_s"], ".2f"),
                 fmt(r["state_bytes_per_param"], ".1f")))
  return rows


def _val_name(results: dict) -> str:
  names = {k for r in results["optimizers"] for k in r["metrics"]}
  return "val acc" if "val_acc" in names else "val loss"


def _protocol(results: dict) -> str:
  tuned = sorted({k for ks in results["tune"].values() for k in ks})
  table = [r["name"] for r in results["optimizers"]
           if (r.get("tuning") or {}).get("from") == "tuned table"]
  hows = [f"tuned {', '.join(tuned)} with {results['budget']} runs each"] if tuned else []
  if table:
    hows.append("hyperparameters from a tuned table" + (
        f" for {', '.join(table)}" if len(table) < len(results["optimizers"]) else ""))
  how = "; ".join(hows) or "untuned (starting values)"
  return (f"{results['steps']} steps, {results['schedule']} schedule "
          f"(warm-up {results['warmup']:g}), {how}, {results['seeds']} seed(s); "
          f"score: {results['score_name']}")


def _header(results: dict) -> str:
  return (f"{results['task']}: {results['description']}\n{_protocol(results)}; speedup vs "
          f"{results['baseline']}; target loss {fmt(results['target'])} "
          f"({results['target_from']}); device {results['device']}")


def _legend(results: dict) -> str:
  return ("lr* : the best learning rate is at the edge of what the budget allowed (not "
          "interior). speedup: baseline steps to the same score / steps, median over seeds "
          "(range); > or < : beyond the baseline's longest or shortest run. (failed): ends at "
          "or above its first loss or at chance level; (diverged): not finite.")


def table(results: dict) -> str:
  """A fixed-width table for the terminal."""
  cols = list(_COLUMNS)
  cols[4] = _val_name(results)
  rows = [tuple(cols)] + _rows(results)
  widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
  lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return _header(results) + "\n" + "\n".join(lines) + "\n" + _legend(results)


def _trials(r: dict) -> str:
  t = r.get("tuning") or {}
  if not t.get("trials"):
    return ""
  pts = [f"{format_hparams(x['hparams'], t['knobs'])} → "
         + (fmt(x["score"]) if x["status"] == "ok" else x["status"]) for x in t["trials"]]
  flag = "interior" if t["interior"] else f"NOT interior: {t['note']}"
  return f"- `{r['name']}` ({t['runs']} runs, {flag}): " + "; ".join(pts)


def markdown(results: dict, plots: dict[str, str] | None = None) -> str:
  """The markdown report; `plots` maps a caption to a PNG path relative to it."""
  cols = list(_COLUMNS)
  cols[4] = _val_name(results)
  head, sub = _header(results).split("\n", 1)
  lines = [f"# Bench: {results['task']}", "", head.split(": ", 1)[1] + ".", "", sub + ".", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(r) + " |" for r in _rows(results)]
  lines += ["", _legend(results), "",
            "Score: the comparison's measure at the end of the run, mean over seeds. Final "
            "loss: training loss at the end"
            + (f" (running mean over {results['smoothing_window']} steps)"
               if results["smoothing_window"] > 1 else "")
            + ". Steps to target: median over seeds. State bytes per parameter: optimizer "
            "state from `jax.eval_shape` of `init`."]
  if results.get("note"):
    lines += ["", f"Note: {results['note']}"]
  curve = results.get("baseline_curve")
  if curve:
    pts = ", ".join(f"{n} → {fmt(s)}" for n, s in zip(curve["steps"], curve["raw_score"]))
    lines += ["", f"Baseline `{results['baseline']}` score by run length (mean over seeds, "
              f"each run with its own full schedule): {pts}."]
  tuned = [x for x in (_trials(r) for r in results["optimizers"]) if x]
  if tuned:
    lines += ["", "## Tuning (first seed)", ""] + tuned
  for caption, path in (plots or {}).items():
    lines += ["", f"![{caption}]({path})"]
  return "\n".join(lines) + "\n"


def _clean(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, np.generic):
    return _clean(x.item())
  return x


def write_json(results: dict, path: Path) -> None:
  """results.json (non-finite numbers become null, so it is strict JSON)."""
  path.write_text(json.dumps(_clean(results), indent=1))


def plot(results: dict, out: Path) -> dict[str, Path]:
  """Loss vs steps and loss vs wall time: mean over seeds with a min-max band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  window = results["smoothing_window"]
  paths = {}
  for axis, xlabel in (("steps", "step"), ("time", "wall time (s, compilation excluded)")):
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for r in results["optimizers"]:
      curves = np.stack([smooth(np.asarray(x["losses"], float), window) for x in r["runs"]])
      if axis == "steps":
        xs = np.arange(1, curves.shape[1] + 1)
      else:
        t = [np.cumsum(np.pad(x["step_times"], (0, curves.shape[1] - len(x["step_times"])),
                              constant_values=np.nan)) for x in r["runs"]]
        xs = np.nanmean(np.stack(t), axis=0)
      with np.errstate(all="ignore"):
        mean = np.nanmean(curves, axis=0) if np.isfinite(curves).any() else curves[0]
      lr = f" (lr {r['learning_rate']:.2g})" if r["learning_rate"] is not None else ""
      line, = ax.plot(xs, mean, label=r["name"] + lr, lw=1.4)
      if len(curves) > 1:
        ax.fill_between(xs, np.nanmin(curves, 0), np.nanmax(curves, 0),
                        color=line.get_color(), alpha=0.2, lw=0)
    if results["target"] is not None and math.isfinite(results["target"]):
      ax.axhline(results["target"], color="grey", ls=":", lw=1, label="target")
    finite = [v for r in results["optimizers"] for x in r["runs"]
              for v in np.asarray(x["losses"], float) if np.isfinite(v) and v > 0]
    if results["log_loss"] or (finite and max(finite) / min(finite) > 30.0):
      ax.set_yscale("log")  # the loss spans decades
    else:  # clip the first steps' large losses so the end of the race is visible
      finals = [r["final_loss"] for r in results["optimizers"] if math.isfinite(r["final_loss"])]
      lows = [np.nanmin(smooth(np.asarray(x["losses"], float), window))
              for r in results["optimizers"] for x in r["runs"]
              if np.isfinite(np.asarray(x["losses"], float)).any()]
      if finals:
        low = min([min(finals), *[v for v in lows if np.isfinite(v)]])
        ax.set_ylim(low - 0.05 * abs(low), max(finals) + 1.5 * (max(finals) - low) + 0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss" + (f" (mean of {window} steps)" if window > 1 else ""))
    ax.set_title(f"{results['task']}: {results['steps']} steps, {results['seeds']} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{results['task']}_loss_vs_{axis}.png"
    fig.savefig(path)
    plt.close(fig)
    paths[f"loss vs {axis}"] = path
  return paths


def write_all(results: dict, out: str | Path) -> dict[str, Path]:
  """Write results.json, report.md and the PNGs into `out`; returns their paths."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  pngs = plot(results, out)
  paths = {"json": out / "results.json", "markdown": out / "report.md", **pngs}
  write_json(results, paths["json"])
  paths["markdown"].write_text(markdown(results, {k: p.name for k, p in pngs.items()}))
  return paths
