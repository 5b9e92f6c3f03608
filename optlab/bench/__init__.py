"""`optlab bench`: compare optimizers on built-in tasks.

    optlab bench --task lm-stdlib --optimizers adamw,lion --steps 2000 --lr-sweep 3 --seeds 2

Python use::

    from optlab import bench
    task = bench.make_task("digits-mlp")
    results = bench.run_bench(task, bench.resolve_optimizers(["adamw", "lion"]), steps=300)
    bench.write_all(results, "bench_out")
"""

from __future__ import annotations

from optlab.bench.report import markdown, plot, table, write_all, write_json
from optlab.bench.runner import (BenchError, OptimizerSpec, load_spec_file, lr_grid,
                                 resolve_optimizers, run_bench, state_bytes_per_param, train)
from optlab.bench.tasks import TASKS, Task, make_task, register_task, stdlib_corpus

__all__ = ["BenchError", "OptimizerSpec", "TASKS", "Task", "load_spec_file", "lr_grid",
           "make_task", "markdown", "plot", "register_task", "resolve_optimizers",
           "run_bench", "state_bytes_per_param", "stdlib_corpus", "table", "train",
           "write_all", "write_json"]
