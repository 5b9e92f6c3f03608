"""Low-rank subspace methods in NumPy, written from the official codes' loops.

GaLore (jiaweizzhao/GaLore, galore_torch/adamw.py + galore_projector.py),
Fira (xichen-fy/Fira, optimizer_torch/fira_adamw.py), APOLLO
(zhuhanqing/APOLLO, apollo_torch/apollo.py + random_projector.py), Natural
GaLore (the paper arXiv:2410.16029 and selfsupervised-ai/Natural-GaLore). Every
official code runs the transformers AdamW (eps added to sqrt(v), step size
lr * sqrt(1 - b2^t) / (1 - b1^t), weight decay p -= lr * wd * p after the step)
per tensor; a matrix with rank < min(m, n) is projected, everything else is
plain AdamW.

Two documented choices that keep the comparison deterministic:
* SVD signs: each new singular vector is flipped to have a non-negative dot
  product with the previous projector's (nothing to compare with on the first
  refresh). The official code keeps LAPACK's arbitrary signs; with aligned
  signs the run does not depend on them.
* Random projections (APOLLO): the matrices are drawn with jax.random from
  this key schedule (the only jax use here): key = PRNGKey(seed); at each
  refresh key, sub = split(key); leaf i (index in sorted-key order) draws
  normal(fold_in(sub, i), shape, float64) / sqrt(rank). The algorithm around
  them is NumPy.
"""

import math

import numpy as np


def _copy(p):
  return {k: v.copy() for k, v in p.items()}


def _side(shape, rank, proj_type):
  if len(shape) != 2 or rank >= min(shape):
    return None
  m, n = shape
  if proj_type == "std":
    return "right" if m >= n else "left"
  if proj_type == "reverse_std":
    return "left" if m >= n else "right"
  return proj_type


def _flip_columns(p, old):
  return p if old is None else p * np.where(np.sum(p * old, axis=0) < 0, -1.0, 1.0)[None, :]


def _svd(g, rank, side, old):
  """The projector: V_r^T (right), U_r (left) or the pair (U_r, V_r) (both), each
  singular vector flipped to agree with the previous projector's."""
  u, _, vh = np.linalg.svd(g, full_matrices=False)
  if side == "both":
    return (_flip_columns(u[:, :rank], None if old is None else old[0]),
            _flip_columns(vh[:rank, :].T, None if old is None else old[1]))
  if side == "right":  # the rows of V_r^T are the columns of V_r
    return _flip_columns(vh[:rank, :].T, None if old is None else old.T).T
  return _flip_columns(u[:, :rank], old)


class _RandomMatrices:
  """APOLLO's random projections from the documented jax.random key schedule."""

  def __init__(self, seed):
    import jax
    self.jax = jax
    with jax.enable_x64(True):
      self.key = jax.random.PRNGKey(seed)

  def draw(self, keys_in_order, shapes, rank):
    jax = self.jax
    with jax.enable_x64(True):
      self.key, sub = jax.random.split(self.key)
      out = {}
      for i, k in enumerate(keys_in_order):
        if shapes[k] is not None:
          z = jax.random.normal(jax.random.fold_in(sub, i), shapes[k], np.float64)
          out[k] = np.asarray(z) / math.sqrt(rank)
      return out


def _project(g, p, side):
  if side == "both":  # the Tucker core of a matrix, U^T G V
    return p[0].T @ g @ p[1]
  return g @ p.T if side == "right" else p.T @ g


def _back(r, p, side):
  if side == "both":
    return p[0] @ r @ p[1].T
  return r @ p if side == "right" else p @ r


def _limit(x, state, key, first, gamma=1.01):
  """Fira's norm-growth limiter (official form, eps 1e-8)."""
  norm = np.linalg.norm(x)
  if first:
    state[key] = norm
    return x
  limiter = max(norm / (state[key] + 1e-8), gamma) / gamma
  state[key] = norm / limiter
  return x / limiter


def _subspace_adamw(params, grad_fn, steps, *, learning_rate, rank, update_proj_gap, scale,
                    proj_type, b1, b2, eps, weight_decay, projection="svd", mode="galore",
                    scale_type="channel", limiter=True, scale_front=False, seed=0,
                    natural=None):
  p = _copy(params)
  names = sorted(p)
  sides = {k: _side(p[k].shape, rank, proj_type) for k in names}
  proj = {k: None for k in names}
  m, v, prev = {}, {}, {}
  windows = {k: [] for k in names}
  rand = _RandomMatrices(seed) if projection == "random" else None
  out = []
  for t in range(steps):  # t: the official code's state["step"] before the increment
    g = grad_fn(p, t)
    if t % update_proj_gap == 0:
      if projection == "svd":
        for k in names:
          if sides[k] is not None:
            proj[k] = _svd(g[k], rank, sides[k], proj[k])
      else:
        shapes = {k: None if sides[k] is None else
                  ((rank, g[k].shape[1]) if sides[k] == "right" else (g[k].shape[0], rank))
                  for k in names}
        proj.update(rand.draw(names, shapes, rank))
    step = t + 1
    for k in names:
      side = sides[k]
      r = g[k] if side is None else _project(g[k], proj[k], side)
      if natural is not None and side is not None:
        r = _natural_gradient(r, windows[k], *natural)
      if k not in m:
        m[k], v[k] = np.zeros_like(r), np.zeros_like(r)
      m[k] = b1 * m[k] + (1 - b1) * r
      v[k] = b2 * v[k] + (1 - b2) * r * r
      step_size = learning_rate * math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
      n = m[k] / (np.sqrt(v[k]) + eps)
      if side is not None:
        dim = 1 if side == "right" else 0  # norms over the rank axis, one per channel
        if mode == "galore":
          n = _back(n, proj[k], side) * scale
        elif mode == "fira":
          sub = _back(r, proj[k], side) * scale
          phi = np.linalg.norm(n, axis=dim, keepdims=True) / (
              np.linalg.norm(r, axis=dim, keepdims=True) + 1e-8)
          res = _limit((g[k] - sub) * phi, prev, k, t == 0)
          n = _back(n, proj[k], side) * scale + res
        elif mode == "apollo":
          if scale_type == "channel":
            f = np.linalg.norm(n, axis=dim, keepdims=True) / (
                np.linalg.norm(r, axis=dim, keepdims=True) + 1e-8)
          else:
            f = np.linalg.norm(n) / (np.linalg.norm(r) + 1e-8)
          s = g[k] * f
          if scale_front:
            s = s * math.sqrt(scale)
          if limiter:
            s = _limit(s, prev, k, t == 0)
          n = s if scale_front else s * math.sqrt(scale)
      p[k] = p[k] - step_size * n
      p[k] = p[k] - learning_rate * weight_decay * p[k]
    out.append(_copy(p))
  return out


def _natural_gradient(r, window, history, damping):
  """Natural GaLore's transform as the paper writes it (section "Natural Gradient
  Transform"): G the last `history` low-rank gradients (the current one included),
  S = I + G^T G / lambda, S z = G^T g by Cholesky, g~ = g / lambda - G z / lambda^2."""
  g = r.reshape(-1)
  window.append(g.copy())
  if len(window) > history:
    window.pop(0)
  gmat = np.stack(window, axis=1)
  s_mat = np.eye(gmat.shape[1]) + gmat.T @ gmat / damping
  chol = np.linalg.cholesky(s_mat)
  z = np.linalg.solve(chol.T, np.linalg.solve(chol, gmat.T @ g))
  return (g / damping - gmat @ z / damping ** 2).reshape(r.shape)


def galore_adamw(params, grad_fn, steps, *, learning_rate, rank=128, update_proj_gap=200,
                 scale=0.25, proj_type="std", b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0):
  """GaLore's AdamW: official defaults (README scale 0.25, eps 1e-6, wd 0)."""
  return _subspace_adamw(params, grad_fn, steps, learning_rate=learning_rate, rank=rank,
                         update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
                         b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def natural_galore(params, grad_fn, steps, *, learning_rate, rank=128, update_proj_gap=200,
                   scale=0.25, natural_history=20, damping=1e-3, proj_type="both", b1=0.9,
                   b2=0.999, eps=1e-6, weight_decay=0.0):
  """Natural GaLore (arXiv:2410.16029): the official code's projection, a Tucker
  decomposition, which for a matrix is U_r^T G V_r with the top-r singular vectors
  (proj_type "both"; one side, the paper's P_k, with "std" and the others), the
  inverse empirical Fisher of each projected matrix's window of low-rank gradients
  (kept across refreshes, as the official code), then the same AdamW; the
  unprojected leaves get plain AdamW."""
  return _subspace_adamw(params, grad_fn, steps, learning_rate=learning_rate, rank=rank,
                         update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
                         b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                         natural=(natural_history, damping))


def apollo(params, grad_fn, steps, *, learning_rate, rank=256, update_proj_gap=200, scale=1.0,
           scale_type="channel", proj="random", proj_type="std", b1=0.9, b2=0.999, eps=1e-6,
           weight_decay=0.0, scale_front=False, norm_growth_limiter=True, seed=0):
  """APOLLO's AdamW (official defaults: rank 256, scale 1, channel-wise, random)."""
  return _subspace_adamw(params, grad_fn, steps, learning_rate=learning_rate, rank=rank,
                         update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
                         b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, projection=proj,
                         mode="apollo", scale_type=scale_type, limiter=norm_growth_limiter,
                         scale_front=scale_front, seed=seed)


def apollo_mini(params, grad_fn, steps, *, learning_rate, rank=1, scale=128.0, **kw):
  """APOLLO-Mini: rank 1, tensor-wise scaling, scale 128 (official README)."""
  return apollo(params, grad_fn, steps, learning_rate=learning_rate, rank=rank, scale=scale,
                scale_type="tensor", **kw)


def fira(params, grad_fn, steps, *, learning_rate, rank=128, update_proj_gap=200, alpha=0.25,
         proj_type="std", b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0):
  """Fira's AdamW (official scripts: rank 128, alpha 0.25, gap 200)."""
  return _subspace_adamw(params, grad_fn, steps, learning_rate=learning_rate, rank=rank,
                         update_proj_gap=update_proj_gap, scale=alpha, proj_type=proj_type,
                         b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mode="fira")


def frugal(params, grad_fn, steps, *, learning_rate, rank=128, update_gap=200,
           proj_params_lr_scale=1.0, inactive_lr_scale=1.0, proj_type="std",
           reset_statistics=True, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01):
  """FRUGAL's GaloreAdamW (official defaults: gap 200, sign_sgd, reset, eps 1e-8,
  wd 0.01): torch Adam on the projection, signSGD on the residual, decay before
  the step; at a refresh the projected tensors' Adam state and step restart."""
  p = _copy(params)
  names = sorted(p)
  sides = {k: _side(p[k].shape, rank, proj_type) for k in names}
  proj = {k: None for k in names}
  m, v, step = {}, {}, {}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in names:
      side = sides[k]
      if side is not None and t % update_gap == 0:
        proj[k] = _svd(g[k], rank, side, proj[k])
        if reset_statistics or k not in m:
          shape = _project(g[k], proj[k], side).shape
          m[k], v[k], step[k] = np.zeros(shape), np.zeros(shape), 0
      if side is None and k not in m:
        m[k], v[k], step[k] = np.zeros_like(p[k]), np.zeros_like(p[k]), 0
      p[k] = p[k] * (1 - learning_rate * weight_decay)
      step[k] += 1
      r = g[k] if side is None else _project(g[k], proj[k], side)
      lr = learning_rate if side is None else learning_rate * proj_params_lr_scale
      m[k] = b1 * m[k] + (1 - b1) * r
      v[k] = b2 * v[k] + (1 - b2) * r * r
      denom = np.sqrt(v[k]) / math.sqrt(1 - b2 ** step[k]) + eps
      upd = -lr / (1 - b1 ** step[k]) * m[k] / denom
      if side is not None:
        upd = _back(upd, proj[k], side)
        upd = upd - lr * inactive_lr_scale * np.sign(g[k] - _back(r, proj[k], side))
      p[k] = p[k] + upd
    out.append(_copy(p))
  return out


def online_subspace_descent(params, grad_fn, steps, *, learning_rate, rank=128,
                            update_proj_gap=200, scale=1.0, proj_type="std", b1=0.9, b2=0.999,
                            eps=1e-6, weight_decay=0.0):
  """Online Subspace Descent (official "continuous" projector): P from the first
  gradient's SVD, then one torch-AdamW step (lr 1/gap, betas (0.9, 0.999), eps
  1e-8, weight decay 0.01) per step on the PCA loss of G/||G||, taken after P
  has projected this step's gradient. No sign alignment is needed: the loss
  and the back-projection are invariant to flipping a row of P."""
  p = _copy(params)
  names = sorted(p)
  sides = {k: _side(p[k].shape, rank, proj_type) for k in names}
  proj, pm, pv = {}, {}, {}
  m, v = {}, {}
  lr_p = 1.0 / update_proj_gap
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    step = t + 1
    for k in names:
      side = sides[k]
      if side is not None and k not in proj:
        proj[k] = _svd(g[k], rank, side, None)
        pm[k], pv[k] = np.zeros_like(proj[k]), np.zeros_like(proj[k])
        pgrad = None
      elif side is not None:  # gradient of the PCA loss at the current P
        gn = g[k] / np.linalg.norm(g[k])
        P = proj[k]
        if side == "right":
          e = gn @ P.T @ P - gn  # d||E||^2/dP = 2 P (E^T gn + gn^T E)
          pgrad = 2 * P @ (e.T @ gn + gn.T @ e)
        else:
          e = P @ P.T @ gn - gn  # d||E||^2/dP = 2 (E gn^T + gn E^T) P
          pgrad = 2 * (e @ gn.T + gn @ e.T) @ P
      r = g[k] if side is None else _project(g[k], proj[k], side)
      if k not in m:
        m[k], v[k] = np.zeros_like(r), np.zeros_like(r)
      m[k] = b1 * m[k] + (1 - b1) * r
      v[k] = b2 * v[k] + (1 - b2) * r * r
      step_size = learning_rate * math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
      n = m[k] / (np.sqrt(v[k]) + eps)
      if side is not None:
        n = _back(n, proj[k], side) * scale
        if pgrad is not None:  # torch.optim.AdamW step on P (its t-th step)
          pm[k] = 0.9 * pm[k] + 0.1 * pgrad
          pv[k] = 0.999 * pv[k] + 0.001 * pgrad ** 2
          P = proj[k] * (1 - lr_p * 0.01)
          denom = np.sqrt(pv[k]) / math.sqrt(1 - 0.999 ** t) + 1e-8
          proj[k] = P - lr_p / (1 - 0.9 ** t) * pm[k] / denom
      p[k] = p[k] - step_size * n
      p[k] = p[k] - learning_rate * weight_decay * p[k]
    out.append(_copy(p))
  return out


def _haar_down(x, axis, level):
  """`level` Haar analysis steps along `axis`: pairs (a, b) -> (a + b) / sqrt(2)."""
  for _ in range(level):
    x = np.moveaxis(x, axis, 0)
    x = (x[0::2] + x[1::2]) / math.sqrt(2)
    x = np.moveaxis(x, 0, axis)
  return x


def _haar_up(x, axis, level):
  """The adjoint (inverse with zero details): each coefficient c -> (c, c) / sqrt(2)."""
  for _ in range(level):
    x = np.moveaxis(x, axis, 0)
    x = np.repeat(x, 2, axis=0) / math.sqrt(2)
    x = np.moveaxis(x, 0, axis)
  return x


def gwt_adam(params, grad_fn, steps, *, learning_rate, level=2, scale=1.0, proj_type="std",
             b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  """GWT-Adam as a projection: Adam on the Haar approximation coefficients, back
  through the inverse transform with zero details (see optlab.gwt_adam's note)."""
  p = _copy(params)
  names = sorted(p)
  m, v = {}, {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in names:
      side = _side(p[k].shape, 1, proj_type)
      axis = None if side is None else (1 if side == "right" else 0)
      if axis is not None and p[k].shape[axis] % (2 ** level):
        axis = None
      r = g[k] if axis is None else _haar_down(g[k], axis, level)
      if k not in m:
        m[k], v[k] = np.zeros_like(r), np.zeros_like(r)
      m[k] = b1 * m[k] + (1 - b1) * r
      v[k] = b2 * v[k] + (1 - b2) * r * r
      n = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      if axis is not None:
        n = scale * _haar_up(n, axis, level)
      p[k] = p[k] - learning_rate * (n + weight_decay * p[k])
    out.append(_copy(p))
  return out
