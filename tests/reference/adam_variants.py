"""SWATS, Ranger21, Gravity, CoRe, INNAprop, Adam-CM and Coupled Adam in NumPy,
written from the papers' algorithms (or the official code where they differ)."""

import numpy as np


def _copy(p):
  return {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()}


def _dot(a, b):
  return sum(float(np.sum(a[k] * b[k])) for k in a)


def swats(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-9,
          switch_tol=1e-9):
  """Algorithm 1 of arXiv:1712.07628 (vectors = all parameters together)."""
  p = _copy(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  a = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  lam, big_lam, phase = 0.0, None, "adam"
  out = []
  for k in range(1, steps + 1):
    g = grad_fn(p, k - 1)
    if phase == "sgd":
      for n in p:
        v[n] = b1 * v[n] + g[n]
        p[n] = p[n] - (1 - b1) * big_lam * v[n]
    else:
      step = {}
      for n in p:
        m[n] = b1 * m[n] + (1 - b1) * g[n]
        a[n] = b2 * a[n] + (1 - b2) * g[n] ** 2
        step[n] = (-learning_rate * np.sqrt(1 - b2 ** k) / (1 - b1 ** k)
                   * m[n] / (np.sqrt(a[n]) + eps))
        p[n] = p[n] + step[n]
      pg = _dot(step, g)
      if pg != 0:
        gamma = _dot(step, step) / -pg
        lam = b2 * lam + (1 - b2) * gamma
        if k > 1 and abs(lam / (1 - b2 ** k) - gamma) < switch_tol:
          phase, big_lam = "sgd", lam / (1 - b2 ** k)
    out.append(_copy(p))
  return out


def coupled_adam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
                 eps_root=0.0, weight_decay=0.0, embedding_mask=None, vocab_axis=0):
  """AdamW whose second moment, for embedding matrices, is the mean over the
  vocabulary axis (arXiv:2502.08441). `embedding_mask`: dict of bools, or a
  callable on the params dict; None couples nothing."""
  p = _copy(params)
  if embedding_mask is None:
    coupled = {k: False for k in p}
  elif callable(embedding_mask):
    coupled = {k: bool(v) for k, v in embedding_mask(p).items()}
  else:
    coupled = dict(embedding_mask)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      v_hat = v[k] / (1 - b2 ** t)
      if coupled[k]:
        v_hat = np.broadcast_to(v_hat.mean(axis=vocab_axis, keepdims=True), v_hat.shape)
      step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v_hat + eps_root) + eps) + weight_decay * p[k]
      p[k] = p[k] - learning_rate * step
    out.append(_copy(p))
  return out


def innaprop(params, grad_fn, steps, *, learning_rate, alpha=0.1, beta=0.9, sigma=0.999,
             eps=1e-8, weight_decay=0.01):
  """The official innaprop code (innaprop/innaprop, classification/optimizers)."""
  lr = learning_rate
  p = _copy(params)
  psi = {k: (1 - alpha * beta) * v for k, v in p.items()}
  sq = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      p[k] = p[k] * (1 - lr * weight_decay)
      sq[k] = sigma * sq[k] + (1 - sigma) * g[k] ** 2
      s1 = lr * (1 - beta * alpha) / (beta - lr)
      s2 = lr / (beta - lr)
      denom = np.sqrt(sq[k]) / np.sqrt(1 - sigma ** t) + eps
      psi[k] = psi[k] * (1 - lr / beta) + lr * (1 / beta - alpha) * p[k]
      p[k] = p[k] * (1 + s1) - s2 * psi[k] - lr * beta * g[k] / denom
    out.append(_copy(p))
  return out


def adam_cm(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8, decay=0.7,
            topc=5, weight_decay=0.0):
  """chandar-lab/CMOptimizer Adam_CM (synced=True, critical_test=0, amsgrad=False)."""
  lr = learning_rate
  p = _copy(params)
  m = v = None
  keys, items = [], []  # priority list and stored momenta (dicts)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    gnorm = sum(float(np.sqrt(np.sum(g[k] ** 2))) for k in p)
    for k in p:
      p[k] = p[k] * (1 - lr * weight_decay)
    if t == 1:
      m = {k: np.zeros_like(x) for k, x in p.items()}
      v = {k: np.zeros_like(x) for k, x in p.items()}
      keys.append(gnorm)
      items.append(_copy(g))
      used = m
    else:
      m = {k: b1 * m[k] + (1 - b1) * g[k] for k in p}
      mean = {k: sum(it[k] for it in items) / len(items) for k in p}
      used = {k: m[k] + mean[k] for k in p}
      if len(items) == topc:
        j = int(np.argmin(keys))
        if gnorm > keys[j]:
          keys[j], items[j] = gnorm, _copy(m)
      else:
        keys.append(gnorm)
        items.append(_copy(m))
    for k in p:
      v[k] = b2 * v[k] + (1 - b2) * used[k] ** 2
      denom = np.sqrt(v[k]) / np.sqrt(1 - b2 ** t) + eps
      p[k] = p[k] - lr / (1 - b1 ** t) * used[k] / denom
    keys = [x * decay for x in keys]
    out.append(_copy(p))
  return out


def _unit_norm(x):
  """Ranger21's unit_norm (PyTorch layout)."""
  if x.ndim <= 1:
    return np.sqrt(np.sum(x ** 2))
  axes = 1 if x.ndim in (2, 3) else tuple(range(1, x.ndim))
  return np.sqrt(np.sum(x ** 2, axis=axes, keepdims=True))


def ranger21(params, grad_fn, steps, *, learning_rate, num_iterations=1000, b1=0.9, b2=0.999,
             eps=1e-8, weight_decay=1e-4, agc_clipping_value=1e-2, agc_eps=1e-3,
             pnm_momentum=1.0, softplus_beta=50.0, normloss_factor=1e-4,
             lookahead_mergetime=5, lookahead_blending_alpha=0.5, use_warmup=True,
             warmdown_active=True, warmdown_min_lr=3e-5):
  """lessw2020/Ranger21 (AdamW + PNM core), with its stable decay and norm loss
  applied to every tensor (the official loop reaches only the last one), in the
  official order: decay, then norm loss, then the step, all multiplicative."""
  import math
  total = num_iterations
  w = math.ceil(2 / (1 - b2))
  warmup = int(0.22 * total) if w / total > 0.45 else w
  start = int(0.72 * total)
  p = _copy(params)
  slow = _copy(params)
  ma = {k: np.zeros_like(v) for k, v in p.items()}
  mb = {k: np.zeros_like(v) for k, v in p.items()}
  var = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  la_step = 0
  for step in range(1, steps + 1):
    g = grad_fn(p, step - 1)
    grads = {}
    for k in p:
      x = np.array(g[k], dtype=np.float64)
      # AGC
      pn = np.maximum(_unit_norm(p[k]), agc_eps)
      gn = _unit_norm(x)
      mx = pn * agc_clipping_value
      x = np.where(gn > mx, x * (mx / np.maximum(gn, 1e-6)), x)
      # gradient centralisation and normalisation
      if x.ndim > 1:
        x = x - x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
      if x.size > 2:
        x = x / (x.std(ddof=1) + 1e-8)
      grads[k] = x
      var[k] = b2 * var[k] + (1 - b2) * x ** 2
    size = sum(v.size for v in p.values())
    vsum = sum(np.sum(var[k] / (1 - b2 ** step)) for k in p)
    vnorm = math.sqrt(vsum / size)
    lr = learning_rate
    if use_warmup and step <= warmup:
      lr = lr * min(1.0, step / warmup)
    if warmdown_active and step >= start:
      pct = min((step + 1 - start) / (total - start + 1), 1.0)
      lr = max(learning_rate - (learning_rate - warmdown_min_lr) * pct, warmdown_min_lr)
    noise = math.sqrt((1 + b2) ** 2 + b2 ** 2)
    for k in p:
      if weight_decay:
        p[k] = p[k] * (1 - weight_decay * lr / vnorm)
      if normloss_factor:
        corr = 2 * normloss_factor * (1 - 1 / (_unit_norm(p[k]) + eps))
        p[k] = p[k] * (1 - lr * corr)
      pos, neg = (ma, mb) if step % 2 == 1 else (mb, ma)
      pos[k] = b1 ** 2 * pos[k] + (1 - b1 ** 2) * grads[k]
      denom = np.sqrt(var[k]) / math.sqrt(1 - b2 ** step) + eps
      if softplus_beta is not None:
        z = softplus_beta * denom
        denom = np.where(z > 20, denom, np.log1p(np.exp(np.minimum(z, 20))) / softplus_beta)
      pnm = ((1 + pnm_momentum) * pos[k] - pnm_momentum * neg[k]) / noise
      p[k] = p[k] - lr / (1 - b1 ** step) * pnm / denom
    la_step += 1
    if la_step >= lookahead_mergetime:
      la_step = 0
      for k in p:
        p[k] = lookahead_blending_alpha * p[k] + (1 - lookahead_blending_alpha) * slow[k]
        slow[k] = p[k].copy()
    out.append(_copy(p))
  return out


def gravity(params, grad_fn, steps, *, learning_rate, alpha=0.01, beta=0.9, seed=0):
  """dariush-bahrami/gravity.optimizer (Keras): zeta = g / (1 + (g / (1 / max|g|))^2),
  beta_hat = (beta t + 1) / (t + 2) with t from 0, V <- beta_hat V + (1 - beta_hat) zeta,
  p <- p - lr V; V_0 ~ N(0, (alpha / lr)^2). The V_0 draw is the one jax.random call
  (float32 normals from fold_in(key(seed), i) for leaf i of the sorted params dict)."""
  import jax
  base = jax.random.key(seed)
  p = _copy(params)
  v = {k: alpha / learning_rate * np.asarray(jax.random.normal(
      jax.random.fold_in(base, i), np.shape(p[k]), np.float32), np.float64)
       for i, k in enumerate(sorted(p))}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    beta_hat = (beta * t + 1.0) / (t + 2.0)
    for k in p:
      max_step = 1.0 / np.max(np.abs(g[k]))
      zeta = g[k] / (1.0 + (g[k] / max_step) ** 2)
      v[k] = beta_hat * v[k] + (1.0 - beta_hat) * zeta
      p[k] = p[k] - learning_rate * v[k]
    out.append(_copy(p))
  return out


def core(params, grad_fn, steps, *, learning_rate=1e-3, b1a=0.7375, b1b=0.8125, b1c=250.0,
         b2=0.99, eps=1e-8, eta_minus=0.7375, eta_plus=1.2, step_size_min=1e-6,
         step_size_max=1e-2, weight_decay=0.1, score_history=None, frozen=None,
         adam_like=True):
  """ReiherGroup/CoRe_optimizer ``_single_tensor_core``, one weight decay and one
  frozen fraction for every tensor (betas[3] < 0 is adam_like=False)."""
  hist = score_history or 0
  frac = frozen or 0.0
  p = _copy(params)
  g_prev = {k: np.zeros_like(x) for k, x in p.items()}   # prev_1
  h = {k: np.zeros_like(x) for k, x in p.items()}        # prev_2
  s = {k: np.full_like(x, learning_rate) for k, x in p.items()}
  score = {k: np.zeros_like(x) for k, x in p.items()}
  n_frozen = {k: int(frac * int(np.prod(np.shape(x)))) for k, x in p.items()}
  out = []
  for step in range(steps):
    grad = grad_fn(p, step)
    for k in p:
      G = np.asarray(grad[k], np.float64)
      if adam_like:
        h[k] = b2 * h[k] + (1.0 - b2) * G * G
      beta = b1b + (b1a - b1b) * np.exp(-(step / b1c) ** 2)
      g = G + beta * (g_prev[k] - G)  # lerp towards the previous average
      plast = np.ones_like(G)
      if hist > 0 and step >= hist and n_frozen[k] > 0:
        kth = np.sort(score[k].ravel())[::-1][n_frozen[k] - 1]
        plast[score[k] >= 0.999999 * kth] = 0.0
        score[k] = score[k] * (1.0 - 1.0 / hist)
      change = g * g_prev[k] * plast
      factor = np.where(change > 0, eta_plus, np.where(change < 0, eta_minus, 1.0))
      s[k] = np.clip(s[k] * factor, step_size_min, step_size_max)
      if adam_like:
        u = (g / (1.0 - beta ** (step + 1))) / (np.sqrt(h[k] / (1.0 - b2 ** (step + 1))) + eps)
      else:
        u = np.sign(g)
      u = u * s[k]
      if hist > 0:
        u = u * plast
        score[k] = score[k] + g * u / hist
      p[k] = p[k] - weight_decay * np.abs(u) * p[k]
      p[k] = p[k] - u
      g_prev[k] = g
    out.append(_copy(p))
  return out
