"""The `optlab` command line: `bench`, `tune`, `demo` and `catalog`.

Bad input (an unknown optimizer or task, a bad spec file, a non-positive
number of steps) gets a one-line message and a non-zero exit status, never a
traceback; `--traceback` shows one for unexpected errors.
"""

from __future__ import annotations

import argparse
import ast
import shlex
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


def _fraction(text: str) -> float:
  value = _finite(text)
  if not 0.0 <= value < 1.0:
    raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
  return value


def _budgets(text: str) -> tuple[float, ...]:
  if text.strip() == "none":
    return ()
  values = tuple(_finite(v) for v in text.split(",") if v.strip())
  if not values or any(v <= 0 for v in values):
    raise argparse.ArgumentTypeError(f"expected positive multiples like 0.25,0.5,2, or none; "
                                     f"got {text!r}")
  return values


def _knobs(text: str) -> tuple[str, ...]:
  from optlab.bench.tuning import parse_knobs
  try:
    return parse_knobs(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _add_run_options(p: argparse.ArgumentParser, *, tuning_default: str) -> None:
  """The options `bench` and `tune` share: task, optimizers, protocol."""
  p.add_argument("--task", help="a built-in task (see `optlab bench --list-tasks`)")
  p.add_argument("--preset", help="a task preset, e.g. lm-stdlib's `demo` or `large` "
                 "(see --list-tasks); --task-arg overrides its options")
  p.add_argument("--task-arg", type=_task_option, action="append", default=[],
                 metavar="KEY=VALUE", help="a task option, e.g. d_model=256 (repeatable)")
  p.add_argument("--optimizers", type=_names, help="comma-separated catalogue recipes "
                 "and/or names defined in --spec (`optlab catalog --list` lists the recipes)")
  p.add_argument("--spec", metavar="FILE", help="a Python file defining OPTIMIZERS "
                 "(see examples/bench_spec.py)")
  p.add_argument("--steps", type=_positive, default=300, help="steps per run (default: 300)")
  p.add_argument("--tune", type=_knobs, default=_knobs(tuning_default), metavar="NAMES",
                 help="hyperparameters to tune (factory argument names; lr and wd are "
                 "short for learning_rate and weight_decay), e.g. lr,weight_decay,b2; `none` "
                 f"runs the defaults (default: {tuning_default})")
  p.add_argument("--budget", type=_positive, default=8, metavar="N",
                 help="tuning runs per optimizer, the same for all (default: 8)")
  p.add_argument("--schedule", choices=("constant", "cosine", "wsd"), default="cosine",
                 help="the update-factor schedule of every run (default: cosine)")
  p.add_argument("--warmup", type=_fraction, default=0.05,
                 help="warm-up fraction of the steps, the same for all (default: 0.05)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("--traceback", action="store_true", help="show tracebacks of errors")


def _parser() -> argparse.ArgumentParser:
  from optlab import __version__
  parser = argparse.ArgumentParser(prog="optlab", description=__doc__.split("\n\n")[0])
  parser.add_argument("--version", action="version", version=f"optlab {__version__}")
  sub = parser.add_subparsers(dest="command", required=True)

  bench = sub.add_parser("bench", help="compare optimizers on a built-in task",
                         description="Tune and train optimizers on a built-in task with the same "
                         "budget each, then write a table, results.json, report.md and loss "
                         "plots. Speedups are read off the baseline run at several lengths.")
  _add_run_options(bench, tuning_default="lr")
  bench.add_argument("--tuned", metavar="FILE", help="a tuned table from `optlab tune`: its "
                     "optimizers run at its hyperparameters, untuned")
  bench.add_argument("--seeds", type=_positive, default=1,
                     help="seeds per optimizer at its tuned values (default: 1)")
  bench.add_argument("--baseline", help="the optimizer speedups are relative to "
                     "(default: adamw if listed, else the first)")
  bench.add_argument("--budgets", type=_budgets, default=None, metavar="X,Y",
                     help="run-length multiples at which the baseline also runs, for the "
                     "speedups; `none` skips them (default: 0.25,0.5,2 when comparing two "
                     "or more optimizers)")
  bench.add_argument("--target", type=_finite, help="target training loss for steps-to-"
                     "target (default: the baseline's final loss, worst seed)")
  bench.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
  bench.add_argument("--list-tasks", action="store_true",
                     help="list the tasks with their options and presets, and exit")

  tune = sub.add_parser("tune", help="tune optimizers on a task and write a tuned table",
                        description="Tune each optimizer with the same budget (as `optlab "
                        "bench` does) and write its hyperparameters to a JSON table that "
                        "`optlab bench --tuned FILE` and `make demo` reuse.")
  _add_run_options(tune, tuning_default="lr")
  tune.add_argument("--out", required=True, metavar="FILE.json", help="the tuned table to write")

  demo = sub.add_parser("demo", help="the preset comparison (AdamW, Lion, SOAP, Sophia-H, "
                        "Muon on lm-stdlib and digits-mlp) from the shipped tuned tables")
  demo.add_argument("--optimizers", type=_names, help="comma-separated recipe names "
                    "(default: the preset's)")
  demo.add_argument("--tasks", type=_names, help="comma-separated task names (default: "
                    "lm-stdlib,digits-mlp)")
  demo.add_argument("--seeds", type=_positive, default=2, help="seeds per optimizer (default: 2)")
  demo.add_argument("--out", default="bench_out/demo", help="output directory "
                    "(default: bench_out/demo)")
  demo.add_argument("--no-progress", action="store_true", help="no progress bars")
  demo.add_argument("--traceback", action="store_true", help="show tracebacks of errors")

  table = sub.add_parser("catalog", help="the recipe catalogue: list it, or write the "
                         "README table and the docs pages")
  table.add_argument("--list", action="store_true", help="one recipe per line: name, family, "
                     "extra args")
  table.add_argument("--write", metavar="README", help="refresh the table between the "
                     "catalog markers of this file")
  table.add_argument("--docs", metavar="DIR", help="write one page per family into DIR")
  return parser


def _fail(command: str, message: str, code: int = 2) -> int:
  print(f"optlab {command}: error: {message}", file=sys.stderr)
  return code


def _list_tasks() -> int:
  from optlab import bench
  for name, entry in sorted(bench.TASKS.items()):
    print(f"{name}: {entry.summary}")
    opts = ", ".join(f"{k}={v!r}" for k, v in bench.task_options(name).items())
    print(f"    options: {opts}")
    for preset, values in sorted(bench.PRESETS.get(name, {}).items()):
      print(f"    --preset {preset}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
  return 0


def _checked_out_dir(path: str) -> Path:
  """Make `path` (a directory) now, so a bad --out fails before any training."""
  out = Path(path)
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".optlab_write_test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"--out {path!r} is not a writable directory ({e.strerror})") from None
  return out


def _setup(args):
  """The task and optimizers of a `bench` or `tune` command."""
  from optlab import bench
  if not args.task:
    raise ValueError(f"--task is required; tasks: {', '.join(sorted(bench.TASKS))}")
  task = bench.make_task(args.task, args.preset, **dict(args.task_arg))
  specs = bench.resolve_optimizers(args.optimizers, args.spec)
  print(f"optlab {args.command}: {task.description}")
  return task, specs


def _bench(args) -> int:
  from optlab import bench
  if args.list_tasks:
    return _list_tasks()
  task, specs = _setup(args)
  out = _checked_out_dir(args.out)
  tuned = None
  if args.tuned:
    table = bench.read_tuned(args.tuned, task.name, task.options)
    tuned = table["optimizers"]
    if table.get("steps") != args.steps or table.get("schedule") != args.schedule:
      print(f"note: {args.tuned} was tuned for {table.get('steps')} steps with a "
            f"{table.get('schedule')} schedule; this run has {args.steps}, {args.schedule}")
  results = bench.run_bench(task, specs, args.steps, seeds=args.seeds, tune=args.tune,
                            budget=args.budget, tuned=tuned, schedule=args.schedule,
                            warmup=args.warmup, baseline=args.baseline,
                            budgets=(args.budgets if args.budgets is not None else
                                     (0.25, 0.5, 2.0) if len(specs) > 1 else ()),
                            target=args.target, progress=not args.no_progress)
  paths = bench.write_all(results, out)
  print(bench.table(results))
  print(f"wrote {', '.join(str(p) for p in paths.values())}")
  return 0


def _tune(args) -> int:
  from optlab import bench
  task, specs = _setup(args)
  if not args.tune:
    raise ValueError("--tune none: nothing to tune")
  _checked_out_dir(str(Path(args.out).parent))
  results = bench.run_bench(task, specs, args.steps, tune=args.tune, budget=args.budget,
                            schedule=args.schedule, warmup=args.warmup,
                            progress=not args.no_progress)
  tuned = {r["name"]: {**r["tuning"], "hparams": r["hparams"]} for r in results["optimizers"]
           if r["tuning"] is not None}
  command = "optlab " + " ".join(shlex.quote(a) for a in args.argv)
  path = bench.write_tuned(args.out, task.name, task.options, args.steps, args.schedule,
                           args.warmup, args.budget, command, tuned)
  print(bench.table(results))
  print(f"wrote {path}")
  return 0


def _catalog(args) -> int:
  from optlab.docs_table import BEGIN, END, catalog_table, with_table, write_docs
  if args.list:
    from optlab.catalog import catalog
    for r in catalog():
      extra = ", ".join(r.needs_extra_args)
      print(f"{r.name:<24}{r.family:<18}{extra}")
    return 0
  if args.write:
    path = Path(args.write)
    if not path.is_file():
      raise ValueError(f"--write {args.write!r}: no such file")
    text = path.read_text()
    if BEGIN not in text or END not in text:
      raise ValueError(f"--write {args.write!r}: the file has no {BEGIN} ... {END} markers")
    path.write_text(with_table(text))
  if args.docs:
    for path in write_docs(args.docs):
      print(f"wrote {path}")
  if not (args.write or args.docs):
    print(catalog_table())
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  args.argv = argv
  from optlab.bench import BenchError
  run = {"bench": _bench, "tune": _tune, "demo": _demo, "catalog": _catalog}[args.command]
  try:
    return run(args)
  except (BenchError, ValueError, FileNotFoundError) as e:
    if getattr(args, "traceback", False):
      raise
    return _fail(args.command, str(e))
  except KeyboardInterrupt:
    return _fail(args.command, "interrupted", 130)
  except Exception as e:  # an optimizer or task that fails at run time
    if getattr(args, "traceback", False):
      raise
    first = (str(e).strip().splitlines() or [""])[0]
    return _fail(args.command, f"{type(e).__name__}: {first} (run with --traceback for details)", 1)


def _demo(args) -> int:
  from optlab import demo
  demo.main(names=args.optimizers, tasks=args.tasks, seeds=args.seeds, out=args.out,
            progress=not args.no_progress)
  return 0


if __name__ == "__main__":
  sys.exit(main())
