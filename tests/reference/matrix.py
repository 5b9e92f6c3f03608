"""NumPy references for the matrix-preconditioned methods (no optlab imports).

SOAP follows the official PyTorch code (nikhilvyas/SOAP, soap.py, commit
a1e5535) statement by statement: the per-parameter state, the skipped first
step, ``project`` / ``project_back`` with tensordot, ``merge_dims``, and the
refresh in ``update_preconditioner`` (m projected back, factors updated, QR
refresh that permutes exp_avg_sq, m projected in again). The SOAP variants
reuse that loop with another inner moment rule.
"""

from __future__ import annotations

import itertools

import numpy as np


# ------------------------------------------------------------------- SOAP
def soap_merge_dims(shape, max_precond_dim):
  new_shape, curr = [], 1
  for sh in shape:
    temp = curr * sh
    if temp > max_precond_dim:
      if curr > 1:
        new_shape.append(curr)
        curr = sh
      else:
        new_shape.append(sh)
        curr = 1
    else:
      curr = temp
  if curr > 1 or len(new_shape) == 0:
    new_shape.append(curr)
  return tuple(new_shape)


class OfficialSoapParam:
  """One parameter's SOAP state and step, as the official optimizer's loop body.

  `inner` is an object with ``init(shape) -> dict``, ``step(state, g, t) ->
  update`` (t the 1-based Adam step) and the lists ``linear`` / ``second`` of
  state keys that are projected / permuted like exp_avg / exp_avg_sq.
  """

  def __init__(self, p, inner, shampoo_beta, precondition_frequency, max_precond_dim,
               merge_dims, precondition_1d):
    self.inner, self.sb, self.freq = inner, shampoo_beta, precondition_frequency
    self.maxd, self.merge, self.p1d = max_precond_dim, merge_dims, precondition_1d
    self.shape = np.shape(p)
    self.step = 0
    self.st = inner.init(self.shape)
    self.Q = None
    self.GG = []
    if len(self.shape) == 1:
      self.GG.append(np.zeros((self.shape[0],) * 2) if precondition_1d
                     and self.shape[0] <= max_precond_dim else None)
    else:
      shp = soap_merge_dims(self.shape, max_precond_dim) if merge_dims else self.shape
      for sh in shp:
        self.GG.append(None if sh > max_precond_dim else np.zeros((sh, sh)))

  def _merged(self, x):
    return x.reshape(soap_merge_dims(x.shape, self.maxd)) if self.merge else x

  def project(self, g):
    x = self._merged(g)
    for mat in self.Q:
      x = np.moveaxis(x, 0, -1) if mat is None else np.tensordot(x, mat, axes=([0], [0]))
    return x.reshape(self.shape)

  def project_back(self, g):
    x = self._merged(g)
    for mat in self.Q:
      x = np.moveaxis(x, 0, -1) if mat is None else np.tensordot(x, mat, axes=([0], [1]))
    return x.reshape(self.shape)

  def _eigh(self):
    out = []
    for m in self.GG:
      if m is None:
        out.append(None)
        continue
      _, q = np.linalg.eigh(m + 1e-30 * np.eye(m.shape[0]))
      out.append(np.flip(q, 1))
    return out

  def _qr(self):
    sq = {k: self._merged(self.st[k]) for k in self.inner.second}
    final = []
    for ind, (m, o) in enumerate(zip(self.GG, self.Q)):
      if m is None:
        final.append(None)
        continue
      est = np.diag(o.T @ m @ o)
      idx = np.argsort(-est, kind="stable")
      sq = {k: np.take(v, idx, axis=ind) for k, v in sq.items()}
      o = o[:, idx]
      q, _ = np.linalg.qr(m @ o)
      final.append(q)
    for k, v in sq.items():
      self.st[k] = v.reshape(self.shape)
    return final

  def update_preconditioner(self, g):
    if self.Q is not None:
      for k in self.inner.linear:
        self.st[k] = self.project_back(self.st[k])
    if len(self.shape) == 1:
      if self.GG[0] is not None:
        self.GG[0] = self.sb * self.GG[0] + (1 - self.sb) * np.outer(g, g)
    else:
      x = self._merged(g)
      for idx, m in enumerate(self.GG):
        if m is not None:
          axes = [i for i in range(x.ndim) if i != idx]
          outer = np.tensordot(x, x, axes=(axes, axes))
          self.GG[idx] = self.sb * m + (1 - self.sb) * outer
    if self.Q is None:
      self.Q = self._eigh()
    if self.step > 0 and self.step % self.freq == 0:
      self.Q = self._qr()
    if self.step > 0:
      for k in self.inner.linear:
        self.st[k] = self.project(self.st[k])

  def __call__(self, p, g, lr, weight_decay):
    """Returns the new parameter."""
    if self.Q is None:
      self.update_preconditioner(g)
      return p
    gp = self.project(g)
    self.step += 1
    u = self.project_back(self.inner.step(self.st, gp, self.step))
    u = self.inner.finish(u, self.step)
    p = p - lr * u
    p = p - lr * weight_decay * p
    self.update_preconditioner(g)
    return p


class OfficialAdam:
  """SOAP's Adam: exp_avg, exp_avg_sq; eps added to sqrt(v) before the bias
  correction; normalize_grads divides the projected-back update by its RMS."""
  linear, second = ["exp_avg"], ["exp_avg_sq"]

  def __init__(self, b1, b2, eps, correct_bias, normalize_grads):
    self.b1, self.b2, self.eps = b1, b2, eps
    self.correct_bias, self.normalize_grads = correct_bias, normalize_grads

  def init(self, shape):
    return {"exp_avg": np.zeros(shape), "exp_avg_sq": np.zeros(shape)}

  def step(self, st, g, t):
    st["exp_avg"] = self.b1 * st["exp_avg"] + (1 - self.b1) * g
    st["exp_avg_sq"] = self.b2 * st["exp_avg_sq"] + (1 - self.b2) * g * g
    return st["exp_avg"] / (np.sqrt(st["exp_avg_sq"]) + self.eps)

  def finish(self, u, t):
    if self.normalize_grads:
      u = u / (1e-30 + np.mean(u ** 2) ** 0.5)
    if self.correct_bias:
      u = u * (1 - self.b2 ** t) ** 0.5 / (1 - self.b1 ** t)
    return u


def run_soap_loop(params, grad_fn, steps, inner_factory, lr, weight_decay, shampoo_beta,
                  precondition_frequency, max_precond_dim, merge_dims, precondition_1d):
  states = {k: OfficialSoapParam(v, inner_factory(), shampoo_beta, precondition_frequency,
                                 max_precond_dim, merge_dims, precondition_1d)
            for k, v in params.items()}
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    p = {k: states[k](p[k], np.asarray(g[k], np.float64), lr, weight_decay) for k in p}
    out.append(dict(p))
  return out


def soap(params, grad_fn, steps, learning_rate, b1=0.95, b2=0.95, shampoo_beta=None, eps=1e-8,
         weight_decay=0.01, precondition_frequency=10, max_precond_dim=10000,
         merge_dims=False, precondition_1d=False, normalize_grads=False, correct_bias=True):
  sb = b2 if shampoo_beta is None or shampoo_beta < 0 else shampoo_beta
  return run_soap_loop(params, grad_fn, steps,
                       lambda: OfficialAdam(b1, b2, eps, correct_bias, normalize_grads),
                       learning_rate, weight_decay, sb, precondition_frequency,
                       max_precond_dim, merge_dims, precondition_1d)


# --------------------------------------------------------------- variants
class _NoFinish:
  """Base of the inner rules below: state = zeros for every `linear` and `second` field."""

  def init(self, shape):
    return {k: np.zeros(shape) for k in self.linear + self.second}

  def finish(self, u, t):
    return u


class LionRule(_NoFinish):
  linear, second = ["m"], []

  def __init__(self, b1, b2):
    self.b1, self.b2 = b1, b2

  def step(self, st, g, t):
    u = np.sign(self.b1 * st["m"] + (1 - self.b1) * g)
    st["m"] = self.b2 * st["m"] + (1 - self.b2) * g
    return u


class AdoptRule(_NoFinish):
  """ADOPT (official iShohei220/adopt): v_1 = g_1^2 and no update at step 1; then
  clip(g / max(sqrt(v), eps), (t-1)^0.25) into m; v updated after."""
  linear, second = ["m"], ["v"]

  def __init__(self, b1, b2, eps):
    self.b1, self.b2, self.eps = b1, b2, eps

  def step(self, st, g, t):
    if t == 1:
      st["v"] = g * g
      return np.zeros_like(g)
    x = g / np.maximum(np.sqrt(st["v"]), self.eps)
    c = (t - 1) ** 0.25
    x = np.clip(x, -c, c)
    st["m"] = self.b1 * st["m"] + (1 - self.b1) * x
    st["v"] = self.b2 * st["v"] + (1 - self.b2) * g * g
    return st["m"].copy()


class AdemamixRule(_NoFinish):
  linear, second = ["m1", "m2"], ["v"]

  def __init__(self, b1, b2, b3, alpha, eps):
    self.b1, self.b2, self.b3, self.alpha, self.eps = b1, b2, b3, alpha, eps

  def step(self, st, g, t):
    st["m1"] = self.b1 * st["m1"] + (1 - self.b1) * g
    st["m2"] = self.b3 * st["m2"] + (1 - self.b3) * g
    st["v"] = self.b2 * st["v"] + (1 - self.b2) * g * g
    num = st["m1"] / (1 - self.b1 ** t) + self.alpha * st["m2"]
    return num / (np.sqrt(st["v"] / (1 - self.b2 ** t)) + self.eps)


class LapropRule(_NoFinish):
  linear, second = ["m"], ["v"]

  def __init__(self, b1, b2, eps):
    self.b1, self.b2, self.eps = b1, b2, eps

  def step(self, st, g, t):
    st["v"] = self.b2 * st["v"] + (1 - self.b2) * g * g
    x = g / (np.sqrt(st["v"] / (1 - self.b2 ** t)) + self.eps)
    st["m"] = self.b1 * st["m"] + (1 - self.b1) * x
    return st["m"] / (1 - self.b1 ** t)


def _variant(params, grad_fn, steps, factory, learning_rate, weight_decay, shampoo_beta,
             precondition_frequency, max_precond_dim, merge_dims, precondition_1d):
  return run_soap_loop(params, grad_fn, steps, factory, learning_rate, weight_decay,
                       shampoo_beta, precondition_frequency, max_precond_dim, merge_dims,
                       precondition_1d)


def soap_lion(params, grad_fn, steps, learning_rate, b1=0.9, b2=0.99, weight_decay=0.01,
              shampoo_beta=0.95, precondition_frequency=10, max_precond_dim=10000,
              merge_dims=False, precondition_1d=False):
  return _variant(params, grad_fn, steps, lambda: LionRule(b1, b2), learning_rate,
                  weight_decay, shampoo_beta, precondition_frequency, max_precond_dim,
                  merge_dims, precondition_1d)


def soap_adopt(params, grad_fn, steps, learning_rate, b1=0.9, b2=0.9999, eps=1e-6,
               weight_decay=0.01, shampoo_beta=0.95, precondition_frequency=10,
               max_precond_dim=10000, merge_dims=False, precondition_1d=False):
  return _variant(params, grad_fn, steps, lambda: AdoptRule(b1, b2, eps), learning_rate,
                  weight_decay, shampoo_beta, precondition_frequency, max_precond_dim,
                  merge_dims, precondition_1d)


def soap_ademamix(params, grad_fn, steps, learning_rate, b1=0.9, b2=0.999, b3=0.9999,
                  alpha=5.0, eps=1e-8, weight_decay=0.01, shampoo_beta=0.95,
                  precondition_frequency=10, max_precond_dim=10000, merge_dims=False,
                  precondition_1d=False):
  return _variant(params, grad_fn, steps, lambda: AdemamixRule(b1, b2, b3, alpha, eps),
                  learning_rate, weight_decay, shampoo_beta, precondition_frequency,
                  max_precond_dim, merge_dims, precondition_1d)


def soap_laprop(params, grad_fn, steps, learning_rate, b1=0.9, b2=0.999, eps=1e-15,
                weight_decay=0.01, shampoo_beta=0.95, precondition_frequency=10,
                max_precond_dim=10000, merge_dims=False, precondition_1d=False):
  return _variant(params, grad_fn, steps, lambda: LapropRule(b1, b2, eps), learning_rate,
                  weight_decay, shampoo_beta, precondition_frequency, max_precond_dim,
                  merge_dims, precondition_1d)


# ------------------------------------------------------------------- Muon
def newton_schulz5(g, steps=5, eps=1e-7, coeffs=(3.4445, -4.7750, 2.0315)):
  """Keller Jordan's zeropower_via_newtonschulz5, in float64."""
  a, b, c = coeffs
  x = np.asarray(g, np.float64)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(steps):
    m = x @ x.T
    x = a * x + (b * m + c * m @ m) @ x
  return x.T if tall else x


def muon(params, grad_fn, steps, learning_rate, beta=0.95, eps=1e-7, weight_decay=0.0,
         nesterov=True, ns_steps=5, consistent_rms=None, adam_b1=0.9, adam_b2=0.95,
         adam_eps=1e-10, adam_weight_decay=0.0, adam_learning_rate=None):
  """KellerJordan/Muon's MuonWithAuxAdam: Muon for 2-d params, Adam for the rest.

  The shapes are JAX's (fan_in, fan_out), so PyTorch's rows / cols (out / in)
  is shape[1] / shape[0] here."""
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  st = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v)} for k, v in p.items()}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    new = {}
    for k, w in p.items():
      s, gk = st[k], np.asarray(g[k], np.float64)
      if w.ndim == 2:
        s["m"] = s["m"] + (1 - beta) * (gk - s["m"])
        x = gk + beta * (s["m"] - gk) if nesterov else s["m"]
        u = newton_schulz5(x, ns_steps, eps)
        if consistent_rms is None:
          u = u * max(1.0, w.shape[1] / w.shape[0]) ** 0.5
        else:
          u = u * consistent_rms * max(w.shape) ** 0.5
        new[k] = w * (1 - learning_rate * weight_decay) - learning_rate * u
      else:
        s["m"] = s["m"] + (1 - adam_b1) * (gk - s["m"])
        s["v"] = s["v"] + (1 - adam_b2) * (gk * gk - s["v"])
        m_hat = s["m"] / (1 - adam_b1 ** t)
        v_hat = s["v"] / (1 - adam_b2 ** t)
        new[k] = w * (1 - adam_lr * adam_weight_decay) - adam_lr * m_hat / (
            np.sqrt(v_hat) + adam_eps)
    p = new
    out.append(dict(p))
  return out


# ---------------------------------------------------------------- Shampoo
def shampoo_merge_small_dims(shape, max_dim):
  """distributed Shampoo's merge_small_dims."""
  out, product = [], 1
  for d in shape:
    if product * d <= max_dim:
      product *= d
    else:
      if product > 1:
        out.append(product)
      product = d
  if product > 1:
    out.append(product)
  return out


def _inv_root(mat, p, eps):
  w, v = np.linalg.eigh(mat)
  w = np.maximum(w, 0)
  ridge = eps * max(w.max(), 1e-6)
  return (v * (w + ridge) ** (-1.0 / p)) @ v.T


def shampoo(params, grad_fn, steps, learning_rate, block_size=128, b1=0.9, b2=0.999,
            matrix_eps=1e-6, diagonal_eps=1e-10, weight_decay=0.0, graft_type="sgd",
            start_preconditioning_step=5, statistics_compute_steps=1,
            preconditioning_compute_steps=1, max_precond_dim=4096, exponent_override=None,
            nesterov=True):
  """distributed Shampoo's per-parameter update (scalable_shampoo/optax), with one
  momentum buffer, eigh-based roots and zero-initialised statistics.

  Blocks as its BlockPartitioner: merge_small_dims(shape, block_size), then
  split every dimension at multiples of block_size (the last block smaller)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  info = {}
  for k, v in p.items():
    shape = shampoo_merge_small_dims(v.shape, block_size) if v.ndim else []
    skip = v.ndim == 0 or any(d > max_precond_dim for d in v.shape)
    splits = [list(range(block_size, d, block_size)) for d in shape]
    info[k] = (shape, skip, splits)
  st = {k: {"m": np.zeros_like(v), "nu": np.zeros_like(v), "L": {}, "P": {}}
        for k, v in p.items()}
  out = []
  for t in range(steps):
    g_all = grad_fn(p, t)
    new = {}
    for k, w in p.items():
      s, g = st[k], np.asarray(g_all[k], np.float64)
      shape, skip, splits = info[k]
      # grafting direction
      if graft_type == "sgd":
        d = g
      else:
        x = g / np.linalg.norm(g) if graft_type == "rmsprop_normalized" else g
        if graft_type == "adagrad":
          s["nu"] = s["nu"] + x * x
        else:
          s["nu"] = b2 * s["nu"] + (1 - b2) * x * x
        d = x / (np.sqrt(s["nu"]) + diagonal_eps)
      if skip:
        u = d
      else:
        gm = g.reshape(shape)
        bounds = [[0] + sp + [n] for sp, n in zip(splits, shape)]
        ranges = [list(zip(b[:-1], b[1:])) for b in bounds]
        pre = np.zeros_like(gm)
        for idx in itertools.product(*ranges):
          sl = tuple(slice(a, b) for a, b in idx)
          blk = gm[sl]
          res = blk
          for i in range(blk.ndim):
            key = (idx, i)
            axes = [j for j in range(blk.ndim) if j != i]
            if t % statistics_compute_steps == 0:
              outer = np.tensordot(blk, blk, axes=(axes, axes))
              s["L"][key] = b2 * s["L"].get(key, 0.0) + (1 - b2) * outer
            if key not in s["L"]:
              s["L"][key] = np.zeros((blk.shape[i],) * 2)
          for i in range(blk.ndim):
            key = (idx, i)
            if t % preconditioning_compute_steps == 0:
              s["P"][key] = _inv_root(s["L"][key], exponent_override or 2 * len(shape),
                                      matrix_eps)
            P = s["P"].get(key, np.eye(blk.shape[i]))
            res = np.moveaxis(np.tensordot(res, P, axes=([i], [0])), -1, i)
          pre[sl] = res
        pre = pre.reshape(w.shape)
        sh = pre * np.linalg.norm(d) / (np.linalg.norm(pre) + 1e-16)
        u = sh if t >= start_preconditioning_step else d
      u = u + weight_decay * w
      s["m"] = b1 * s["m"] + u
      step = u + b1 * s["m"] if nesterov else s["m"]
      new[k] = w - learning_rate * step
    p = new
    out.append(dict(p))
  return out


# ----------------------------------------------------------- MARS-Shampoo
def mars_shampoo(params, grad_fn, steps, learning_rate, b1=0.95, eps=1e-8, weight_decay=0.0,
                 gamma=0.025, max_norm=1.0, lr_1d_factor=1.0, b1_1d=0.9, b2_1d=0.95,
                 weight_decay_1d=0.1, ns_steps=5):
  """AGI-Arena/MARS update_fn, mars_type='mars-shampoo', is_approx, optimize_1d=False.

  factor = max(1, size(0) / size(1)) ** 0.5 of a PyTorch (out, in) weight, i.e.
  shape[1] / shape[0] of a JAX (in, out) kernel."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  st = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v), "last": np.zeros_like(v)}
        for k, v in p.items()}
  out = []
  for step in range(1, steps + 1):
    g_all = grad_fn(p, step - 1)
    new = {}
    for k, w in p.items():
      s, g = st[k], np.asarray(g_all[k], np.float64)
      if w.ndim == 2:
        c = (g - s["last"]) * (gamma * (b1 / (1.0 - b1))) + g
        n = np.linalg.norm(c)
        if max_norm is not None and n > max_norm:
          c = c / n * max_norm
        s["m"] = b1 * s["m"] + (1 - b1) * c
        factor = max(1.0, w.shape[1] / w.shape[0]) ** 0.5
        u = newton_schulz5(s["m"] / (1.0 - b1), ns_steps, eps) * factor
        new[k] = w - learning_rate * (u + weight_decay * w)
      else:
        s["m"] = b1_1d * s["m"] + (1 - b1_1d) * g
        s["v"] = b2_1d * s["v"] + (1 - b2_1d) * g * g
        bc1, bc2 = 1.0 - b1_1d ** step, 1.0 - b2_1d ** step
        denom = (np.sqrt(s["v"]) / np.sqrt(bc2) + eps) * bc1
        new[k] = w - learning_rate * lr_1d_factor * (w * weight_decay_1d + s["m"] / denom)
      s["last"] = g
    p = new
    out.append(dict(p))
  return out
