"""SGD, Adam and AdamW in NumPy, from the papers' pseudo-code."""

import numpy as np


def sgd(params, grad_fn, steps, *, learning_rate, momentum=None, nesterov=False,
        weight_decay=0.0):
  p = {k: v.copy() for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      d = g[k] + weight_decay * p[k]
      if momentum is not None:
        buf[k] = momentum * buf[k] + d
        d = d + momentum * buf[k] if nesterov else buf[k]
      p[k] = p[k] - learning_rate * d
    out.append({k: v.copy() for k, v in p.items()})
  return out


def adamw(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
          eps_root=0.0, weight_decay=1e-4, nesterov=False):
  """Algorithm 2 of arXiv:1711.05101 with eta_t = 1 and the decay scaled by lr."""
  p = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      if nesterov:  # NAdam (Dozat 2016) as in optax: look-ahead first moment
        m_hat = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g[k] / (1 - b1 ** t)
      else:
        m_hat = m[k] / (1 - b1 ** t)
      v_hat = v[k] / (1 - b2 ** t)
      p[k] = p[k] - learning_rate * (m_hat / (np.sqrt(v_hat + eps_root) + eps)
                                     + weight_decay * p[k])
    out.append({k: x.copy() for k, x in p.items()})
  return out


def adam(params, grad_fn, steps, **kw):
  """Algorithm 1 of arXiv:1412.6980 (AdamW with no decay)."""
  return adamw(params, grad_fn, steps, **{**kw, "weight_decay": 0.0})
