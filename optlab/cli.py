"""The `optlab` command line: `bench`, `demo` and `catalog`.

Bad input (an unknown optimizer or task, a bad spec file, a non-positive
number of steps) gets a one-line message and a non-zero exit status, never a
traceback; `--traceback` shows one for unexpected errors.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
  return value


def _finite(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if value != value or value in (float("inf"), float("-inf")):
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
  return value


def _task_option(text: str) -> tuple[str, object]:
  key, sep, raw = text.partition("=")
  if not sep or not key.isidentifier():
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  try:
    return key, ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return key, raw


def _names(text: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  if not names:
    raise argparse.ArgumentTypeError("expected comma-separated names")
  return names


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="optlab", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)

  bench = sub.add_parser("bench", help="compare optimizers on a built-in task",
                         description="Train optimizers on a built-in task and write a table, "
                         "results.json, report.md and loss plots.")
  bench.add_argument("--task", help="a built-in task (see --list-tasks)")
  bench.add_argument("--optimizers", type=_names, help="comma-separated catalog recipes "
                     "and/or names defined in --spec")
  bench.add_argument("--spec", metavar="FILE", help="Python file defining OPTIMIZERS "
                     "(see examples/bench_spec.py)")
  bench.add_argument("--steps", type=_positive, default=300)
  bench.add_argument("--seeds", type=_positive, default=1)
  bench.add_argument("--lr-sweep", type=_positive, default=1, metavar="N",
                     help="try N learning rates over a decade around each default; keep the best")
  bench.add_argument("--target", type=_finite, help="target loss (default: AdamW's final loss)")
  bench.add_argument("--task-arg", type=_task_option, action="append", default=[],
                     metavar="KEY=VALUE", help="task option, e.g. d_model=256 (repeatable)")
  bench.add_argument("--out", default="bench_out", help="output directory")
  bench.add_argument("--no-progress", action="store_true", help="no progress bars")
  bench.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
  bench.add_argument("--traceback", action="store_true", help="show tracebacks of errors")

  demo = sub.add_parser("demo", help="the preset comparison (AdamW, Lion, SOAP, Sophia-H "
                        "on lm-stdlib and digits-mlp)")
  demo.add_argument("--optimizers", type=_names, help="comma-separated recipe names")
  demo.add_argument("--tasks", type=_names, help="comma-separated task names")
  demo.add_argument("--steps", type=_positive, help="steps for every task (default: preset)")
  demo.add_argument("--out", default="bench_out/demo")
  demo.add_argument("--no-progress", action="store_true")
  demo.add_argument("--traceback", action="store_true")

  table = sub.add_parser("catalog", help="print the recipe catalogue as markdown")
  table.add_argument("--write", metavar="README", help="refresh the table in this file")
  table.add_argument("--docs", metavar="DIR", help="write one page per family into DIR")
  return parser


def _fail(command: str, message: str, code: int = 2) -> int:
  print(f"optlab {command}: error: {message}", file=sys.stderr)
  return code


def _bench(args) -> int:
  from optlab import bench

  if args.list_tasks:
    for name, entry in sorted(bench.TASKS.items()):
      print(f"{name:<20}{entry.summary}")
    return 0
  if not args.task:
    return _fail("bench", f"--task is required; tasks: {', '.join(sorted(bench.TASKS))}")
  task = bench.make_task(args.task, **dict(args.task_arg))
  specs = bench.resolve_optimizers(args.optimizers, args.spec)
  print(f"optlab bench: {task.description}")
  results = bench.run_bench(task, specs, args.steps, args.seeds, args.lr_sweep, args.target,
                            progress=not args.no_progress)
  paths = bench.write_all(results, args.out)
  print(bench.table(results))
  print(f"wrote {', '.join(str(p) for p in paths.values())}")
  return 0


def _catalog(args) -> int:
  from optlab.docs_table import catalog_table, with_table, write_docs
  if args.write:
    path = Path(args.write)
    path.write_text(with_table(path.read_text()))
  if args.docs:
    for path in write_docs(args.docs):
      print(f"wrote {path}")
  if not (args.write or args.docs):
    print(catalog_table())
  return 0


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "catalog":
    return _catalog(args)
  from optlab.bench import BenchError
  run = _bench if args.command == "bench" else _demo
  try:
    return run(args)
  except (BenchError, ValueError, FileNotFoundError) as e:
    if args.traceback:
      raise
    return _fail(args.command, str(e).strip("'\""))
  except KeyboardInterrupt:
    return _fail(args.command, "interrupted", 130)
  except Exception as e:  # an optimizer or task that fails at run time
    if args.traceback:
      raise
    first = (str(e).strip().splitlines() or [""])[0]
    return _fail(args.command, f"{type(e).__name__}: {first} (run with --traceback for details)", 1)


def _demo(args) -> int:
  from optlab import demo
  demo.main(names=args.optimizers, tasks=args.tasks, steps=args.steps, out=args.out,
            progress=not args.no_progress)
  return 0


if __name__ == "__main__":
  sys.exit(main())
