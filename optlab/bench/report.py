"""Bench output: terminal table, results.json, a markdown report and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from optlab.bench.runner import smooth

__all__ = ["table", "markdown", "write_json", "plot", "write_all"]

_COLUMNS = ("optimizer", "lr", "final loss", "val", "steps→target", "s→target",
            "ms/step", "compile s", "state B/param")


def _fmt(x, spec: str = ".4f") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-" if x is None else ("diverged" if x == math.inf else "nan")
  return format(x, spec)


def _rows(results: dict) -> list[tuple[str, ...]]:
  rows = []
  for r in results["optimizers"]:
    val = r["metrics"].get("val_acc", r["metrics"].get("val_loss"))
    rows.append((r["name"], _fmt(r["learning_rate"], ".3g"), _fmt(r["final_loss"]),
                 _fmt(val), _fmt(r["steps_to_target"], "d"),
                 _fmt(r["seconds_to_target"], ".2f"), _fmt(r["median_step_ms"], ".2f"),
                 _fmt(r["compile_s"], ".2f"), _fmt(r["state_bytes_per_param"], ".1f")))
  return rows


def _val_name(results: dict) -> str:
  names = {k for r in results["optimizers"] for k in r["metrics"]}
  return "val acc" if "val_acc" in names else "val loss"


def _header(results: dict) -> str:
  sweep = f", lr sweep {results['lr_sweep']}" if results["lr_sweep"] > 1 else ""
  return (f"{results['task']}: {results['description']}\n"
          f"{results['steps']} steps, {results['seeds']} seed(s){sweep}; target loss "
          f"{_fmt(results['target'])} ({results['target_from']}); device {results['device']}")


def table(results: dict) -> str:
  """A fixed-width table for the terminal."""
  cols = list(_COLUMNS)
  cols[3] = _val_name(results)
  rows = [tuple(cols)] + _rows(results)
  widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
  lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return _header(results) + "\n" + "\n".join(lines)


def markdown(results: dict, plots: dict[str, str] | None = None) -> str:
  """The markdown report; `plots` maps a caption to a PNG path relative to it."""
  cols = list(_COLUMNS)
  cols[3] = _val_name(results)
  head, sub = _header(results).split("\n", 1)
  lines = [f"# Bench: {results['task']}", "", head.split(": ", 1)[1] + ".", "", sub + ".", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(r) + " |" for r in _rows(results)]
  lines += ["", "Final loss: training loss at the end of the run"
            + (f" (running mean over {results['smoothing_window']} steps)"
               if results["smoothing_window"] > 1 else "")
            + ", mean over seeds. Steps and seconds to target: median over seeds, "
            "seconds summed over step times (compilation excluded). State bytes per "
            "parameter: optimizer state from `jax.eval_shape` of `init`."]
  sweeps = [r for r in results["optimizers"] if r["sweep"]]
  if sweeps:
    lines += ["", "## Learning-rate sweep (first seed)", ""]
    for r in sweeps:
      pts = ", ".join(f"{s['learning_rate']:.3g} → {_fmt(s['final_loss'])}" for s in r["sweep"])
      lines.append(f"- `{r['name']}`: {pts}")
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
    if results["log_loss"]:
      ax.set_yscale("log")
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
