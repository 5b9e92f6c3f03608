"""Kronecker-factored bases: `in_eigenbasis` (SOAP) and Shampoo's inverse-root preconditioner.

Both keep, for every tensor, one statistic per dimension (L = EMA(G G^T),
R = EMA(G^T G) for a matrix, the contraction over all other axes for higher
ranks). The blocks of every tensor are stacked by shape (`linalg.BlockStacks`),
and the factors are held as stacked arrays ``(n_blocks, b, b)``, one per
block shape and dimension, so that

* statistics, rotations and decompositions (eigh, QR, inverse roots) run as
  one batched call per distinct block shape: compile time grows with the
  number of shapes, not of leaves (XLA compiles one kernel per distinct op);
* the leading block axis is what `optlab.state_sharding` splits over devices
  (``block_multiple`` pads it to divide evenly), so that each device stores
  and refreshes its share of the blocks, as in distributed Shampoo.

`in_eigenbasis(inner)` runs any inner transformation on the rotated blocks,
vmapped over the block axis (so it sees every block as its own tensor), and
on the leaves without a factor as they are; it re-expresses the inner state
through the basis protocol (`basis.rebase_state`) whenever the basis is
refreshed. SOAP is ``in_eigenbasis(scale_by_adam(...))``.

The stacked state's structure depends on the params' shapes, which
`optax.tree_map_params` cannot see (it calls ``init`` on an opaque
placeholder): to it the stacked fields are one non-param value each. Use
`optlab.state_sharding` for their shardings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype, tree_accumulation_dtype
from optlab._src.layout import TreeLayout, check_layout
from optlab._src.numerics import clip_finite, safe_div, safe_square, saturate
from optlab._src.tree import zeros_like
from optlab.primitives import linalg
from optlab.primitives.basis import (COUNT, INVARIANT_STAT, NESTED, OPAQUE_STAT, SECOND_MOMENT,
                                     declare_state, rebase_state)
from optlab.primitives.normalize import segment_norms, tensor_norm

__all__ = ["EigenbasisState", "StackedInnerState", "in_eigenbasis", "scale_by_newton_schulz",
           "ShampooState", "scale_by_shampoo"]


# ------------------------------------------------------------------- helpers
def _factor_dtype(factors: tuple, leaves: list) -> Any:
  """The factors' dtype: the state's, or (no factors) what `init` would pick."""
  for group in factors:
    for f in group:
      return f.dtype
  return tree_accumulation_dtype(leaves)


def _stacked_updates(where: str, state: Any, updates: Any, make_plan, block_multiple: int,
                     route: Optional[linalg.MeshRoute]):
  """The updates' leaves, treedef, `BlockStacks` (split over `route`, if any), factor
  dtype and stacked blocks (in that dtype), after checking them against the
  state's layout."""
  leaves, treedef = jax.tree.flatten(updates)
  check_layout(where, state.layout, updates)
  stacks = linalg.BlockStacks(leaves, make_plan, block_multiple, route, _specs(route, updates))
  dtype = _factor_dtype(state.stats, leaves)
  return leaves, treedef, stacks, dtype, stacks.stack(leaves, dtype)


def _specs(route: Optional[linalg.MeshRoute], tree: Any) -> Optional[list]:
  """The leaves' specs of `tree` that `route` knows (`MeshRoute.specs_of`), or None."""
  return None if route is None else route.specs_of(tree)


def _update_stats(stacks: linalg.BlockStacks, blocks: list, old: tuple, w_old: Any,
                  w_new: Any) -> tuple:
  """Per group and rotated dimension: w_old * old + w_new * (contraction of the blocks)."""
  return tuple(tuple(clip_finite(w_old * s + w_new * n)
                     for s, n in zip(old[k], linalg.outer_stats(gb, stacks.dims(k))))
               for k, gb in enumerate(blocks))


def _by_size(fn, route: Optional[linalg.MeshRoute], *fields: tuple,
             common: Optional[float] = None) -> tuple:
  """`linalg.by_size` over factor fields (per group, per dimension), nested back
  alike; on a mesh (`route`), joined where the blocks lie (``groups``)."""
  flat = [[f for group in field for f in group] for field in fields]
  it = iter(linalg.by_size(fn, *flat, groups=1 if route is None else route.size, common=common))
  return tuple(tuple(next(it) for _ in group) for group in fields[0])


def _rotate(stacks: linalg.BlockStacks, factors: tuple, blocks: list, back: bool,
            compute_dtype: Any = None) -> list:
  """Every group's blocks in (or, with `back`, out of) the basis `factors`."""
  return [linalg.apply_factors(b, stacks.with_factors(k, factors[k]), transpose=back,
                               compute_dtype=compute_dtype)
          for k, b in enumerate(blocks)]




# ---------------------------------------------------------------- eigenbasis
@declare_state(blocks=NESTED, rest=NESTED)
class StackedInnerState(NamedTuple):
  """The inner transformation's state under `in_eigenbasis`."""
  blocks: tuple  # per stacked group, its state on the (n_blocks, *block) rotated blocks
                 # (vmapped: every field has the leading block axis)
  rest: Any      # its state on the leaves without a factor (a list, in tree order)


# The factors and eigenvectors cannot follow an outer change (OPAQUE: nesting this
# wrapper in another basis wrapper is refused); the moment walkers enter inner_state.
@declare_state(count=COUNT, layout=INVARIANT_STAT, stats=OPAQUE_STAT, basis=OPAQUE_STAT,
               inner_state=NESTED)
class EigenbasisState(NamedTuple):
  count: jax.Array  # [], int32: calls so far (the first only builds the basis)
  layout: Any  # TreeLayout: the leaves the state was built for (static, no arrays)
  stats: tuple  # per stacked group (linalg.BlockStacks) and rotated dimension, an
                # (n_blocks, b, b) float32 array (float64 for float64 params): the
                # Kronecker factors, EMA of G G^T
  basis: tuple  # same shapes: the factors' eigenvectors
  inner_state: Any  # StackedInnerState; a scalar for a tree without leaves (and for
                    # the placeholder of optax.tree_map_params)


class _EigenChange:
  """The basis protocol's change of one stacked group, from one eigenbasis to the next.

  linear: rotate back with the old basis, into the new one (exact).
  second: re-order each rotated dimension by the permutation that sorted the
  estimated eigenvalues, as the official SOAP code does with its exp_avg_sq.
  """

  def __init__(self, dims, full_old, full_new, perms, dtype):
    self.dims, self.old, self.new, self.perms, self.dtype = dims, full_old, full_new, perms, dtype

  def linear(self, tree):
    def leaf(x):
      y = linalg.apply_factors(x.astype(self.dtype), self.old, transpose=True)
      return linalg.apply_factors(y, self.new).astype(x.dtype)

    return jax.tree.map(leaf, tree)

  def second(self, tree):
    def leaf(x):
      for d, perm in zip(self.dims, self.perms):
        x = linalg.permute(x, perm, d + 1)
      return x

    return jax.tree.map(leaf, tree)


def _no_leaves(params: Any) -> bool:
  """Whether `params` has no leaves: an empty tree, or optax.tree_map_params's
  placeholder. Their stacked fields are `_unstacked()`, a single leaf, so that the
  placeholder's state stays a prefix of every real one (see the module doc)."""
  return not jax.tree.leaves(params)


def _unstacked() -> jax.Array:
  return jnp.zeros([], jnp.int32)


def in_eigenbasis(inner: optax.GradientTransformation, precondition_frequency: int = 10,
                  shampoo_beta: Any = 0.95, max_precond_dim: int = 10000,
                  *, merge_dims: bool = False, precondition_1d: bool = False,
                  block_multiple: int = 1, axis_name: Any = None,
                  compute_dtype: Any = None, canonical_order: bool = False
                  ) -> optax.GradientTransformationExtraArgs:
  """Runs `inner` in the eigenbasis of Shampoo's Kronecker factors (SOAP's basis).

  For each tensor G (after `merge_dims`, see `linalg.merge_dims`), one factor
  per dimension of size <= max_precond_dim: L_i <- shampoo_beta * L_i +
  (1 - shampoo_beta) * G_(i) G_(i)^T (G_(i) the mode-i unfolding), with
  eigenvectors Q_i. Each step, as the official SOAP code (nikhilvyas/SOAP):

  1. the first call only accumulates the factors and sets Q_i = eigh(L_i)
     (descending eigenvalues); its update is zero and `inner` is not called;
  2. later calls rotate the gradient in, G' = G x_i Q_i^T (Q_L^T G Q_R for a
     matrix), run `inner` on G' (and on the params rotated the same way),
     rotate its update back, U = U' x_i Q_i, then update the factors with G;
  3. after every `precondition_frequency`-th call of `inner`, refresh each
     Q_i by one power iteration and a QR, ordered by the estimated
     eigenvalues (`linalg.refresh_eigenbasis`), and re-express `inner`'s
     state through the basis protocol: linear fields (momenta) are rotated
     exactly into the new basis, second-moment fields are permuted as the
     eigenvalues were.

  Dimensions larger than `max_precond_dim` stay unrotated and get no factor;
  1-d tensors get none unless `precondition_1d`; scalars never do. Nor do
  dimensions of size 1, where the official code keeps a 1 x 1 factor: its
  basis is +-1 and cancels exactly between the rotations in and out. No n x n
  matrix is allocated for a dimension that is not rotated.

  The tensors with a factor are stacked by shape (see the module doc), and
  `inner` runs vmapped over each stack: it sees every tensor on its own, in
  its merged shape (``merge_dims``; axes sorted with ``canonical_order``),
  so element-wise and per-tensor rules behave as on the unstacked tree; a
  rule that couples tensors (a global norm) sees one tensor at a time. The
  other leaves reach `inner` together, as a list.

  Args:
    inner: any transformation whose state is declared with `declare_state`
      (every primitive of optlab, optax's Adam, Lion, trace, ...).
    precondition_frequency: refresh the basis every this many inner steps.
    shampoo_beta: decay of the factors' EMA (SOAP uses Adam's b2 by default).
    max_precond_dim: largest dimension that gets a factor.
    merge_dims: merge consecutive small dimensions of tensors of rank >= 2
      while their product is <= max_precond_dim (SOAP's ``merge_dims``).
    precondition_1d: give 1-d tensors a factor too.
    block_multiple: pad every stack of blocks with zero blocks to a multiple
      of this, e.g. the number of devices `optlab.state_sharding` splits the
      state over (a block axis that does not divide stays replicated).
    axis_name: under pmap (or shard_map) with the state whole on every
      device, the axis whose devices share the decompositions: each computes
      1/n of them and they are all-gathered (`linalg.split_over_axis`). Under
      jit over a mesh, the `jax.sharding.Mesh`, or its `optlab.mesh_route`
      (the route the blocks take onto it, from the params' shardings): each
      device decomposes the blocks it holds (set ``block_multiple`` to the
      mesh's size and place the state with `optlab.state_sharding`), and the
      stacked blocks are held split that way (its axes ``AxisType.Auto``,
      `Mesh`'s default; `linalg.check_axis_name`). None: every device
      computes all.
    compute_dtype: None (float32 rotations at full precision) or e.g.
      ``jnp.bfloat16``: the rotations' inputs in that dtype, accumulated in
      float32 (`linalg.check_compute_dtype`); the factors and bases stay
      float32.
    canonical_order: stack blocks that match with their axes sorted by size
      (`linalg.BlockPlan.make`'s ``canonical``): a (256, 64) matrix joins the
      (64, 256) stack, so the pair compiles once (~11% of SOAP's compile
      time on a transformer tree). A stack keeps the orientation most of its
      blocks have, and a block alone in its stack (an embedding) keeps its
      own. The rotation is the same; `inner` sees the other blocks
      transposed, which changes nothing for element-wise rules and
      per-tensor norms (every SOAP recipe sets it) but does for rules that
      treat rows and columns apart.
  """
  V.check_range("in_eigenbasis", "precondition_frequency", precondition_frequency, 1)
  V.check_range("in_eigenbasis", "max_precond_dim", max_precond_dim, 1)
  V.check_range("in_eigenbasis", "block_multiple", block_multiple, 1)
  V.check_decay("in_eigenbasis", "shampoo_beta", shampoo_beta)
  compute_dtype = linalg.check_compute_dtype("in_eigenbasis", compute_dtype)
  route = linalg.check_axis_name("in_eigenbasis", axis_name)
  inner = optax.with_extra_args_support(inner)
  split = lambda fn: linalg.split_over_axis(fn, axis_name)

  def make_plan(shape):
    plan = linalg.BlockPlan.make(shape, max_dim=max_precond_dim, merge=merge_dims,
                                 min_ndim=1 if precondition_1d else 2, canonical=canonical_order)
    # A dimension of size 1 gets no factor: its basis is +-1, applied on the way in
    # and out (and to the momentum at a refresh), which cancels exactly; skipping
    # it spares a decomposition loop of 1 x 1 matrices (1x1 convs, (1, d) leaves).
    return dataclasses.replace(plan, rotated=tuple(r and d > 1 for r, d in
                                                   zip(plan.rotated, plan.merged)))

  def init(params):
    if _no_leaves(params):
      return EigenbasisState(jnp.zeros([], jnp.int32), _unstacked(), _unstacked(), _unstacked(),
                             _unstacked())
    leaves = jax.tree.leaves(params)
    stacks = linalg.BlockStacks(leaves, make_plan, block_multiple, route, _specs(route, params))
    dtype = tree_accumulation_dtype(leaves)
    blocks = tuple(jax.vmap(inner.init)(b) for b in stacks.stack(leaves))
    rest = inner.init([leaves[i] for i in stacks.rest])
    return EigenbasisState(jnp.zeros([], jnp.int32), TreeLayout.of(params), stacks.zeros(dtype),
                           stacks.identity(dtype), StackedInnerState(blocks, rest))

  def update(updates, state, params=None, **extra):
    if _no_leaves(updates):
      return updates, state._replace(count=optax.safe_increment(state.count))
    leaves, treedef, stacks, dtype, g = _stacked_updates("in_eigenbasis", state, updates,
                                                         make_plan, block_multiple, route)
    stats = _update_stats(stacks, g, state.stats, shampoo_beta, 1 - shampoo_beta)
    basis = state.basis
    rest_g = [leaves[i] for i in stacks.rest]
    p_leaves = None if params is None else treedef.flatten_up_to(params)
    typed = lambda blocks: [b.astype(k[2]) for b, k in zip(blocks, stacks.keys)]

    def first(_):
      zeros = [jnp.zeros_like(b) for b in g]
      return zeros, jax.tree.map(jnp.zeros_like, rest_g), state.inner_state

    def refresh(args):
      inner_state, old = args
      pairs = _by_size(split(lambda s, q: linalg.refresh_eigenbasis(s, q, state.count == 0)),
                       route, stats, old)
      new = tuple(tuple(q.astype(dtype) for q, _ in pk) for pk in pairs)
      blocks = tuple(rebase_state(bs, _EigenChange(stacks.dims(k), stacks.with_factors(k, old[k]),
                                                   stacks.with_factors(k, new[k]),
                                                   [p for _, p in pairs[k]], dtype))
                     for k, bs in enumerate(inner_state.blocks))
      return inner_state._replace(blocks=blocks), new

    def step(_):
      inner_state = state.inner_state
      rot_g = typed(_rotate(stacks, basis, g, False, compute_dtype))
      if p_leaves is None:
        rot_p = [None] * len(rot_g)
        rest_p = None
      else:
        rot_p = typed(_rotate(stacks, basis, stacks.stack(p_leaves, dtype), False, compute_dtype))
        rest_p = [p_leaves[i] for i in stacks.rest]
      outs, blocks = [], []
      for gb, pb, sb in zip(rot_g, rot_p, inner_state.blocks):
        one = lambda u, s, p: inner.update(u, s, p, **extra)
        u, s = jax.vmap(one, in_axes=(0, 0, None if pb is None else 0))(gb, sb, pb)
        outs.append(u.astype(dtype))
        blocks.append(s)
      rest_u, rest = inner.update(rest_g, inner_state.rest, rest_p, **extra)
      u = _rotate(stacks, basis, outs, True, compute_dtype)
      return u, rest_u, StackedInnerState(tuple(blocks), rest)

    u, rest_u, inner_state = jax.lax.cond(state.count == 0, first, step, None)
    due = state.count % precondition_frequency == 0  # state.count = inner steps done now
    inner_state, new = jax.lax.cond(due, refresh, lambda a: a, (inner_state, basis))
    out = stacks.unstack(u, leaves)
    for i, x in zip(stacks.rest, rest_u):
      out[i] = x
    return (jax.tree.unflatten(treedef, out),
            EigenbasisState(optax.safe_increment(state.count), state.layout, stats, new,
                            inner_state))

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------- Newton-Schulz
def scale_by_newton_schulz(ns_steps: int = 5,
                           ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
                           eps: Any = 1e-7, consistent_rms: Optional[Any] = None,
                           compute_dtype: Any = None, axis_name: Any = None
                           ) -> optax.GradientTransformationExtraArgs:
  """Orthogonalises each matrix update with Muon's quintic Newton-Schulz iteration.

  u <- s * NS(u) for every tensor of rank >= 2 (ranks > 2 are viewed as
  (prod(shape[:-1]), shape[-1]), JAX's (fan_in, fan_out) layout); vectors and
  scalars pass unchanged. The scale s is sqrt(max(1, fan_out / fan_in))
  (Keller Jordan's ``max(1, rows / cols) ** 0.5`` for PyTorch's (out, in)
  weights, optax's width scaling), or with ``consistent_rms`` r,
  r * sqrt(max(fan_in, fan_out)) ("Muon is Scalable for LLM Training",
  arXiv:2502.16982, which uses r = 0.2). See `linalg.newton_schulz`. The
  matrices of one shape and dtype are orthogonalised as one stack (one
  batched iteration per shape, so compile time does not grow with the
  number of layers). ``compute_dtype`` (e.g. ``jnp.bfloat16``, as the
  official code) gives the iteration's products inputs in that dtype,
  accumulated in float32. ``axis_name``: under pmap (the updates whole on
  every device), the axis whose devices share the iterations, each running
  1/n of the matrices; under jit, a `jax.sharding.Mesh` (or its
  `optlab.mesh_route`): the stacks are split over its devices on their
  matrix axis (padded with zero matrices to divide), so that each device
  orthogonalises whole matrices (a mesh of ``AxisType.Auto`` axes,
  `linalg.check_axis_name`). Without it,
  matrices split FSDP-style across devices are gathered inside every
  iteration (8-way FSDP, 146-leaf tree: 151 MB per device and step).
  """
  V.check_range("scale_by_newton_schulz", "ns_steps", ns_steps, 1)
  compute_dtype = linalg.check_compute_dtype("scale_by_newton_schulz", compute_dtype)
  route = linalg.check_axis_name("scale_by_newton_schulz", axis_name)
  V.check_nonneg("scale_by_newton_schulz", "eps", eps)

  def scale(fan_in, fan_out):
    if consistent_rms is None:
      return max(1.0, fan_out / fan_in) ** 0.5
    return consistent_rms * max(fan_in, fan_out) ** 0.5

  def as_matrix(shape):
    """One (fan_in, fan_out) block; no factor (passed through) below rank 2 or empty."""
    merged = (math.prod(shape[:-1]), shape[-1]) if len(shape) >= 2 else tuple(shape)
    rotated = (len(shape) >= 2 and math.prod(shape) > 0,) * len(merged)
    return linalg.BlockPlan(tuple(shape), merged, merged, (1,) * len(merged), rotated)

  # on a mesh the stacks are split on their matrix axis, which the batched
  # iteration keeps: no shard_map needed
  orthogonalise = linalg.split_over_axis(
      lambda x: linalg.newton_schulz(x, ns_steps, ns_coeffs, eps, compute_dtype),
      None if route is not None else axis_name)

  def update(updates, state, params=None, **extra):
    del params, extra
    leaves, treedef = jax.tree.flatten(updates)
    stacks = linalg.BlockStacks(leaves, as_matrix, 1 if route is None else route.size, route,
                                _specs(route, updates))
    out = []
    for k, x in enumerate(stacks.stack(leaves)):
      y = orthogonalise(x)
      out.append(scale(*stacks.block_shape(k)) * y.astype(accumulation_dtype(x.dtype)))
    return jax.tree.unflatten(treedef, stacks.unstack(out, leaves)), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


# ------------------------------------------------------------------- Shampoo
_GRAFTS = ("sgd", "adagrad", "rmsprop", "rmsprop_normalized")


@declare_state(count=COUNT, layout=INVARIANT_STAT, stats=OPAQUE_STAT, roots=OPAQUE_STAT,
               graft_nu=SECOND_MOMENT)
class ShampooState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  layout: Any  # TreeLayout: the leaves the state was built for (static, no arrays)
  stats: Any  # per stacked group (linalg.BlockStacks) and dimension, an (n_blocks, b, b)
              # float32 array (float64 for float64 params): the Kronecker statistics;
              # a scalar for a tree without leaves
  roots: Any  # same shapes: their inverse p-th roots
  graft_nu: Any     # param-shaped tree, float32+: the grafting method's diagonal statistic;
                    # () for sgd grafting


def scale_by_shampoo(block_size: int = 128, b2: Any = 0.999, matrix_eps: Any = 1e-6,
                     diagonal_eps: Any = 1e-10, graft_type: str = "sgd",
                     start_preconditioning_step: int = 5, statistics_compute_steps: int = 1,
                     preconditioning_compute_steps: int = 1, max_precond_dim: int = 4096,
                     exponent_override: Optional[int] = None, *, block_multiple: int = 1,
                     axis_name: Any = None, compute_dtype: Any = None
                     ) -> optax.GradientTransformationExtraArgs:
  """Shampoo's preconditioned, grafted direction (arXiv:1802.09568, 2002.09018).

  The chain statistics -> inverse roots -> preconditioning -> grafting, as
  distributed Shampoo (google-research ``scalable_shampoo``):

  1. every `statistics_compute_steps` steps, for each block of each tensor
     (dimensions merged while <= block_size, then cut into blocks of
     block_size; `linalg.BlockPlan`) and each of its k dimensions:
     L_i <- b2 L_i + (1 - b2) G_(i) G_(i)^T (b2 = 1: a running sum);
  2. every `preconditioning_compute_steps` steps, P_i = (L_i + eps I)^(-1/p),
     p = 2k (or `exponent_override`), eps = matrix_eps * max(lambda_max,
     1e-6), by eigh (`linalg.inverse_pth_root`; a failed root keeps the
     previous one); the statistics of every size are padded to the
     largest, as distributed Shampoo pads them to one size, so that one
     decomposition loop serves all (`linalg.by_size`'s ``common``; the
     padding changes no root);
  3. the preconditioned direction S = G x_i P_i, block by block;
  4. grafting: the direction D of `graft_type` ("sgd": G; "adagrad":
     G / (sqrt(sum G^2) + diagonal_eps); "rmsprop": G / (sqrt(EMA_b2 G^2) +
     diagonal_eps); "rmsprop_normalized": the same on G / ||G||), and the
     update S * ||D|| / (||S|| + 1e-16) per tensor;
  5. before `start_preconditioning_step` (0-based steps), the update is D.

  Tensors with a dimension above `max_precond_dim` (distributed Shampoo's
  ``skip_preconditioning_dim_size_gt``) and scalars are not preconditioned:
  their update is D. Momentum, decay and the learning rate are separate
  links (see the `shampoo` recipe). The blocks are stacked by shape
  (`linalg.BlockStacks`, axes sorted by size, so that (128, 64) blocks join the
  (64, 128) ones): every step is one batched op per block shape, and
  ``block_multiple`` pads each stack to a multiple of that many blocks (the
  number of devices `optlab.state_sharding` splits the state over). With
  ``axis_name`` (pmap or shard_map, the state whole on every device), the
  devices of that axis share the inverse roots: each computes 1/n of them;
  with a `jax.sharding.Mesh` of ``AxisType.Auto`` axes (jit), or its
  `optlab.mesh_route`, each computes those of the blocks it holds, and the
  stacked blocks are held split that way.
  ``compute_dtype`` (e.g. ``jnp.bfloat16``) gives the preconditioning
  products inputs in that dtype, accumulated in float32; the statistics and
  roots stay float32.
  """
  where = "scale_by_shampoo"
  V.check_choice(where, "graft_type", graft_type, _GRAFTS)
  V.check_range(where, "block_size", block_size, 1)
  V.check_range(where, "b2", b2, 0.0, 1.0)
  for name in ("statistics_compute_steps", "preconditioning_compute_steps"):
    V.check_range(where, name, locals()[name], 1)
  V.check_nonneg(where, "matrix_eps", matrix_eps)
  V.check_nonneg(where, "diagonal_eps", diagonal_eps)
  V.check_range(where, "block_multiple", block_multiple, 1)
  compute_dtype = linalg.check_compute_dtype(where, compute_dtype)
  route = linalg.check_axis_name(where, axis_name)

  def make_plan(shape):
    plan = linalg.BlockPlan.make(shape, merge=True, merge_limit=block_size,
                                 block_size=block_size, min_ndim=1, canonical=True)
    if any(d > max_precond_dim for d in shape):
      plan = dataclasses.replace(plan, rotated=(False,) * len(plan.rotated))
    return plan

  def init(params):
    nu = () if graft_type == "sgd" else jax.tree.map(
        lambda p: zeros_like(p, accumulation_dtype(p.dtype)), params)
    if _no_leaves(params):
      return ShampooState(jnp.zeros([], jnp.int32), _unstacked(), _unstacked(), _unstacked(), nu)
    leaves = jax.tree.leaves(params)
    stacks = linalg.BlockStacks(leaves, make_plan, block_multiple)
    dtype = tree_accumulation_dtype(leaves)
    return ShampooState(jnp.zeros([], jnp.int32), TreeLayout.of(params), stacks.zeros(dtype),
                        stacks.identity(dtype), nu)

  def exponents(stacks):
    return [2 * len(stacks.block_shape(k)) if exponent_override is None else exponent_override
            for k in range(len(stacks.keys))]

  def graft(g, nu):
    dt = accumulation_dtype(g.dtype)
    g = g.astype(dt)
    if graft_type == "sgd":
      return g, nu
    if graft_type == "rmsprop_normalized":
      g = safe_div(g, tensor_norm(g))
    if graft_type == "adagrad":
      nu = saturate(nu + safe_square(g))
    else:
      w2 = 1.0 if isinstance(b2, (int, float)) and b2 == 1 else 1 - b2
      nu = saturate(b2 * nu + w2 * safe_square(g))
    return g / (jnp.sqrt(nu) + diagonal_eps), nu

  def update(updates, state, params=None, **extra):
    del params, extra
    if _no_leaves(updates):
      return updates, state._replace(count=optax.safe_increment(state.count))
    leaves, treedef, stacks, dtype, g = _stacked_updates("scale_by_shampoo", state, updates,
                                                         make_plan, block_multiple, route)
    count = state.count
    w1, w2 = (b2, 1.0) if isinstance(b2, (int, float)) and b2 == 1 else (b2, 1 - b2)
    due = count % statistics_compute_steps == 0
    new = _update_stats(stacks, g, state.stats, w1, w2)
    stats = jax.tree.map(lambda n, o: jnp.where(due, n, o), new, state.stats)

    exps = tuple(tuple(jnp.full((s.shape[0], 1), p, dtype) for s in sk)
                 for sk, p in zip(stats, exponents(stacks)))

    def compute_roots(roots):
      root = lambda s, r, p: linalg.inverse_pth_root(s, p, matrix_eps, r).astype(dtype)
      return _by_size(linalg.split_over_axis(root, axis_name), route, stats, roots, exps,
                      common=linalg.RIDGE_FLOOR)

    roots = jax.lax.cond(count % preconditioning_compute_steps == 0, compute_roots,
                         lambda r: r, state.roots)
    if graft_type == "sgd":
      pairs = [graft(x, None) for x in leaves]
    else:
      pairs = [graft(x, n) for x, n in zip(leaves, treedef.flatten_up_to(state.graft_nu))]
    nu = () if graft_type == "sgd" else jax.tree.unflatten(treedef, [n for _, n in pairs])
    directions = [d for d, _ in pairs]
    # S * ||D|| / (||S|| + 1e-16) per tensor, the norms computed stack by stack
    d_blocks = g if graft_type == "sgd" else stacks.stack(directions, dtype)
    scaled = []
    for k, s_k in enumerate(_rotate(stacks, roots, g, False, compute_dtype)):
      ids, n = stacks.segments(k)
      ratio = segment_norms(d_blocks[k], ids, n) / (segment_norms(s_k, ids, n) + 1e-16)
      scaled.append(s_k * ratio[ids].reshape((-1,) + (1,) * (s_k.ndim - 1)).astype(dtype))
    precond = stacks.unstack(scaled, leaves, dtype)
    run = count >= start_preconditioning_step
    rest = set(stacks.rest)

    def leaf(i, x, d):
      if i in rest:
        return d.astype(x.dtype)
      return jnp.where(run, precond[i], d.astype(dtype)).astype(x.dtype)

    out = [leaf(i, x, d) for i, (x, (d, _)) in enumerate(zip(leaves, pairs))]
    return jax.tree.unflatten(treedef, out), ShampooState(
        optax.safe_increment(count), state.layout, stats, roots, nu)

  return optax.GradientTransformationExtraArgs(init, update)
