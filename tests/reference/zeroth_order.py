"""Zeroth-order methods (MeZO and variants) in NumPy.

NumPy cannot reproduce jax.random's draws, so the random directions are
regenerated here with ``jax.random`` from the key schedule that optlab
documents as part of these methods' interface (the only jax used here):

    key = key_data(jax.random.key(seed))
    sample key at 0-based step t, sample s = fold_in(fold_in(key, t), s)
    leaf i (sorted dict order) = normal(fold_in(sample key, i), shape, float32)

Everything else (the two-point differences, moments, updates) is
NumPy, written from the papers / official code.

The reference problem is a quadratic, so a loss difference is exact from the
gradient at the midpoint: f(a) - f(b) = <grad f((a + b) / 2), a - b>.
`_loss_diff` uses that to evaluate the two-point differences from `grad_fn`.
"""


import numpy as np

# The draws are float32. XLA may evaluate the normal's polynomial with or without
# fused multiply-adds depending on what it is fused with, so a draw inside the
# recipe's compiled step can differ by one float32 ulp from the same draw made
# here; over 25 steps that moves the params by up to ~1e-7. tests/test_reference.py
# uses this atol (instead of 1e-9) for the recipes of this module.
ATOL = 1e-6


def _copy(p):
  return {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()}


def _normals(seed, t, s, params):
  """The documented draws: one standard normal array per leaf (sorted keys)."""
  import jax
  import jax.numpy as jnp
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), t), s)
  return {name: np.asarray(jax.random.normal(jax.random.fold_in(key, i), np.shape(params[name]),
                                             jnp.float32), dtype=np.float64)
          for i, name in enumerate(sorted(params))}


def _loss_diff(grad_fn, a, b, t):
  """f(a) - f(b) for the quadratic reference loss at step t (exact)."""
  mid = {k: 0.5 * (a[k] + b[k]) for k in a}
  g = grad_fn(mid, t)
  return sum(float(np.sum(g[k] * (a[k] - b[k]))) for k in a)


def _spsa(p, grad_fn, t, seed, eps, n_samples):
  """MeZO's estimate averaged over n_samples perturbations."""
  est = {k: np.zeros_like(v) for k, v in p.items()}
  for s in range(n_samples):
    z = _normals(seed, t, s, p)
    plus = {k: p[k] + eps * z[k] for k in p}
    minus = {k: p[k] - eps * z[k] for k in p}
    c = _loss_diff(grad_fn, plus, minus, t) / (2 * eps)
    for k in p:
      est[k] += c * z[k] / n_samples
  return est


def _sgd(p, buf, g, learning_rate, weight_decay, momentum):
  """p <- p - lr (g + wd p), or torch.optim.SGD's heavy ball on (g + wd p)."""
  for k in p:
    d = g[k] + weight_decay * p[k]
    if momentum:
      buf[k] = momentum * buf[k] + d
      d = buf[k]
    p[k] = p[k] - learning_rate * d


def mezo(params, grad_fn, steps, *, learning_rate, eps=1e-3, n_samples=1, weight_decay=0.0,
         momentum=0.0, seed=0, mask=None):
  """princeton-nlp/MeZO trainer: zo_step (projected grad) then zo_update (SGD + decay);
  optlab: optional momentum."""
  del mask  # all leaves decay in the tests
  p, out = _copy(params), []
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(steps):
    g = _spsa(p, grad_fn, t, seed, eps, n_samples)
    _sgd(p, buf, g, learning_rate, weight_decay, momentum)
    out.append(_copy(p))
  return out


