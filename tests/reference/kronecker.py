"""K-FAC and MKOR in NumPy, from the papers, kfac-jax and the official MKOR code.

The layer statistics are the contract's synthetic least-squares layers
(`tests.extras.synthetic_layer_stats`, recomputed here in NumPy at each step's
params): "w1" with its bias "b1", "w2" without a bias; the other leaves have no
statistics and take the first-order rule (SGD with momentum).

K-FAC follows Martens & Grosse (arXiv:1503.05671, section 6.3's factored
Tikhonov damping with the trace-norm pi) with kfac-jax's bias-corrected factor
EMA. MKOR follows the official code (Mohammad-Mozaffari/mkor, mkor/mkor.py)
statement by statement, in its own layout: gradient matrices are
``(d_out, d_in + 1)`` (torch's weight with the bias as the last column) and the
step is ``GG_inv @ grad @ AA_inv``.
"""

import numpy as np

from tests.extras import synthetic_layer_stats
from tests.reference.step_size_free import _loss_of


def _copy(p):
  return {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()}


def _layers(p, max_dim):
  """{kernel: (a with the homogeneous column, g, bias name or None)} at params p,
  for the kernels with factors (d_in + 1 and d_out at most max_dim)."""
  out = {}
  for key, st in synthetic_layer_stats(p, xp=np).items():
    a, g = np.asarray(st.inputs, np.float64), np.asarray(st.out_grads, np.float64)
    if max_dim is not None and max(a.shape[1] + 1, g.shape[1]) > max_dim:
      continue  # statistics of a kernel without factors are unused: SGD for it
    bias = st.bias[2:-2] if st.bias is not None else None
    ones = np.ones((a.shape[0], 1)) if bias else np.zeros((a.shape[0], 1))
    out[key[2:-2]] = (np.hstack([a, ones]), g, bias)
  return out


def kfac(params, grad_fn, steps, *, learning_rate, damping=1e-3, decay=0.95,
         inverse_update_period=5, momentum=0.9, weight_decay=0.0, norm_constraint=None,
         mask=None, max_dim=None, axis_name=None):
  """K-FAC with fixed damping, learning rate and momentum (kfac-jax's factor
  conventions), heavy-ball momentum on the (clipped) direction, decoupled decay."""
  del mask, axis_name
  p = _copy(params)
  fac, inv, weight = {}, {}, {}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  root = np.sqrt(damping)
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    d = {k: np.array(v, dtype=np.float64) for k, v in g.items()}
    for name, (a, gg, bias) in _layers(p, max_dim).items():
      n = a.shape[0]
      new_a, new_g = a.T @ a / n, gg.T @ gg / n
      if name not in fac:
        fac[name] = [np.zeros_like(new_a), np.zeros_like(new_g)]
        inv[name] = [np.eye(len(new_a)), np.eye(len(new_g))]
        weight[name] = 0.0
      weight[name] = decay * weight[name] + 1.0
      for i, new in enumerate((new_a, new_g)):  # the bias-corrected EMA
        fac[name][i] = fac[name][i] + (new - fac[name][i]) / weight[name]
      if t % inverse_update_period == 0:
        fa, fg = fac[name]
        na = np.trace(fa) / (len(fa) - (0 if bias else 1))
        ng = np.trace(fg) / len(fg)
        if na > 0 and ng > 0:
          pi = np.sqrt(na / ng)
          inv[name] = [np.linalg.inv(fa + pi * root * np.eye(len(fa))),
                       np.linalg.inv(fg + root / pi * np.eye(len(fg)))]
        else:
          inv[name] = [np.eye(len(fa)) / root, np.eye(len(fg)) / root]
      joint = np.vstack([g[name], g[bias][None] if bias else np.zeros((1, g[name].shape[1]))])
      step = inv[name][0] @ joint @ inv[name][1]
      d[name] = step[:-1]
      if bias:
        d[bias] = step[-1]
    if norm_constraint is not None:
      sq = learning_rate ** 2 * sum(float(np.sum(d[k] * g[k])) for k in p)
      coef = min(1.0, np.sqrt(norm_constraint / sq)) if sq > 0 else 1.0
      d = {k: coef * v for k, v in d.items()}
    for k in p:
      m[k] = momentum * m[k] + d[k]
      p[k] = p[k] - learning_rate * (m[k] + weight_decay * p[k])
    out.append(_copy(p))
  return out


def _sm_inverse(prev_inv, v):
  """The official sm_inverse: (prev_inv^-1 + v v^T)^-1 by Sherman-Morrison."""
  t1, t2 = prev_inv @ v, v @ prev_inv
  return prev_inv - np.outer(t1, t2) / (1 + t2 @ v)


def mkor(params, grad_fn, steps, *, learning_rate, momentum=0.9, weight_decay=0.0, inv_freq=10,
         stat_decay=0.95, stabilization_factor=0.1, norm_threshold=2.0, clipping_value=100.0,
         switch_rate=None, switch_decay=0.95, switch_warmup=20, mask=None, max_dim=None,
         axis_name=None):
  """The official MKOR.step with its SGD inner optimizer (momentum, coupled weight
  decay), resets to ``(1 - s) J + s I`` (the official reset's intended branch), and
  MKOR-H's loss-rate switch as optlab.scale_by_mkor documents it."""
  del mask, axis_name
  loss_fn = _loss_of(grad_fn) if switch_rate is not None else None
  p = _copy(params)
  aa_inv, gg_inv, a_reset, g_reset = {}, {}, {}, {}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  switched, first, prev, rate = False, 0.0, 0.0, 0.0
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    layers = _layers(p, max_dim)
    for name, (a, gg, _) in layers.items():
      if name not in aa_inv:
        aa_inv[name], gg_inv[name] = np.eye(a.shape[1]), np.eye(gg.shape[1])
        a_reset[name] = g_reset[name] = True
    if t % inv_freq == 0 and not switched:
      for name, (a, gg, _) in layers.items():
        for factors, resets, x in ((aa_inv, a_reset, a), (gg_inv, g_reset, gg)):
          v = np.mean(np.clip(x, -clipping_value, clipping_value), axis=0)
          if resets[name]:
            eye = np.eye(len(v))
            factors[name] = factors[name] * (1 - stabilization_factor) + stabilization_factor * eye
            resets[name] = False
          else:
            eye = np.eye(len(v))
            factors[name] = _sm_inverse(stat_decay * factors[name] + (1 - stat_decay) * eye, v)
            if np.max(np.abs(factors[name])) > norm_threshold:
              a_reset[name] = g_reset[name] = True
    d = {k: np.array(v, dtype=np.float64) for k, v in g.items()}
    if not switched:
      for name, (_, _, bias) in layers.items():
        gb = g[bias] if bias else np.zeros(g[name].shape[1])
        grad_mat = np.hstack([g[name].T, gb[:, None]])  # (d_out, d_in + 1), torch's layout
        v = gg_inv[name] @ grad_mat @ aa_inv[name]
        grad_norm = np.linalg.norm(g[name]) + np.linalg.norm(gb)
        update_norm = np.linalg.norm(v[:, :-1]) + np.linalg.norm(v[:, -1])
        if update_norm > 0:
          v = v * (grad_norm / update_norm)
          d[name] = v[:, :-1].T
          if bias:
            d[bias] = v[:, -1]
    if switch_rate is not None:
      loss = loss_fn(p, t)
      if t == 0:
        first = loss
      else:
        rate = switch_decay * rate + (1 - switch_decay) * (prev - loss)
        recent = rate / (1 - switch_decay ** t)
        if t >= switch_warmup and recent < switch_rate * (first - loss) / t:
          switched = True
      prev = loss
    for k in p:  # torch.optim.SGD: coupled decay, then momentum
      buf[k] = momentum * buf[k] + d[k] + weight_decay * p[k]
      p[k] = p[k] - learning_rate * buf[k]
    out.append(_copy(p))
  return out
