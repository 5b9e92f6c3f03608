"""`optlab bench`: compare optimizers on built-in tasks, fairly.

From the shell::

    optlab bench --task lm-stdlib --optimizers adamw,lion --steps 2000 --tune lr --seeds 2

Python use::

    from optlab import bench
    task = bench.make_task("digits-mlp")
    results = bench.run_bench(task, bench.resolve_optimizers(["adamw", "lion"]), steps=300,
                              tune=["learning_rate"], schedule="cosine", budgets=(0.5, 2))
    bench.write_all(results, "bench_out")
"""

from __future__ import annotations

from optlab.bench.report import markdown, plot, table, write_all, write_json
from optlab.bench.runner import (SCHEDULES, BenchError, OptimizerSpec, StepCache, assess,
                                 load_spec_file, merge_results, resolve_optimizers, run_bench,
                                 schedule_factors, state_bytes_per_param, train)
from optlab.bench.speedup import baseline_curve, speedup, steps_to_match
from optlab.bench.tasks import (PRESETS, TASKS, Task, make_task, register_task, stdlib_corpus,
                                task_options)
from optlab.bench.tuning import neighbours, read_tuned, tune, write_tuned

__all__ = ["BenchError", "OptimizerSpec", "PRESETS", "SCHEDULES", "StepCache", "TASKS", "Task",
           "assess", "baseline_curve", "load_spec_file", "make_task", "markdown", "merge_results", "neighbours",
           "plot", "read_tuned", "register_task", "resolve_optimizers", "run_bench",
           "schedule_factors", "speedup", "state_bytes_per_param", "stdlib_corpus",
           "steps_to_match", "table", "task_options", "train", "tune", "write_all",
           "write_json", "write_tuned"]
