"""LoRA-Pro in NumPy, written from the paper ("LoRA-Pro: Are Low-Rank Adapters
Properly Optimized?", arXiv:2407.18242, the closed-form adjusted gradients and
the optimal X of its theorems) and the official loop (mrflogs/LoRA-Pro,
``lorapro_full_adjustment``): Adam with full (m, n) moments on each pair's
equivalent gradient, then the adjusted gradients of Adam's direction.

Pair convention: W = W0 + s B A with A (r, n) and B (m, r). The pseudo-inverses
are NumPy's pinv of the damped Gram matrices and X comes from SciPy's
Bartels-Stewart Sylvester solver, both independent of the library's
eigendecomposition route. Leaves in no pair: plain AdamW (optax.adamw's form:
u = adam + wd * p, p -= lr * u). The bias correction counts steps from 1.
"""

import math

import numpy as np
import scipy.linalg


def _adjusted(ga, gb, a, b, s, inv_a, inv_b, with_x):
  """The paper's adjusted gradients of LoRA gradients (ga, gb); X = 0 or optimal."""
  adj_a = inv_b @ ga / s ** 2
  adj_b = (np.eye(b.shape[0]) - b @ inv_b @ b.T) @ gb @ inv_a / s ** 2
  if with_x:
    x = scipy.linalg.solve_sylvester(b.T @ b, a @ a.T, -inv_b @ ga @ a.T / s ** 2)
    adj_a = adj_a + x @ a
    adj_b = adj_b - b @ x
  return adj_a, adj_b


def lora_pro(params, grad_fn, steps, *, learning_rate, pairs=None, scaling=2.0, b1=0.9,
             b2=0.999, eps=1e-8, weight_decay=0.0, delta=1e-8):
  p = {k: v.copy() for k, v in params.items()}
  found = list(pairs(p)) if callable(pairs) else list(pairs or [])
  paired = {name for pair in found for name in pair}
  s = scaling
  m, v = {}, {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t

    def adam(key, x):
      if key not in m:
        m[key], v[key] = np.zeros_like(x), np.zeros_like(x)
      m[key] = b1 * m[key] + (1 - b1) * x
      v[key] = b2 * v[key] + (1 - b2) * x * x
      return (m[key] / c1) / (np.sqrt(v[key] / c2) + eps)

    u = {}
    for a_name, b_name in found:
      a, b = p[a_name], p[b_name]
      inv_a = np.linalg.pinv(a @ a.T + delta * np.eye(a.shape[0]))
      inv_b = np.linalg.pinv(b.T @ b + delta * np.eye(b.shape[1]))
      ga, gb = _adjusted(g[a_name], g[b_name], a, b, s, inv_a, inv_b, False)
      d = adam((a_name, b_name), s * b @ ga + s * gb @ a)  # the equivalent gradient's Adam
      u[a_name], u[b_name] = _adjusted(s * b.T @ d, s * d @ a.T, a, b, s, inv_a, inv_b, True)
    for k in p:
      if k not in paired:
        u[k] = adam(k, g[k])
    for k in p:
      p[k] = p[k] - learning_rate * (u[k] + weight_decay * p[k])
    out.append({k: x.copy() for k, x in p.items()})
  return out


