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


# ----------------------------------------------------------------------------
# The rest of the Adam family. Each loop is written from the paper's algorithm
# (or, where the paper and the official code disagree, the official code); the
# defaults are the paper's / official code's unless a comment says otherwise.

import math


def _copy(p):
  return {k: v.copy() for k, v in p.items()}


def _zeros(p):
  return {k: np.zeros_like(v) for k, v in p.items()}


def adagrad(params, grad_fn, steps, *, learning_rate, initial_accumulator_value=0.1, eps=1e-7):
  """Duchi et al. 2011, diagonal form; accumulator start and eps inside the root as
  TensorFlow / optax (the paper starts at 0 and adds delta outside the root)."""
  p = _copy(params)
  acc = {k: np.full_like(v, initial_accumulator_value) for k, v in p.items()}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      acc[k] += g[k] ** 2
      p[k] = p[k] - learning_rate * g[k] / np.sqrt(acc[k] + eps)
    out.append(_copy(p))
  return out


def rmsprop(params, grad_fn, steps, *, learning_rate, decay=0.9, eps=1e-8, initial_scale=0.0,
            eps_in_sqrt=True, centered=False, momentum=None, nesterov=False,
            bias_correction=False):
  """Tieleman & Hinton's RMSProp; centred form of Graves (arXiv:1308.0850, eq. 38-41);
  momentum as a heavy-ball buffer of the scaled steps (PyTorch's placement)."""
  p = _copy(params)
  sq = {k: np.full_like(v, initial_scale) for k, v in p.items()}
  avg, buf = _zeros(p), _zeros(p)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      sq[k] = decay * sq[k] + (1 - decay) * g[k] ** 2
      avg[k] = decay * avg[k] + (1 - decay) * g[k]
      c = 1 - decay ** t if bias_correction else 1.0
      var = sq[k] / c - ((avg[k] / c) ** 2 if centered else 0.0)
      step = g[k] / (np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps)
      if momentum is not None:
        buf[k] = momentum * buf[k] + step
        step = step + momentum * buf[k] if nesterov else buf[k]
      p[k] = p[k] - learning_rate * step
    out.append(_copy(p))
  return out


def adamax(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
  """Algorithm 2 of arXiv:1412.6980; eps inside the max is optax's addition (paper: none)."""
  p, m, u = _copy(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      u[k] = np.maximum(b2 * u[k], np.abs(g[k]) + eps)
      p[k] = p[k] - (learning_rate / (1 - b1 ** t)) * m[k] / u[k]
    out.append(_copy(p))
  return out


def amsgrad(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
            eps_root=0.0, bias_correction_mu=True, bias_correction_nu=True):
  """Algorithm 2 of arXiv:1904.09237 (constant b1). The paper corrects neither moment
  and has no eps; the defaults here are the common implementations' (PyTorch,
  optax): both corrections on, eps=1e-8 outside the root."""
  p, m, v, vmax = _copy(params), _zeros(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      vmax[k] = np.maximum(vmax[k], v[k] / (1 - b2 ** t) if bias_correction_nu else v[k])
      mh = m[k] / (1 - b1 ** t) if bias_correction_mu else m[k]
      p[k] = p[k] - learning_rate * mh / (np.sqrt(vmax[k] + eps_root) + eps)
    out.append(_copy(p))
  return out


def nadam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
  """Dozat 2016, Algorithm 2 with a constant momentum mu_t = b1 and without the extra
  b2 factor on n_hat (as optax and most implementations)."""
  p, m, n = _copy(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      n[k] = b2 * n[k] + (1 - b2) * g[k] ** 2
      m_bar = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g[k] / (1 - b1 ** t)
      n_hat = n[k] / (1 - b2 ** t)
      p[k] = p[k] - learning_rate * m_bar / (np.sqrt(n_hat + eps_root) + eps)
    out.append(_copy(p))
  return out


def adabelief(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-16,
              eps_root=1e-16, nesterov=False):
  """Algorithm 2 of arXiv:2010.07468 as the official code (juntang-zhuang, v0.2):
  eps is added to s (in place, so it accumulates) and again outside the root."""
  p, m, s = _copy(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      s[k] = b2 * s[k] + (1 - b2) * (g[k] - m[k]) ** 2 + eps_root
      if nesterov:  # optax's look-ahead option
        mh = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g[k] / (1 - b1 ** t)
      else:
        mh = m[k] / (1 - b1 ** t)
      p[k] = p[k] - learning_rate * mh / (np.sqrt(s[k] / (1 - b2 ** t)) + eps)
    out.append(_copy(p))
  return out


def laprop(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-15,
           weight_decay=0.0):
  """The official LaProp code (Z-T-WANG/LaProp-Optimizer, laprop.py): the learning
  rate enters the momentum and m is debiased by the EMA of the learning rates
  (constant here); eps after the bias correction; after the step the weights
  decay by p -= weight_decay * p (not scaled by the learning rate)."""
  p, m, v = _copy(params), _zeros(params), _zeros(params)
  lr_avg_1 = lr_avg_2 = 0.0
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    lr_avg_1 = b1 * lr_avg_1 + (1 - b1) * learning_rate
    lr_avg_2 = b2 * lr_avg_2 + (1 - b2)
    for k in p:
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      denom = np.sqrt(v[k] / lr_avg_2) + eps
      m[k] = b1 * m[k] + (1 - b1) * learning_rate * g[k] / denom
      p[k] = p[k] - m[k] / (lr_avg_1 / learning_rate)
      if weight_decay != 0:
        p[k] = p[k] - weight_decay * p[k]
    out.append(_copy(p))
  return out


def adopt(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.9999, eps=1e-6,
          nesterov=False, use_clipping=True, clip_value_fn=None):
  """The official ADOPT code (iShohei220/adopt, with clipping by step**0.25 of the
  0-based step); the Nesterov option is optax.contrib's."""
  clip_fn = clip_value_fn or (lambda step: step ** 0.25)
  p, m, v = _copy(params), _zeros(params), _zeros(params)
  out = []
  for step in range(steps):
    g = grad_fn(p, step)
    for k in p:
      if step == 0:
        v[k] = g[k] ** 2
        continue
      x = g[k] / np.maximum(np.sqrt(v[k]), eps)
      if use_clipping:
        x = np.clip(x, -clip_fn(step), clip_fn(step))
      m[k] = m[k] + (1 - b1) * (x - m[k])
      d = b1 * m[k] + (1 - b1) * x if nesterov else m[k]
      p[k] = p[k] - learning_rate * d
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
    out.append(_copy(p))
  return out


def _ademamix_alpha(step, alpha, warmup):
  return alpha * step / warmup if step < warmup else alpha


def _ademamix_beta3(step, beta_end, beta_start, warmup):
  if step >= warmup:
    return beta_end
  half = lambda b: math.log(0.5) / math.log(b + 1e-8) - 1
  a = step / warmup
  return 0.5 ** (1 / ((1 - a) * half(beta_start) + a * half(beta_end) + 1))


def ademamix(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0,
             eps=1e-8, eps_root=0.0, weight_decay=0.0, t_alpha_b3=None):
  """Algorithm 1 of arXiv:2409.03350 with the official schedulers (apple/ml-ademamix).
  alpha=5.0 is one of the paper's settings (official PyTorch default 2.0); eps_root
  is optax's, 0 in the paper."""
  p, m1, m2, nu = _copy(params), _zeros(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    a_t = alpha if t_alpha_b3 is None else _ademamix_alpha(t, alpha, t_alpha_b3)
    b3_t = b3 if t_alpha_b3 is None else _ademamix_beta3(t, b3, b1, t_alpha_b3)
    for k in p:
      m1[k] = b1 * m1[k] + (1 - b1) * g[k]
      m2[k] = b3_t * m2[k] + (1 - b3_t) * g[k]
      nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
      denom = np.sqrt(nu[k] / (1 - b2 ** t) + eps_root) + eps
      upd = (m1[k] / (1 - b1 ** t) + a_t * m2[k]) / denom + weight_decay * p[k]
      p[k] = p[k] - learning_rate * upd
    out.append(_copy(p))
  return out


def exadam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
           weight_decay=0.0, dynamic_step_size=False):
  """Algorithm 1 of arXiv:2412.20302 as the current official code
  (AhmedMostafa16/EXAdam): decoupled decay lr * wd * p first, then the step with
  step size lr (v2), or lr * ln(sqrt(t + 1) * sqrt(2)) with dynamic_step_size (v1)."""
  p, m, v = _copy(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    step_size = learning_rate * (math.log(math.sqrt(t + 1) * math.sqrt(2))
                                 if dynamic_step_size else 1.0)
    for k in p:
      p[k] = p[k] - learning_rate * weight_decay * p[k]
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      d1 = 1 + v[k] / (v[k] + eps) * b2 ** t
      d2 = 1 + m[k] ** 2 / (m[k] ** 2 + eps) * b1 ** t
      m_t = m[k] / (1 - b1 ** t) * d1
      v_t = v[k] / (1 - b2 ** t) * d2
      g_t = g[k] / (1 - b1 ** t) * d1
      p[k] = p[k] - step_size * (m_t + g_t) / (np.sqrt(v_t) + eps)
    out.append(_copy(p))
  return out


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


def fadam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8, clip=1.0,
          p=0.5, weight_decay=0.001, adaptive_eps=True):
  """Algorithm 1 of arXiv:2405.12807 (no official code): the FIM f is an EMA with the
  bias-corrected rate b2_hat = b2 (1 - b2^(t-1)) / (1 - b2^t); natural gradient and
  weight-decay term are each clipped to RMS `clip`; eps_t = eps * min(1, rms(g))."""
  theta, m, fim = _copy(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(theta, t - 1)
    b2_hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2 ** t)
    for k in theta:
      fim[k] = b2_hat * fim[k] + (1 - b2_hat) * g[k] ** 2
      eps_t = eps * min(1.0, _rms(g[k])) if adaptive_eps else eps
      base = fim[k] ** p + eps_t
      g_nat = g[k] / base
      g_nat = g_nat / max(1.0, _rms(g_nat) / clip)
      m[k] = b1 * m[k] + (1 - b1) * g_nat
      w_nat = theta[k] / base
      w_nat = w_nat / max(1.0, _rms(w_nat) / clip)
      theta[k] = theta[k] - learning_rate * (m[k] + weight_decay * w_nat)
    out.append(_copy(theta))
  return out


def adamomentum(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
  """AdaMomentum, Algorithm 2 of arXiv:2106.11514: v tracks m_t^2 (+ eps each step),
  no eps outside the root."""
  p, m, v = _copy(params), _zeros(params), _zeros(params)
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * m[k] ** 2 + eps
      p[k] = p[k] - learning_rate * (m[k] / (1 - b1 ** t)) / np.sqrt(v[k] / (1 - b2 ** t))
    out.append(_copy(p))
  return out


def adan(params, grad_fn, steps, *, learning_rate, b1=0.98, b2=0.92, b3=0.99, eps=1e-8,
         eps_root=0.0, weight_decay=0.0, no_prox=False):
  """Adan, Algorithm 1 of arXiv:2208.06677 in the paper's own symbols (beta_i = 1 - b_i
  of the code), with the official code's bias corrections (sail-sg/Adan): the
  difference is zero on the first step, and the weights decay by the proximal step
  p <- (p - lr u) / (1 + lr wd), or p <- p (1 - lr wd) - lr u with no_prox."""
  beta1, beta2, beta3 = 1 - b1, 1 - b2, 1 - b3
  p, m, v, n = _copy(params), _zeros(params), _zeros(params), _zeros(params)
  prev = None
  out = []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      d = np.zeros_like(g[k]) if prev is None else g[k] - prev[k]
      m[k] = (1 - beta1) * m[k] + beta1 * g[k]
      v[k] = (1 - beta2) * v[k] + beta2 * d
      n[k] = (1 - beta3) * n[k] + beta3 * (g[k] + (1 - beta2) * d) ** 2
      m_hat, v_hat = m[k] / (1 - (1 - beta1) ** t), v[k] / (1 - (1 - beta2) ** t)
      n_hat = n[k] / (1 - (1 - beta3) ** t)
      u = (m_hat + (1 - beta2) * v_hat) / (np.sqrt(n_hat + eps_root) + eps)
      if no_prox:
        p[k] = p[k] * (1 - learning_rate * weight_decay) - learning_rate * u
      else:
        p[k] = (p[k] - learning_rate * u) / (1 + learning_rate * weight_decay)
    prev = {k: x.copy() for k, x in g.items()}
    out.append(_copy(p))
  return out
