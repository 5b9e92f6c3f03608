"""Step time of optlab recipes against optax, side by side in one process.

For every recipe in `optlab.catalog()` that the tests compare with optax
(an ``optax`` entry in tests/recipe_config.py), this builds optlab's version at
its documented defaults (``recipe.build(**kwargs)``, ``kwargs`` the bench's
default learning rate, `optlab.bench.defaults`) and optax's from the same
keyword arguments, and times one jitted training step,

    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

with params and state donated, on a transformer-shaped tree of ``--size``
float32 parameters in 20 leaves. The two steps are timed alternately (pair
by pair, with the order inside each pair swapped every pair), so that machine
noise hits both alike; the report gives each method's median and the median of
the per-pair ratios optlab / optax.

Elementwise recipes are memory-bandwidth bound, so the report also gives the
achieved bandwidth, (params + grads + state read, params + state written) /
median step time, and its fraction of the machine's measured copy bandwidth.

    python benchmarks/step_time.py                        # all recipes with optax=
    python benchmarks/step_time.py --only adam,adamw --steps 50
    python benchmarks/step_time.py --size 2000000 --hlo   # + compiled HLO op counts
    python benchmarks/step_time.py --size 1000000 --copies  # donated-buffer copies only

Writes ``--out`` (JSON) and a Markdown table next to it (same stem, ``.md``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.extend as jex  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optlab  # noqa: E402
from optlab.bench.defaults import default_kwargs  # noqa: E402
from tests import recipe_config  # noqa: E402  (the optax counterparts the tests compare with)

DEFAULT_OUT = os.path.join("benchmarks", "results", "step_time.json")


# ------------------------------------------------------------------- the params
def transformer_shapes(size: int, layers: int = 2) -> dict[str, dict[str, tuple[int, ...]]]:
  """Leaf shapes of a small pre-LN transformer with about `size` parameters.

  Per layer: LayerNorm scale, fused QKV and output projections, LayerNorm
  scale, MLP in/out matrices and biases (8 leaves); plus token and position
  embeddings and the final LayerNorm scale and bias: 20 leaves for 2 layers.
  The width d is a multiple of 64 and the vocabulary fills the remaining count.
  """
  seq = 256
  # vocab ~ 8 d, each layer ~ 12 d^2: total ~ (8 + 12 layers) d^2.
  d = max(64, int(round(math.sqrt(size / (8 + 12 * layers)) / 64)) * 64)
  per_layer = 12 * d * d + 7 * d
  rest = size - layers * per_layer - seq * d - 2 * d
  vocab = max(64, rest // d)
  tree: dict[str, dict[str, tuple[int, ...]]] = {
      "embed": {"tokens": (vocab, d), "positions": (seq, d)},
  }
  for i in range(layers):
    tree[f"layer_{i}"] = {
        "ln1_scale": (d,), "attn_qkv": (d, 3 * d), "attn_out": (d, d),
        "ln2_scale": (d,), "mlp_in": (d, 4 * d), "mlp_in_bias": (4 * d,),
        "mlp_out": (4 * d, d), "mlp_out_bias": (d,),
    }
  tree["final_norm"] = {"scale": (d,), "bias": (d,)}
  return tree


def make_tree(shapes, seed: int, scale: float = 0.02):
  """Deterministic random float32 leaves (norm scales start at 1)."""
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
  out = []
  for key, shape, path in zip(keys, leaves, paths):
    x = scale * jax.random.normal(key, shape, jnp.float32)
    if seed == 0 and "scale" in path:
      x = x + 1.0
    out.append(x)
  return jax.tree.unflatten(treedef, out)


def tree_bytes(tree: Any) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree)
             if hasattr(x, "dtype"))


def copy_like(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


# -------------------------------------------------------------------- the step
def extra_args(recipe) -> dict[str, Any]:
  """Simple values for the extra args a recipe declares (a quadratic loss)."""
  extra: dict[str, Any] = {}
  if "value" in recipe.needs_extra_args:
    extra["value"] = jnp.asarray(1.0, jnp.float32)
  if "obj_fn" in recipe.needs_extra_args:
    extra["obj_fn"] = lambda p: 0.5 * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))
  unknown = set(recipe.needs_extra_args) - set(extra)
  if unknown:
    raise ValueError(f"step_time: no value known for extra args {sorted(unknown)}")
  return extra


def make_step(tx, recipe) -> Callable:
  """Jitted (params, state, grads) -> (params, state); params/state donated."""
  needs = recipe.needs_extra_args

  def step(params, state, grads):
    extra = extra_args(recipe) if needs else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def is_elementwise(params, state) -> bool:
  """True when every state leaf is a scalar or has the shape of some param.

  A heuristic for "the step streams params, grads and state once": it is true
  for SGD/Adam-like recipes and false for factored, matrix or blocked states.
  """
  shapes = {tuple(x.shape) for x in jax.tree.leaves(params)}
  for x in jax.tree.leaves(state):
    if not hasattr(x, "shape"):
      continue
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      continue
    if x.ndim and tuple(x.shape) not in shapes:
      return False
  return True


_INSTR_RE = re.compile(r"^(?:ROOT\s+)?%\S+\s*=\s*.*?\s([a-z][\w-]*)\(")


def hlo_op_counts(compiled_text: str) -> tuple[dict[str, int], dict[str, int]]:
  """Opcode counts of compiled HLO: (ENTRY computation, every computation).

  The ENTRY opcodes are what runs per step (each fusion is one kernel, each
  ``copy`` a full extra pass over a buffer); the totals include the bodies of
  fused computations.
  """
  entry: collections.Counter = collections.Counter()
  total: collections.Counter = collections.Counter()
  in_entry = False
  for line in compiled_text.splitlines():
    line = line.strip()
    if line.startswith("ENTRY"):
      in_entry = True
      continue
    if line == "}":
      in_entry = False
      continue
    m = _INSTR_RE.match(line)
    if m and m.group(1) not in ("parameter", "constant", "tuple", "get-tuple-element"):
      total[m.group(1)] += 1
      if in_entry:
        entry[m.group(1)] += 1
  return dict(sorted(entry.items())), dict(sorted(total.items()))


def jaxpr_primitives(jaxpr) -> collections.Counter:
  """Primitive counts of a closed jaxpr, sub-jaxprs (pjit, cond, scan) inlined."""
  counts: collections.Counter = collections.Counter()
  for eqn in jaxpr.eqns:
    subs = list(jex.core.jaxprs_in_params(eqn.params))
    if not subs:
      counts[eqn.primitive.name] += 1
    for sub in subs:
      counts.update(jaxpr_primitives(getattr(sub, "jaxpr", sub)))
  return counts


def hlo_summary(step, params, state, grads) -> dict[str, Any]:
  lowered = step.lower(params, state, grads)
  jaxpr = jax.make_jaxpr(step)(params, state, grads)
  entry, total = hlo_op_counts(lowered.compile().as_text())
  prim = jaxpr_primitives(jaxpr.jaxpr)
  return {
      "jaxpr_eqns": sum(prim.values()),
      "jaxpr_primitives": dict(sorted(prim.items())),
      "hlo_entry_ops": entry,          # kernels per step: fusions, copies, ...
      "hlo_entry_count": sum(entry.values()),
      "hlo_all_ops": total,            # including the bodies of fusions
  }


_COPY_RE = re.compile(r"=\s*(\S+)\s+copy\(%([^)\s]+)\)")


def donated_copies(step, params, state, grads) -> list[tuple[str, str]]:
  """The ``copy`` instructions of the compiled step's ENTRY computation, as
  (shape, operand) pairs.

  With params and state donated, an elementwise step should update every state
  buffer in place. A copy of a param-shaped state buffer (``f32[256,256]
  copy(%s_0__nu__w0__)``) is a full extra pass over it per step: XLA:CPU makes
  one when a consumer fused into the update still needs the old, donated value,
  e.g. after a statistic is saturated with ``jnp.minimum`` instead of a select
  (`optlab/_src/numerics.py`, `saturate`). Scalars (the step count) are cheap
  and reported too.
  """
  text = step.lower(params, state, grads).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  return [(m.group(1), m.group(2)) for m in _COPY_RE.finditer(entry)]


# Recipes whose param-shaped statistics saturate (the `saturate` select), with the
# factory arguments the copy check builds them with.
COPY_CHECK = {"adam": {"learning_rate": 1e-3}, "adagrad": {"learning_rate": 1e-2},
              "rmsprop": {"learning_rate": 1e-3}, "adahessian": {"learning_rate": 1e-3},
              "sophia_h": {"learning_rate": 1e-3}, "momo_adam": {"learning_rate": 1e-2},
              "dog": {}, "dadapt_adam": {}}


def copy_report(names, params, grads) -> list[str]:
  """One line per recipe: its ENTRY copies, param-shaped (non-scalar) ones first."""
  lines = []
  for name in names:
    recipe = optlab.get_recipe(name)
    tx = recipe.factory(**COPY_CHECK.get(name, {}))
    state = jax.jit(tx.init)(params)
    copies = donated_copies(make_step(tx, recipe), params, state, grads)
    big = [c for c in copies if not c[0].split("{")[0].endswith("[]")]
    lines.append(f"{name}: {len(big)} param-shaped copies, {len(copies) - len(big)} scalar"
                 + "".join(f"\n    {shape} copy(%{op})" for shape, op in big[:4])
                 + (f"\n    ... {len(big) - 4} more" if len(big) > 4 else ""))
  return lines


# --------------------------------------------------------------------- timing
def _median_pass(f, args, donated: int, reps: int) -> float:
  """Median seconds of f(*args), feeding the output back as the donated argument."""
  args = list(args)
  for i in range(reps + 3):
    t0 = time.perf_counter()
    args[donated] = f(*args)
    args[donated].block_until_ready()
    if i == 2:
      times = []
    elif i > 2:
      times.append(time.perf_counter() - t0)
  return statistics.median(times)


def copy_bandwidth(n: int, reps: int = 30) -> dict[str, Any]:
  """Bytes read + written per second of jitted element-wise passes over n float32.

  Two passes, both with a donated output buffer as the optimizer step has:
  ``in_place`` (x <- x + 1, read and write the same buffer, as params and state
  are updated) and ``copy`` (dst <- src + 1 into a second buffer, which on
  write-allocate caches also reads dst). ``gb_per_s``, the reference for "% of
  copy bandwidth", is the larger of the two.
  """
  x = jax.random.normal(jax.random.key(1), (n,), jnp.float32)
  in_place = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  copy = jax.jit(lambda src, dst: src + 1.0, donate_argnums=1, keep_unused=True)
  t_in = _median_pass(in_place, [x + 0.0], 0, reps)
  t_copy = _median_pass(copy, [x, x + 0.0], 1, reps)
  gbs = {"in_place": 8 * n / t_in / 1e9, "copy": 8 * n / t_copy / 1e9}
  return {"elements": n, "bytes_per_pass": 8 * n,
          "median_s": {"in_place": t_in, "copy": t_copy},
          "gb_per_s_by_pass": gbs, "gb_per_s": max(gbs.values())}


class Runner:
  """One method's jitted step and its own (donated) params and state."""

  def __init__(self, tx, recipe, params, grads):
    self.params = copy_like(params)
    self.state = jax.jit(tx.init)(self.params)
    self.step = make_step(tx, recipe)
    self.grads = grads
    self.state_bytes = tree_bytes(self.state)
    self.elementwise = is_elementwise(self.params, self.state)

  def summary(self):
    return hlo_summary(self.step, self.params, self.state, self.grads)

  def __call__(self) -> float:
    t0 = time.perf_counter()
    self.params, self.state = self.step(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))
    return time.perf_counter() - t0

  def finite(self) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((self.params, self.state))
               if jnp.issubdtype(x.dtype, jnp.inexact))


def bench_recipe(recipe, params, grads, steps: int, warmup: int, copy_gbs: float,
                 hlo: bool) -> dict[str, Any]:
  kwargs = default_kwargs(recipe, seed=0)
  row: dict[str, Any] = {"recipe": recipe.name, "family": recipe.family,
                         "hparams": {k: repr(v) for k, v in kwargs.items()}}
  stage = "build optlab"
  try:
    ours_tx = recipe.build(**kwargs)
    stage = "build optax"
    theirs_tx = recipe_config.optax_of(recipe)(**kwargs)
    stage = "init optlab"
    ours = Runner(ours_tx, recipe, params, grads)
    stage = "init optax"
    theirs = Runner(theirs_tx, recipe, params, grads)
    if hlo:
      stage = "HLO"
      row["hlo"] = {"optlab": ours.summary(), "optax": theirs.summary()}
    stage = "warm-up"
    for _ in range(warmup):
      ours()
      theirs()
    stage = "timing"
    t_ours, t_theirs, ratios = [], [], []
    for i in range(steps):
      if i % 2 == 0:
        a = ours()
        b = theirs()
      else:
        b = theirs()
        a = ours()
      t_ours.append(a)
      t_theirs.append(b)
      ratios.append(a / b)
    stage = "finite check"
    row["finite_after"] = {"optlab": ours.finite(), "optax": theirs.finite()}
  except Exception as e:  # an error row, not a crash
    row["error"] = f"{stage}: {type(e).__name__}: {e}"
    row["traceback"] = traceback.format_exc(limit=4)
    return row
  med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
  q = lambda xs, p: float(np.percentile(xs, p))
  row.update({
      "optlab_ms": 1e3 * med_ours, "optax_ms": 1e3 * med_theirs,
      "ratio": statistics.median(ratios),
      "ratio_iqr": [q(ratios, 25), q(ratios, 75)],
      "ratio_of_medians": med_ours / med_theirs,
      "optlab_ms_iqr": [1e3 * q(t_ours, 25), 1e3 * q(t_ours, 75)],
      "optax_ms_iqr": [1e3 * q(t_theirs, 25), 1e3 * q(t_theirs, 75)],
      "state_bytes": {"optlab": ours.state_bytes, "optax": theirs.state_bytes},
      "elementwise": ours.elementwise,
  })
  if ours.elementwise:
    p_bytes, g_bytes = tree_bytes(params), tree_bytes(grads)
    # read params, grads, state; write params, state.
    moved_ours = 2 * p_bytes + g_bytes + 2 * ours.state_bytes
    moved_theirs = 2 * p_bytes + g_bytes + 2 * theirs.state_bytes
    row["bytes_per_step"] = {"optlab": moved_ours, "optax": moved_theirs}
    row["optlab_gb_s"] = moved_ours / med_ours / 1e9
    row["optax_gb_s"] = moved_theirs / med_theirs / 1e9
    row["optlab_frac_copy_bw"] = row["optlab_gb_s"] / copy_gbs
    row["optax_frac_copy_bw"] = row["optax_gb_s"] / copy_gbs
  return row


# --------------------------------------------------------------------- report
def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def table(rows) -> list[str]:
  head = ["recipe", "optlab ms", "optax ms", "ratio", "ratio IQR", "GB/s", "% copy bw"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  for r in rows:
    if "error" in r:
      msg = r["error"].replace("|", "/").splitlines()[0][:100]
      lines.append(f"| {r['recipe']} | error: {msg} | | | | | |")
      continue
    iqr = f"{r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f}"
    frac = r.get("optlab_frac_copy_bw")
    lines.append("| " + " | ".join([
        r["recipe"], f"{r['optlab_ms']:.2f}", f"{r['optax_ms']:.2f}", f"{r['ratio']:.3f}", iqr,
        _fmt(r.get("optlab_gb_s"), ".1f"), _fmt(None if frac is None else 100 * frac, ".0f"),
    ]) + " |")
  return lines


def device_info() -> dict[str, Any]:
  devs = jax.devices()
  return {
      "platform": devs[0].platform,
      "devices": [str(d) for d in devs],
      "device_kind": devs[0].device_kind,
      "host": platform.node(),
      "machine": platform.machine(),
      "processor": platform.processor(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
  }


def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--only", default="", help="comma-separated recipe names")
  ap.add_argument("--steps", type=int, default=50, help="timed steps per method (>= 30)")
  ap.add_argument("--warmup", type=int, default=5, help="untimed steps per method")
  ap.add_argument("--size", type=int, default=10_000_000, help="parameter count")
  ap.add_argument("--copy-size", type=int, default=0,
                  help="elements of the copy-bandwidth array (default: --size)")
  ap.add_argument("--hlo", action="store_true",
                  help="also record jaxpr/compiled-HLO op counts of both steps")
  ap.add_argument("--copies", action="store_true",
                  help="only compile the donated steps of the COPY_CHECK recipes (or --only) "
                       "and print their ENTRY copy instructions; no timing")
  ap.add_argument("--caveat", default="", help="a note stored in the JSON (e.g. shared machine)")
  ap.add_argument("--out", default=DEFAULT_OUT, help="JSON path; the .md table goes beside it")
  args = ap.parse_args(argv)
  if args.steps < 30:
    print(f"warning: --steps {args.steps} < 30; medians will be noisy", file=sys.stderr)

  only = [s.strip() for s in args.only.split(",") if s.strip()]
  recipes = [r for r in optlab.catalog() if recipe_config.optax_of(r) is not None]
  if only:
    known = {r.name for r in optlab.catalog()}
    missing = [n for n in only if n not in known]
    if missing:
      ap.error(f"unknown recipes {missing}; known: {sorted(known)}")
    recipes = [r for r in recipes if r.name in only]
    no_optax = [n for n in only if n not in {r.name for r in recipes}]
    if no_optax and not args.copies:
      print(f"note: no optax counterpart, skipped: {no_optax}", file=sys.stderr)

  shapes = transformer_shapes(args.size)
  params = make_tree(shapes, seed=0)
  grads = make_tree(shapes, seed=1, scale=1e-3)
  if args.copies:
    print("\n".join(copy_report(only or list(COPY_CHECK), params, grads)))
    return 0
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  n_leaves = len(jax.tree.leaves(params))
  copy = copy_bandwidth(args.copy_size or n_params)
  print(f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}); "
        f"{n_params:,} params in {n_leaves} leaves; copy bandwidth {copy['gb_per_s']:.1f} GB/s; "
        f"{args.steps} interleaved steps per method", flush=True)

  load_before = os.getloadavg()
  rows = []
  for recipe in recipes:
    t0 = time.perf_counter()
    row = bench_recipe(recipe, params, grads, args.steps, args.warmup, copy["gb_per_s"], args.hlo)
    row["wall_s"] = time.perf_counter() - t0
    rows.append(row)
    status = (f"error ({row['error'].splitlines()[0][:120]})" if "error" in row
              else f"ratio {row['ratio']:.3f}")
    print(f"  {recipe.name}: {status}", flush=True)

  lines = table(rows)
  print("\n".join(lines))
  result = {
      "benchmark": "step_time",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                   "optax": optax.__version__, "optlab": optlab.__version__,
                   "numpy": np.__version__},
      "device": device_info(),
      "size": n_params, "requested_size": args.size, "leaves": n_leaves,
      "shapes": {f"{k}/{j}": list(s) for k, v in shapes.items() for j, s in v.items()},
      "steps": args.steps, "warmup": args.warmup,
      "method": ("jit(update + optax.apply_updates), params/state donated; optlab and optax "
                 "steps alternate pair by pair, order swapped every pair; ratio = median of "
                 "per-pair optlab/optax; GB/s = (2*params + grads + 2*state bytes) / median"),
      "caveat": args.caveat,
      "load_average_1_5_15min": {"before": list(load_before), "after": list(os.getloadavg())},
      "copy_bandwidth": copy,
      "results": rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  md = os.path.splitext(args.out)[0] + ".md"
  with open(md, "w") as f:
    f.write(f"# Step time: optlab vs optax\n\n"
            f"{result['date']}; {jax.devices()[0].device_kind} ({jax.devices()[0].platform}, "
            f"{os.cpu_count()} cores); jax {jax.__version__}, optax {optax.__version__}; "
            f"{n_params:,} float32 params in {n_leaves} leaves; {args.steps} interleaved steps "
            f"per method after {args.warmup} warm-up; copy bandwidth "
            f"{copy['gb_per_s']:.1f} GB/s.\n\n")
    if args.caveat:
      f.write(f"Caveat: {args.caveat}\n\n")
    f.write("\n".join(lines) + "\n\n"
            "ratio = median over pairs of optlab/optax step time (< 1: optlab faster); "
            "IQR = its 25th-75th percentiles. GB/s = (params + grads + state read, params + "
            "state written) / optlab median, for elementwise recipes only.\n")
  print(f"wrote {args.out} and {md}")
  return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
