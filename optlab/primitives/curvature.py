"""Curvature estimates fed by the loss: Hessian-vector products, Hessian-diagonal
estimators (Hutchinson, Gauss-Newton-Bartlett), and the transformations that
turn them into steps (Sophia, AdaHessian).

An *estimator* is a small frozen dataclass that names the extra arg it needs
(``obj_fn``: params -> loss on the current batch; ``logits_fn``: params ->
logits of the current batch) and maps ``(params, key, fn)`` to a param-shaped
estimate of diag(H)::

    hutchinson(n_probes=1)          # z * (H z), z Rademacher   (Sophia-H, AdaHessian)
    hutchinson(spatial_axes=(0, 1)) # |z * Hz| averaged over conv-kernel dims (AdaHessian)
    gauss_newton_bartlett()         # B * grad(CE(logits, y~softmax))^2   (Sophia-G)

The step primitives refresh the estimate every ``update_interval`` steps under
`lax.cond` (the expensive HVP or backward pass runs only on those steps), keep
the random key in their state (raw uint32 data, seeded by ``seed``), and, with
``axis_name``, average the fresh estimate over that pmap axis so replicas stay
identical.

`lanczos_top_eigs` (FOSI) is the Krylov helper on the same HVPs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab._src.numerics import (all_finite, any_nan, bias_correction, bound_gradient,
                                  one_minus_power, safe_div, safe_square, saturate, tree_ema)
from optlab._src.packing import unpack
from optlab._src.random import new_key
from optlab._src.tree import pack_flat, tree_zeros_like
from optlab.primitives.basis import (COUNT, INVARIANT_STAT, LINEAR_MOMENT, NESTED, OPAQUE_STAT,
                                     SECOND_MOMENT, declare_state)

__all__ = ["hvp", "hutchinson_diagonal", "gnb_diagonal", "hutchinson", "gauss_newton_bartlett",
    "CurvatureState", "scale_by_sophia", "scale_by_adahessian", "lanczos_top_eigs", "MFACState",
    "scale_by_mfac", "FosiState", "with_fosi"]


# ------------------------------------------------------------------ pure helpers
def hvp(obj_fn: Callable[[Any], jax.Array], params: Any, v: Any) -> Any:
  """H v, the Hessian of `obj_fn` at `params` times the tree `v` (forward-over-reverse)."""
  return jax.jvp(jax.grad(obj_fn), (params,), (v,))[1]


def _rademacher_like(key: jax.Array, params: Any) -> Any:
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  signs = [jax.random.rademacher(k, jnp.shape(p), jnp.float32).astype(jnp.result_type(p))
           for k, p in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, signs)


def _finite(x: jax.Array) -> jax.Array:
  """NaN -> 0 and +-inf -> the dtype's largest finite value (an estimate stays usable)."""
  top = jnp.finfo(x.dtype).max
  return jnp.nan_to_num(x, nan=0.0, posinf=top, neginf=-top)


def _clip_inf(x: jax.Array) -> jax.Array:
  """+-inf -> the dtype's largest finite value; NaN stays NaN (for gradients and
  updates: a NaN gradient must show in the update, not become a zero step)."""
  top = jnp.finfo(x.dtype).max
  return jnp.clip(x, -top, top)


def hutchinson_diagonal(obj_fn: Callable[[Any], jax.Array], params: Any, key: jax.Array,
                        n_probes: int = 1) -> Any:
  """Hutchinson's estimate of diag(H): the mean over `n_probes` Rademacher z of z * (H z).

  Unbiased (E[z z^T] = I); exact for a diagonal Hessian. `key` is a raw uint32
  key (``jax.random.PRNGKey(seed)``). Each H z is one forward-over-reverse HVP
  (`jax.jvp` of `jax.grad(obj_fn)`); the probes run in a `lax.scan` so the cost
  of compiling does not grow with `n_probes`.
  """
  if n_probes < 1:
    raise ValueError(f"optlab.hutchinson_diagonal: n_probes must be >= 1, got {n_probes}")

  def probe(total, k):
    z = _rademacher_like(k, params)
    hz = hvp(obj_fn, params, z)
    return jax.tree.map(lambda t, a, b: t + (a * b).astype(t.dtype), total, z, hz), None

  zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
  total, _ = jax.lax.scan(probe, zeros, jax.random.split(key, n_probes))
  return jax.tree.map(lambda t: _finite(t / n_probes), total)


def gnb_diagonal(logits_fn: Callable[[Any], jax.Array], params: Any, key: jax.Array) -> Any:
  """The Gauss-Newton-Bartlett estimate of diag(H) (Sophia, Algorithm 2).

  ``logits_fn(params)`` gives the logits of the current batch, shape
  (..., classes). Labels y are sampled from softmax(logits); with L the mean
  cross-entropy of the logits against y, the estimate is B * (grad L)^2, B the
  number of sampled rows (the batch size; tokens for a language model), as
  the official code's ``rho * bs * hess``. Its expectation over y is the
  diagonal of the Gauss-Newton matrix of the mean loss.
  """
  logits = logits_fn(params)
  classes = logits.shape[-1]
  batch = max(math.prod(logits.shape[:-1]), 1)
  y = jax.random.categorical(key, jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)

  def sampled_loss(p):
    z = logits_fn(p).reshape(-1, classes).astype(jnp.float32)
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y.reshape(-1, 1), axis=-1))

  g = jax.grad(sampled_loss)(params)
  return jax.tree.map(lambda x: _finite(batch * safe_square(x)).astype(x.dtype), g)


def spatial_average(tree: Any, axes: tuple[int, ...] = (0, 1)) -> Any:
  """AdaHessian's spatial averaging: for each 4-D leaf (a conv kernel), |x| averaged
  over the kernel's spatial `axes` and broadcast back; other leaves are unchanged.

  The default axes (0, 1) are the spatial dims of flax/lax HWIO kernels (the
  official PyTorch code averages dims (2, 3) of OIHW kernels).
  """
  def leaf(x):
    if jnp.ndim(x) != 4:
      return x
    return jnp.broadcast_to(jnp.mean(jnp.abs(x), axis=axes, keepdims=True), x.shape)

  return jax.tree.map(leaf, tree)


# -------------------------------------------------------------------- estimators
@dataclasses.dataclass(frozen=True)
class hutchinson:
  """Hutchinson's diagonal estimator on the extra arg ``obj_fn`` (params -> loss).

  ``spatial_axes``: when given, 4-D leaves are replaced by their ``|estimate|``
  averaged over these axes (AdaHessian's conv-kernel averaging, `spatial_average`).
  """
  n_probes: int = 1
  spatial_axes: Optional[tuple[int, ...]] = None
  extra_arg = "obj_fn"
  help = "params -> loss on the current batch, differentiable twice"

  def __post_init__(self):
    V.check_range("hutchinson", "n_probes", self.n_probes, 1)

  def __call__(self, params, key, fn):
    est = hutchinson_diagonal(fn, params, key, self.n_probes)
    return est if self.spatial_axes is None else spatial_average(est, self.spatial_axes)


@dataclasses.dataclass(frozen=True)
class gauss_newton_bartlett:
  """The Gauss-Newton-Bartlett estimator on the extra arg ``logits_fn`` (`gnb_diagonal`)."""
  extra_arg = "logits_fn"
  help = "params -> logits of the current batch, shape (..., classes)"

  def __call__(self, params, key, fn):
    return gnb_diagonal(fn, params, key)


def _fresh_estimate(where, estimator, fresh, key, params, extra, axis_name, like):
  """(estimate or zeros, next key): the estimator runs only when `fresh` (lax.cond).

  The estimate is cast to `like`'s dtypes and, with `axis_name`, averaged over
  that pmap axis inside the refresh branch. The key advances on refresh only.
  """
  fn = V.require_extra_arg(where, extra, estimator.extra_arg, estimator.help)

  def run(key):
    key, sub = jax.random.split(key)
    est = estimator(params, sub, fn)
    est = jax.tree.map(lambda e, l: e.astype(l.dtype), est, like)
    if axis_name is not None:
      est = jax.lax.pmean(est, axis_name)
    return est, key

  def skip(key):
    return jax.tree.map(jnp.zeros_like, like), key

  return jax.lax.cond(fresh, run, skip, key)


def _check_estimator(where: str, estimator: Any) -> None:
  if not (callable(estimator) and hasattr(estimator, "extra_arg")):
    raise TypeError(f"optlab.{where}: estimator must be a curvature estimator such as "
                    f"optlab.hutchinson() or optlab.gauss_newton_bartlett(), got {estimator!r}")


# ------------------------------------------------------------------ transforms
@declare_state(count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT, key=INVARIANT_STAT)
class CurvatureState(NamedTuple):
  count: jax.Array  # [], int32: steps taken
  mu: Any           # EMA of the gradient, param-shaped (mu_dtype or the param dtype)
  nu: Any           # EMA of the curvature statistic (Sophia: h; AdaHessian: D^2),
                    # param-shaped, the param dtype
  key: jax.Array    # [2], uint32: the estimator's random key (raw key data)


_REFRESH = ("after", "before")


def _curvature_init(seed: int, mu_dtype: Any):
  """Sophia's and AdaHessian's init: zero count, m (mu_dtype), h, and the probe key."""
  def init(params):
    return CurvatureState(jnp.zeros([], jnp.int32), tree_zeros_like(params, mu_dtype),
                          tree_zeros_like(params), new_key(seed))
  return init


def scale_by_sophia(estimator: Any = None, b1: Any = 0.965, b2: Any = 0.99,
                    gamma: Any = 0.01, eps: Any = 1e-8, clip_threshold: Any = 1.0,
                    update_interval: int = 10, *, debias: bool = True,
                    refresh: str = "after", seed: int = 0, axis_name: Optional[str] = None,
                    mu_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Sophia's clipped, curvature-scaled momentum (arXiv:2305.14342).

  m <- b1 m + (1 - b1) g (divided by 1 - b1^t with ``debias``);
  every ``update_interval`` steps h <- b2 h + (1 - b2) h_hat, h_hat from
  ``estimator`` (default `hutchinson()`);
  u = clip(m / max(gamma * h, eps), -clip_threshold, clip_threshold)
  (no clipping with clip_threshold=None).

  ``refresh`` says when the estimate enters h:
    * ``"after"`` (levanter / optax.contrib.sophia): on steps 1, k+1, 2k+1, ...
      h is refreshed after this step's update is computed with the old h;
    * ``"before"`` (the official PyTorch Sophia-G loop, which refreshes after
      steps k, 2k, ... at the new params, i.e. before step k+1): on steps
      k+1, 2k+1, ... h is refreshed first and used at once; steps 1..k run
      with h = 0, i.e. clipped sign-momentum steps.

  A negative Hutchinson estimate makes max(gamma h, eps) = eps, so the
  coordinate takes a clipped sign step, as in the paper. With ``axis_name``
  the fresh estimate is averaged over that pmap axis (the key in the state is
  the same on every replica, so Hutchinson probes are shared). Needs
  ``params`` and the estimator's extra arg (``obj_fn`` or ``logits_fn``).

  Args:
    estimator: the diagonal Hessian estimator (`hutchinson()`,
      `gauss_newton_bartlett()`); None is `hutchinson()`.
    b1: decay of the momentum m, in [0, 1).
    b2: decay of the Hessian EMA h, in [0, 1).
    gamma: the scale of h in the denominator (the paper's rho), >= 0.
    eps: floor of the denominator ``gamma * h``, >= 0.
    clip_threshold: bound of the element-wise clip, > 0; None does not clip.
    update_interval: refresh h every this many steps (k), an int >= 1.
    debias: divide m by ``1 - b1^t``.
    refresh: ``"after"`` or ``"before"``, as above.
    seed: seeds the key of the estimator's probes, kept in the state.
    axis_name: a pmap axis over which each fresh estimate is averaged, or None.
    mu_dtype: the dtype of m; None keeps the params' dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state `CurvatureState`.
  """
  estimator = hutchinson() if estimator is None else estimator
  where = "scale_by_sophia"
  _check_estimator(where, estimator)
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "gamma", gamma)
  V.check_nonneg(where, "eps", eps)
  V.check_positive(where, "clip_threshold", clip_threshold)
  V.check_range(where, "update_interval", update_interval, 1)
  V.check_choice(where, "refresh", refresh, _REFRESH)

  init = _curvature_init(seed, mu_dtype)

  def update(updates, state, params=None, **extra):
    params = V.require_params(where, params)
    count = optax.safe_increment(state.count)
    fresh = state.count % update_interval == 0
    if refresh == "before":
      fresh = jnp.logical_and(fresh, state.count > 0)
    est, key = _fresh_estimate(where, estimator, fresh, state.key, params, extra, axis_name,
                               state.nu)
    new_nu = jax.tree.map(
        lambda h, e: jnp.where(fresh, (b2 * h + (1 - b2) * e).astype(h.dtype), h),
        state.nu, est)
    mu = tree_ema(state.mu, updates, b1)
    c = bias_correction(b1, count) if debias else 1.0
    nu = new_nu if refresh == "before" else state.nu

    def leaf(m, h, g):
      dt = jnp.promote_types(g.dtype, jnp.float32)
      m, h = m.astype(dt) / c, h.astype(dt)
      u = safe_div(m, jnp.maximum(gamma * h, eps))
      top = jnp.finfo(dt).max
      u = jnp.clip(u, -top, top) if clip_threshold is None else jnp.clip(
          u, -clip_threshold, clip_threshold)
      return u.astype(g.dtype)

    out = jax.tree.map(leaf, mu, nu, updates)
    return out, CurvatureState(count, mu, new_nu, key)

  return optax.GradientTransformationExtraArgs(init, update)


def scale_by_adahessian(b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-4,
                        hessian_power: Any = 1.0, update_interval: int = 1,
                        weight_decay: Any = 0.0, *,
                        n_probes: int = 1, spatial_axes: Optional[tuple[int, ...]] = (0, 1),
                        seed: int = 0, axis_name: Optional[str] = None, mu_dtype: Any = None
                        ) -> optax.GradientTransformationExtraArgs:
  """AdaHessian's scaling (arXiv:2006.00719): Adam with the Hutchinson diagonal in
  place of the gradient in the second moment.

  With ``D = z * (H z)`` (its absolute value averaged over ``spatial_axes`` for
  4-D conv kernels)::

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) D^2 (on refresh steps);
    u = m / (1 - b1^t) / ((sqrt(v_hat))^hessian_power + eps) + weight_decay * p,

  with v_hat = v / (1 - b2^n), n the number of refreshes so far: the official
  step (amirgholami/adahessian, also its fairseq and TF versions) applies
  lr * u, so the decay is AdaHessian's own (scaled by lr, not by the bias
  correction), not a separate AdamW decay. The estimate
  is refreshed on steps 1, k+1, 2k+1, ... (k = ``update_interval``; the
  official code refreshes every step, k = 1). Needs ``params`` and ``obj_fn``.
  """
  where = "scale_by_adahessian"
  V.check_decay(where, "b1", b1)
  V.check_decay(where, "b2", b2)
  V.check_nonneg(where, "eps", eps)
  V.check_positive(where, "hessian_power", hessian_power)
  V.check_range(where, "update_interval", update_interval, 1)
  V.check_nonneg(where, "weight_decay", weight_decay)
  estimator = hutchinson(n_probes, spatial_axes)

  init = _curvature_init(seed, mu_dtype)

  def update(updates, state, params=None, **extra):
    params = V.require_params(where, params)
    count = optax.safe_increment(state.count)
    fresh = state.count % update_interval == 0
    est, key = _fresh_estimate(where, estimator, fresh, state.key, params, extra, axis_name,
                               state.nu)
    nu = jax.tree.map(
        lambda v, d: jnp.where(
            fresh, saturate((b2 * v + (1 - b2) * safe_square(d)).astype(v.dtype)), v),
        state.nu, est)
    mu = tree_ema(state.mu, updates, b1)
    refreshes = (count - 1) // update_interval + 1
    # accurate 1 - b^t, the same whether b is a number or injected (see one_minus_power)
    c1, c2 = one_minus_power(b1, count, float), one_minus_power(b2, refreshes, float)

    def leaf(m, v, g, p):
      dt = jnp.promote_types(g.dtype, jnp.float32)
      root = jnp.sqrt(v.astype(dt) / c2)
      # exact for the default power 1 also when the power is injected (traced)
      den = jnp.where(hessian_power == 1, root, root ** hessian_power) + eps
      u = safe_div(m.astype(dt), den) / c1 + weight_decay * p.astype(dt)
      return u.astype(g.dtype)

    out = jax.tree.map(leaf, mu, nu, updates, params)
    return out, CurvatureState(count, mu, nu, key)

  return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------- Lanczos
def lanczos_top_eigs(matvec: Callable[[jax.Array], jax.Array], dim: int, key: jax.Array,
                     num_iters: int, k: int, dtype: Any = jnp.float32
                     ) -> tuple[jax.Array, jax.Array]:
  """The k largest (algebraic) eigenpairs of a symmetric operator by Lanczos.

  ``matvec`` maps a (dim,) vector to (dim,); ``num_iters`` Lanczos steps with
  full re-orthogonalisation against the earlier vectors (stable for the small
  iteration counts used here), then the Ritz pairs of the tridiagonal matrix.
  Returns (eigenvalues (k,), descending; eigenvectors (k, dim), orthonormal
  rows). Fixed shapes: runs under jit / scan. A breakdown (beta = 0, e.g. a
  zero operator) restarts nothing but keeps the vectors finite (zero rows).
  """
  m = num_iters
  v0 = jax.random.normal(key, (dim,), dtype)
  v0 = v0 / jnp.maximum(jnp.linalg.norm(v0), jnp.finfo(dtype).tiny)
  basis = jnp.zeros((m, dim), dtype)

  def body(i, carry):
    basis, alphas, betas, v, v_prev, beta = carry
    basis = basis.at[i].set(v)
    w = _finite(matvec(v).astype(dtype))
    alpha = jnp.vdot(w, v)
    w = w - alpha * v - beta * v_prev
    # full re-orthogonalisation (twice is enough) against the rows filled so far
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    b = jnp.linalg.norm(w)
    ok = b > jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(alpha), 1.0)
    v_next = jnp.where(ok, w / jnp.where(ok, b, 1.0), jnp.zeros_like(w))
    b = jnp.where(ok, b, 0.0)
    return basis, alphas.at[i].set(alpha), betas.at[i].set(b), v_next, v, b

  zero = jnp.zeros([], dtype)
  basis, alphas, betas, *_ = jax.lax.fori_loop(
      0, m, body, (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype), v0,
                   jnp.zeros(dim, dtype), zero))
  tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
  evals, evecs = jnp.linalg.eigh(tri)
  order = jnp.argsort(-evals)[:k]
  vecs = (basis.T @ evecs[:, order]).T
  norms = jnp.linalg.norm(vecs, axis=1, keepdims=True)
  vecs = jnp.where(norms > 0.5, vecs / jnp.maximum(norms, 1e-30), 0.0)
  return _finite(evals[order]), _finite(vecs)


# ------------------------------------------------------------------------ M-FAC
def _flat_spec(params: Any) -> tuple[Any, int]:
  """(dtype, size) of the params flattened into one vector: at least float32
  (float64 for float64 params), and the total number of entries."""
  leaves = jax.tree.leaves(params)
  dtype = jnp.result_type(jnp.float32, *leaves) if leaves else jnp.float32
  return dtype, sum(math.prod(jnp.shape(x)) for x in leaves)


def _flatten(tree: Any, dtype: Any) -> jax.Array:
  return pack_flat(jax.tree.leaves(tree), dtype)


def _unflatten_like(flat: jax.Array, like: Any) -> Any:
  return unpack(flat, like, "curvature")


def _safe_matvec(a: jax.Array, v: jax.Array) -> jax.Array:
  """a @ v, recomputed with both factors scaled to max-abs 1 when the plain product is
  not finite: huge entries of mixed sign otherwise sum inf - inf = nan, while the
  scaled product only overflows to +-inf, which the caller can clip."""
  plain = a @ v

  def scaled():
    # initial=0: an empty params tree gives zero-size factors (and scale 1).
    sa, sv = (jnp.where(s > 0, s, 1).astype(a.dtype)
              for s in (jnp.max(jnp.abs(a), initial=0), jnp.max(jnp.abs(v), initial=0)))
    return ((a / sa) @ (v / sv)) * sa * sv

  return jax.lax.cond(all_finite(plain), lambda: plain, scaled)


@declare_state(count=COUNT, grads=OPAQUE_STAT, gram=INVARIANT_STAT)
class MFACState(NamedTuple):
  count: jax.Array  # [], int32: steps taken (the ring buffer's next row is count % m)
  grads: jax.Array  # [m, d], float32 (float64 for float64 params): the gradient window G,
                    # flattened over all params (d = total param entries); rows start at 0
  gram: jax.Array   # [m, m], same dtype: G G^T, one row and column replaced per step


def scale_by_mfac(num_grads: int = 1024, damp: Any = 1e-5
                  ) -> optax.GradientTransformationExtraArgs:
  """M-FAC's inverse empirical-Fisher product (arXiv:2107.03356, the official optimizer).

  The last m gradients g_1..g_m (a ring buffer, initially zero rows) define
  F = damp I + (1/m) sum_i g_i g_i^T; the update is F^{-1} g for the current g,
  after g replaced the oldest row. With G the m x d window,
  F^{-1} g = (g - G^T (m damp I + G G^T)^{-1} G g) / damp (Woodbury), so a step
  costs O(dm) for G g, the new Gram row and G^T c, plus an O(m^3) m x m solve
  (the official dynamic algorithm recomputes its m x m coefficients each step
  too). The window is flattened over all params, as the official code does: M-FAC's
  Fisher couples every parameter, and one (m, d) buffer keeps the state's
  structure independent of the params tree. A solve that is not finite
  (overflowing statistics) falls back to g / damp for that step. g enters
  through `bound_gradient`: then one huge finite entry is a large row of G
  like any other, and F^{-1} g stays bounded (about m g / ||g||^2 along g),
  while a NaN entry gives a NaN update.
  """
  where = "scale_by_mfac"
  V.check_range(where, "num_grads", num_grads, 1)
  V.check_positive(where, "damp", damp)
  m = int(num_grads)

  def init(params):
    dt, d = _flat_spec(params)
    return MFACState(jnp.zeros([], jnp.int32), jnp.zeros((m, d), dt), jnp.zeros((m, m), dt))

  def update(updates, state, params=None, **extra):
    del params, extra
    dt = state.grads.dtype
    top = jnp.finfo(dt).max
    g = bound_gradient(_flatten(updates, dt))
    slot = state.count % m
    grads = jax.lax.dynamic_update_slice(state.grads, g[None, :], (slot, jnp.zeros_like(slot)))
    row = jnp.clip(_safe_matvec(grads, g), -top, top)         # G g: the new Gram row
    gram = state.gram.at[slot, :].set(row).at[:, slot].set(row)
    system = gram + (m * damp) * jnp.eye(m, dtype=dt)
    coef = jax.scipy.linalg.solve(system, row, assume_a="pos")
    ihvp = (g - grads.T @ coef) / damp
    # The g / damp fallback is for an overflowing solve; a NaN gradient keeps its
    # NaN result, so that it shows in the update.
    ok = all_finite(ihvp) | any_nan(g)
    ihvp = jnp.where(ok, ihvp, jnp.clip(g / damp, -top, top))
    return (_unflatten_like(ihvp, updates),
            MFACState(optax.safe_increment(state.count), grads, gram))

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------------- FOSI
@declare_state(count=COUNT, base_state=NESTED, velocity=LINEAR_MOMENT, eigvecs=OPAQUE_STAT,
               inv_eigvals=INVARIANT_STAT, scaling=INVARIANT_STAT)
class FosiState(NamedTuple):
  count: jax.Array      # [], int32: steps taken
  base_state: Any       # the base optimizer's state (param-shaped where the base's is)
  velocity: Any         # momentum of the gradient's eigenspace part, param-shaped
  eigvecs: jax.Array    # [k, d], float32 (float64 for float64 params): Ritz vectors,
                        # flattened over all params; zero rows before the first refresh
  inv_eigvals: jax.Array  # [k], same dtype: |1 / lambda_i| (0 for a zero row)
  scaling: jax.Array    # [], same dtype: the base step's factor, clip(lr_1 / lr_k, 1, clip)




def with_fosi(base: optax.GradientTransformation, k: int = 5, num_iters: Optional[int] = None,
              update_interval: int = 100, warmup: Optional[int] = None, alpha: Any = 0.1,
              decay: Any = 0.9, learning_rate_clip: Any = 1.0, *, seed: int = 0,
              axis_name: Optional[str] = None) -> optax.GradientTransformationExtraArgs:
  """FOSI (arXiv:2302.08484, the official JAX code hsivan/fosi): a Newton step in the
  top-k Hessian eigenspace plus ``base`` on its orthogonal complement.

  Every ``update_interval`` = T steps from step ``warmup`` (default T) on, before
  the step, Lanczos with ``num_iters`` (default 4k) HVPs of ``obj_fn`` gives the k
  algebraically largest Ritz pairs (lambda_i, v_i). With V the (k, d) matrix of
  the v_i::

    g1 = V^T V g, g2 = g - g1;  mom <- decay mom + (1 - decay) g1;
    newton = V^T (|1/lambda| * V mom);  d = base(g2) with its V-part removed;
    u = scaling * d - alpha * newton,
    scaling = clip(|1/lambda_1| / |1/lambda_k|, 1, learning_rate_clip)

  (scaling is 1 with the default clip 1, the official fosi_adam).
  ``base`` must include its learning rate (it returns the final, negated step,
  as official FOSI's base optimizer); the Newton part is scaled by alpha only.

  As the official code, the Lanczos start vector is the same at every refresh
  (drawn from ``seed``); only the k largest eigenvalues are used (the official
  ``approx_l`` smallest ones are not offered). With ``axis_name`` the HVPs
  are averaged over that pmap axis, so replicas agree. Needs ``params`` and
  ``obj_fn``.
  """
  where = "with_fosi"
  V.check_range(where, "k", k, 1)
  iters = 4 * k if num_iters is None else num_iters
  V.check_range(where, "num_iters", iters, 1)
  if V._concrete(k) is not None and V._concrete(iters) is not None and iters < k:
    raise ValueError(f"optlab.{where}: num_iters must be at least k (Lanczos finds at most "
                     f"num_iters eigenpairs), got num_iters={iters}, k={k}")
  V.check_range(where, "update_interval", update_interval, 1)
  warm = update_interval if warmup is None else warmup
  V.check_range(where, "warmup", warm, 1)
  V.check_nonneg(where, "alpha", alpha)
  V.check_decay(where, "decay", decay)
  V.check_range(where, "learning_rate_clip", learning_rate_clip, 1.0)
  base = optax.with_extra_args_support(base)
  estimator = hutchinson()  # only for its extra-arg name and help

  def init(params):
    dt, d = _flat_spec(params)
    return FosiState(jnp.zeros([], jnp.int32), base.init(params), tree_zeros_like(params),
                     jnp.zeros((k, d), dt), jnp.zeros((k,), dt), jnp.ones([], dt))

  def update(updates, state, params=None, **extra):
    params = V.require_params(where, params)
    fn = V.require_extra_arg(where, extra, estimator.extra_arg, estimator.help)
    dt = state.eigvecs.dtype
    step = state.count + 1
    fresh = (step >= warm) & ((step - warm) % update_interval == 0)

    def refresh(_):
      def matvec(v):
        hv = hvp(fn, params, _unflatten_like(v, params))
        if axis_name is not None:
          hv = jax.lax.pmean(hv, axis_name)
        return _flatten(hv, dt)

      d = state.eigvecs.shape[1]
      evals, evecs = lanczos_top_eigs(matvec, d, new_key(seed), iters, k, dt)
      tiny = jnp.finfo(dt).tiny
      inv = jnp.where(jnp.abs(evals) > tiny, 1.0 / jnp.where(jnp.abs(evals) > tiny,
                                                             jnp.abs(evals), 1.0), 0.0)
      inv = jnp.where(jnp.linalg.norm(evecs, axis=1) > 0, inv, 0.0)
      inv = _finite(inv)
      ratio = safe_div(inv[0], inv[-1])  # |1/lambda_max| over |1/lambda_k|: <= 1 normally
      scaling = jnp.clip(jnp.where(inv[-1] > 0, ratio, 1.0), 1.0, learning_rate_clip)
      return evecs, inv, scaling.astype(dt)

    eigvecs, inv, scaling = jax.lax.cond(
        fresh, refresh, lambda _: (state.eigvecs, state.inv_eigvals, state.scaling), None)
    g = _clip_inf(_flatten(updates, dt))
    coeff = eigvecs @ g
    g1 = eigvecs.T @ coeff
    g2 = _unflatten_like(g - g1, updates)
    velocity = jax.tree.map(lambda v, x: (decay * v + (1 - decay) * x).astype(v.dtype),
                            state.velocity, _unflatten_like(g1, updates))
    vel = _flatten(velocity, dt)
    newton = eigvecs.T @ (inv * (eigvecs @ vel))
    deltas, base_state = base.update(g2, state.base_state, params, **extra)
    dflat = _flatten(deltas, dt)
    dflat = dflat - eigvecs.T @ (eigvecs @ dflat)
    out = _clip_inf(scaling * dflat - alpha * newton)
    new = FosiState(optax.safe_increment(state.count), base_state, velocity, eigvecs, inv,
                    scaling)
    return _unflatten_like(out, updates), new

  return optax.GradientTransformationExtraArgs(init, update)
