"""Compile time of every catalogue recipe against AdamW's, on a transformer-like tree.

One training step (``tx.update`` and ``optax.apply_updates``) of each recipe of
`optlab.catalog()`, built at its documented defaults and the bench's default
learning rate (`optlab.bench.defaults.default_kwargs`), is lowered and compiled
with abstract shapes (nothing is allocated) on the 146-leaf tree of
`second_order.transformer_tree` (24 layers of qkv / o / f1 / f2 matrices and two
norms at d = 64, an embedding and a final norm). For each recipe: process and
wall seconds, the ratio to AdamW's (AdamW is compiled at the start, middle and
end of the run; the ratio uses the median), and the distinct fused computations
of the compiled step (`second_order.distinct_fusions`, close to the kernels
XLA:CPU compiles). Recipes whose update needs extra args (a loss function, a
Hessian-vector product) are listed, not compiled.

    python benchmarks/compile_time.py                    # every recipe, ~4 minutes here
    python benchmarks/compile_time.py --only mfac,muon   # some

Writes ``results/compile_time.{json,md}`` (``--out`` for another stem).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402

import optlab  # noqa: E402
from optlab.bench.defaults import default_kwargs  # noqa: E402
from second_order import compile_step, cpu_name, transformer_tree  # noqa: E402


def run(names: list, layers: int) -> dict:
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        transformer_tree(layers, 64))
  recipes = {r.name: r for r in optlab.catalog()}
  build = lambda name: recipes[name].build(**default_kwargs(recipes[name]))
  adamw, rows, skipped = [], {}, {}
  adamw.append(compile_step(build("adamw"), params))
  for i, name in enumerate(names):
    if i == len(names) // 2:
      adamw.append(compile_step(build("adamw"), params))
    r = recipes[name]
    if r.needs_extra_args:
      skipped[name] = "needs extra args: " + ", ".join(r.needs_extra_args)
      continue
    rows[name] = {"family": r.family, **compile_step(build(name), params)}
    print(f"{name:20s} process {rows[name]['process_s']:6.2f} s, wall {rows[name]['wall_s']:6.2f} s,"
          f" kernels {rows[name]['kernels']}", flush=True)
  adamw.append(compile_step(build("adamw"), params))
  base = {k: statistics.median(a[k] for a in adamw) for k in ("process_s", "wall_s")}
  for row in rows.values():
    row["ratio_process"] = row["process_s"] / base["process_s"]
    row["ratio_wall"] = row["wall_s"] / base["wall_s"]
  return {"date": datetime.date.today().isoformat(),
          "machine": f"{cpu_name()}, jax {jax.__version__} on {jax.devices()[0].platform}",
          "leaves": len(jax.tree.leaves(params)),
          "params": int(sum(x.size for x in jax.tree.leaves(params))),
          "adamw_runs": adamw, "adamw_median": base, "recipes": rows, "skipped": skipped}


def markdown(res: dict) -> str:
  b = res["adamw_median"]
  L = ["# Compile time of each recipe against AdamW", "",
       f"{res['machine']}; {res['date']}. One step (update + apply_updates) lowered and "
       f"compiled with abstract shapes on a transformer-like tree of {res['leaves']} leaves "
       f"({res['params']:,} float32 params, d = 64), each recipe at its documented defaults. "
       f"AdamW: {b['process_s']:.2f} s process, {b['wall_s']:.2f} s wall (median of "
       f"{len(res['adamw_runs'])} compiles spread over the run). Kernels: distinct fused "
       "computations of the compiled step (XLA:CPU compiles one kernel per distinct one), of "
       "all its fusions. Sorted by the process-time ratio.", "",
       "| recipe | family | process s | wall s | ratio (process) | ratio (wall) | kernels (of fusions) |"
       + (" ratio (process), kernels at " + res["compare"]["label"] + " |" if "compare" in res else ""),
       "|---|---|---|---|---|---|---|" + ("---|" if "compare" in res else "")]
  for name, r in sorted(res["recipes"].items(), key=lambda kv: -kv[1]["ratio_process"]):
    L.append(f"| {name} | {r['family']} | {r['process_s']:.2f} | {r['wall_s']:.2f} | "
             f"{r['ratio_process']:.2f} | {r['ratio_wall']:.2f} | {r['kernels']} ({r['fusions']}) |")
    if "compare" in res:
      o = res["compare"]["recipes"].get(name)
      L[-1] += f" {o['ratio_process']:.2f}, {o['kernels']} |" if o else " - |"
  if "compare" in res:
    L += ["", f"Last column: the same script run on {res['compare']['label']} "
          f"({res['compare']['date']}), its ratios to its own AdamW compile in its own run."]
  if res["skipped"]:
    L += ["", "Not compiled: " + "; ".join(f"`{k}` ({v})" for k, v in sorted(res["skipped"].items()))
          + "."]
  return "\n".join(L) + "\n"


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--only", default="", help="comma-separated recipes (default: the catalogue)")
  ap.add_argument("--layers", type=int, default=24, help="layers of the tree (24: 146 leaves)")
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_time"),
                  help="output stem: writes STEM.json and STEM.md")
  ap.add_argument("--compare", default=None, help="a JSON of this script from another "
                  "version of optlab: its ratios and kernels become a last column")
  ap.add_argument("--compare-label", default="the other version",
                  help="what --compare ran on (e.g. a commit)")
  ap.add_argument("--render", action="store_true",
                  help="only rewrite STEM.md from STEM.json (and store --compare in it)")
  args = ap.parse_args()
  out = Path(args.out)
  if args.render:
    res = json.loads(out.with_suffix(".json").read_text())
  else:
    names = [r.name for r in optlab.catalog()]
    if args.only:
      unknown = sorted(set(args.only.split(",")) - set(names))
      if unknown:
        ap.error(f"unknown recipes {unknown}")
      names = [n for n in names if n in args.only.split(",")]
    res = run(names, args.layers)
  if args.compare:
    other = json.loads(Path(args.compare).read_text())
    res["compare"] = {"label": args.compare_label, "date": other["date"],
                      "recipes": {k: {"ratio_process": v["ratio_process"], "kernels": v["kernels"]}
                                  for k, v in other["recipes"].items()}}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
  out.with_suffix(".md").write_text(markdown(res))
  print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
  main()
