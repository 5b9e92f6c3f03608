"""Built-in bench tasks: a small registry, one function per task.

A task builder takes keyword options (sizes, seeds of the data) and returns a
`Task`: initial params per seed, a jax-traceable loss on a batch, a traceable
batch sampler, and an evaluation on held-out data. Nothing is downloaded:
the data is synthetic, ships with scikit-learn, or is read from the CPython
standard library that runs the bench.

Adding a task is one decorated function::

    @register_task("my-task", "what it trains")
    def my_task(**options) -> Task: ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optlab.layer_stats import capture_linen

__all__ = ["Task", "TASKS", "PRESETS", "register_task", "make_task", "task_options",
           "stdlib_corpus"]


@dataclasses.dataclass(frozen=True)
class Task:
  """One training problem for the bench.

  Attributes:
    name: registry name.
    description: one line for reports (includes the sizes used).
    init: seed (int) -> params pytree.
    loss: (params, batch) -> scalar training loss; jax-traceable.
    data: arrays the batch sampler reads (passed to the jitted step as an
      argument, so large data is not baked into the compiled program).
    batch: (data, key, step) -> batch; jax-traceable. Full-batch tasks
      return `data` itself.
    evaluate: params -> dict of held-out metrics (e.g. val_loss, val_acc).
    logits: (params, batch) -> logits, for recipes that take ``logits_fn``;
      None where the task is not a classification / language model.
    layer_stats: (params, batch) -> (loss, grads, layer_stats) from one pass
      (`optlab.capture_linen`), for recipes that take ``layer_stats``; None
      where the task's layers are not captured.
    log_loss: plot the loss on a log scale (losses that go to zero).
    lr_scale: how much larger than the usual published rates this task trains
      best: it multiplies the bench's default learning rate of a catalogue recipe
      whose step is Adam-sized (`optlab.bench.defaults`: Adam's 1e-3 or the
      recipe's published rate). Spec-file rates and the step-size-free recipes'
      own defaults are used as given. Full-batch toy problems take larger steps.
    stochastic: the batch changes from step to step (losses are smoothed
      before comparing them).
    info: extra facts recorded in results.json (corpus hash, sizes).
    chance_loss: the loss of a uniform guess (log of the number of classes); a
      run that ends there has failed. None where there is no such level.
    options: the options the task was built with (`make_task` fills it in; a
      tuned table records them, and only applies to the same options).
  """
  name: str
  description: str
  init: Callable[[int], Any]
  loss: Callable[[Any, Any], jax.Array]
  data: Any = None
  batch: Callable[[Any, jax.Array, jax.Array], Any] = lambda data, key, step: data
  evaluate: Callable[[Any], dict] = lambda params: {}
  logits: Optional[Callable[[Any, Any], jax.Array]] = None
  layer_stats: Optional[Callable[[Any, Any], tuple]] = None
  log_loss: bool = False
  stochastic: bool = False
  lr_scale: float = 1.0
  info: dict = dataclasses.field(default_factory=dict)
  chance_loss: Optional[float] = None
  options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Entry:
  build: Callable[..., Task]
  summary: str


#: The registered tasks: name -> the builder and its one-line summary (`register_task`).
TASKS: dict[str, _Entry] = {}


def register_task(name: str, summary: str):
  """Decorator: register a task builder under `name`."""
  def wrap(fn):
    if name in TASKS:
      raise ValueError(f"bench task {name!r} is registered twice")
    TASKS[name] = _Entry(fn, summary)
    return fn
  return wrap


#: task -> preset name -> options (`--preset`; explicit options override them).
PRESETS: dict[str, dict[str, dict]] = {
    # `make demo`: small enough that the whole demo runs in minutes on 2 CPU cores
    "lm-stdlib": {
        "demo": {"d_model": 96, "n_layers": 3, "n_heads": 4, "context": 64, "batch_size": 8},
        # steps-to-target claims: 3.3M params; 0.85 s per AdamW step on 2 CPU cores,
        # 3.9 ms on an H200 (measured)
        "large": {"d_model": 256, "n_layers": 4, "n_heads": 8, "context": 128,
                  "batch_size": 32, "budget_bytes": 8_000_000, "val_batches": 16},
    },
    "digits-mlp": {"demo": {"batch_size": 128}},
}


def task_options(name: str) -> dict[str, Any]:
  """A registered task's options with their defaults."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
  return {p.name: p.default for p in inspect.signature(TASKS[name].build).parameters.values()}


def make_task(name: str, preset: Optional[str] = None, **options) -> Task:
  """Build a registered task, from a preset's options (`PRESETS`) updated by `options`.

  Args:
    name: a registered task (a key of `TASKS`).
    preset: a named set of the task's options (`PRESETS`), or None for the
      task's defaults.
    **options: the task builder's keyword options, overriding the preset's.

  Returns:
    The `Task`.

  Raises:
    ValueError: unknown names, presets or options, or options out of range.
  """
  allowed = task_options(name)
  if preset is not None:
    known = PRESETS.get(name, {})
    if preset not in known:
      raise ValueError(f"task {name!r} has no preset {preset!r}"
                       + (f"; presets: {', '.join(sorted(known))}" if known else ""))
    options = {**known[preset], **options}
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"task {name!r} has no options {unknown}; it takes "
                     f"{', '.join(allowed) or 'none'}")
  for key, value in options.items():
    default = allowed[key]
    if isinstance(default, (int, float)) and not isinstance(default, bool) and (
        isinstance(value, bool) or not isinstance(value, (int, float))):
      raise ValueError(f"task {name!r}: option {key} must be a number, got {value!r}")
  task = TASKS[name].build(**options)
  return dataclasses.replace(task, options=dict(sorted(options.items())))


def _check(task: str, **bounds):
  """Each option ``name=(value, low)`` must be >= low (one-line errors)."""
  for key, (value, low) in bounds.items():
    if value < low:
      raise ValueError(f"task {task!r}: option {key} must be >= {low}, got {value}")


def _cross_entropy(logits, labels):
  return jnp.mean(jax.nn.logsumexp(logits, -1) -
                  jnp.take_along_axis(logits, labels[..., None], -1)[..., 0])


# -------------------------------------------------------------- synthetic
@register_task("quadratic-illcond", "ill-conditioned quadratic (condition number 1e4)")
def quadratic_illcond(dim: int = 256, cond: float = 1e4, lr_scale: float = 10.0) -> Task:
  """0.5 (x - x*)^T A (x - x*) with A = Q diag(logspace(0, log10 cond)) Q^T / cond.

  Full batch and deterministic: `lr_scale` 10 (Adam at 1e-2)."""
  _check("quadratic-illcond", dim=(dim, 2), cond=(cond, 1.0), lr_scale=(lr_scale, 1e-12))
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  eig = np.logspace(0.0, np.log10(cond), dim) / cond
  a = jnp.asarray((q * eig) @ q.T, jnp.float32)
  x_star = jnp.asarray(rng.normal(size=dim), jnp.float32)

  def loss(params, batch):
    d = params["x"] - batch["x_star"]
    return 0.5 * d @ (batch["a"] @ d)

  def init(seed):
    noise = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return {"x": jnp.asarray(noise)}

  return Task("quadratic-illcond", f"quadratic, dim {dim}, condition number {cond:g}",
              init, loss, data={"a": a, "x_star": x_star}, log_loss=True,
              lr_scale=lr_scale, info={"dim": dim, "cond": cond})


@register_task("rosenbrock", "high-dimensional Rosenbrock valley")
def rosenbrock(dim: int = 1000, lr_scale: float = 10.0) -> Task:
  """Mean over i of 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2; minimum 0 at x = 1.

  Full batch and deterministic: `lr_scale` 10 (Adam at 1e-2)."""
  _check("rosenbrock", dim=(dim, 2), lr_scale=(lr_scale, 1e-12))

  def loss(params, batch):
    x = params["x"]
    return jnp.mean(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

  def init(seed):
    start = np.where(np.arange(dim) % 2 == 0, -1.2, 1.0)
    noise = 0.05 * np.random.default_rng(seed).normal(size=dim)
    return {"x": jnp.asarray(start + noise, jnp.float32)}

  return Task("rosenbrock", f"Rosenbrock, dim {dim}", init, loss, log_loss=True,
              lr_scale=lr_scale, info={"dim": dim})


# ----------------------------------------------------------------- digits
@register_task("digits-mlp", "MLP on scikit-learn's digits (train/validation split)")
def digits_mlp(hidden: int = 128, depth: int = 2, batch_size: Optional[int] = None,
               val_fraction: float = 0.2, lr_scale: float = 3.0) -> Task:
  """A flax MLP on the 8x8 digits; full-batch unless `batch_size` is given.

  A few hundred steps on a small MLP: `lr_scale` 3 (Adam at 3e-3)."""
  import flax.linen as nn

  _check("digits-mlp", hidden=(hidden, 1), depth=(depth, 0), lr_scale=(lr_scale, 1e-12),
         **({} if batch_size is None else {"batch_size": (batch_size, 1)}))
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"task 'digits-mlp': option val_fraction must be in (0, 1), got {val_fraction}")
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm].astype(np.int32)
  n_val = int(round(val_fraction * len(x)))
  xt, yt, xv, yv = x[n_val:], y[n_val:], x[:n_val], y[:n_val]

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, z):
      for _ in range(depth):
        z = nn.tanh(nn.Dense(hidden)(z))
      return nn.Dense(10)(z)

  model = MLP()
  logits = lambda params, batch: model.apply({"params": params}, batch["x"])
  loss = lambda params, batch: _cross_entropy(logits(params, batch), batch["y"])
  stats = lambda params, batch: capture_linen(model, params, batch["x"], targets=batch["y"])

  def batch(data, key, step):
    if not batch_size:
      return data
    idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, len(xt))
    return jax.tree.map(lambda a: a[idx], data)

  def evaluate(params):
    z = logits(params, {"x": xv})
    return {"val_loss": float(_cross_entropy(z, yv)),
            "val_acc": float(jnp.mean(jnp.argmax(z, -1) == yv))}

  init = lambda seed: model.init(jax.random.PRNGKey(seed), xt[:1])["params"]
  return Task("digits-mlp", f"digits MLP {depth}x{hidden}, "
              f"{'full batch' if not batch_size else f'batch {batch_size}'}, "
              f"{len(xt)} train / {len(xv)} val", init, loss,
              data={"x": jnp.asarray(xt), "y": jnp.asarray(yt)}, batch=batch,
              evaluate=evaluate, logits=logits, layer_stats=stats, stochastic=bool(batch_size),
              lr_scale=lr_scale,
              chance_loss=float(np.log(10)), info={"train": len(xt), "val": len(xv), "hidden": hidden, "depth": depth})


# -------------------------------------------------------------- lm-stdlib
def stdlib_corpus(budget_bytes: int = 2_000_000, val_fraction: float = 0.1):
  """Bytes of CPython's standard-library ``.py`` files, fixed and reproducible.

  Files are the ``.py`` files under the running interpreter's stdlib directory,
  without site-packages and test directories, sorted by relative path, and
  concatenated (each followed by a newline) up to `budget_bytes`. The last
  `val_fraction` of the bytes is the held-out validation split, so validation
  text comes from files the model never trains on. Returns (train, val, info)
  with uint8 arrays; info holds the sha256 of the corpus and the Python version
  (the corpus is fixed for one CPython version).
  """
  root = Path(sysconfig.get_paths()["stdlib"])
  skip = {"site-packages", "dist-packages", "test", "tests", "__pycache__"}
  files = sorted((f for f in root.rglob("*.py") if not skip & set(f.relative_to(root).parts)),
                 key=lambda f: f.relative_to(root).as_posix())
  chunks, size = [], 0
  for f in files:
    if size >= budget_bytes:
      break
    chunks.append(f.read_bytes() + b"\n")
    size += len(chunks[-1])
  if not chunks:
    raise RuntimeError(f"no .py files found under {root}")
  text = b"".join(chunks)[:budget_bytes]
  split = int(len(text) * (1.0 - val_fraction))
  arr = np.frombuffer(text, np.uint8)
  info = {"python": sys.version.split()[0], "bytes": len(text), "files": len(chunks),
          "sha256": hashlib.sha256(text).hexdigest()[:16]}
  return arr[:split], arr[split:], info


@register_task("lm-stdlib", "char-level transformer LM on CPython's stdlib source")
def lm_stdlib(d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
              context: int = 64, batch_size: int = 16, budget_bytes: int = 2_000_000,
              val_batches: int = 8, lr_scale: float = 2.0) -> Task:
  """A decoder-only byte-level transformer (about 0.86M params at the defaults).

  Pre-LayerNorm blocks with causal self-attention and a 4x GELU MLP, learned
  position embeddings, untied output head over the 256 byte values. Training
  batches are `batch_size` random windows of `context` + 1 bytes of the train
  split; validation uses `val_batches` fixed batches of the held-out split.
  Raise d_model / n_layers / context / batch_size for GPU runs. `lr_scale`
  (default 2: Adam at 2e-3, usual for a small character-level transformer)
  scales the bench's default learning rates (`optlab.bench.defaults`).
  """
  import flax.linen as nn

  _check("lm-stdlib", d_model=(d_model, 1), n_layers=(n_layers, 1), n_heads=(n_heads, 1),
         context=(context, 1), batch_size=(batch_size, 1), budget_bytes=(budget_bytes, 1000),
         val_batches=(val_batches, 1), lr_scale=(lr_scale, 1e-12))
  if d_model % n_heads:
    raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
  train, val, info = stdlib_corpus(budget_bytes)

  class Block(nn.Module):
    @nn.compact
    def __call__(self, h):
      mask = nn.make_causal_mask(jnp.ones(h.shape[:2], bool))
      h = h + nn.MultiHeadDotProductAttention(n_heads, deterministic=True)(
          nn.LayerNorm()(h), mask=mask)
      z = nn.Dense(4 * d_model)(nn.LayerNorm()(h))
      return h + nn.Dense(d_model)(nn.gelu(z))

  class CharLM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      h = nn.Embed(256, d_model)(tokens)
      pos = self.param("pos", nn.initializers.normal(0.02), (context, d_model))
      h = h + pos[: tokens.shape[1]]
      for _ in range(n_layers):
        h = Block()(h)
      return nn.Dense(256)(nn.LayerNorm()(h))

  model = CharLM()
  logits = lambda params, batch: model.apply({"params": params}, batch[:, :-1])
  loss = lambda params, batch: _cross_entropy(logits(params, batch), batch[:, 1:].astype(jnp.int32))
  # every nn.Dense (the MLPs and the head); attention's DenseGeneral projections
  # and the embeddings take a recipe's first-order fallback
  stats = lambda params, batch: capture_linen(model, params, batch[:, :-1],
                                              targets=batch[:, 1:].astype(jnp.int32))

  def windows(arr, starts):
    return arr[starts[:, None] + jnp.arange(context + 1)[None, :]]

  def batch(data, key, step):
    starts = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0,
                                data.shape[0] - context - 1)
    return windows(data, starts)

  val_starts = np.linspace(0, len(val) - context - 2, val_batches * batch_size).astype(np.int32)
  val_windows = windows(jnp.asarray(val), jnp.asarray(val_starts))
  val_loss = jax.jit(lambda p: loss(p, val_windows))

  def evaluate(params):
    return {"val_loss": float(val_loss(params))}

  init = lambda seed: model.init(jax.random.PRNGKey(seed), jnp.zeros((1, context), jnp.int32))["params"]
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(init, 0)))
  info = {**info, "params": int(n_params), "d_model": d_model, "n_layers": n_layers,
          "n_heads": n_heads, "context": context, "batch_size": batch_size}
  return Task("lm-stdlib", f"char LM {n_params / 1e6:.2f}M params ({n_layers}x{d_model}, "
              f"context {context}, batch {batch_size}) on {info['bytes'] / 1e6:.1f} MB of "
              f"CPython {info['python']} stdlib", init, loss, data=jnp.asarray(train),
              batch=batch, evaluate=evaluate, logits=logits, layer_stats=stats, stochastic=True,
              lr_scale=lr_scale,
              chance_loss=float(np.log(256)), info=info)
