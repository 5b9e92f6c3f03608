"""AdaFisher and EGN in NumPy, from the papers and the official code.

AdaFisher (AtlasAnalyticsLab/AdaFisher, AdaFisherW.step and the hooks that feed
it): per layer, the diagonals of the two Kronecker factors from the layer's
inputs and output gradients, min-max normalised, tracked by the code's running
average, their outer product plus Lambda divides the bias-corrected momentum.
The layer statistics are the tests' synthetic ones
(``tests.extras.synthetic_layer_stats``, in NumPy), recomputed at each step's
params as the contract's extra-args builder does.

EGN (cor3bit/somax, EGN): the direction solves the dense p x p system
``(JᵀQJ / n + λ I) d = g`` here (the optimizer uses the n c x n c Woodbury
form), with J the Jacobian of the tests' pairwise logits (tests/extras.py:
row i is (x_i - sg(x_i), 0) for the i-th flattened parameter entry, so its
Jacobian is e_i in column 0 and 0 in column 1, at logits 0) and Q the softmax
cross-entropy Hessian ``diag(p) - p pᵀ`` at those logits.
"""

import numpy as np


def _copy(p):
  return {k: np.array(v, dtype=np.float64) for k, v in p.items()}


def _leaf_name(key):
  """"['w1']" -> "w1" (the reference problem is a flat dict)."""
  return key[2:-2]


def _min_max(x):
  x = np.where(x == np.inf, 1.0, np.where(x == -np.inf, 0.0, x))
  return (x - x.min()) / (x.max() - x.min() + 1e-6)


def adafisher(params, grad_fn, steps, *, learning_rate=1e-3, b1=0.9, gamma=0.8, damping=1e-3,
              weight_decay=0.0, update_interval=100, mask=None, decouple_decay=True):
  """AdaFisherW (decouple_decay) or AdaFisher: the official step, F = 1 for
  parameters without statistics."""
  from tests.extras import synthetic_layer_stats
  assert mask is None
  p = _copy(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  h, s = {}, {}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    stats = synthetic_layer_stats(p, xp=np)
    fisher = {k: np.ones_like(v) for k, v in p.items()}
    for key, st in stats.items():
      a, gy = np.asarray(st.inputs, np.float64), np.asarray(st.out_grads, np.float64)
      if st.bias is not None:
        a = np.concatenate([a, np.ones((a.shape[0], 1))], 1)
      if t % update_interval == 0:  # the official hooks: steps % TCov == 0, from steps = 0
        hd, sd = _min_max(np.mean(a * a, 0)), _min_max(np.mean(gy * gy, 0))
        h[key] = gamma * 0.1 * h.get(key, np.ones_like(hd)) + gamma * 0.01 * hd
        s[key] = gamma * 0.1 * s.get(key, np.ones_like(sd)) + gamma * 0.01 * sd
      f = np.outer(h[key], s[key]) + damping  # (d_in [+ 1], d_out)
      name = _leaf_name(key)
      d_in = int(np.prod(p[name].shape[:-1]))
      fisher[name] = f[:d_in].reshape(p[name].shape)
      if st.bias is not None:
        fisher[_leaf_name(st.bias)] = f[d_in]
    for k in p:
      grad = g[k] if decouple_decay else g[k] + weight_decay * p[k]
      m[k] = b1 * m[k] + (1 - b1) * grad
      step = m[k] / (1 - b1 ** (t + 1)) / fisher[k]
      if decouple_decay:
        step = step + weight_decay * p[k]
      p[k] = p[k] - learning_rate * step
    out.append(_copy(p))
  return out


def _pairwise_jacobian(p):
  """The tests' pairwise logits at `p`: their (n, c, n) Jacobian and values (n, c)."""
  n = sum(v.size for v in p.values())
  jac = np.zeros((n, 2, n))
  jac[np.arange(n), 0, np.arange(n)] = 1.0
  return jac, np.zeros((n, 2))


def egn(params, grad_fn, steps, *, learning_rate, regularizer=1.0, momentum=0.0,
        loss="softmax_cross_entropy"):
  """The official EGN step (constant step size, bias-corrected momentum of the
  direction), with the direction from the dense regularized Gauss-Newton system."""
  p = _copy(params)
  keys = sorted(p)  # jax's order of a dict's leaves
  v = np.zeros(sum(p[k].size for k in keys))
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    flat_g = np.concatenate([np.ravel(g[k]) for k in keys])
    jac, logits = _pairwise_jacobian(p)
    n, c, size = jac.shape
    if loss == "squared_error":
      q = np.broadcast_to(np.eye(c), (n, c, c))
    else:
      e = np.exp(logits - logits.max(-1, keepdims=True))
      prob = e / e.sum(-1, keepdims=True)
      q = np.stack([np.diag(r) - np.outer(r, r) for r in prob])
    gn = sum(jac[i].T @ q[i] @ jac[i] for i in range(n)) / n
    d = np.linalg.solve(gn + regularizer * np.eye(size), flat_g)
    v = momentum * v + (1 - momentum) * d
    u = learning_rate * v / (1 - momentum ** (t + 1))
    start = 0
    for k in keys:
      p[k] = p[k] - u[start:start + p[k].size].reshape(p[k].shape)
      start += p[k].size
    out.append(_copy(p))
  return out
