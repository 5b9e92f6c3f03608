"""Zeroth-order methods (MeZO and variants) in NumPy.

NumPy cannot reproduce jax.random's draws, so the random directions are
regenerated here with ``jax.random`` from the key schedule that optlab
documents as part of these methods' interface (the only jax used here):

    key = key_data(jax.random.key(seed))
    sample key at 0-based step t, sample s = fold_in(fold_in(key, t), s)
    leaf "name" = normal(fold_in(sample key, crc32("['name']")), shape, float32)

(zlib.crc32 of the leaf's path as jax.tree_util.keystr spells it for a dict
key, so that a leaf's draw does not depend on the other leaves).

Everything else (the two-point differences, moments, updates) is
NumPy, written from the papers / official code.

The reference problem is a quadratic, so a loss difference is exact from the
gradient at the midpoint: f(a) - f(b) = <grad f((a + b) / 2), a - b>.
`_loss_diff` uses that to evaluate the two-point differences from `grad_fn`.
"""


import functools
import zlib

import numpy as np

# The draws are float32. XLA may evaluate the normal's polynomial with or without
# fused multiply-adds depending on what it is fused with, so a draw inside the
# recipe's compiled step can differ by one float32 ulp from the same draw made
# here; over 25 steps that moves the params by up to ~1e-7. tests/test_reference.py
# uses this atol (instead of 1e-9) for the recipes of this module.
ATOL = 1e-6


def _copy(p):
  return {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()}


@functools.lru_cache(maxsize=None)
def _drawer(kind, leaves, seed):
  """A jitted (key path...) -> every leaf's `kind` draw, at -O1 as the compared steps
  are (tests/harness.py REFERENCE_XLA): one call per sample, where eager draws took
  ~20 dispatches per leaf (QuZO's reference test: 15 s -> 5 s)."""
  import jax
  import jax.numpy as jnp
  draw = {"normal": jax.random.normal, "uniform": jax.random.uniform}[kind]
  ids = [np.uint32(zlib.crc32(f"['{name}']".encode())) for name, _ in leaves]

  def draws(*path):
    key = jax.random.key(seed)
    for data in path:
      key = jax.random.fold_in(key, data)
    return [draw(jax.random.fold_in(key, i), shape, jnp.float32)
            for i, (_, shape) in zip(ids, leaves)]

  return jax.jit(draws, compiler_options={"xla_backend_optimization_level": 1})


def _draws(kind, seed, params, *path):
  """`kind` ("normal" or "uniform") float32 draws, one array per leaf, from the key
  fold_in(...fold_in(key(seed), path[0])..., path[-1]) folded with the leaf's crc32."""
  leaves = tuple((name, np.shape(v)) for name, v in params.items())
  out = _drawer(kind, leaves, seed)(*(np.uint32(x) for x in path))
  return {name: np.asarray(x, np.float64) for (name, _), x in zip(leaves, out)}


def _normals(seed, t, s, params, *more):
  """The documented draws: one standard normal array per leaf, keyed by its name
  (`more`: further fold_in's of the sample key, for methods with several draws)."""
  return _draws("normal", seed, params, t, s, *more)


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




def zo_adamu(params, grad_fn, steps, *, learning_rate, eps=1e-3, alpha=0.5, b1=0.9, b2=0.01,
             sigma=1e-8, n_samples=1, weight_decay=0.0, momentum=0.0, seed=0, mask=None):
  """ZO-AdaMU (arXiv:2312.15184), the paper's equations with constant alpha, beta1, beta2:
  z_dot ~ N(0, alpha), z_ddot ~ N(m, 1 - alpha),
  m = beta1 z_dot + (1 - beta1) z_ddot, v = beta2 z_dot^2 + (1 - beta2) z_ddot^2,
  theta -= lr (g_hat / sqrt(v^2 + sigma) + wd theta), g_hat the two-point estimate along m.
  optlab's n_samples > 1: the perturbations of one step share the centre m, the
  scaled estimates are averaged, and the next m is their mean; optlab's momentum > 0
  puts torch.optim.SGD's heavy ball on the estimate."""
  del mask
  p, out = _copy(params), []
  m = {k: np.zeros_like(v) for k, v in p.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(steps):
    est = {k: np.zeros_like(v) for k, v in p.items()}
    new_m = {k: np.zeros_like(v) for k, v in p.items()}
    for s in range(n_samples):
      n_dot, n_ddot = _normals(seed, t, s, p, 0), _normals(seed, t, s, p, 1)
      pert, v = {}, {}
      for k in p:
        z_dot = np.sqrt(alpha) * n_dot[k]
        z_ddot = m[k] + np.sqrt(1.0 - alpha) * n_ddot[k]
        pert[k] = b1 * z_dot + (1.0 - b1) * z_ddot
        v[k] = b2 * z_dot ** 2 + (1.0 - b2) * z_ddot ** 2
      plus = {k: p[k] + eps * pert[k] for k in p}
      minus = {k: p[k] - eps * pert[k] for k in p}
      c = _loss_diff(grad_fn, plus, minus, t) / (2 * eps)
      for k in p:
        est[k] += c * pert[k] / np.sqrt(v[k] ** 2 + sigma) / n_samples
        new_m[k] += pert[k] / n_samples
    m = new_m
    _sgd(p, buf, est, learning_rate, weight_decay, momentum)
    out.append(_copy(p))
  return out


def _thresholds(p, sparsity):
  """Sparse MeZO's per-tensor thresholds: the magnitude below which the (1 - sparsity)
  fraction of a tensor's entries lie (the entry at that rank, inclusive); scalars: inf."""
  out = {}
  for k, v in p.items():
    if np.ndim(v) == 0:
      out[k] = np.inf
      continue
    a = np.sort(np.abs(v).ravel())
    out[k] = a[min(max(int(np.ceil((1.0 - sparsity) * a.size)) - 1, 0), a.size - 1)]
  return out


def sparse_mezo(params, grad_fn, steps, *, learning_rate, sparsity=0.75, eps=1e-3, n_samples=1,
                weight_decay=0.0, momentum=0.0, seed=0, mask=None):
  """Sparse MeZO (arXiv:2402.15751): MeZO with z masked to the small-magnitude weights,
  m = |theta| <= h per tensor, h fixed from the initial weights."""
  del mask
  p, out = _copy(params), []
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  h = _thresholds(p, sparsity)
  for t in range(steps):
    sel = {k: (np.abs(p[k]) <= h[k]).astype(np.float64) for k in p}
    est = {k: np.zeros_like(v) for k, v in p.items()}
    for s in range(n_samples):
      z = _normals(seed, t, s, p)
      z = {k: z[k] * sel[k] for k in p}
      plus = {k: p[k] + eps * z[k] for k in p}
      minus = {k: p[k] - eps * z[k] for k in p}
      c = _loss_diff(grad_fn, plus, minus, t) / (2 * eps)
      for k in p:
        est[k] += c * z[k] / n_samples
    _sgd(p, buf, est, learning_rate, weight_decay, momentum)
    out.append(_copy(p))
  return out


def _coordinates(seed, block, params, sparsity):
  """DeepZero's random coordinate set from optlab's documented schedule: per leaf, the
  first max(1, ceil((1 - sparsity) n)) entries of a jax.random permutation of its n
  flat indices, keyed by fold_in(fold_in(key(seed), block), crc32("['name']"))."""
  import math
  import jax
  key = jax.random.fold_in(jax.random.key(seed), block)
  out = {}
  for name, v in params.items():
    n = max(int(np.size(v)), 1)
    k = max(1, math.ceil((1.0 - sparsity) * n))
    leaf_key = jax.random.fold_in(key, np.uint32(zlib.crc32(f"['{name}']".encode())))
    out[name] = np.asarray(jax.random.permutation(leaf_key, n))[:k]
  return out


def deepzero(params, grad_fn, steps, *, learning_rate, mu=5e-3, sparsity=0.0, mask_interval=1,
             momentum=0.9, nesterov=False, weight_decay=5e-4, seed=0, mask=None):
  """OPTML-Group/DeepZero: cge() forward differences on the sparse coordinate set, then
  torch.optim.SGD(lr, momentum, weight_decay, nesterov)."""
  del mask
  p, out = _copy(params), []
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(steps):
    coords = _coordinates(seed, t // mask_interval, p, sparsity)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    for k in p:
      flat = np.zeros(np.size(p[k]))
      for j in coords[k]:
        bumped = np.array(p[k], dtype=np.float64).reshape(-1)  # a fresh copy, even of a scalar
        bumped[j] += mu
        moved = {**p, k: bumped.reshape(np.shape(p[k]))}
        flat[j] = _loss_diff(grad_fn, moved, p, t) / mu
      g[k] = flat.reshape(np.shape(p[k]))
    for k in p:
      d = g[k] + weight_decay * p[k]
      if momentum:
        buf[k] = momentum * buf[k] + d
        d = d + momentum * buf[k] if nesterov else buf[k]
      p[k] = p[k] - learning_rate * d
    out.append(_copy(p))
  return out


def _uniforms(seed, t, s, sub, params):
  """The documented stochastic-rounding uniforms: per leaf,
  uniform(fold_in(fold_in(sample key, sub), crc32("['name']")), shape, float32)."""
  return _draws("uniform", seed, params, t, s, sub)


def _quantize(x, r, bits):
  """Symmetric per-tensor quantisation, scale max|x| / (2^(bits-1) - 1), stochastic rounding
  with the uniforms r."""
  qmax = 2.0 ** (bits - 1) - 1
  top = np.max(np.abs(x)) if np.size(x) else 0.0
  scale = top / qmax if top > 0 else 1.0
  return np.clip(np.floor(x / scale + r), -qmax, qmax) * scale


def quzo(params, grad_fn, steps, *, learning_rate, eps=1e-3, n_samples=1, bits=8,
         weight_decay=0.0, momentum=0.0, seed=0, mask=None):
  """QuZO (arXiv:2502.12346): u1, u2 independent stochastic quantisations of u ~ N(0, I);
  mu = (L(Q(theta + eps u1)) - L(Q(theta - eps u1))) / (2 eps); theta -= lr mean(mu u2)
  (optlab: losses at quantised perturbed points; the update is not re-quantised)."""
  del mask
  p, out = _copy(params), []
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(steps):
    est = {k: np.zeros_like(v) for k, v in p.items()}
    for s in range(n_samples):
      u = _normals(seed, t, s, p)
      r = {sub: _uniforms(seed, t, s, sub, p) for sub in (1, 2, 3, 4)}
      u1 = {k: _quantize(u[k], r[1][k], bits) for k in p}
      u2 = {k: _quantize(u[k], r[2][k], bits) for k in p}
      plus = {k: _quantize(p[k] + eps * u1[k], r[3][k], bits) for k in p}
      minus = {k: _quantize(p[k] - eps * u1[k], r[4][k], bits) for k in p}
      c = _loss_diff(grad_fn, plus, minus, t) / (2 * eps)
      for k in p:
        est[k] += c * u2[k] / n_samples
    _sgd(p, buf, est, learning_rate, weight_decay, momentum)
    out.append(_copy(p))
  return out
