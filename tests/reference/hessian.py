"""Sophia-H, Sophia-G, AdaHessian, M-FAC and FOSI in NumPy, from the papers and
the official code.

The reference problem's Hessian is diag(a), exactly: a Hutchinson estimate
z * (H z) with Rademacher z is then a, whatever z is drawn, and these
references read it from ``grad_fn.hessian_diag``. Sophia-G's estimate comes
from the tests' ``logits_fn`` (tests/extras.py), for which it is exactly
1 / (4 d), d the number of parameter entries, whatever labels are drawn.
"""

import numpy as np


def _copy(p):
  return {k: np.array(v, dtype=np.float64) for k, v in p.items()}


def sophia_h(params, grad_fn, steps, *, learning_rate, b1=0.965, b2=0.99, eps=1e-8,
             weight_decay=1e-4, weight_decay_mask=None, gamma=0.01, clip_threshold=1.0,
             update_interval=10, n_probes=1, seed=0, axis_name=None, mu_dtype=None):
  """Sophia with Hutchinson's estimator, as levanter's SophiaH (the paper's JAX code):
  bias-corrected momentum, h refreshed every k steps starting with the first,
  after that step's update has been computed with the previous h."""
  del weight_decay_mask, n_probes, seed, axis_name, mu_dtype
  hdiag = grad_fn.hessian_diag
  p = _copy(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  h = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      ratio = (m[k] / (1 - b1 ** (t + 1))) / np.maximum(gamma * h[k], eps)
      if clip_threshold is not None:
        ratio = np.clip(ratio, -clip_threshold, clip_threshold)
      if t % update_interval == 0:  # estimate at the current point, used from the next step
        h[k] = b2 * h[k] + (1 - b2) * hdiag[k]
      p[k] = p[k] - learning_rate * (ratio + weight_decay * p[k])
    out.append(_copy(p))
  return out


def sophia_g(params, grad_fn, steps, *, learning_rate, b1=0.965, b2=0.99, eps=1e-15,
             weight_decay=0.1, weight_decay_mask=None, gamma=0.04, clip_threshold=1.0,
             update_interval=10, seed=0, axis_name=None, mu_dtype=None):
  """The official SophiaG step and training loop (Liuhong99/Sophia).

  Per iteration: p *= 1 - lr * wd; m = b1 m + (1 - b1) g;
  p -= lr * sign(m) * min(|m| / (rho * bs * hess + eps), clip) (no bias correction);
  after iterations k-1, 2k-1, ... (0-based): hess = b2 hess + (1 - b2) ghat^2, with
  ghat the gradient of the sampled-label loss. Here bs * ghat^2 = 1 / (4 d).
  """
  del weight_decay_mask, seed, axis_name, mu_dtype
  p = _copy(params)
  d = sum(v.size for v in p.values())
  bs_ghat_sq = 1.0 / (4.0 * d)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  hess = {k: np.zeros_like(v) for k, v in p.items()}  # holds bs * EMA(ghat^2)
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      p[k] = p[k] * (1 - learning_rate * weight_decay)
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      ratio = np.abs(m[k]) / (gamma * hess[k] + eps)
      if clip_threshold is not None:
        ratio = np.minimum(ratio, clip_threshold)
      p[k] = p[k] - learning_rate * np.sign(m[k]) * ratio
    if t % update_interval == update_interval - 1:
      for k in p:
        hess[k] = b2 * hess[k] + (1 - b2) * bs_ghat_sq
    out.append(_copy(p))
  return out


def adahessian(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-4,
               weight_decay=0.0, hessian_power=1.0, update_interval=1, n_probes=1,
               spatial_axes=(0, 1), seed=0, axis_name=None, mu_dtype=None):
  """The official Adahessian.step (amirgholami/adahessian), Hessian every step
  (update_interval > 1, an optlab option, refreshes on steps 1, k+1, ... and
  bias-corrects v by the number of refreshes)."""
  del n_probes, spatial_axes, seed, axis_name, mu_dtype
  hdiag = grad_fn.hessian_diag  # no 4-D leaves: no spatial averaging
  p = _copy(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  refreshes = 0
  for t in range(steps):
    g = grad_fn(p, t)
    fresh = t % update_interval == 0
    refreshes += fresh
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      if fresh:
        v[k] = b2 * v[k] + (1 - b2) * hdiag[k] * hdiag[k]
      bc1, bc2 = 1 - b1 ** (t + 1), 1 - b2 ** refreshes
      denom = (np.sqrt(v[k]) ** hessian_power) / np.sqrt(bc2) ** hessian_power + eps
      # the decay is scaled by lr only, not by the bias correction
      p[k] = p[k] - learning_rate * (m[k] / bc1 / denom + weight_decay * p[k])
    out.append(_copy(p))
  return out


def _flat(p, keys):
  return np.concatenate([np.ravel(p[k]) for k in keys])


def _unflat(x, like, keys):
  out, i = {}, 0
  for k in keys:
    n = np.size(like[k])
    out[k] = x[i:i + n].reshape(np.shape(like[k]))
    i += n
  return out


def mfac(params, grad_fn, steps, *, learning_rate, momentum=0.0, weight_decay=0.0,
         ngrads=1024, damp=1e-5):
  """The official M-FAC optimizer step, with the inverse-Fisher product computed by the
  naive Woodbury recursion over the window (as the official HInvSlow check):
  H = I / damp; for each stored g_i: H -= (H g_i)(H g_i)^T / (m + g_i^T H g_i)."""
  keys = sorted(params)
  p = _copy(params)
  x = _flat(p, keys)
  d = x.size
  window = np.zeros((ngrads, d))
  v = np.zeros(d)
  out = []
  for t in range(steps):
    g = _flat(grad_fn(_unflat(x, p, keys), t), keys) + weight_decay * x
    window[t % ngrads] = g
    h = np.eye(d) / damp
    for gi in window:
      hg = h @ gi
      h -= np.outer(hg, hg) / (ngrads + gi @ hg)
    step = h @ g
    if momentum > 0:
      v = momentum * v + (1 - momentum) * step
      step = v
    x = x - learning_rate * step
    out.append(_copy(_unflat(x, p, keys)))
  return out


def fosi(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
         weight_decay=0.0, k=5, num_iters=None, update_interval=100, warmup=None, alpha=0.1,
         decay=0.9, base=None, seed=0, axis_name=None):
  """Official fosi_adam (hsivan/fosi) with an AdamW base (learning-rate clip 1).

  The ESE (Lanczos) runs before the update on 0-based steps t with t + 1 >= w and
  (t + 1 - w) % T == 0. Here the Hessian is diag(a) and the tests run a full-length
  Lanczos, so the top-k eigenpairs are exact: np.linalg.eigh of diag(a).
  """
  del num_iters, base, seed, axis_name
  warmup = update_interval if warmup is None else warmup
  keys = sorted(params)
  p = _copy(params)
  x = _flat(p, keys)
  hess = _flat(grad_fn.hessian_diag, keys)
  d = x.size
  vecs = np.zeros((k, d))
  inv = np.zeros(k)
  vel = np.zeros(d)
  m = np.zeros(d)
  s = np.zeros(d)
  out = []
  for t in range(steps):
    if t + 1 >= warmup and (t + 1 - warmup) % update_interval == 0:
      w, q = np.linalg.eigh(np.diag(hess))
      top = np.argsort(-w)[:k]
      vecs, inv = q[:, top].T, np.abs(1.0 / w[top])
    g = _flat(grad_fn(_unflat(x, p, keys), t), keys)
    g1 = vecs.T @ (vecs @ g)
    g2 = g - g1
    vel = (1 - decay) * g1 + decay * vel
    newton = vecs.T @ (inv * (vecs @ vel))
    # AdamW on g2 (optax.adam + decoupled decay), returning the negated step
    m = b1 * m + (1 - b1) * g2
    s = b2 * s + (1 - b2) * g2 ** 2
    mh, sh = m / (1 - b1 ** (t + 1)), s / (1 - b2 ** (t + 1))
    delta = -learning_rate * (mh / (np.sqrt(sh) + eps) + weight_decay * x)
    delta = delta - vecs.T @ (vecs @ delta)
    x = x + delta - alpha * newton
    out.append(_copy(_unflat(x, p, keys)))
  return out
