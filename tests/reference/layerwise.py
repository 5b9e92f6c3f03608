"""NovoGrad, LAMB, LARS and MADGRAD in NumPy, from the papers and official code.

Learning rates may be numbers or schedules ``t -> lr`` of the 0-based step.
Weight decay defaults to 0 throughout: the papers use task-dependent values
(e.g. 0.01 for BERT with LAMB), not an algorithm default.
"""

import numpy as np


def _lr(learning_rate, t):
  return float(learning_rate(t)) if callable(learning_rate) else learning_rate


def _copy(p):
  return {k: np.array(v, dtype=np.float64) for k, v in p.items()}


def _norm(x):
  return float(np.sqrt(np.sum(np.square(x))))


def _selected(mask, k):
  """optax-style masks: True (all), or a dict of booleans by leaf name."""
  return mask is True or mask is None or bool(mask[k])


def novograd(params, grad_fn, steps, *, learning_rate, b1=0.95, b2=0.98, eps=0.0,
             eps_root=1e-8, weight_decay=0.0, grad_averaging=False, mu_dtype=None):
  """NovoGrad2 of NVIDIA OpenSeq2Seq (the paper's authors' code), Algorithm 1 of the paper.

  Per layer: a scalar EMA v of ||g||^2, set to ||g||^2 while it is 0; the
  gradient divided by sqrt(v + eps_root) (official: epsilon inside the root)
  + eps (paper: outside); weight decay added after the division; a
  heavy-ball momentum of that (times 1 - b1 with grad_averaging), and
  w <- w - lr * m. The defaults are the official code's (epsilon 1e-8 inside).
  """
  del mu_dtype
  p = _copy(params)
  v = {k: 0.0 for k in p}
  m = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    lr = _lr(learning_rate, t)
    for k in p:
      sq = float(np.sum(g[k] * g[k]))
      v[k] = sq if v[k] == 0.0 else b2 * v[k] + (1.0 - b2) * sq
      d = g[k] / (np.sqrt(v[k] + eps_root) + eps) + weight_decay * p[k]
      if grad_averaging:
        d = (1.0 - b1) * d
      m[k] = b1 * m[k] + d
      p[k] = p[k] - lr * m[k]
    out.append(_copy(p))
  return out


def lamb(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0,
         weight_decay=0.0, mask=None, mu_dtype=None):
  """Algorithm 2 of arXiv:1904.00962 with phi = identity.

  Adam's bias-corrected ratio r, then per layer
  x <- x - lr * ||x|| / ||r + wd x|| * (r + wd x), the ratio taken as 1 when a
  norm is 0. `mask` selects the leaves that are decayed.
  """
  del mu_dtype
  p = _copy(params)
  m = {k: np.zeros_like(x) for k, x in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    lr = _lr(learning_rate, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      r = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t) + eps_root) + eps)
      d = r + (weight_decay * p[k] if _selected(mask, k) else 0.0)
      pn, dn = _norm(p[k]), _norm(d)
      ratio = pn / dn if pn > 0 and dn > 0 else 1.0
      p[k] = p[k] - lr * ratio * d
    out.append(_copy(p))
  return out


def lars(params, grad_fn, steps, *, learning_rate, weight_decay=0.0, weight_decay_mask=True,
         trust_coefficient=0.001, eps=0.0, trust_ratio_mask=True, momentum=0.9,
         nesterov=False):
  """Algorithm 1 of arXiv:1708.03888 (eta = trust_coefficient = 0.001, m = 0.9).

  Per layer: d = g + beta w; local lr lambda = eta ||w|| / (||d|| + eps), 1 when
  a norm is 0 (the paper's denominator is ||g|| + beta ||w||; this reference
  uses ||g + beta w||, the choice optlab and optax make, see the recipe);
  v <- m v + lr lambda d; w <- w - v. Nesterov (not in the paper):
  w <- w - (lr lambda d + m v). Masks select the leaves decayed / given lambda.
  """
  p = _copy(params)
  vel = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    lr = _lr(learning_rate, t)
    for k in p:
      d = g[k] + (weight_decay * p[k] if _selected(weight_decay_mask, k) else 0.0)
      local = 1.0
      if _selected(trust_ratio_mask, k):
        wn, dn = _norm(p[k]), _norm(d)
        if wn > 0 and dn > 0:
          local = trust_coefficient * wn / (dn + eps)
      step = lr * local * d
      vel[k] = momentum * vel[k] + step
      p[k] = p[k] - (step + momentum * vel[k] if nesterov else vel[k])
    out.append(_copy(p))
  return out


def madgrad(params, grad_fn, steps, *, learning_rate, momentum=0.9, weight_decay=0.0, eps=1e-6,
            decouple_decay=False):
  """MADGRAD.step of facebookresearch/madgrad (dense gradients), defaults as there.

  k counts steps from 0; lr gets eps added unless it is 0; lambda = lr sqrt(k + 1);
  L2 decay is added to the gradient unless decouple_decay; with momentum 0 the
  anchor x0 is rebuilt from the current point, x0 = p + s / (cbrt(G) + eps);
  a zero denominator (eps = 0) counts as infinite (also when rebuilding x0,
  where the official code would divide 0 by 0 on the first step).
  """
  p = _copy(params)
  grad_sum_sq = {k: np.zeros_like(x) for k, x in p.items()}
  s = {k: np.zeros_like(x) for k, x in p.items()}
  x0 = _copy(p) if momentum != 0 else None
  out = []

  def rms_of(gss):
    rms = np.cbrt(gss) + eps
    return np.where(rms == 0, np.inf, rms)

  for k_step in range(steps):
    g = grad_fn(p, k_step)
    lr = _lr(learning_rate, k_step)
    if lr != 0.0:
      lr = lr + eps
    lamb = lr * np.sqrt(k_step + 1)
    ck = 1.0 - momentum
    for k in p:
      grad = np.array(g[k], dtype=np.float64)
      if weight_decay != 0 and not decouple_decay:
        grad = grad + weight_decay * p[k]
      if momentum == 0:
        anchor = p[k] + s[k] / rms_of(grad_sum_sq[k])
      else:
        anchor = x0[k]
      grad_sum_sq[k] = grad_sum_sq[k] + lamb * grad * grad
      rms = rms_of(grad_sum_sq[k])
      s[k] = s[k] + lamb * grad
      p_old = p[k].copy()
      z = anchor - s[k] / rms
      new = z if momentum == 0 else (1.0 - ck) * p[k] + ck * z
      if weight_decay != 0 and decouple_decay:
        new = new - lr * weight_decay * p_old
      p[k] = new
    out.append(_copy(p))
  return out
