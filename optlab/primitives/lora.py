"""LoRA pairs: run a transformation on each LoRA adapter's equivalent full gradient.

Convention. A LoRA adapter adds ``s * B A`` to a frozen weight W0 (m x n), with
A (r x n), B (m x r) and the scaling s (PEFT's ``lora_alpha / r``): B is the
factor on the *left* of the product. PEFT keeps torch's (out, in) layout, so
``lora_A.weight`` (r, in) is A and ``lora_B.weight`` (out, r) is B. Flax keeps
kernels as (in, out) and computes ``x @ lora_a @ lora_b`` (nnx.LoRA: ``lora_a``
(in, r), ``lora_b`` (r, out)), so there the left factor is ``lora_a``: B =
``lora_a``, A = ``lora_b``. LoRA-Pro's equivalent gradient does not depend on
which of the two layouts is used (it is the same matrix, transposed).

`in_lora_pairs(inner, pairs, scaling)` implements "LoRA-Pro: Are Low-Rank
Adapters Properly Optimized?" (arXiv:2407.18242) around any `inner`. With
g_A = s B^T g and g_B = s g A^T the LoRA gradients of the full gradient g,
P_B = B (B^T B)^{-1} B^T and (.)^{-1} the damped pseudo-inverse
``pinv(M + delta I)`` of the official code:

1. the adjusted gradients (the paper's closed form, X = 0)
   ĝ_A = (B^T B)^{-1} g_A / s^2,  ĝ_B = (I - P_B) g_B (A A^T)^{-1} / s^2,
   whose equivalent full gradient s (B ĝ_A + ĝ_B A) = P_B g + (I - P_B) g P_A
   is the orthogonal projection of g onto the updates a LoRA step can make:
   the best approximation of the full gradient;
2. `inner` runs on that (m, n) equivalent gradient (one leaf per pair; leaves
   in no pair go through `inner` unchanged), giving D;
3. D is mapped back to the pair as LoRA's gradients of D, adjusted again,
   now with the paper's X: the solution of the Sylvester equation
   B^T B X + X A A^T = -(B^T B)^{-1} (s B^T D) A^T / s^2, which among the
   (A, B) updates with the same equivalent update s (B u_A + u_B A) picks
   the one closest to LoRA's own gradients:
   u_A = (B^T B)^{-1} (s B^T D) / s^2 + X A,
   u_B = (I - P_B) (s D A^T) (A A^T)^{-1} / s^2 - B X.

So a step -lr (u_A, u_B) moves W by -lr s (B u_A + u_B A) (to first order),
the projection of -lr D, as full fine-tuning with `inner` would move it as far
as a rank-r adapter can. The official code (its modified DeepSpeed ZeRO
optimizer) does exactly this with Adam as `inner`: its Adam moments are full
(m, n) matrices per pair, updated with the equivalent gradient.

Computation: one thin SVD of each factor per step, B = U_B diag(sigma) V_B^T
and A = U_A diag(tau) V_A^T (r x r sides completed when r exceeds m or n),
gives the eigendecompositions of B^T B and A A^T, so both damped
pseudo-inverses are V_B diag(1 / (sigma^2 + delta)) V_B^T and likewise, and
the Sylvester equation is diagonal in those bases: X = -V_B [w_i sigma_i
(U_B^T D V_A)_ij tau_j / (sigma_i^2 + tau_j^2)] U_A^T / s, w_i the damped
inverse eigenvalue (the official code forms the Gram matrices, takes their
pinv, and solves the Sylvester equation with a general complex eigensolver).
Every product then involves orthonormal factors and diagonals, so rounding is
amplified by cond(B), not by cond(B^T B) = cond(B)^2 as through the Gram
matrices' inverses (measured on the contract's pair, cond 16: float32 vs
float64 relative error 1e-6 here against 6e-6 through the Gram matrices).
For a rank-deficient factor (r > m or r > n) the damped inverse's 1 / delta
along the null directions only ever multiplies a zero singular value here,
where the Gram route multiplies it with rounding errors.
Damped eigenvalues sigma^2 + delta below r * eps * the largest are dropped,
as torch's pinv drops them. Everything runs in the accumulation dtype
(float32, float64 for float64 params); the equivalent gradient is cast to the
pair's dtype for `inner`.

State layout: as `in_subspace`, every tree of `inner`'s state that has the
params' structure is packed into one vector (the (m, n) pair moments are not
param-shaped, and `optax.tree_map_params` must not take them for params); the
unpaired leaves' state is packed too, so it does not keep the params'
sharding. The state keeps the params' leaf paths and shapes (a static
`TreeLayout`, no arrays) to name the leaf of a mismatched tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.dtypes import accumulation_dtype
from optlab._src.layout import TreeLayout, check_layout
from optlab._src.numerics import clip_finite
from optlab._src.packing import Empty, pack_state, unpack_state
from optlab.primitives.basis import INVARIANT_STAT, OPAQUE_STAT, declare_state

__all__ = ["LoraPairsState", "in_lora_pairs", "find_lora_pairs"]

# leaf-name components of the naming convention -> (role, partner component)
_CONVENTION = {"lora_A": ("A", "lora_B"), "lora_B": ("B", "lora_A"),  # PEFT, (out, in)
               "lora_a": ("B", "lora_b"), "lora_b": ("A", "lora_a")}  # flax, (in, out)

PairsSpec = Optional[Union[Callable[[Any], Any], Any]]
_KEYSTR = re.compile(r"""\['([^']*)'\]|\["([^"]*)"\]|\[(\d+)\]|\.(\w+)""")


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _names(path: tuple) -> tuple[str, ...]:
  return tuple(_key_name(e) for e in path)


def _spelled(spec_path: Any) -> tuple[str, ...]:
  """A user's path: "a/b/c", a keystr such as "['a']['b']", or a tuple of keys."""
  if isinstance(spec_path, str):
    if spec_path.startswith("params"):
      spec_path = spec_path[len("params"):]
    if spec_path.startswith(("[", ".")):
      return tuple(next(g for g in m if g) for m in _KEYSTR.findall(spec_path))
    return tuple(spec_path.split("/"))
  return tuple(_key_name(e) for e in spec_path)


def find_lora_pairs(params: Any, pairs: PairsSpec = None, where: str = "in_lora_pairs"
                    ) -> list[tuple[int, int]]:
  """The LoRA pairs of `params` as (index of A, index of B) in its flattened leaves.

  Args:
    params: the params tree (only leaf paths and shapes are read).
    pairs: None for the naming convention: a leaf whose path has a component
      ``lora_A`` / ``lora_B`` (PEFT) or ``lora_a`` / ``lora_b`` (flax) is
      paired with the leaf whose path has the partner component in its place
      (roles as in the module docstring). Otherwise the pairs themselves, or
      a function of the params returning them: a sequence of ``(A path,
      B path)``, or a mapping from adapter names to such pairs. A path is a
      "/"-joined string ("layer/lora_A/kernel"), a keystr ("['layer']['A']"),
      or a tuple of keys.
    where: the name errors start with.

  Raises:
    ValueError: naming the parameter path, for a LoRA leaf without a partner
      (convention), a path that names no leaf, a leaf in two pairs, a factor
      that is not a matrix, or A and B whose ranks do not chain
      (B.shape[1] != A.shape[0]).
  """
  flat = jax.tree_util.tree_leaves_with_path(params)
  if not flat:  # optax.tree_map_params's placeholder: no leaves, no pairs
    return []
  index = {_names(path): i for i, (path, _) in enumerate(flat)}
  show = lambda i: V.path_str(flat[i][0])
  found = []
  if pairs is None:
    for i, (path, _) in enumerate(flat):
      names = _names(path)
      hits = [j for j, n in enumerate(names) if n in _CONVENTION]
      if not hits:
        continue
      j = hits[-1]
      role, partner = _CONVENTION[names[j]]
      other = index.get(names[:j] + (partner,) + names[j + 1:])
      if other is None:
        raise ValueError(f"optlab.{where}: LoRA leaf {show(i)} has no partner (no leaf "
                         f"with {partner!r} in place of {names[j]!r})")
      if role == "A":
        found.append((i, other))
  else:
    spec = pairs(params) if callable(pairs) else pairs
    items = list(spec.values()) if isinstance(spec, Mapping) else list(spec)
    for item in items:
      if len(item) != 2:
        raise ValueError(f"optlab.{where}: pairs must give (A path, B path) pairs, "
                         f"got {item!r}")
      ids = []
      for spec_path in item:
        i = index.get(_spelled(spec_path))
        if i is None:
          raise ValueError(f"optlab.{where}: pairs names {spec_path!r}, which is no leaf of "
                           "the params")
        ids.append(i)
      found.append(tuple(ids))
  seen: dict = {}
  for a, b in found:
    for i, role in ((a, "A"), (b, "B")):
      if i in seen:
        raise ValueError(f"optlab.{where}: {show(i)} is in two LoRA pairs")
      seen[i] = role
    sa, sb = np.shape(flat[a][1]), np.shape(flat[b][1])
    if len(sa) != 2 or len(sb) != 2:
      raise ValueError(f"optlab.{where}: the LoRA factors {show(a)} {sa} (A) and {show(b)} "
                       f"{sb} (B) must be matrices")
    if sb[1] != sa[0]:
      raise ValueError(f"optlab.{where}: the LoRA pair {show(a)} (A, shape {sa}) and "
                       f"{show(b)} (B, shape {sb}) does not chain: B A needs B.shape[1] == "
                       f"A.shape[0] (the rank r)")
  return found


# -------------------------------------------------------------------- the math
class _Pair(NamedTuple):
  """A pair's factors as SVDs, B = ub diag(sb) vb^T and A = ua diag(sa) va^T, each
  completed to r singular values (zeros past min(m, r) or min(r, n)); wb, wa are
  the damped inverse eigenvalues of B^T B and A A^T, 1 / (sigma^2 + delta), 0
  where dropped. With them pinv(B^T B + delta I) = vb diag(wb) vb^T, and every
  product of the adjustment is one with orthonormal factors and a diagonal."""
  a: jax.Array
  b: jax.Array
  ub: jax.Array  # (m, r)
  sb: jax.Array  # (r,)
  vb: jax.Array  # (r, r)
  wb: jax.Array  # (r,)
  ua: jax.Array  # (r, r)
  sa: jax.Array  # (r,)
  va: jax.Array  # (n, r)
  wa: jax.Array  # (r,)
  s: jax.Array   # the scaling


def _svd_r(x: jax.Array, left: bool):
  """(u, sigma, v) with x = u diag(sigma) v^T and r = x.shape[1] (left=True: B) or
  x.shape[0] (A) singular values: the r x r side complete, the other padded."""
  r = x.shape[1] if left else x.shape[0]
  u, sig, vt = jnp.linalg.svd(x, full_matrices=(min(x.shape) < r))
  k = sig.shape[0]
  sig = jnp.pad(sig, (0, r - k))
  if left:  # x (m, r): u (m, m or r), vt (r, r)
    u = jnp.pad(u[:, :r], ((0, 0), (0, r - min(u.shape[1], r))))
    return u, sig, vt.T
  # x (r, n): u (r, r), vt (n or r, n)
  vt = jnp.pad(vt[:r], ((0, r - min(vt.shape[0], r)), (0, 0)))
  return u, sig, vt.T


def _damped_inverse(sig: jax.Array, delta: Any) -> jax.Array:
  """1 / (sigma^2 + delta), with the eigenvalues below r * eps * the largest dropped
  (0), as torch's pinv of the damped Gram matrix drops them."""
  shifted = sig * sig + jnp.asarray(delta, sig.dtype)
  keep = shifted > sig.shape[0] * jnp.finfo(sig.dtype).eps * jnp.max(shifted)
  return jnp.where(keep, 1 / jnp.where(keep, shifted, 1), 0)


def _geometry(a: jax.Array, b: jax.Array, s: jax.Array, delta: Any) -> _Pair:
  ub, sb, vb = _svd_r(b, True)
  ua, sa, va = _svd_r(a, False)
  return _Pair(a, b, ub, sb, vb, _damped_inverse(sb, delta), ua, sa, va,
               _damped_inverse(sa, delta), s)


def _off_b(pair: _Pair, y: jax.Array) -> jax.Array:
  """(I - P_B) y, P_B = B pinv(B^T B + delta I) B^T = ub diag(sb^2 wb) ub^T."""
  return y - pair.ub @ ((pair.sb * pair.sb * pair.wb)[:, None] * (pair.ub.T @ y))


def _equivalent_gradient(pair: _Pair, ga: jax.Array, gb: jax.Array) -> jax.Array:
  """s (B g^_A + g^_B A) for the adjusted gradients with X = 0 of LoRA's (ga, gb):
  P_B g + (I - P_B) g P_A when ga = s B^T g and gb = s g A^T."""
  p = pair
  via_a = p.ub @ ((p.sb * p.wb)[:, None] * (p.vb.T @ ga))       # B pinv(B^T B) ga
  via_b = _off_b(p, (gb @ p.ua) * (p.wa * p.sa)[None, :]) @ p.va.T  # (I-P_B) gb pinv(AA^T) A
  return (via_a + via_b) / p.s


def _split(pair: _Pair, d: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The adjusted gradients (u_A, u_B) of LoRA's gradients of d, s B^T d and s d A^T,
  with the paper's X (the Sylvester equation, solved in the two SVD bases)."""
  p = pair
  core = p.ub.T @ d @ p.va                                          # ub^T d va, (r, r)
  den = p.sb[:, None] ** 2 + p.sa[None, :] ** 2
  ok = den > den.shape[0] * jnp.finfo(den.dtype).eps * jnp.max(den)
  z = jnp.where(ok, ((p.wb * p.sb)[:, None] * core * p.sa[None, :]) / jnp.where(ok, den, 1), 0)
  # X = -vb z ua^T / s: u_A = pinv(B^T B) B^T d / s + X A, u_B = (I-P_B) d A^T pinv(A A^T) / s - B X
  ua = p.vb @ ((p.wb * p.sb)[:, None] * (p.ub.T @ d) - (z * p.sa[None, :]) @ p.va.T)
  ub = _off_b(p, (d @ p.va) * (p.sa * p.wa)[None, :]) @ p.ua.T + p.ub @ ((p.sb[:, None] * z)
                                                                        @ p.ua.T)
  return ua / p.s, ub / p.s


# ------------------------------------------------------------------- the state
@declare_state(inner_state=OPAQUE_STAT, layout=INVARIANT_STAT)
class LoraPairsState(NamedTuple):
  inner_state: tuple  # leaves of inner's state over the pair-wise tree (one (m, n) leaf per
                      # pair, the unpaired leaves as they are), each params-structured tree
                      # packed into one 1-D vector (None for one without entries)
  layout: Any  # TreeLayout: the params' leaf paths and shapes (static, no arrays); a
               # scalar for a tree without leaves (optax.tree_map_params's placeholder,
               # whose state must be a prefix of every real one)


def in_lora_pairs(inner: optax.GradientTransformation, pairs: PairsSpec = None,
                  scaling: Any = 2.0, *, delta: Any = 1e-8
                  ) -> optax.GradientTransformationExtraArgs:
  """Runs `inner` on each LoRA pair's equivalent full gradient (LoRA-Pro, see the
  module docstring; arXiv:2407.18242).

  Args:
    inner: the transformation of the equivalent gradients and of the leaves in
      no pair (e.g. `scale_by_adam()`); it gets ``params=None``.
    pairs: the pairs, as `find_lora_pairs` takes them: None for the naming
      convention (``lora_A``/``lora_B``, ``lora_a``/``lora_b``), a sequence or
      mapping of (A path, B path), or a function of the params giving one.
    scaling: s, the adapter's scaling (W = W0 + s B A), > 0; official 2
      (lora_alpha 16 / r 8).
    delta: the damping of the pseudo-inverses pinv(B^T B + delta I) and
      pinv(A A^T + delta I), >= 0 (official 1e-8).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params`` when there is a pair (A and B enter the adjustment).
  """
  where = "in_lora_pairs"
  V.check_positive(where, "scaling", scaling)
  V.check_nonneg(where, "delta", delta)
  inner = optax.with_extra_args_support(inner)
  template = inner.init(Empty())

  def pairwise(tree, found, eq):
    """The tree `inner` sees: a list, pair i's (m, n) `eq[i]` at A's place, B dropped."""
    leaves = jax.tree.leaves(tree)
    at_a = {a: k for k, (a, _) in enumerate(found)}
    bs = {b for _, b in found}
    return [eq[at_a[i]] if i in at_a else x for i, x in enumerate(leaves) if i not in bs]

  def init(params):
    leaves = jax.tree.leaves(params)
    found = find_lora_pairs(params, pairs, where)
    zeros = [jnp.zeros((leaves[b].shape[0], leaves[a].shape[1]),
                       jnp.result_type(leaves[a], leaves[b])) for a, b in found]
    return LoraPairsState(pack_state(inner.init(pairwise(params, found, zeros)), template),
                          TreeLayout.of(params) if leaves else jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, **extra):
    check_layout(where, state.layout, updates)
    found = find_lora_pairs(updates if params is None else params, pairs, where)
    leaves, treedef = jax.tree.flatten(updates)
    if found:
      p_leaves = jax.tree.leaves(V.require_params(where, params))
    geoms, eqs = [], []
    for a_i, b_i in found:
      dt = accumulation_dtype(jnp.result_type(leaves[a_i], leaves[b_i]))
      geom = _geometry(p_leaves[a_i].astype(dt), p_leaves[b_i].astype(dt),
                       jnp.asarray(scaling, dt), delta)
      eq = _equivalent_gradient(geom, leaves[a_i].astype(dt), leaves[b_i].astype(dt))
      eqs.append(clip_finite(eq, leaves[a_i].dtype).astype(leaves[a_i].dtype))
      geoms.append(geom)
    proxy = pairwise(updates, found, eqs)
    inner_state = unpack_state(state.inner_state, template, jax.eval_shape(inner.init, proxy))
    out, inner_state = inner.update(proxy, inner_state, None, **extra)
    bs = {b for _, b in found}
    result = dict(zip([i for i in range(len(leaves)) if i not in bs], out))
    for (a_i, b_i), geom in zip(found, geoms):
      # inner's output for the pair sits at A's place
      ua, ub = _split(geom, result[a_i].astype(geom.a.dtype))
      result[a_i] = clip_finite(ua, leaves[a_i].dtype).astype(leaves[a_i].dtype)
      result[b_i] = clip_finite(ub, leaves[b_i].dtype).astype(leaves[b_i].dtype)
    return (jax.tree.unflatten(treedef, [result[i] for i in range(len(leaves))]),
            LoraPairsState(pack_state(inner_state, template), state.layout))

  return optax.GradientTransformationExtraArgs(init, update)
