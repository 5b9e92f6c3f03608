"""Layer statistics: what Kronecker-factored curvature methods need beyond the gradient.

K-FAC, MKOR and AdaFisher precondition a layer ``y = a W + b`` with factors
built from its inputs ``a`` and the gradients ``g`` of the loss with respect to
its outputs ``y``: ``A = E[a aᵀ]`` and ``G = E[g gᵀ]`` (Martens & Grosse,
"Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
arXiv:1503.05671). A gradient tree does not carry them, so they reach the
optimizer as the keyword extra arg ``layer_stats``: a mapping from the path of
each layer's kernel (``jax.tree_util.keystr`` of its place in the params, e.g.
``"['Dense_0']['kernel']"``) to a `LayerStats`.

This module captures them without rewriting the model:

* `capture_layer_stats` for a pure function whose layers are marked with the
  ``tap`` it is given;
* `capture_linen` for a flax linen module (its ``nn.Dense`` and ``nn.Conv``
  calls are intercepted with ``nn.intercept_methods``);
* `capture_nnx` for a flax nnx model (its ``nnx.Linear`` and ``nnx.Conv`` calls).

A convolution is a dense layer on its input patches (`conv_patches`), as in
KFC (Grosse & Martens, arXiv:1602.01407): one row per example and position.

Each returns ``(loss, grads, layer_stats)`` from one forward pass: the
gradients for the update and the statistics come from the same ``jax.vjp``. The
output gradients are taken with the batch labels (empirical Fisher) or with
labels sampled from the model (true Fisher, one more backward pass), as the
papers let users choose.

For the recipes it provides the lookup: `kernel_shapes` (which leaves get
factors, at ``init``), `gather` (the checked statistics and each layer's joint
``[kernel; bias]`` gradient), `scatter` and `covariances`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr

__all__ = ["LayerStats", "capture_layer_stats", "capture_linen", "capture_nnx", "conv_patches"]

Path = Union[str, tuple]


@dataclasses.dataclass(frozen=True)
class LayerStats:
  """The statistics of one dense (or patch-flattened conv) layer.

  Attributes:
    inputs: ``(n, d_in)``, the layer's inputs ``a``, one row per example (per
      example and position for sequences and images).
    out_grads: ``(n, d_out)``, the gradient of each row's own loss with respect
      to the layer's outputs (the gradient of the mean loss times ``n``, as in
      kfac-jax), so that ``gᵀg / n`` estimates ``E[g gᵀ]``.
    bias: path (``keystr``) of the layer's bias in the params, or None. Static.
  """
  inputs: jax.Array
  out_grads: jax.Array
  bias: Optional[str] = None


jax.tree_util.register_dataclass(LayerStats, data_fields=["inputs", "out_grads"],
                                 meta_fields=["bias"])


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer as a recipe sees it (from `gather`).

  ``grad`` is the joint ``[kernel; bias]`` update ``(d_in + 1, d_out)``; ``a`` has
  the homogeneous column appended: ones when the layer has a bias, zeros when it
  has none, so that the last row and column of ``A`` are zero and a damped
  inverse leaves the (zero) bias row alone."""
  grad: jax.Array
  a: jax.Array
  g: jax.Array
  bias: Optional[str] = None


jax.tree_util.register_dataclass(Layer, data_fields=["grad", "a", "g"], meta_fields=["bias"])


# ---------------------------------------------------------------- for recipes
def path_key(path: tuple) -> str:
  """A leaf's key in ``layer_stats``: its ``keystr``, less the ``.value`` of a flax
  nnx ``Variable``, so that ``nnx.Optimizer``'s ``init`` (which sees Variables)
  and ``update`` (which sees their pure arrays) name a leaf alike."""
  if path and isinstance(path[-1], GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return keystr(path)


def kernel_shapes(params: Any, mask: Any = None, max_dim: Optional[int] = None
                  ) -> dict[str, tuple[int, int]]:
  """The leaves that get Kronecker factors: ``keystr`` path -> ``(d_in + 1, d_out)``.

  A leaf of shape ``(..., d_out)`` with ``ndim >= 2`` is the matrix
  ``reshape(-1, d_out)``; ``+ 1`` is the homogeneous (bias) coordinate.
  `mask` (a bool tree like `params`, or a function of `params` returning one,
  as in optax) selects leaves; `max_dim` leaves out layers whose factors would
  be larger than ``max_dim × max_dim`` (an embedding table's vocabulary). The
  shapes depend on `params` only, so `init` can size the state from them.
  """
  if callable(mask):
    mask = mask(params)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  flags = ([True] * len(leaves) if mask is None
           else jax.tree.structure(params).flatten_up_to(mask))
  shapes = {}
  for (path, leaf), keep in zip(leaves, flags):
    shape = np.shape(leaf)
    if not keep or len(shape) < 2:
      continue
    d_in, d_out = math.prod(shape[:-1]), shape[-1]
    if max_dim is None or max(d_in + 1, d_out) <= max_dim:
      shapes[path_key(path)] = (d_in + 1, d_out)
  return shapes


def _fail(where: str, msg: str, cls=ValueError):
  raise cls(f"optlab.{where}: {msg}")


def gather(where: str, layer_stats: Optional[Mapping[str, LayerStats]], updates: Any,
           shapes: Mapping[str, tuple[int, int]]) -> dict[str, Layer]:
  """Checks the extra arg `layer_stats` against `updates` and the kernels of
  `shapes` (from `kernel_shapes`); returns each covered layer as a `Layer`.

  Raises TypeError when the arg is missing or not a mapping of `LayerStats`,
  and ValueError naming ``layer_stats`` and the path when a key is not a
  kernel of `shapes`; the widths of ``inputs``/``out_grads`` disagree with the
  kernel, or their row counts with each other; a bias is not a 1-D leaf of size
  ``d_out`` or is claimed by two layers. A bias masked out of this optimizer
  (``optax.masked``: an ``optax.MaskedNode``) makes the layer one without bias;
  statistics of a masked-out kernel are ignored.
  """
  if layer_stats is None:
    _fail(where, "needs the extra arg layer_stats= (a mapping from each layer's kernel path to "
          "optlab.LayerStats, e.g. from optlab.capture_layer_stats); it was not given", TypeError)
  if not isinstance(layer_stats, Mapping):
    _fail(where, f"layer_stats must be a mapping from kernel paths to optlab.LayerStats, got "
          f"{type(layer_stats).__name__}", TypeError)
  masked = lambda x: isinstance(x, optax.MaskedNode)
  leaves = {path_key(p): x for p, x in jax.tree_util.tree_leaves_with_path(updates, is_leaf=masked)}
  layers, biases = {}, {}
  for key, st in layer_stats.items():
    name = f"layer_stats[{key!r}]"
    if not isinstance(st, LayerStats):
      _fail(where, f"{name} is a {type(st).__name__}, not an optlab.LayerStats", TypeError)
    if masked(leaves.get(key)):  # a kernel that another optimizer updates
      continue
    if key not in shapes:
      why = ("is not a leaf of the params" if key not in leaves else
             "is a leaf without Kronecker factors (fewer than 2 dims, masked out or over max_dim)")
      _fail(where, f"{name}: {key} {why}; the kernels are {sorted(shapes)}")
    d_in1, d_out = shapes[key]
    a, g = jnp.asarray(st.inputs), jnp.asarray(st.out_grads)
    if a.ndim != 2 or a.shape[1] != d_in1 - 1:
      _fail(where, f"{name}.inputs has shape {a.shape} but params{key} needs (n, {d_in1 - 1})")
    if g.ndim != 2 or g.shape[1] != d_out:
      _fail(where, f"{name}.out_grads has shape {g.shape} but params{key} needs (n, {d_out})")
    if a.shape[0] != g.shape[0]:
      _fail(where, f"{name}: inputs has {a.shape[0]} rows but out_grads has {g.shape[0]}")
    kernel = leaves[key].reshape(d_in1 - 1, d_out)
    if st.bias is None or masked(leaves.get(st.bias)):  # a bias masked out of this optimizer
      b, ones = jnp.zeros((1, d_out), kernel.dtype), 0.0
    else:
      if np.shape(leaves.get(st.bias, np.zeros(0))) != (d_out,) or st.bias in shapes:
        _fail(where, f"{name}.bias is {st.bias!r}, which is not a 1-D leaf of size {d_out} "
              "in the params")
      if st.bias in biases:
        _fail(where, f"{name}.bias {st.bias!r} is also the bias of "
              f"layer_stats[{biases[st.bias]!r}]")
      biases[st.bias] = key
      b, ones = leaves[st.bias][None].astype(kernel.dtype), 1.0
    homogeneous = jnp.full((a.shape[0], 1), ones, a.dtype)
    layers[key] = Layer(jnp.concatenate([kernel, b]), jnp.concatenate([a, homogeneous], 1), g,
                        st.bias if ones else None)
  return layers


def scatter(updates: Any, layers: Mapping[str, Layer], matrices: Mapping[str, jax.Array]) -> Any:
  """`updates` with each layer's ``(d_in + 1, d_out)`` matrix written back: its
  first ``d_in`` rows into the kernel leaf, its last row into the bias leaf."""
  new = {}
  for key, m in matrices.items():
    new[key] = m[:-1]
    if layers[key].bias is not None:
      new[layers[key].bias] = m[-1]

  def put(path, leaf):
    m = new.get(path_key(path))
    return leaf if m is None else m.reshape(leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(put, updates)


def covariances(layer: Layer) -> tuple[jax.Array, jax.Array]:
  """``(A, G) = (aᵀa / n, gᵀg / n)`` in float32 or wider (full precision on TPU)."""
  dtype = jnp.promote_types(layer.a.dtype, jnp.float32)
  a, g = layer.a.astype(dtype), layer.g.astype(dtype)
  n = a.shape[0]
  hi = jax.lax.Precision.HIGHEST
  return jnp.matmul(a.T, a, precision=hi) / n, jnp.matmul(g.T, g, precision=hi) / n


# --------------------------------------------------------------------- capture
def _keystr(path: Path) -> str:
  """A kernel or bias path as the optimizer names it: a keystr is kept, a name
  is a top-level dict key, a tuple is a path of dict keys (ints: sequence)."""
  if isinstance(path, str):
    return path if path.startswith(("[", ".")) else keystr((DictKey(path),))
  return keystr(tuple(SequenceKey(k) if isinstance(k, int) else DictKey(k) for k in path))


class _Tap:
  """What a model calls on each marked layer: ``tap(inputs, outputs, kernel, bias=None)``.

  It records the layer's inputs and adds a zero perturbation to its outputs; the
  cotangent of that perturbation is the gradient of the loss with respect to the
  outputs (the perturbation trick of kfac-jax and flax's ``perturb``)."""

  def __init__(self, perturbations: Optional[Mapping[str, jax.Array]] = None):
    self.perturbations = perturbations
    self.inputs: dict[str, jax.Array] = {}
    self.outputs: dict[str, jax.ShapeDtypeStruct] = {}
    self.biases: dict[str, Optional[str]] = {}

  def __call__(self, inputs: jax.Array, outputs: jax.Array, kernel: Path,
               bias: Optional[Path] = None) -> jax.Array:
    key = _keystr(kernel)
    if key in self.inputs:
      raise ValueError(f"optlab.capture_layer_stats: the layer {key} is tapped twice in one "
                       "forward pass (a shared layer); tap each kernel once")
    self.inputs[key] = jnp.reshape(inputs, (-1, jnp.shape(inputs)[-1]))
    self.outputs[key] = jax.ShapeDtypeStruct(jnp.shape(outputs), jnp.result_type(outputs))
    self.biases[key] = None if bias is None else _keystr(bias)
    if self.perturbations is None:
      return outputs
    return outputs + self.perturbations[key]


def _softmax_cross_entropy(logits, labels):
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  picked = jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)


def _squared_error(outputs, targets):
  return 0.5 * jnp.mean(jnp.sum(jnp.square(outputs - targets), -1))


def conv_patches(x: jax.Array, kernel_shape: tuple, strides: Any = 1, padding: Any = "SAME",
                 dilation: Any = 1) -> jax.Array:
  """The rows of a convolution as a dense layer: ``(n · positions, kh · kw · c_in)``.

  Each row is the input patch that one output position sees, ordered so that
  ``patches @ kernel.reshape(-1, c_out)`` is the convolution (channels-last
  inputs, an ``HWIO`` kernel of shape `kernel_shape`, as flax uses). Pass it as
  the tapped ``inputs`` of a convolution in `capture_layer_stats`; `capture_linen`
  and `capture_nnx` call it for their ``Conv`` layers.

  Args:
    x: ``(batch, *spatial, c_in)`` inputs.
    kernel_shape: ``(*window, c_in, c_out)``.
    strides: int or one per spatial dim.
    padding: ``"SAME"``, ``"VALID"``, an int or one int or (low, high) pair per
      spatial dim.
    dilation: the kernel dilation, int or one per spatial dim.

  Returns:
    The patches, one row per (example, output position).

  References:
    Grosse & Martens, "A Kronecker-factored approximate Fisher matrix for
    convolution layers", arXiv:1602.01407 (the patch expansion of KFC).
  """
  window, nd = tuple(kernel_shape[:-2]), len(kernel_shape) - 2
  per_dim = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)
  if not isinstance(padding, str):
    padding = [(p, p) if isinstance(p, int) else tuple(p) for p in per_dim(padding)]
  spatial = "".join("HWDXYZ"[:nd])
  numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  p = jax.lax.conv_general_dilated_patches(x, window, per_dim(strides), padding,
                                           rhs_dilation=per_dim(dilation),
                                           dimension_numbers=numbers)
  c_in = x.shape[-1]  # features come out channel-major: (c_in, *window) -> (*window, c_in)
  p = jnp.moveaxis(p.reshape(p.shape[:-1] + (c_in,) + window), nd + 1, -1)
  return p.reshape(-1, c_in * math.prod(window))


def _conv_inputs(mod: Any, x: jax.Array, kernel_shape: tuple) -> jax.Array:
  """A flax (linen or nnx) ``Conv``'s inputs as `conv_patches` rows."""
  name = type(mod).__name__
  if mod.feature_group_count != 1 or mod.input_dilation not in (1, None) or (
      isinstance(mod.padding, str) and mod.padding not in ("SAME", "VALID")):
    raise NotImplementedError(
        f"optlab.capture_layer_stats: {name} with feature_group_count="
        f"{mod.feature_group_count}, input_dilation={mod.input_dilation}, padding="
        f"{mod.padding!r} has no patch statistics here (grouped, input-dilated and "
        "circular/causal convolutions); tap it yourself or leave it to the fallback rule")
  if x.ndim == len(kernel_shape) - 1:  # an unbatched input
    x = x[None]
  return conv_patches(x, kernel_shape, mod.strides or 1, mod.padding, mod.kernel_dilation or 1)


# loss name -> (mean loss over rows, sampler of targets from the model's distribution)
LOSSES = {
    "softmax_cross_entropy": (
        _softmax_cross_entropy, lambda key, logits: jax.random.categorical(key, logits)),
    "squared_error": (
        _squared_error, lambda key, out: out + jax.random.normal(key, out.shape, out.dtype)),
}


def capture_layer_stats(apply_fn: Callable, params: Any, *args: Any, targets: Any,
                        loss: Union[str, Callable] = "softmax_cross_entropy",
                        fisher: str = "empirical", key: Optional[jax.Array] = None
                        ) -> tuple[jax.Array, Any, dict[str, LayerStats]]:
  """The loss, its gradient and the layer statistics of a pure-JAX model, in one pass.

  ``apply_fn(params, *args, tap=tap)`` returns the model's outputs (logits, or
  predictions for ``"squared_error"``) with one row per example on the leading
  axes. It marks each layer whose statistics it wants by passing its
  pre-activation outputs through the tap::

      h = tap(x, x @ params["w1"] + params["b1"], "w1", bias="b1")

  (``kernel`` and ``bias`` name leaves of `params`: a top-level key, a tuple of
  keys, or a ``keystr``). Everything is jax-traceable: call it inside ``jit``.

  Args:
    apply_fn: the model, ``(params, *args, tap) -> outputs``.
    params: its parameters (any pytree).
    *args: the model's other inputs (the batch).
    targets: the batch labels (integer classes for cross-entropy) or targets.
    loss: ``"softmax_cross_entropy"``, ``"squared_error"``, or a function
      ``(outputs, targets) -> mean loss`` (empirical Fisher only).
    fisher: ``"empirical"`` (output gradients with the batch's targets) or
      ``"true"`` (with targets sampled from the model's predictive
      distribution, one more backward pass; needs `key`).
    key: a PRNG key, for ``fisher="true"``.

  Returns:
    ``(loss, grads, layer_stats)``: the mean loss on the batch targets, its
    gradient with respect to `params`, and a dict from each tapped kernel's
    path to its `LayerStats`, the extra arg ``layer_stats`` of K-FAC-style
    recipes.

  References:
    Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored
    Approximate Curvature", arXiv:1503.05671 (section 5, sampled targets for
    the true Fisher).
  """
  if fisher not in ("empirical", "true"):
    raise ValueError(f"optlab.capture_layer_stats: fisher must be 'empirical' or 'true', "
                     f"got {fisher!r}")
  if isinstance(loss, str):
    if loss not in LOSSES:
      raise ValueError(f"optlab.capture_layer_stats: loss must be one of {sorted(LOSSES)} or a "
                       f"function, got {loss!r}")
    loss_fn, sample = LOSSES[loss]
  elif fisher == "true":
    raise ValueError("optlab.capture_layer_stats: fisher='true' samples targets from the model, "
                     f"which needs a named loss ({sorted(LOSSES)}), not a function")
  else:
    loss_fn, sample = loss, None
  if fisher == "true" and key is None:
    raise ValueError("optlab.capture_layer_stats: fisher='true' needs key= (a PRNG key)")

  probe = _Tap()  # a shape-only pass finds the tapped layers
  jax.eval_shape(lambda p: apply_fn(p, *args, tap=probe), params)
  zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in probe.outputs.items()}

  def forward(p, perturbations):
    tap = _Tap(perturbations)
    return apply_fn(p, *args, tap=tap), tap.inputs

  outputs, vjp, inputs = jax.vjp(forward, params, zeros, has_aux=True)
  value, d_outputs = jax.value_and_grad(loss_fn)(outputs, targets)
  grads, d_taps = vjp(d_outputs)
  if fisher == "true":
    sampled = jax.lax.stop_gradient(sample(key, outputs))
    _, d_taps = vjp(jax.grad(loss_fn)(outputs, sampled))
  rows = math.prod(jnp.shape(outputs)[:-1])  # the loss is a mean over these
  stats = {k: LayerStats(inputs[k], jnp.reshape(d_taps[k] * rows, (-1, d_taps[k].shape[-1])),
                         probe.biases[k]) for k in inputs}
  return value, grads, stats


def capture_linen(module: Any, params: Any, *args: Any, targets: Any,
                  variables: Optional[Mapping[str, Any]] = None, **kwargs: Any
                  ) -> tuple[jax.Array, Any, dict[str, LayerStats]]:
  """`capture_layer_stats` for a flax linen module: every ``nn.Dense`` and
  ``nn.Conv`` (on its `conv_patches`) it calls is tapped (through
  ``nn.intercept_methods``), keyed by its kernel's path in `params` (the
  ``"params"`` collection), e.g. ``"['Dense_0']['kernel']"``.

  Args:
    module: the linen module; ``module.apply({"params": params, **variables}, *args)``
      gives its outputs.
    params: its ``"params"`` collection (what the optimizer updates).
    *args: the batch inputs.
    targets: the batch labels or targets.
    variables: other collections (e.g. ``"batch_stats"``), read-only.
    **kwargs: `loss`, `fisher` and `key`, as in `capture_layer_stats`.

  Returns:
    ``(loss, grads, layer_stats)`` as `capture_layer_stats`, with `grads` shaped
    like `params`.

  References:
    Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored
    Approximate Curvature", arXiv:1503.05671.
  """
  import flax.linen as nn

  def apply_fn(p, *inputs, tap):
    def intercept(call, a, kw, context):
      mod = context.module
      if context.method_name != "__call__" or not isinstance(mod, (nn.Dense, nn.Conv)):
        return call(*a, **kw)
      x, y = a[0] if a else kw["inputs"], call(*a, **kw)
      if isinstance(mod, nn.Conv):
        x = _conv_inputs(mod, x, mod.variables["params"]["kernel"].shape)
      bias = mod.path + ("bias",) if mod.use_bias else None
      return tap(x, y, mod.path + ("kernel",), bias)

    with nn.intercept_methods(intercept):
      return module.apply({"params": p, **(variables or {})}, *inputs)

  return capture_layer_stats(apply_fn, params, *args, targets=targets, **kwargs)


@contextlib.contextmanager
def _tapping(layer_types: tuple, tap, paths: Mapping[int, tuple]):
  """Routes every call of a layer in `paths` (id -> path) through `tap`, by
  patching the ``__call__`` of `layer_types` (``nnx.Linear``, ``nnx.Conv``)
  while the model runs."""
  calls = {cls: cls.__call__ for cls in layer_types}

  def tapped(self, x, *args, **kwargs):
    call = next(c for cls, c in calls.items() if isinstance(self, cls))
    y, path = call(self, x, *args, **kwargs), paths.get(id(self))
    if path is None:  # a layer of another model
      return y
    if hasattr(self, "kernel_size"):
      x = _conv_inputs(self, x, self.kernel.shape)
    bias = path + ("bias",) if self.bias is not None else None
    return tap(x, y, path + ("kernel",), bias)

  for cls in layer_types:
    cls.__call__ = tapped
  try:
    yield
  finally:
    for cls, call in calls.items():
      cls.__call__ = call


def capture_nnx(model: Any, *args: Any, targets: Any, **kwargs: Any
                ) -> tuple[jax.Array, Any, dict[str, LayerStats]]:
  """`capture_layer_stats` for a flax nnx model: every ``nnx.Linear`` and
  ``nnx.Conv`` (on its `conv_patches`) it calls is tapped, keyed by its
  kernel's path in ``nnx.state(model, nnx.Param)``, e.g.
  ``"['hidden']['kernel']"``, as ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
  passes the params to the transformation.

  Args:
    model: the nnx model; ``model(*args)`` gives its outputs.
    *args: the batch inputs.
    targets: the batch labels or targets.
    **kwargs: `loss`, `fisher` and `key`, as in `capture_layer_stats`.

  Returns:
    ``(loss, grads, layer_stats)`` as `capture_layer_stats`; `grads` is an
    ``nnx.State`` of the params, as ``nnx.grad`` gives it, for
    ``optimizer.update(model, grads, layer_stats=layer_stats)``.

  References:
    Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored
    Approximate Curvature", arXiv:1503.05671.
  """
  from flax import nnx
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(p, *inputs, tap):
    m = nnx.merge(graphdef, p, rest)
    layer_types = (nnx.Linear, nnx.Conv)
    paths = {id(node): tuple(path) for path, node in nnx.iter_graph(m)
             if isinstance(node, layer_types)}
    with _tapping(layer_types, tap, paths):
      return m(*inputs)

  return capture_layer_stats(apply_fn, params, *args, targets=targets, **kwargs)
