"""Memory-efficient methods in NumPy, from the papers' algorithms and official code."""

import numpy as np


def _copy(p):
  return {k: np.array(v, np.float64, copy=True) for k, v in p.items()}


def _rms(x):
  return np.sqrt(np.mean(np.square(x))) if np.size(x) else 0.0


# ------------------------------------------------------------------ Adafactor
def _two_largest(shape, min_dim):
  """Axes (second largest, largest) when both are >= min_dim, as optax; else None."""
  if len(shape) < 2:
    return None
  order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
  a, b = order[-2], order[-1]
  return (a, b) if shape[a] >= min_dim else None


def adafactor(params, grad_fn, steps, *, learning_rate=None, min_dim_size_to_factor=128,
              decay_rate=0.8, decay_offset=0, multiply_by_parameter_scale=True,
              clipping_threshold=1.0, momentum=None, weight_decay_rate=None, eps=1e-30,
              factored=True, **unused):
  """Shazeer & Stern 2018, Algorithms 4/5 with update clipping and relative step
  size; factoring rule, momentum and decay placement as optax.adafactor."""
  p = _copy(params)
  stats = {}
  mom = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    beta2 = 1.0 - (t - decay_offset) ** (-decay_rate)
    lr = min(1e-2, 1.0 / np.sqrt(t)) if learning_rate is None else learning_rate
    for k in p:
      g2 = g[k] ** 2 + eps
      dims = _two_largest(p[k].shape, min_dim_size_to_factor) if factored else None
      if dims is None:
        v = stats.get(k, np.zeros_like(g2))
        v = beta2 * v + (1 - beta2) * g2
        stats[k] = v
        vhat = v
      else:
        c_ax, r_ax = dims
        r, c = stats.get(k, (0.0, 0.0))
        r = beta2 * r + (1 - beta2) * g2.mean(axis=r_ax)   # row statistic
        c = beta2 * c + (1 - beta2) * g2.mean(axis=c_ax)   # column statistic
        stats[k] = (r, c)
        # V_hat = R C / (1^T R) with sums == outer product of means / mean(R)
        vhat = np.expand_dims(r, r_ax) * np.expand_dims(c, c_ax) / r.mean()
      u = g[k] / np.sqrt(vhat)
      if clipping_threshold is not None:
        u = u / max(1.0, _rms(u) / clipping_threshold)
      step = lr * u
      if multiply_by_parameter_scale:
        step = step * max(_rms(p[k]), 1e-3)
      if momentum is not None:
        mom[k] = momentum * mom[k] + (1 - momentum) * step
        step = mom[k]
      if weight_decay_rate is not None:
        step = step + weight_decay_rate * p[k]
      p[k] = p[k] - step
    out.append(_copy(p))
  return out


# ------------------------------------------------------------- 8-bit AdamW
def _dynamic_map(signed):
  """Dettmers' dynamic tree map (bitsandbytes create_dynamic_map, 8 bits): for each
  decade 10^-6 .. 10^0, the midpoints of an even split of [0.1, 1]; plus 0 and 1."""
  vals = [0.0, 1.0]
  for e in range(7):
    n = 2 ** e if signed else 2 ** (e + 1)
    edges = np.linspace(0.1, 1.0, n + 1)
    mids = 0.5 * (edges[1:] + edges[:-1]) * 10.0 ** (e - 6)
    vals += list(mids) + (list(-mids) if signed else [])
  vals = np.sort(np.array(vals))
  assert vals.size == 256
  return vals


def _roundtrip(x, block, signed):
  """Blockwise absmax quantisation to the nearest map value, then back."""
  table = _dynamic_map(signed)
  flat = x.reshape(-1)
  res = np.empty_like(flat)
  for s in range(0, flat.size, block):
    b = flat[s:s + block]
    a = np.abs(b).max()
    if a == 0:
      res[s:s + block] = 0.0
      continue
    idx = np.abs(b[:, None] / a - table[None, :]).argmin(axis=1)
    res[s:s + block] = table[idx] * a
  return res.reshape(x.shape)


def adamw_8bit(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
               weight_decay=1e-2, block_size=2048, min_size=4096):
  """AdamW whose m (signed map) and v (unsigned map) are kept 8-bit blockwise; the
  step uses the fresh full-precision m and v, which are then quantised."""
  p = _copy(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      p[k] = p[k] - learning_rate * (step + weight_decay * p[k])
      if p[k].ndim >= 1 and p[k].size >= max(min_size, 1):
        m[k] = _roundtrip(m[k], block_size, True)
        v[k] = _roundtrip(v[k], block_size, False)
    out.append(_copy(p))
  return out


# ------------------------------------------------------------------ Adam-mini
def _mini_blocks(name, shape):
  """Official Adam-mini rules for the reference problem's flax-like names: 'bias'
  element-wise, matrices one value per output neuron (last axis), everything
  else one value per tensor. Returns the axes whose entries share a value."""
  if "bias" in name:
    return ()
  if len(shape) >= 2:
    return tuple(range(len(shape) - 1))
  return tuple(range(len(shape)))


def adam_mini(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
              weight_decay=0.0, partition=None, **unused):
  """Adam-mini (zyushun/Adam-mini v1.1 step): p *= 1 - lr*wd; m lerp g;
  vmean = b2 vmean + (1 - b2) mean_block(g^2); p -= lr * m/bc1 / (sqrt(vmean)/sqrt(bc2) + eps)."""
  p = _copy(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  vm = {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      axes = partition((k,), p[k].shape) if partition else _mini_blocks(k, p[k].shape)
      sq = g[k] ** 2
      blk = sq.mean(axis=axes, keepdims=True) if axes else sq
      vm[k] = b2 * vm.get(k, 0.0) + (1 - b2) * blk
      p[k] = p[k] * (1 - learning_rate * weight_decay)
      m[k] = m[k] + (1 - b1) * (g[k] - m[k])
      h = np.sqrt(vm[k]) / np.sqrt(1 - b2 ** t) + eps
      p[k] = p[k] - learning_rate * (m[k] / (1 - b1 ** t)) / h
    out.append(_copy(p))
  return out


# ----------------------------------------------------------------------- CAME
def _approx(row, col):
  """Rank-1 V_hat from row means (.., m) and column means (.., n) of the last two dims."""
  r = row / row.mean(axis=-1, keepdims=True)
  return r[..., :, None] * col[..., None, :]


def came(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, b3=0.9999, eps1=1e-30,
         eps2=1e-16, clip_threshold=1.0, weight_decay=0.0, **unused):
  """yangluo7/CAME step (Algorithm 1 of arXiv:2307.02047 as implemented)."""
  p = _copy(params)
  st = {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      fac = p[k].ndim >= 2
      if k not in st:
        st[k] = dict(m=np.zeros_like(p[k]))
        if fac:
          st[k].update(vr=0.0, vc=0.0, rr=0.0, rc=0.0)
        else:
          st[k].update(v=np.zeros_like(p[k]))
      s = st[k]
      upd = g[k] ** 2 + eps1
      if fac:
        s["vr"] = b2 * s["vr"] + (1 - b2) * upd.mean(axis=-1)
        s["vc"] = b2 * s["vc"] + (1 - b2) * upd.mean(axis=-2)
        u = g[k] / np.sqrt(_approx(s["vr"], s["vc"]))
      else:
        s["v"] = b2 * s["v"] + (1 - b2) * upd
        u = g[k] / np.sqrt(s["v"])
      u = u / max(1.0, _rms(u) / clip_threshold)
      s["m"] = b1 * s["m"] + (1 - b1) * u
      if fac:
        res = (u - s["m"]) ** 2 + eps2
        s["rr"] = b3 * s["rr"] + (1 - b3) * res.mean(axis=-1)
        s["rc"] = b3 * s["rc"] + (1 - b3) * res.mean(axis=-2)
        step = s["m"] / np.sqrt(_approx(s["rr"], s["rc"]))
      else:
        step = s["m"]
      p[k] = p[k] * (1 - weight_decay * learning_rate) - learning_rate * step
    out.append(_copy(p))
  return out


# -------------------------------------------------------------------- AdaLomo
def adalomo(params, grad_fn, steps, *, learning_rate, eps1=1e-30, eps2=1e-3,
            clip_threshold=1.0, decay_rate=0.8, weight_decay=0.0, **unused):
  """OpenLMLab AdaLomo update (fuse_update), one tensor at a time."""
  p = _copy(params)
  st = {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    beta = 1.0 - t ** (-decay_rate)
    for k in p:
      sq = g[k] ** 2 + eps1
      if p[k].ndim > 1:
        r, c = st.get(k, (0.0, 0.0))
        r = beta * r + (1 - beta) * sq.mean(axis=-1)
        c = beta * c + (1 - beta) * sq.mean(axis=-2)
        st[k] = (r, c)
        u = g[k] / np.sqrt(_approx(r, c))
      else:
        v = beta * st.get(k, 0.0) + (1 - beta) * sq
        st[k] = v
        u = g[k] / np.sqrt(v)
      u = u / max(1.0, _rms(u) / clip_threshold)
      lr = learning_rate * max(eps2, _rms(p[k]))
      p[k] = p[k] * (1 - lr * weight_decay) - lr * u
    out.append(_copy(p))
  return out


# ----------------------------------------------------------------- Subset-Norm
def adam_subset_norm(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-6,
                     weight_decay=0.0, momentum_rank=None, momentum_update_every=200, **unused):
  """timmytonga/sn-sm AdamWSN.step, with every 2-D tensor in the subset-norm group.

  With momentum_rank: GenericOptim(momentum_type="sm", second_moment_type="sn",
  proj_type="svd") with every 2-D tensor of min dim > rank in the SM group: the
  momentum of P^T g (SVD projector, GaLore's side rule), numerator
  P m + (g - P P^T g), momentum zeroed when the projector is refreshed. The
  refresh steps are optlab's 1, k+1, 2k+1 (official: 1, k, 2k)."""
  p = _copy(params)
  m, v, proj = {}, {}, {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      if p[k].ndim == 2:
        reduce_dim = 0 if g[k].shape[0] >= g[k].shape[1] else 1
        sec = np.sum(g[k] ** 2, axis=1 - reduce_dim, keepdims=True)
      else:
        sec = g[k] ** 2
      sm = momentum_rank is not None and p[k].ndim == 2 and momentum_rank < min(p[k].shape)
      if sm:
        right = g[k].shape[0] >= g[k].shape[1]
        if (t - 1) % momentum_update_every == 0:
          u_, _, vh = np.linalg.svd(g[k], full_matrices=False)
          proj[k] = vh[:momentum_rank] if right else u_[:, :momentum_rank]
          m[k] = 0.0
        P = proj[k]
        low = g[k] @ P.T if right else P.T @ g[k]
        back = (lambda x: x @ P) if right else (lambda x: P @ x)
        m[k] = b1 * m.get(k, 0.0) + (1 - b1) * low
        num = back(m[k]) + (g[k] - back(low))
      else:
        m[k] = b1 * m.get(k, 0.0) + (1 - b1) * g[k]
        num = m[k]
      v[k] = b2 * v.get(k, 0.0) + (1 - b2) * sec
      denom = np.sqrt(v[k]) + eps
      step = learning_rate * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
      p[k] = p[k] - step * num / denom
      p[k] = p[k] - learning_rate * weight_decay * p[k]
    out.append(_copy(p))
  return out


# ------------------------------------------------------------------ SlimAdam
def slim_adam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.95, eps=1e-8,
              weight_decay=0.1, partition=None, **unused):
  """dayal-kalra/low-memory-adam SlimAdamW.step: nu tracks mean(g^2) over the
  compressed dims (keepdim); decay only on tensors with ndim >= 2."""
  p = _copy(params)
  m, v = {}, {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      dims = tuple(partition((k,), p[k].shape)) if partition else ()
      m[k] = b1 * m.get(k, 0.0) + (1 - b1) * g[k]
      sq = np.mean(g[k] ** 2, axis=dims, keepdims=True) if dims else g[k] ** 2
      v[k] = b2 * v.get(k, 0.0) + (1 - b2) * sq
      if p[k].ndim >= 2:
        p[k] = p[k] * (1 - learning_rate * weight_decay)
      mh, vh = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      p[k] = p[k] - learning_rate * mh / (np.sqrt(vh) + eps)
    out.append(_copy(p))
  return out


# --------------------------------------------------------------------- BAdam
def badam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
          weight_decay=0.0, switch_every=50, order="ascending", **unused):
  """Ledzy/BAdam BlockOptimizer around AdamW, one block per top-level key (in
  sorted key order, as a flattened dict): only the active block steps; the Adam
  state is cleared whenever the block changes."""
  p = _copy(params)
  names = sorted(p)
  out, m, v, t_in = [], {}, {}, 0
  for t in range(steps):
    if t % switch_every == 0:
      m, v, t_in = {}, {}, 0   # new block: fresh Adam state
      k = t // switch_every
      idx = k % len(names) if order == "ascending" else len(names) - 1 - k % len(names)
      active = names[idx]
    g = grad_fn(p, t)
    t_in += 1
    a = active
    m[a] = b1 * m.get(a, 0.0) + (1 - b1) * g[a]
    v[a] = b2 * v.get(a, 0.0) + (1 - b2) * g[a] ** 2
    mh, vh = m[a] / (1 - b1 ** t_in), v[a] / (1 - b2 ** t_in)
    p[a] = p[a] - learning_rate * (mh / (np.sqrt(vh) + eps) + weight_decay * p[a])
    out.append(_copy(p))
  return out


# ----------------------------------------------------------------------- SMMF
def _near_square(n):
  """Official effective shape: (n // i, i), i the largest divisor of n with i^2 <= n."""
  i = int(np.floor(np.sqrt(n)))
  while i * i > n:
    i -= 1
  while i > 1 and n % i:
    i -= 1
  return (n // max(i, 1), max(i, 1))


def _compress(a):
  """Rank-1 NNMF of the official code: row sums, column sums, shorter side normalised."""
  r, c = a.sum(axis=1), a.sum(axis=0)
  if a.shape[0] < a.shape[1]:
    if r.sum() != 0:
      r = r / r.sum()
  elif c.sum() != 0:
    c = c / c.sum()
  return r, c


def smmf(params, grad_fn, steps, *, learning_rate=1e-3, b1=0.9, eps=1e-8, weight_decay=0.0,
         decay_rate=0.5, growth_rate=0.999, vector_reshape=True, weight_decay_mode="adamw",
         **unused):
  """SMMF (Park & Lee 2024), the official SMMF.step: square-matricize, decompress,
  EMA (beta_m = beta * growth^(t-1), beta_v = 1 - t^(-decay)), compress (signs of m
  kept), step m / (sqrt(v) + eps) with the full updated moments."""
  p = _copy(params)
  st = {}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      grad = np.array(g[k], np.float64)
      if weight_decay != 0 and weight_decay_mode == "adam":
        grad = grad + weight_decay * p[k]
      elif weight_decay != 0:
        p[k] = p[k] * (1 - learning_rate * weight_decay)
      flat = np.squeeze(grad)
      factor = not (flat.ndim == 1 and not vector_reshape)
      beta_v = 1.0 - t ** (-decay_rate)
      if factor:
        shape = _near_square(grad.size)
        gm = grad.reshape(shape)
        if k not in st:
          z = lambda: (np.zeros(shape[0]), np.zeros(shape[1]))
          st[k] = {"m": z(), "v": z(), "sign": np.zeros(shape, bool)}
        s = st[k]
        v = np.outer(*s["v"])
        v = beta_v * v + (1 - beta_v) * gm ** 2
        if b1 is not None:
          m = np.outer(*s["m"])
          m = np.where(s["sign"], m, -m)
          beta_m = b1 * growth_rate ** (t - 1)
          m = beta_m * m + (1 - beta_m) * gm
          s["sign"] = m > 0
          s["m"] = _compress(np.abs(m))
        s["v"] = _compress(v)
        upd = (m if b1 is not None else gm) / (np.sqrt(v) + eps)
      else:
        if k not in st:
          st[k] = {"m": np.zeros_like(grad), "v": np.zeros_like(grad)}
        s = st[k]
        s["v"] = beta_v * s["v"] + (1 - beta_v) * grad ** 2
        if b1 is not None:
          beta_m = b1 * growth_rate ** (t - 1)
          s["m"] = beta_m * s["m"] + (1 - beta_m) * grad
        upd = (s["m"] if b1 is not None else grad) / (np.sqrt(s["v"]) + eps)
      p[k] = p[k] - learning_rate * upd.reshape(p[k].shape)
    out.append(_copy(p))
  return out


# ------------------------------------------------------------------ MicroAdam
def _q4(x, block):
  """Official asymmetric 4-bit blockwise quantisation, returned dequantised."""
  out = np.empty_like(x)
  for s in range(0, x.size, block):
    b = x[s:s + block]
    lo, hi = b.min(), b.max()
    u = (hi - lo) / 15.0
    if u == 0:
      out[s:s + block] = lo
      continue
    code = np.clip(np.floor((b - lo) / u + 0.5), 0, 15)
    out[s:s + block] = code * u + lo
  return out


def microadam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
              weight_decay=0.0, m=10, k_init=0.01, quant_block_size=100_000,
              topk_block_size=16_384, values_dtype=None, **unused):
  """MicroAdam (Modoranu et al. 2024), Algorithm 1 as in the official MicroAdam.step:
  error feedback, blockwise top-k into a ring of m rows, quantised error, Adam
  statistics of the ring with weights beta^age and debiasing (1 - beta) / (1 - beta^t).
  values_dtype=None only: values kept at full precision."""
  assert values_dtype is None
  p = _copy(params)
  err = {k: np.zeros(v.size) for k, v in p.items()}
  ring = {k: [None] * m for k in p}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      a = np.array(g[k], np.float64).reshape(-1) + err[k]
      d = a.size
      bs = min(d, topk_block_size)
      idx = []
      for s in range(0, d, bs):
        blk = np.abs(a[s:s + bs])
        kk = int(np.ceil(blk.size * k_init))
        idx.extend(s + np.argsort(-blk, kind="stable")[:kk])
      idx = np.asarray(idx, int)
      ring[k][(t - 1) % m] = (idx, a[idx].copy())
      a[idx] = 0.0
      err[k] = _q4(a, quant_block_size)
      mu, nu = np.zeros(d), np.zeros(d)
      for r in range(min(t, m)):
        age = (t - 1 - r) % m
        ri, rv = ring[k][r]
        np.add.at(mu, ri, b1 ** age * rv)
        np.add.at(nu, ri, b2 ** age * rv ** 2)
      c1 = (1 - b1) / (1 - b1 ** t)
      c2 = (1 - b2) / (1 - b2 ** t)
      upd = c1 * mu / (np.sqrt(c2 * nu) + eps)
      p[k] = p[k] * (1 - learning_rate * weight_decay) - learning_rate * upd.reshape(p[k].shape)
    out.append(_copy(p))
  return out
