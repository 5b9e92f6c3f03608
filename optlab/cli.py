"""The `optlab` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="optlab", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser("demo", help="compare recipes on the built-in digits task")
  demo.add_argument("--optimizers", default=None, help="comma-separated recipe names")
  demo.add_argument("--steps", type=int, default=300)
  demo.add_argument("--out", default="bench_out")
  table = sub.add_parser("catalog", help="print the recipe catalogue as markdown")
  table.add_argument("--write", metavar="README", help="refresh the table in this file")
  args = parser.parse_args(argv)

  if args.command == "catalog":
    from optlab.docs_table import catalog_table, with_table
    if args.write:
      path = Path(args.write)
      path.write_text(with_table(path.read_text()))
    else:
      print(catalog_table())
    return 0

  if args.steps < 2:
    parser.error("--steps must be at least 2")
  from optlab import catalog, demo as demo_mod
  known = {r.name for r in catalog()}
  if args.optimizers:
    names = args.optimizers.split(",")
    unknown = sorted(set(names) - known)
    if unknown:
      parser.error(f"unknown optimizers {unknown}; see `optlab catalog`")
  else:  # the preset, restricted to what this version ships
    names = [n for n in demo_mod.DEFAULT if n in known]
  demo_mod.main(names, args.steps, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
