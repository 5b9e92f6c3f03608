"""Low-rank subspace methods: run an inner transformation on projected gradients.

`in_subspace(inner, projector, rank, update_every)` is the wrapper behind
GaLore, APOLLO, Fira, FRUGAL, Online Subspace Descent and GWT. For every
matrix leaf G (m x n) with rank < min(m, n) it keeps a projector P and

1. projects the gradient: R = G P^T (m x r, ``side="right"``, P is r x n),
   R = P^T G (r x n, ``side="left"``, P is m x r), or on both sides
   R = U^T G V (r x r, ``side="both"``, U m x r and V n x r stored as one
   (m + n) x r projector: the Tucker decomposition of a matrix, as the
   official Natural GaLore code projects);
2. runs `inner` on R (its moments therefore live at (m, r), (r, n) or (r, r));
3. maps the inner output back: O P, P O or U O V^T, times ``scale``;
4. optionally adds a treatment of the residual G - back(R) (``residual``),
   or replaces step 3 by a norm-based rescaling of the full gradient
   (``gradient_scaling``, APOLLO).

The projector is refreshed every `update_every` steps (on the 0-based steps
0, k, 2k, ... as the official codes do) from the current gradient. Leaves
that are not matrices (biases, scalars) and matrices with min(m, n) <= rank
go through `inner` unprojected and unscaled, as the official codes do with
their "regular" parameter group.

Projectors (`svd_projector`, `random_projector`, `online_pca_projector`,
`haar_projector`) are small frozen dataclasses:
``refresh(g, old, key, side, rank) -> P`` builds the projector of a
(float32 or wider) 2-D gradient; ``per_step`` projectors (online PCA) are
updated every step instead.

State layout. The projected moments are not param-shaped, so they must not be
taken for param-shaped trees by `optax.tree_map_params` (which would give them
the params' sharding): every tree of `inner`'s state that has the params'
structure is stored packed into one 1-D vector (its leaves raveled and
concatenated), and the projectors are packed the same way; a packed vector
without entries (no projected leaf, no unprojected one, a projector without
state of its own) is None, as orbax cannot save empty arrays. The packed state
therefore carries no param-shaped leaves; it is unpacked and repacked inside
each (jitted) step, which costs one copy of the (small) low-rank state. The
price: the unprojected leaves' state is packed too, so it does not keep the
params' sharding (it is small: biases and norms). `inner` runs twice per step,
once on the projected leaves and once on the rest (two states, like the
official codes' two parameter groups), so that a refresh can reset or rebase
the projected state alone; a per-tensor inner (trust ratios, norms) is
unaffected, a global one (e.g. a global-norm clip inside `inner`) sees the two
groups separately.

On a refresh the inner state of the projected leaves is either kept as it is
(``on_refresh="keep"``, what the official GaLore, APOLLO and Fira codes do),
re-expressed in the new subspace through the basis protocol (``"project"``:
linear fields map exactly through P_new P_old^T, second-moment fields through
the element-wise square of that map), or started afresh, step count included
(``"reset"``, FRUGAL).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype, tree_accumulation_dtype
from optlab._src.packing import Empty, pack, pack_state, repack, unpack, unpack_state
from optlab._src.numerics import (all_finite, any_nan, bias_correction, clip_finite, safe_square,
                                  saturate)
from optlab._src.random import new_key
from optlab._src.tree import flat_dtype, pack_flat, unpack_flat
from optlab.primitives.basis import (COUNT, INVARIANT_STAT, NESTED, OPAQUE_STAT, declare_state,
                                     rebase_state)
from optlab.primitives.blockwise import (block_mean_sq, block_specs, block_stat_shape,
                                         broadcast_blocks)
from optlab.primitives.clipping import limit_norm_growth, safe_norm
from optlab.primitives.moments import scale_by_moments
from optlab.rules import ema
from optlab.primitives.normalize import tensor_norm

__all__ = [
    "SubspaceState", "in_subspace", "svd_projector", "random_projector",
    "online_pca_projector", "haar_projector", "subspace_side",
    "BiasCorrectionState", "scale_by_bias_correction", "SubspaceMomentumState",
    "scale_by_subspace_momentum", "NaturalGradientState", "scale_by_natural_gradient",
]

_PROJ_TYPES = ("std", "reverse_std", "left", "right", "both")
_RESIDUALS = (None, "norm_scaled", "sign", "identity")
_SCALINGS = (None, "channel", "tensor")
_ON_REFRESH = ("keep", "project", "reset")


# ------------------------------------------------------------------ projectors
def _max_abs_normalised(g: jax.Array) -> jax.Array:
  """g / max|g| (g itself when zero): same singular vectors, no overflow in the SVD."""
  m = jnp.max(jnp.abs(g))
  return g / jnp.where(m > 0, m, jnp.ones_like(m))


def _align(p: jax.Array, old: jax.Array, side: str, m: int) -> jax.Array:
  """Flips each new basis vector to point the way of the old one (no flip against 0);
  ``side="both"``: the columns of U (the first m rows) and of V each on their own."""
  if side == "both":
    return jnp.concatenate([_align(p[:m], old[:m], "left", m),
                            _align(p[m:], old[m:], "left", m)])
  axis = 1 if side == "right" else 0
  dots = jnp.sum(p * old, axis=axis, keepdims=True)
  return jnp.where(dots < 0, -p, p)


@dataclasses.dataclass(frozen=True)
class svd_projector:
  """GaLore's projector: the top-r singular vectors of the current gradient.

  ``side="right"``: the first r rows of V^T (r x n); ``"left"``: the first r
  columns of U (m x r); ``"both"``: those columns of U above the first r
  columns of V ((m + n) x r: for a matrix, the Tucker decomposition's HOOI
  converges at once to these factors). Computed in at least float32 (of
  G / max|G|, which has the same singular vectors). Singular vectors have
  arbitrary signs; with ``align_signs`` each new vector is flipped to agree with the previous
  projector's (the official code keeps LAPACK's signs, which makes moments
  kept across a refresh depend on an arbitrary choice; aligned, the whole run
  is independent of it).
  """
  _: dataclasses.KW_ONLY
  align_signs: bool = True
  per_step = False

  def refresh(self, g, old, key, side, rank):
    del key
    u, _, vh = jnp.linalg.svd(_max_abs_normalised(g), full_matrices=False)
    if side == "both":
      p = jnp.concatenate([u[:, :rank], vh[:rank, :].T])
    else:
      p = vh[:rank, :] if side == "right" else u[:, :rank]
    return _align(p, old, side, g.shape[0]) if self.align_signs else p


@dataclasses.dataclass(frozen=True)
class random_projector:
  """APOLLO's projector: i.i.d. N(0, 1/r) entries, redrawn at every refresh.

  Keys: the state holds a raw key k (seeded by ``seed``); at a refresh
  k, sub = split(k) and leaf i (its index in the flattened tree) draws
  ``normal(fold_in(sub, i), shape, dtype) / sqrt(r)`` in its accumulation
  dtype (float32, or float64 for float64 params).
  """
  per_step = False

  def refresh(self, g, old, key, side, rank):
    del old
    shape = (rank, g.shape[1]) if side == "right" else (g.shape[0], rank)
    return jax.random.normal(key, shape, g.dtype) / math.sqrt(rank)


@dataclasses.dataclass(frozen=True)
class online_pca_projector:
  """Online Subspace Descent's projector (arXiv:2408.12857): online PCA.

  Starts from the SVD projector on the first step and is never recomputed;
  afterwards, every step, P moves by one AdamW step on the PCA loss of the
  normalised gradient, L(P) = ||Gn P^T P - Gn||^2 (side "right"; ||P P^T Gn -
  Gn||^2 on the left), Gn = G / ||G||, as the official code's default
  "continuous" projector (torch.optim.AdamW on P with lr = 1 / update_every,
  its defaults b1 0.9, b2 0.999, eps 1e-8, weight decay 0.01). The gradient
  is projected with the P of the current step and P is updated afterwards.
  ``learning_rate`` None means 1 / update_every. P is not re-orthonormalised.
  """
  learning_rate: Any = None
  b1: Any = 0.9
  b2: Any = 0.999
  eps: Any = 1e-8
  weight_decay: Any = 0.01
  per_step = True
  slots = 2  # AdamW's m and v for P

  def refresh(self, g, old, key, side, rank):
    return svd_projector(align_signs=False).refresh(g, old, key, side, rank)

  def step(self, g, p, side, aux, k, update_every):
    """One AdamW step on L(P); k is its 1-based step number. Returns (P, aux)."""
    norm = tensor_norm(g)
    gn = g / jnp.where(norm > 0, norm, jnp.ones_like(norm)).astype(g.dtype)
    if side == "right":  # E = Gn P^T P - Gn; dL/dP = 2 P (E^T Gn + Gn^T E)
      e = (gn @ p.T) @ p - gn
      grad = 2.0 * ((e @ p.T).T @ gn + (gn @ p.T).T @ e)  # O(m n r), no n x n product
    else:  # E = P P^T Gn - Gn; dL/dP = 2 (E Gn^T + Gn E^T) P
      e = p @ (p.T @ gn) - gn
      grad = 2.0 * (e @ (gn.T @ p) + gn @ (e.T @ p))
    lr = 1.0 / update_every if self.learning_rate is None else self.learning_rate
    m, v = aux
    m = self.b1 * m + (1 - self.b1) * grad
    v = self.b2 * v + (1 - self.b2) * safe_square(grad)
    kf = k.astype(p.dtype)
    denom = jnp.sqrt(v) / jnp.sqrt(1 - self.b2 ** kf) + self.eps
    p = p * (1 - lr * self.weight_decay) - lr / (1 - self.b1 ** kf) * m / denom
    return p, (m, v)


@dataclasses.dataclass(frozen=True)
class haar_projector:
  """GWT's projector (arXiv:2501.07237): a ``level``-level Haar wavelet transform.

  Keeps the approximation coefficients of the Haar transform along the
  projected axis: each level averages neighbouring pairs with weight
  1/sqrt(2) each (orthonormal), halving the dimension; the rank is n / 2^level
  and the projector is fixed (never refreshed). The dimension must be
  divisible by 2^level, else the leaf is not projected.
  """
  level: int = 2
  per_step = False

  def refresh(self, g, old, key, side, rank):
    del key, old
    n = g.shape[1] if side == "right" else g.shape[0]
    h = _haar_matrix(n, self.level).astype(g.dtype)  # (n / 2^level, n)
    return h if side == "right" else h.T


def _haar_matrix(n: int, level: int) -> jax.Array:
  h = np.eye(n)
  for _ in range(level):
    k = h.shape[0] // 2
    pair = np.zeros((k, h.shape[0]))
    pair[np.arange(k), 2 * np.arange(k)] = 1 / math.sqrt(2)
    pair[np.arange(k), 2 * np.arange(k) + 1] = 1 / math.sqrt(2)
    h = pair @ h
  return jnp.asarray(h)


def _slots(projector) -> int:
  return getattr(projector, "slots", 0)


# ------------------------------------------------------------- per-leaf layout
def subspace_side(shape: tuple[int, ...], rank: int, proj_type: str = "std") -> Optional[str]:
  """Which side a leaf of `shape` is projected on, or None (not projected).

  Only matrices with rank < min(m, n) are projected. ``"std"`` (the official
  GaLore / APOLLO / Fira default) projects on the right (R = G P^T, m x r)
  when m >= n, else on the left; ``"reverse_std"`` the other way round
  (optax.contrib.galore's choice); ``"left"`` / ``"right"`` always that side;
  ``"both"`` both sides (an r x r core, `svd_projector` only).
  """
  if len(shape) != 2 or rank >= min(shape):
    return None
  m, n = shape
  if proj_type == "std":
    return "right" if m >= n else "left"
  if proj_type == "reverse_std":
    return "left" if m >= n else "right"
  return proj_type


def _proj_shape(shape, side, rank):
  m, n = shape
  return {"right": (rank, n), "left": (m, rank), "both": (m + n, rank)}[side]


def _low_shape(shape, side, rank):
  m, n = shape
  return {"right": (m, rank), "left": (rank, n), "both": (rank, rank)}[side]


def _project(g, p, side):
  """R of the (m, n) gradient g."""
  if side == "both":
    m = g.shape[0]
    return p[:m].T @ g @ p[m:]
  return g @ p.T if side == "right" else p.T @ g


def _back(r, p, side, m):
  """The (m, n) matrix of the low-rank r."""
  if side == "both":
    return p[:m] @ r @ p[m:].T
  return r @ p if side == "right" else p @ r


# ---------------------------------------------------------------------- state
# A subspace wrapper is never rebased: its projectors and packed inner states live
# in its own coordinates and have no image under an outer change (OPAQUE, so that
# rebase_state refuses them instead of leaving them silently in the old basis).
@declare_state(count=COUNT, key=INVARIANT_STAT, projectors=OPAQUE_STAT, proj_aux=OPAQUE_STAT,
               inner_state=OPAQUE_STAT, regular_state=OPAQUE_STAT, prev_norm=INVARIANT_STAT,
               signature=INVARIANT_STAT)
class SubspaceState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  key: jax.Array  # [2], uint32: raw PRNG key (random projectors; unused otherwise)
  projectors: Optional[jax.Array]  # [k]: every projected leaf's projector, raveled and
                                   # concatenated (None when no leaf is projected)
  proj_aux: Optional[jax.Array]  # [slots * k]: the projector's own state (online PCA's
                                 # AdamW moments), packed the same way; None for other
                                 # projectors (and when no leaf is projected)
  inner_state: tuple  # leaves of inner's state for the projected leaves, each
                      # param-structured tree packed into one 1-D vector (moments of an
                      # (m, n) leaf live at (m, r) or (r, n); other leaves add nothing);
                      # None for a tree without entries (no projected leaf)
  regular_state: tuple  # the same for the unprojected leaves (projected ones add nothing)
  prev_norm: jax.Array  # [n_leaves]: norm-growth limiter's last norm per leaf (0 if unused)
  signature: jax.Array  # [k], uint8: the params' leaf paths and shapes (UTF-8), so that a
                        # mismatched update tree is named in the error (the packed state
                        # has no param-structured tree to compare with)


def _signature(tree: Any) -> str:
  return "\n".join(f"{jax.tree_util.keystr(path)}\t{tuple(jnp.shape(x))}"
                   for path, x in jax.tree_util.tree_leaves_with_path(tree))


def _check_signature(updates: Any, state: "SubspaceState") -> None:
  """Raises ValueError naming the leaves where `updates` and the state's params differ.

  The leaf count is checked always (it is static); names and shapes when the
  state is concrete (not traced).
  """
  n = len(jax.tree.leaves(updates))
  sig = state.signature
  if not isinstance(sig, jax.core.Tracer):
    text = bytes(np.asarray(sig, np.uint8)).decode()
    want = dict(line.split("\t") for line in text.split("\n")) if text else {}
    got = dict(line.split("\t") for line in _signature(updates).split("\n")) if n else {}
    for path in want:
      if path not in got:
        raise ValueError(f"optlab.in_subspace: updates are missing params{path} "
                         "(the trees do not match)")
    for path in got:
      if path not in want:
        raise ValueError(f"optlab.in_subspace: updates{path} has no counterpart in the "
                         "params the state was built for (the trees do not match)")
      if got[path] != want[path]:
        raise ValueError(f"optlab.in_subspace: updates{path} has shape {got[path]} but "
                         f"params{path} had shape {want[path]}")
  if n != state.prev_norm.shape[0]:
    raise ValueError(f"optlab.in_subspace: updates have {n} leaves but the state was built "
                     f"for {state.prev_norm.shape[0]} (the trees do not match)")


class _SubspaceChange:
  """The basis change between two sets of projectors, for `rebase_state`."""

  def __init__(self, sides, old, new, rows):
    self.maps = []  # per leaf None or (left map or None, right map or None)
    for side, po, pn, m in zip(sides, old, new, rows):
      if side is None:
        self.maps.append(None)
      elif side == "right":  # R -> R P_old P_new^T
        self.maps.append((None, po @ pn.T))
      elif side == "left":  # R -> P_new^T P_old R
        self.maps.append((pn.T @ po, None))
      else:  # R -> U_new^T U_old R V_old^T V_new
        self.maps.append((pn[:m].T @ po[:m], po[m:].T @ pn[m:]))

  def _apply(self, tree, square):
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for x, mp in zip(leaves, self.maps):
      if mp is None:
        out.append(x)
        continue
      y = x
      for t, on_left in zip(mp, (True, False)):
        if t is not None:
          t = (t * t) if square else t
          y = y.astype(t.dtype)
          y = t @ y if on_left else y @ t
      out.append(y.astype(x.dtype))
    return jax.tree.unflatten(treedef, out)

  def linear(self, tree):
    return self._apply(tree, False)

  def second(self, tree):
    return self._apply(tree, True)


def in_subspace(inner: optax.GradientTransformation, projector: Any = None, rank: int = 128,
                update_every: int = 200, *, scale: Any = 1.0, proj_type: str = "std",
                residual: Optional[str] = None, gradient_scaling: Optional[str] = None,
                norm_growth: Any = None, limit_before_scale: bool = True,
                sign_scale: Any = 1.0, on_refresh: str = "keep", seed: int = 0,
                regular: Optional[optax.GradientTransformation] = None
                ) -> optax.GradientTransformationExtraArgs:
  """Runs `inner` on low-rank projections of the matrix gradients (see module docstring).

  Args:
    inner: the transformation run in the subspace (e.g. `scale_by_adam()`); it
      gets ``params=None`` (its inputs are not param-shaped).
    projector: `svd_projector()` (default), `random_projector()`,
      `online_pca_projector()` or `haar_projector()`.
    rank: r, the subspace dimension (the Haar projector sets its own).
    update_every: refresh the projector every this many steps.
    scale: multiplies the output of projected leaves (GaLore's scale, Fira's
      alpha; APOLLO passes sqrt of its scale, as its code applies it).
    proj_type: which side is projected, see `subspace_side`.
    residual: what happens to G - scale * back(R), the part of the gradient
      outside the subspace: None drops it (GaLore); ``"norm_scaled"`` adds it
      times phi = ||U||/||R|| per channel (the norms over the rank axis, eps
      1e-8), Fira; ``"sign"`` adds ``sign_scale * sign(G - back(R))``, the
      state-free signSGD of FRUGAL; ``"identity"`` adds G - back(R) as it is
      (Subspace-Momentum's plain SGD step on the complement).
    gradient_scaling: APOLLO: instead of back(U) return G * ||U|| / (||R|| +
      1e-8), per channel (``"channel"``) or per tensor (``"tensor"``).
    norm_growth: gamma of the norm-growth limiter (Fira: 1.01) applied per
      tensor to the scaled residual (Fira) or the scaled gradient (APOLLO);
      None for no limiter.
    limit_before_scale: APOLLO: the limiter sees the gradient before ``scale``
      multiplies it (the official default); False is its ``scale_front``.
    sign_scale: the step of FRUGAL's signSGD relative to the inner update.
    on_refresh: ``"keep"`` (official codes), ``"project"`` (basis protocol) or
      ``"reset"`` (FRUGAL).
    seed: seeds the key of random projectors.
    regular: the transformation of the leaves that are not projected (None:
      `inner`). Natural GaLore passes Adam alone, as its official code applies
      the natural-gradient transform to the projected group only.
  """
  projector = svd_projector() if projector is None else projector
  V.check_choice("in_subspace", "proj_type", proj_type, _PROJ_TYPES)
  V.check_choice("in_subspace", "residual", residual, _RESIDUALS)
  V.check_choice("in_subspace", "gradient_scaling", gradient_scaling, _SCALINGS)
  V.check_choice("in_subspace", "on_refresh", on_refresh, _ON_REFRESH)
  if isinstance(projector, haar_projector):
    V.check_range("in_subspace", "level", projector.level, 1)
  elif not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
    raise ValueError(f"optlab.in_subspace: rank must be a positive int, got {rank!r}")
  if not isinstance(update_every, (int, np.integer)) or update_every < 1:
    raise ValueError(f"optlab.in_subspace: update_every must be a positive int, "
                     f"got {update_every!r}")
  if residual is not None and gradient_scaling is not None:
    raise ValueError("optlab.in_subspace: residual and gradient_scaling exclude each other")
  if proj_type == "both":
    if type(projector) is not svd_projector:
      raise ValueError(f"optlab.in_subspace: proj_type 'both' needs svd_projector(), got "
                       f"{type(projector).__name__}")
    if residual == "norm_scaled" or gradient_scaling == "channel":
      raise ValueError("optlab.in_subspace: proj_type 'both' has no channel axis for residual "
                       "'norm_scaled' or gradient_scaling 'channel'")
  V.check_nonneg("in_subspace", "scale", scale)
  V.check_nonneg("in_subspace", "sign_scale", sign_scale)
  if norm_growth is not None:
    V.check_range("in_subspace", "norm_growth", norm_growth, 1.0)
  inner = optax.with_extra_args_support(inner)
  template = inner.init(Empty())
  regular_tx = inner if regular is None else optax.with_extra_args_support(regular)
  regular_template = regular_tx.init(Empty())

  def layout(shape):
    """(side, rank) of a leaf; side None when it is not projected."""
    if isinstance(projector, haar_projector):
      if len(shape) != 2:
        return None, 0
      m, n = shape
      side = subspace_side(shape, 1, proj_type)
      dim = n if side == "right" else m
      r = dim >> projector.level
      if side is None or r < 1 or dim % (1 << projector.level):
        return None, 0
      return side, r
    return subspace_side(tuple(shape), rank, proj_type), rank

  def proxy(p):
    side, r = layout(jnp.shape(p))
    return p if side is None else jax.ShapeDtypeStruct(_low_shape(p.shape, side, r), p.dtype)

  def proj_structs(leaves):
    out = []
    for p in leaves:
      side, r = layout(jnp.shape(p))
      if side is not None:
        out.append(jax.ShapeDtypeStruct(_proj_shape(p.shape, side, r),
                                        accumulation_dtype(p.dtype)))
    return out

  def init(params):
    leaves = jax.tree.leaves(params)
    none = lambda p: jnp.zeros([0], p.dtype)
    projected = jax.tree.map(
        lambda p: none(p) if layout(jnp.shape(p))[0] is None else
        jnp.zeros(proxy(p).shape, p.dtype), params)
    regular = jax.tree.map(lambda p: p if layout(jnp.shape(p))[0] is None else none(p), params)
    inner_state = pack_state(inner.init(projected), template)
    regular_state = pack_state(regular_tx.init(regular), regular_template)
    projs = [jnp.zeros(s.shape, s.dtype) for s in proj_structs(leaves)]
    aux = projs * _slots(projector)
    acc = tree_accumulation_dtype(leaves)
    return SubspaceState(
        count=jnp.zeros([], jnp.int32),
        key=new_key(seed),
        projectors=pack(projs, leaves),
        # A projector without state of its own has none, whatever the params.
        proj_aux=pack(aux, leaves) if _slots(projector) else None,
        inner_state=inner_state,
        regular_state=regular_state,
        prev_norm=jnp.zeros([len(leaves)], acc),
        signature=jnp.asarray(np.frombuffer(_signature(params).encode(), np.uint8)))

  def update(updates, state, params=None, **extra):
    del params
    _check_signature(updates, state)
    leaves, treedef = jax.tree.flatten(updates)
    count = optax.safe_increment(state.count)
    refresh = state.count % update_every == 0
    first = state.count == 0
    layouts = [layout(jnp.shape(g)) for g in leaves]
    structs = proj_structs(leaves)
    old_projs = unpack(state.projectors, structs)
    n_proj = len(structs)
    old_aux = unpack(state.proj_aux, structs * _slots(projector))
    new_aux = list(old_aux)
    stored = []

    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    key = jnp.where(refresh, jax.random.key_data(key), state.key).astype(jnp.uint32)

    # 1. refresh / move the projectors, project the gradients.
    new_projs, lows, sides, olds, j = [], [], [], [], 0  # j: index among projected leaves
    for i, (g, (side, r)) in enumerate(zip(leaves, layouts)):
      sides.append(side)
      if side is None:
        lows.append(g)
        olds.append(None)
        new_projs.append(None)
        continue
      old = old_projs[j]
      j += 1
      g32 = g.astype(old.dtype)
      k_i = jax.random.fold_in(sub, i)
      fresh = lambda g32=g32, old=old, k_i=k_i, side=side, r=r: projector.refresh(
          g32, old, k_i, side, r).astype(old.dtype)
      if projector.per_step:  # fresh on the first step only, then one online step
        p = jax.lax.cond(first, fresh, lambda old=old: old)
        aux = tuple(old_aux[j - 1 + a * n_proj] for a in range(projector.slots))
        nxt, aux_new = projector.step(g32, p, side, aux, state.count, update_every)
        nxt = jnp.where(first, p, nxt.astype(p.dtype))
        aux_new = tuple(jnp.where(first, a, b.astype(a.dtype)) for a, b in zip(aux, aux_new))
        for a in range(projector.slots):
          new_aux[j - 1 + a * n_proj] = aux_new[a]
      else:
        p = nxt = jax.lax.cond(refresh, fresh, lambda old=old: old)
      olds.append(old)
      new_projs.append(p)
      stored.append(nxt)
      lows.append(_project(g32, p, side).astype(g.dtype))

    # 2. the inner transformation: in the subspace, and on the unprojected leaves.
    empty = lambda g: jnp.zeros([0], g.dtype)
    proxies = jax.tree.unflatten(
        treedef, [empty(g) if side is None else x for g, x, side in zip(leaves, lows, sides)])
    regular = jax.tree.unflatten(
        treedef, [g if side is None else empty(g) for g, side in zip(leaves, sides)])
    shapes = jax.eval_shape(inner.init, proxies)
    inner_state = unpack_state(state.inner_state, template, shapes)
    regular_state = unpack_state(state.regular_state, regular_template,
                                  jax.eval_shape(regular_tx.init, regular))
    if on_refresh == "project":
      change = _SubspaceChange(sides, olds, new_projs, [jnp.shape(g)[0] if jnp.ndim(g) else 0
                                                        for g in leaves])
      inner_state = jax.lax.cond(refresh & ~first,
                                 lambda s: rebase_state(s, change, "in_subspace.inner"),
                                 lambda s: s, inner_state)
    elif on_refresh == "reset":  # a fresh inner state, step count included (FRUGAL)
      fresh = inner.init(jax.tree.map(jnp.zeros_like, proxies))
      inner_state = jax.tree.map(lambda a, b: jnp.where(refresh, a, b), fresh, inner_state)
    proj_out, inner_state = inner.update(proxies, inner_state, None, **extra)
    reg_out, regular_state = regular_tx.update(regular, regular_state, None, **extra)
    inner_out = [r if side is None else u for u, r, side in
                 zip(jax.tree.leaves(proj_out), jax.tree.leaves(reg_out), sides)]

    # 3. back to the full space, with the residual or APOLLO's scaling.
    out, norms = [], []
    for i, (g, u, side) in enumerate(zip(leaves, inner_out, sides)):
      prev = state.prev_norm[i]
      if side is None:
        out.append(u.astype(g.dtype))
        norms.append(prev)
        continue
      p = new_projs[i] if new_projs[i] is not None else None
      dt, m = p.dtype, g.shape[0]
      g32, u32, low32 = g.astype(dt), u.astype(dt), lows[i].astype(dt)
      axis = 1 if side == "right" else 0  # the rank axis of the low-rank matrices
      if gradient_scaling is not None:
        if gradient_scaling == "channel":
          factor = safe_norm(u32, axis=axis, keepdims=True) / (
              safe_norm(low32, axis=axis, keepdims=True) + 1e-8)
        else:
          factor = safe_norm(u32) / (safe_norm(low32) + 1e-8)
        main = clip_finite(g32 * factor.astype(dt), g.dtype)
        if norm_growth is not None and limit_before_scale:
          main, prev = limit_norm_growth(main, prev, first, norm_growth)
        main = main * jnp.asarray(scale, dt)
        if norm_growth is not None and not limit_before_scale:
          main, prev = limit_norm_growth(main, prev, first, norm_growth)
      else:
        main = jnp.asarray(scale, dt) * _back(u32, p, side, m)
        if residual == "norm_scaled":
          phi = safe_norm(u32, axis=axis, keepdims=True) / (
              safe_norm(low32, axis=axis, keepdims=True) + 1e-8)
          res = clip_finite((g32 - jnp.asarray(scale, dt) * _back(low32, p, side, m))
                            * phi.astype(dt), g.dtype)
          if norm_growth is not None:
            res, prev = limit_norm_growth(res, prev, first, norm_growth)
          main = main + res
        elif residual == "sign":
          res = g32 - _back(low32, p, side, m)
          main = main + jnp.asarray(sign_scale, dt) * jnp.sign(res)
        elif residual == "identity":
          main = main + (g32 - _back(low32, p, side, m))
      out.append(clip_finite(main, g.dtype).astype(g.dtype))
      norms.append(prev.astype(state.prev_norm.dtype))

    new_state = SubspaceState(
        count=count, key=key,
        projectors=repack(stored, state.projectors),
        proj_aux=repack(new_aux, state.proj_aux),
        inner_state=pack_state(inner_state, template),
        regular_state=pack_state(regular_state, regular_template),
        prev_norm=jnp.stack(norms).astype(state.prev_norm.dtype) if norms else state.prev_norm,
        signature=state.signature)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------ bias correction
@declare_state(count=COUNT)
class BiasCorrectionState(NamedTuple):
  count: jax.Array  # [], int32: steps taken


def scale_by_bias_correction(b1: Any = 0.9, b2: Any = 0.999
                             ) -> optax.GradientTransformationExtraArgs:
  """u <- u * sqrt(1 - b2^t) / (1 - b1^t), Adam's bias correction as a separate link.

  The official APOLLO and Fira codes compute their norm ratios from the
  *uncorrected* transformers-AdamW direction m / (sqrt(v) + eps) and fold the
  correction into the step size, lr * sqrt(1 - b2^t) / (1 - b1^t), which then
  multiplies the whole update (residual included). The recipes reproduce that
  with an uncorrected inner Adam and this link after `in_subspace`.
  """
  V.check_decay("scale_by_bias_correction", "b1", b1)
  V.check_decay("scale_by_bias_correction", "b2", b2)

  def init(params):
    del params
    return BiasCorrectionState(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, **extra):
    del params, extra
    count = optax.safe_increment(state.count)
    # 1 - b^t as -expm1(t log1p(-(1 - b))), from the same (1 - b) the moment EMAs
    # use (a Python double for a number, a runtime value when injected): no
    # cancellation for b near 1, and the correction stays consistent with the EMAs.
    t = count.astype(jnp.result_type(float))
    c1 = -jnp.expm1(t * jnp.log1p(-jnp.asarray(1 - b1, t.dtype)))
    c2 = -jnp.expm1(t * jnp.log1p(-jnp.asarray(1 - b2, t.dtype)))
    factor = jnp.sqrt(c2) / c1

    def leaf(u):
      dt = accumulation_dtype(u.dtype)
      return (u.astype(dt) * factor.astype(dt)).astype(u.dtype)

    return jax.tree.map(leaf, updates), BiasCorrectionState(count)

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------ natural gradient
@declare_state(count=COUNT, window=OPAQUE_STAT)
class NaturalGradientState(NamedTuple):
  count: jax.Array  # [], int32: steps taken; this step's gradient is row count % s
  window: Any       # per leaf [s, *leaf shape], its accumulation dtype: the last s
                    # gradients, a ring buffer (rows not yet written are zero)


def scale_by_natural_gradient(history: int = 20, damping: Any = 1e-3
                              ) -> optax.GradientTransformationExtraArgs:
  """Natural GaLore's natural-gradient transform, per leaf: "Natural GaLore:
  Accelerating GaLore for memory-efficient LLM Training and Fine-tuning"
  (arXiv:2410.16029).

  With G = [vec g_t, ..., vec g_{t-s+1}] the window of the leaf's last
  s = `history` gradients (the current one included, as in the official code;
  fewer during the first s - 1 steps) and lambda = `damping`, the output is the
  inverse of the empirical Fisher lambda I + G G^T applied to g = g_t. The
  paper writes it with the Woodbury identity as g / lambda - G z / lambda^2,
  (I + G^T G / lambda) z = G^T g; since g is a column of G, the push-through
  identity (lambda I + G G^T)^{-1} G = G (lambda I + G^T G)^{-1} gives the same
  vector as G w with (lambda I + G^T G) w = e_t, an s x s Cholesky solve without
  the cancellation of the paper's difference (measured in float32 on windows of
  4 nearly parallel gradients, damping 1e-3: median relative error 1.3e-5
  against 5.9e-3 for the difference). Cost per step: the s x s Gram
  (O(k s^2) for a leaf of k entries, as the official code recomputes it) and
  the solve. The paper defines the empirical Fisher with a 1/s factor but both
  its Woodbury formula and the code use the plain sum: (lambda I + G G^T / s)^{-1}
  is s times this transform at damping s * lambda. A solve that is not finite
  (overflowing statistics) falls back to g / (lambda + ||g||^2), the one-gradient
  window's answer.

  Args:
    history: s, the number of gradients in the window, an int >= 1 (the
      official ``natural_history``, 20).
    damping: lambda > 0, the Tikhonov damping (official 1e-3).
  """
  where = "scale_by_natural_gradient"
  V.check_int(where, "history", history, "the window length")
  V.check_range(where, "history", history, 1)
  V.check_positive(where, "damping", damping)
  s = int(history)

  def init(params):
    window = jax.tree.map(
        lambda p: jnp.zeros((s,) + jnp.shape(p), accumulation_dtype(jnp.result_type(p))), params)
    return NaturalGradientState(jnp.zeros([], jnp.int32), window)

  def leaf(g, window, slot):
    window = jax.lax.dynamic_update_index_in_dim(window, g.astype(window.dtype), slot, 0)
    if g.size == 0:
      return g, window
    dt = window.dtype
    rows = window.reshape(s, -1)       # G^T: one gradient per row
    gram = rows @ rows.T               # G^T G
    lam = jnp.asarray(damping, dt)
    coef = jax.scipy.linalg.solve(gram + lam * jnp.eye(s, dtype=dt),
                                  jax.nn.one_hot(slot, s, dtype=dt), assume_a="pos")
    out = (coef @ rows).reshape(g.shape)
    g32 = g.astype(dt)
    ok = all_finite(out) | any_nan(g32)
    out = jnp.where(ok, out, g32 / (lam + saturate(jnp.sum(safe_square(g32)))))
    return clip_finite(out, g.dtype).astype(g.dtype), window

  def update(updates, state, params=None, **extra):
    del params, extra
    slot = state.count % s
    leaves, treedef = jax.tree.flatten(updates)
    pairs = [leaf(g, w, slot) for g, w in zip(leaves, treedef.flatten_up_to(state.window))]
    return (jax.tree.unflatten(treedef, [u for u, _ in pairs]),
            NaturalGradientState(optax.safe_increment(state.count),
                                 jax.tree.unflatten(treedef, [w for _, w in pairs])))

  return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------- Subspace-Momentum
@declare_state(count=COUNT, numerator=NESTED, nu=OPAQUE_STAT)
class SubspaceMomentumState(NamedTuple):
  count: jax.Array        # [], int32: steps taken
  numerator: SubspaceState  # in_subspace's state: the low-rank momentum and projectors
  nu: jax.Array           # [total number of blocks], float32: EMA of each block's sum of g^2


def scale_by_subspace_momentum(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-6,
                               rank: int = 128, update_every: int = 200,
                               partition: Any = None, *, projector: Any = None,
                               proj_type: str = "std", seed: int = 0
                               ) -> optax.GradientTransformationExtraArgs:
  """Subspace-Momentum over a blockwise (Subset-Norm) second moment (arXiv:2411.07120,
  the official sn-sm GenericOptim with momentum_type="sm").

  Numerator: the momentum lives only in a rank-r subspace of each matrix,
  N = P m_low + (g - P P^T g) with m_low <- b1 m_low + (1 - b1) P^T g (an
  `in_subspace` EMA with the ``"identity"`` residual: plain SGD on the
  complement); m_low restarts from zero when the projector is refreshed
  (every `update_every` steps, SVD by default). Leaves that are not projected
  keep a full EMA. Denominator: from the raw gradient, v_B <- b2 v_B +
  (1 - b2) sum_B g^2 over the blocks of ``partition(names, shape)`` (default
  element-wise; `subset_norm_partition` for Subset-Norm). Output, with the
  official code's bias correction and eps placement:
  N * sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v_B) + eps).
  """
  where = "scale_by_subspace_momentum"
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  partition = partition or (lambda names, shape: ())
  numerator = in_subspace(scale_by_moments(ema(b1, debias=False), None), projector, rank,
                          update_every, proj_type=proj_type, residual="identity",
                          on_refresh="reset", seed=seed)

  def init(params):
    specs = block_specs(where, partition, params)
    n = sum(int(np.prod(block_stat_shape(v, a), dtype=np.int64)) for v, a in specs)
    return SubspaceMomentumState(jnp.zeros([], jnp.int32), numerator.init(params),
                                 jnp.zeros([n], flat_dtype(jax.tree.leaves(params))))

  def update(updates, state, params=None, **extra):
    count = optax.safe_increment(state.count)
    specs = block_specs(where, partition, updates)
    num, num_state = numerator.update(updates, state.numerator, params, **extra)
    leaves, treedef = jax.tree.flatten(updates)
    nus = unpack_flat(state.nu, [block_stat_shape(v, a) for v, a in specs], updates,
                      "optlab." + where)
    t = count.astype(state.nu.dtype)
    factor = (jnp.sqrt(bias_correction(jnp.asarray(b2, t.dtype), t))
              / bias_correction(jnp.asarray(b1, t.dtype), t))
    out, new_nu = [], []
    for g, n_, nu, (view, axes) in zip(leaves, jax.tree.leaves(num), nus, specs):
      g32 = g.astype(accumulation_dtype(g.dtype))
      stat = block_mean_sq(g32, view, axes)
      if axes:
        stat = saturate(stat * float(np.prod([view[a] for a in axes])))
      nu = saturate((b2 * nu + (1 - b2) * stat).astype(nu.dtype))
      den = broadcast_blocks(jnp.sqrt(nu) + eps, view, axes, g.shape)
      u = n_.astype(den.dtype) * factor.astype(den.dtype)
      ok = den > 0
      u = jnp.where(ok, u / jnp.where(ok, den, 1), 0)
      out.append(clip_finite(u, g.dtype).astype(g.dtype))
      new_nu.append(nu)
    return (jax.tree.unflatten(treedef, out),
            SubspaceMomentumState(count, num_state, pack_flat(new_nu, state.nu.dtype)))

  return optax.GradientTransformationExtraArgs(init, update)
