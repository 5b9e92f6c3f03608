"""Kronecker-factored bases: `in_eigenbasis` (SOAP) and Shampoo's inverse-root preconditioner.

Both keep, for every tensor, one statistic per dimension (L = EMA(G G^T),
R = EMA(G^T G) for a matrix, the contraction over all other axes for higher
ranks), packed in one flat buffer per state field (`linalg.FactorLayout`), so
that

* the matrix functions (eigh, QR, inverse roots) run as one batched call per
  distinct factor size, whatever the number of tensors;
* the state has a fixed structure: `optax.tree_map_params` sees the factor
  buffers as non-param leaves and every param-shaped leaf (the inner
  transformation's moments) as a param tree, which keeps the params' sharding.
  When no tensor gets a factor the buffers are None (`_flat_factors`), not
  empty arrays, which orbax could not save.

`in_eigenbasis(inner)` runs any inner transformation in the eigenbasis of the
factors and re-expresses the inner state through the basis protocol
(`basis.rebase_state`) whenever the basis is refreshed; SOAP is
``in_eigenbasis(scale_by_adam(...))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype, tree_accumulation_dtype
from optlab._src.numerics import clip_finite, safe_div, safe_square, saturate
from optlab._src.tree import zeros_like
from optlab.primitives import linalg
from optlab.primitives.basis import (COUNT, NESTED, OPAQUE_STAT, SECOND_MOMENT, declare_state,
                                     rebase_state)
from optlab.primitives.normalize import tensor_norm

__all__ = ["EigenbasisState", "in_eigenbasis", "scale_by_newton_schulz", "ShampooState",
           "scale_by_shampoo"]


# ------------------------------------------------------------------- helpers
@dataclasses.dataclass(frozen=True)
class _Slot:
  """A leaf's position in flatten order and its block plan (a pytree leaf)."""
  index: int
  plan: linalg.BlockPlan


def _slots(tree: Any, make_plan) -> tuple[Any, list[_Slot]]:
  leaves, treedef = jax.tree.flatten(tree)
  slots = [_Slot(i, make_plan(jnp.shape(x))) for i, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, slots), slots


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, jnp.ndarray)) or hasattr(x, "shape") and hasattr(x, "dtype")


def _flat_factors(layout: linalg.FactorLayout, flat: jax.Array, leaves: list) -> Any:
  """A factor buffer for the state: None when it has no entries (see
  `storage.flat_zeros`: an empty buffer stays only for a tree without leaves)."""
  return None if layout.total == 0 and leaves else flat


def _like(flat: jax.Array, old: Any) -> Any:
  """The new buffer, or None where the state held None (no factors)."""
  return None if old is None else flat


def _or_empty(buffer: Any, dtype: Any) -> jax.Array:
  """A state buffer as an array (None holds no entries)."""
  return jnp.zeros((0,), dtype) if buffer is None else buffer


def _buffer_dtype(where: str, layout: linalg.FactorLayout, state_buffer: Any,
                  updates: Any) -> Any:
  """The buffers' dtype: the state's, or (no buffers) what `init` would pick.

  Raises ValueError when the buffer does not hold the factors of `updates`
  (a state built for other params)."""
  held = 0 if state_buffer is None else state_buffer.shape[0]
  if held != layout.total:
    raise ValueError(f"optlab.{where}: the state holds {held} factor entries but the updates' "
                     f"leaves need {layout.total}: the updates' tree does not match the params "
                     "the state was built for")
  if state_buffer is not None:
    return state_buffer.dtype
  return tree_accumulation_dtype(jax.tree.leaves(updates))


def _factors_of(layout: linalg.FactorLayout, groups: dict, slot: _Slot) -> list:
  return [layout.take(groups, slot.index, d) if r else None
          for d, r in enumerate(slot.plan.rotated)]


def _rotate(slots_tree: Any, layout: linalg.FactorLayout, groups: dict, tree: Any,
            back: bool, dtype: Any) -> Any:
  """Expresses every tensor of `tree` in (or, with `back`, out of) the basis `groups`."""

  def leaf(slot, x):
    if not _is_array(x) or not slot.plan.any_rotated:
      return x
    xb = slot.plan.to_blocks(x.astype(dtype))
    y = linalg.apply_factors(xb, _factors_of(layout, groups, slot), transpose=back)
    return slot.plan.from_blocks(y).astype(x.dtype)

  return jax.tree.map(leaf, slots_tree, tree)


def _update_stats(layout, slots, leaves, stats, beta, dtype):
  """stats <- beta * stats + (1 - beta) * (contraction of G with itself), per factor."""
  outer = {}
  for slot, g in zip(slots, leaves):
    if slot.plan.any_rotated:
      gb = slot.plan.to_blocks(g.astype(dtype))
      for d, r in enumerate(slot.plan.rotated):
        if r:
          outer[(slot.index, d)] = linalg.outer_stats(gb, d)
  old = layout.split(stats)
  new = layout.stack(outer)
  return {b: clip_finite(beta * old[b] + (1 - beta) * new[b]) for b in layout.sizes}


# ---------------------------------------------------------------- eigenbasis
# The factors and eigenvectors cannot follow an outer change (OPAQUE: nesting this
# wrapper in another basis wrapper is refused); the moment walkers enter inner_state.
@declare_state(count=COUNT, stats=OPAQUE_STAT, basis=OPAQUE_STAT, inner_state=NESTED)
class EigenbasisState(NamedTuple):
  count: jax.Array  # [], int32: calls so far (the first only builds the basis)
  stats: Optional[jax.Array]  # [S], float32 (float64 for float64 params): every Kronecker
                              # factor (EMA of G G^T per dimension), flat and grouped by
                              # size (linalg.FactorLayout); None when no tensor has one
  basis: Optional[jax.Array]  # [S], same dtype and layout: the factors' eigenvectors
  inner_state: Any  # the inner transformation's state, in the rotated coordinates


class _EigenChange:
  """The basis protocol's change from one eigenbasis to the next (see basis.py).

  linear: rotate back with the old basis, into the new one (exact).
  second: re-order each rotated dimension by the permutation that sorted the
  estimated eigenvalues, as the official SOAP code does with its exp_avg_sq.
  """

  def __init__(self, slots_tree, layout, old, new, perm, dtype):
    self.slots_tree, self.layout, self.dtype = slots_tree, layout, dtype
    self.old, self.new, self.perm = old, new, perm

  def linear(self, tree):
    lay = self.layout
    if not jax.tree.leaves(tree):  # an unused slot
      return tree

    def leaf(slot, x):
      if not _is_array(x) or not slot.plan.any_rotated:
        return x
      xb = slot.plan.to_blocks(x.astype(self.dtype))
      xb = linalg.apply_factors(xb, _factors_of(lay, self.old, slot), transpose=True)
      xb = linalg.apply_factors(xb, _factors_of(lay, self.new, slot))
      return slot.plan.from_blocks(xb).astype(x.dtype)

    return jax.tree.map(leaf, self.slots_tree, tree)

  def second(self, tree):
    lay = self.layout
    if not jax.tree.leaves(tree):
      return tree

    def leaf(slot, x):
      if not _is_array(x) or not slot.plan.any_rotated:
        return x
      xb = slot.plan.to_blocks(x)
      for d, perm in enumerate(_factors_of(lay, self.perm, slot)):
        if perm is not None:
          shape = [perm.shape[0]] + [1] * (xb.ndim - 1)
          shape[d + 1] = perm.shape[1]
          xb = jnp.take_along_axis(xb, perm.reshape(shape), axis=d + 1)
      return slot.plan.from_blocks(xb)

    return jax.tree.map(leaf, self.slots_tree, tree)


def in_eigenbasis(inner: optax.GradientTransformation, precondition_frequency: int = 10,
                  shampoo_beta: Any = 0.95, max_precond_dim: int = 10000,
                  *, merge_dims: bool = False, precondition_1d: bool = False
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
  1-d tensors get none unless `precondition_1d`; scalars never do. No n x n
  matrix is allocated for a dimension that is not rotated.

  Args:
    inner: any transformation whose state is declared with `declare_state`
      (every primitive of optlab, optax's Adam, Lion, trace, ...).
    precondition_frequency: refresh the basis every this many inner steps.
    shampoo_beta: decay of the factors' EMA (SOAP uses Adam's b2 by default).
    max_precond_dim: largest dimension that gets a factor.
    merge_dims: merge consecutive small dimensions of tensors of rank >= 2
      while their product is <= max_precond_dim (SOAP's ``merge_dims``).
    precondition_1d: give 1-d tensors a factor too.
  """
  V.check_range("in_eigenbasis", "precondition_frequency", precondition_frequency, 1)
  V.check_range("in_eigenbasis", "max_precond_dim", max_precond_dim, 1)
  V.check_decay("in_eigenbasis", "shampoo_beta", shampoo_beta)
  inner = optax.with_extra_args_support(inner)
  make_plan = lambda shape: linalg.BlockPlan.make(
      shape, max_dim=max_precond_dim, merge=merge_dims, min_ndim=1 if precondition_1d else 2)

  def init(params):
    _, slots = _slots(params, make_plan)
    layout = linalg.FactorLayout([s.plan for s in slots])
    leaves = jax.tree.leaves(params)
    dtype = tree_accumulation_dtype(leaves)
    return EigenbasisState(jnp.zeros([], jnp.int32),
                           _flat_factors(layout, layout.zeros(dtype), leaves),
                           _flat_factors(layout, layout.identity(dtype), leaves),
                           inner.init(params))

  def update(updates, state, params=None, **extra):
    slots_tree, slots = _slots(updates, make_plan)
    layout = linalg.FactorLayout([s.plan for s in slots])
    dtype = _buffer_dtype("in_eigenbasis", layout, state.stats, updates)
    stats = _update_stats(layout, slots, jax.tree.leaves(updates),
                          _or_empty(state.stats, dtype), shampoo_beta, dtype)
    basis = layout.split(_or_empty(state.basis, dtype))

    def first(_):
      new = {b: linalg.eigenbasis(stats[b], basis[b]).astype(dtype) for b in layout.sizes}
      return jax.tree.map(jnp.zeros_like, updates), state.inner_state, new

    def refresh(args):
      inner_state, old = args
      pairs = {b: linalg.refresh_eigenbasis(stats[b], old[b]) for b in layout.sizes}
      new = {b: q.astype(dtype) for b, (q, _) in pairs.items()}
      perm = {b: p for b, (_, p) in pairs.items()}
      change = _EigenChange(slots_tree, layout, old, new, perm, dtype)
      return rebase_state(inner_state, change), new

    def step(_):
      g = _rotate(slots_tree, layout, basis, updates, False, dtype)
      p = None if params is None else _rotate(slots_tree, layout, basis, params, False, dtype)
      u, inner_state = inner.update(g, state.inner_state, p, **extra)
      u = _rotate(slots_tree, layout, basis, u, True, dtype)
      due = state.count % precondition_frequency == 0  # state.count = inner steps done now
      inner_state, new = jax.lax.cond(due, refresh, lambda a: a, (inner_state, basis))
      return u, inner_state, new

    u, inner_state, new = jax.lax.cond(state.count == 0, first, step, None)
    new_state = EigenbasisState(optax.safe_increment(state.count),
                                _like(layout.join(stats, dtype), state.stats),
                                _like(layout.join(new, dtype), state.basis), inner_state)
    return u, new_state

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------- Newton-Schulz
def scale_by_newton_schulz(ns_steps: int = 5,
                           ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
                           eps: Any = 1e-7, consistent_rms: Optional[Any] = None
                           ) -> optax.GradientTransformationExtraArgs:
  """Orthogonalises each matrix update with Muon's quintic Newton-Schulz iteration.

  u <- s * NS(u) for every tensor of rank >= 2 (ranks > 2 are viewed as
  (prod(shape[:-1]), shape[-1]), JAX's (fan_in, fan_out) layout); vectors and
  scalars pass unchanged. The scale s is sqrt(max(1, fan_out / fan_in))
  (Keller Jordan's ``max(1, rows / cols) ** 0.5`` for PyTorch's (out, in)
  weights, optax's width scaling), or with ``consistent_rms`` r,
  r * sqrt(max(fan_in, fan_out)) ("Muon is Scalable for LLM Training",
  arXiv:2502.16982, which uses r = 0.2). See `linalg.newton_schulz`.
  """
  V.check_range("scale_by_newton_schulz", "ns_steps", ns_steps, 1)
  V.check_nonneg("scale_by_newton_schulz", "eps", eps)

  def one(u):
    if u.ndim < 2 or u.size == 0:  # a zero-size matrix's update is zero-size
      return u
    x = u.reshape(-1, u.shape[-1])
    fan_in, fan_out = x.shape
    if consistent_rms is None:
      scale = max(1.0, fan_out / fan_in) ** 0.5
    else:
      scale = consistent_rms * max(fan_in, fan_out) ** 0.5
    y = linalg.newton_schulz(x, ns_steps, ns_coeffs, eps).astype(accumulation_dtype(u.dtype))
    return (scale * y).reshape(u.shape).astype(u.dtype)

  def update(updates, state, params=None, **extra):
    del params, extra
    return jax.tree.map(one, updates), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


# ------------------------------------------------------------------- Shampoo
_GRAFTS = ("sgd", "adagrad", "rmsprop", "rmsprop_normalized")


@declare_state(count=COUNT, stats=OPAQUE_STAT, roots=OPAQUE_STAT, graft_nu=SECOND_MOMENT)
class ShampooState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  stats: Optional[jax.Array]  # [S], float32 (float64 for float64 params): the Kronecker
                              # statistics of every block, flat and grouped by size
                              # (linalg.FactorLayout); None when nothing is preconditioned
  roots: Optional[jax.Array]  # [S], same dtype and layout: their inverse p-th roots
  graft_nu: Any     # param-shaped tree, float32+: the grafting method's diagonal statistic;
                    # () for sgd grafting


def scale_by_shampoo(block_size: int = 128, b2: Any = 0.999, matrix_eps: Any = 1e-6,
                     diagonal_eps: Any = 1e-10, graft_type: str = "sgd",
                     start_preconditioning_step: int = 5, statistics_compute_steps: int = 1,
                     preconditioning_compute_steps: int = 1, max_precond_dim: int = 4096,
                     exponent_override: Optional[int] = None
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
     previous one);
  3. the preconditioned direction S = G x_i P_i, block by block;
  4. grafting: the direction D of `graft_type` ("sgd": G; "adagrad":
     G / (sqrt(sum G^2) + diagonal_eps); "rmsprop": G / (sqrt(EMA_b2 G^2) +
     diagonal_eps); "rmsprop_normalized": the same on G / ||G||), and the
     update S * ||D|| / (||S|| + 1e-16) per tensor;
  5. before `start_preconditioning_step` (0-based steps), the update is D.

  Tensors with a dimension above `max_precond_dim` (distributed Shampoo's
  ``skip_preconditioning_dim_size_gt``) and scalars are not preconditioned:
  their update is D. Momentum, decay and the learning rate are separate
  links (see the `shampoo` recipe).
  """
  where = "scale_by_shampoo"
  V.check_choice(where, "graft_type", graft_type, _GRAFTS)
  V.check_range(where, "block_size", block_size, 1)
  V.check_range(where, "b2", b2, 0.0, 1.0)
  for name in ("statistics_compute_steps", "preconditioning_compute_steps"):
    V.check_range(where, name, locals()[name], 1)
  V.check_nonneg(where, "matrix_eps", matrix_eps)
  V.check_nonneg(where, "diagonal_eps", diagonal_eps)

  def make_plan(shape):
    plan = linalg.BlockPlan.make(shape, merge=True, merge_limit=block_size,
                                 block_size=block_size, min_ndim=1)
    if any(d > max_precond_dim for d in shape):
      plan = dataclasses.replace(plan, rotated=(False,) * len(plan.rotated))
    return plan

  def init(params):
    _, slots = _slots(params, make_plan)
    layout = linalg.FactorLayout([s.plan for s in slots])
    leaves = jax.tree.leaves(params)
    dtype = tree_accumulation_dtype(leaves)
    nu = () if graft_type == "sgd" else jax.tree.map(
        lambda p: zeros_like(p, accumulation_dtype(p.dtype)), params)
    return ShampooState(jnp.zeros([], jnp.int32),
                        _flat_factors(layout, layout.zeros(dtype), leaves),
                        _flat_factors(layout, layout.identity(dtype), leaves), nu)

  def exponents(layout, slots):
    out = {b: [] for b in layout.sizes}
    for (leaf, _), (b, _, k) in sorted(layout.where.items(), key=lambda kv: kv[1][:2]):
      rank = len(slots[leaf].plan.merged)
      out[b] += [2 * rank if exponent_override is None else exponent_override] * k
    return {b: jnp.asarray(v, jnp.float32)[:, None] for b, v in out.items()}

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
    slots_tree, slots = _slots(updates, make_plan)
    layout = linalg.FactorLayout([s.plan for s in slots])
    dtype = _buffer_dtype("scale_by_shampoo", layout, state.stats, updates)
    count = state.count
    w1, w2 = (b2, 1.0) if isinstance(b2, (int, float)) and b2 == 1 else (b2, 1 - b2)
    flat_stats = _or_empty(state.stats, dtype)
    stats = _update_stats(layout, slots, jax.tree.leaves(updates), flat_stats, 0.0, dtype)
    old = layout.split(flat_stats)
    stats = jax.tree.map(lambda o, n: clip_finite(w1 * o + w2 * n), old, stats)
    due = count % statistics_compute_steps == 0
    stats = {b: jnp.where(due, stats[b], old[b]) for b in layout.sizes}
    roots = layout.split(_or_empty(state.roots, dtype))
    exps = exponents(layout, slots)

    def compute_roots(roots):
      return {b: linalg.inverse_pth_root(stats[b], exps[b], matrix_eps, roots[b]).astype(dtype)
              for b in layout.sizes}

    roots = jax.lax.cond(count % preconditioning_compute_steps == 0, compute_roots,
                         lambda r: r, roots)

    flat, treedef = jax.tree.flatten(updates)
    if graft_type == "sgd":
      pairs = [graft(g, None) for g in flat]
    else:
      pairs = [graft(g, n) for g, n in zip(flat, treedef.flatten_up_to(state.graft_nu))]
    direction = jax.tree.unflatten(treedef, [d for d, _ in pairs])
    nu = () if graft_type == "sgd" else jax.tree.unflatten(treedef, [n for _, n in pairs])
    run = count >= start_preconditioning_step

    def leaf(slot, g, d):
      if not slot.plan.any_rotated:
        return d.astype(g.dtype)
      gb = slot.plan.to_blocks(g.astype(dtype))
      s = slot.plan.from_blocks(linalg.apply_factors(gb, _factors_of(layout, roots, slot)))
      s = s * (tensor_norm(d) / (tensor_norm(s) + 1e-16)).astype(dtype)
      return jnp.where(run, s, d.astype(dtype)).astype(g.dtype)

    out = jax.tree.map(leaf, slots_tree, updates, direction)
    return out, ShampooState(optax.safe_increment(count),
                             _like(layout.join(stats, dtype), state.stats),
                             _like(layout.join(roots, dtype), state.roots), nu)

  return optax.GradientTransformationExtraArgs(init, update)
