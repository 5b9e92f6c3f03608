"""Lion, cautious optimizers, Grams, MARS, SPAM, AdamP and SGDP in NumPy.

Each follows the paper's algorithm and, where they differ, the official code
(google/automl Lion, kyleliang919/C-Optim, Gunale0926/Grams, AGI-Arena/MARS,
TianjinYellow/SPAM-Optimizer, clovaai/AdamP), step by step and per tensor.
The deliberate differences that optlab documents are reproduced here and
marked "optlab:". C-AdamW (loop path), Grams and SPAM build on HF-transformers'
AdamW, which adds eps to sqrt(v) before the bias correction.
"""

import math

import numpy as np


def _copy(p):
  return {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()}


def _zeros(p):
  return {k: np.zeros_like(v) for k, v in p.items()}


# --------------------------------------------------------------------- Lion
def lion(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.99, weight_decay=0.0):
  """Program 1 of arXiv:2302.06675 (decoupled decay scaled by lr)."""
  p, m, out = _copy(params), _zeros(params), []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      c = np.sign(b1 * m[k] + (1 - b1) * g[k])
      p[k] = p[k] - learning_rate * (c + weight_decay * p[k])
      m[k] = b2 * m[k] + (1 - b2) * g[k]
    out.append(_copy(p))
  return out


# ----------------------------------------------------------------- cautious
def _adam_step(m, v, g, b1, b2, t, eps, hf=False):
  """One Adam step; returns (m, v, direction before the learning rate).

  hf=False: torch.optim / paper form, m_hat / (sqrt(v_hat) + eps).
  hf=True: HF-transformers AdamW, as the official C-AdamW loop path, Grams and
  SPAM: denom = sqrt(v) + eps, step_size = sqrt(1 - b2^t) / (1 - b1^t).
  """
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  if hf:
    step_size = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    return m, v, step_size * m / (np.sqrt(v) + eps)
  m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
  return m, v, m_hat / (np.sqrt(v_hat) + eps)


def cautious_adamw(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-6,
                   weight_decay=0.0, eps_before_debias=False):
  """C-Optim c_adamw.py: decay, Adam, mask m*g > 0 scaled by 1/max(mean, 1e-3).

  eps_before_debias=False: the default foreach path (eps after the bias
  correction); True: the foreach=False loop path (HF-transformers AdamW).
  """
  p, m, v, out = _copy(params), _zeros(params), _zeros(params), []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      p[k] = p[k] - learning_rate * weight_decay * p[k]
      m[k], v[k], u = _adam_step(m[k], v[k], g[k], b1, b2, t, eps, hf=eps_before_debias)
      mask = (m[k] * g[k] > 0).astype(np.float64)
      mask = mask / max(mask.mean(), 1e-3)
      p[k] = p[k] - learning_rate * u * mask
    out.append(_copy(p))
  return out


def cautious_lion(params, grad_fn, steps, *, learning_rate, b1=0.95, b2=0.98,
                  weight_decay=0.0):
  """C-Optim c_lion.py: mask (u * g > 0) scaled by numel / (sum + 1)."""
  p, m, out = _copy(params), _zeros(params), []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      p[k] = p[k] * (1 - learning_rate * weight_decay)
      u = np.sign(b1 * m[k] + (1 - b1) * g[k])
      mask = (u * g[k] > 0).astype(np.float64)
      mask = mask * (mask.size / (mask.sum() + 1))
      p[k] = p[k] - learning_rate * u * mask
      m[k] = b2 * m[k] + (1 - b2) * g[k]
    out.append(_copy(p))
  return out


def grams(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-6,
          weight_decay=0.0):
  """Grams (official grams.py, HF AdamW base): decay, then sign(g) |m| / (sqrt(v) + eps)
  with step size lr * sqrt(1 - b2^t) / (1 - b1^t)."""
  p, m, v, out = _copy(params), _zeros(params), _zeros(params), []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      p[k] = p[k] - learning_rate * weight_decay * p[k]
      m[k], v[k], u = _adam_step(m[k], v[k], g[k], b1, b2, t, eps, hf=True)
      p[k] = p[k] - learning_rate * np.sign(g[k]) * np.abs(u)
    out.append(_copy(p))
  return out


# --------------------------------------------------------------------- MARS
def _mars(params, grad_fn, steps, kind, *, learning_rate, b1=0.95, b2=0.99, eps=1e-8,
          weight_decay=0.0, gamma=0.025, max_norm=1.0, optimize_1d=False, lr_1d_factor=1.0,
          b1_1d=0.9, b2_1d=0.95, weight_decay_1d=0.1):
  """AGI-Arena/MARS mars.py update_fn, is_approx=True (last_grad = previous gradient)."""
  p, m, v, last, out = _copy(params), _zeros(params), _zeros(params), _zeros(params), []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      if optimize_1d or p[k].ndim == 2:
        c = g[k] + gamma * (b1 / (1 - b1)) * (g[k] - last[k])
        norm = np.sqrt(np.sum(c * c))
        if max_norm is not None and norm > max_norm:
          c = c / norm * max_norm
        m[k] = b1 * m[k] + (1 - b1) * c
        if kind == "adamw":
          v[k] = b2 * v[k] + (1 - b2) * c * c
          denom = (np.sqrt(v[k]) / math.sqrt(1 - b2 ** t) + eps) * (1 - b1 ** t)
          step = m[k] / denom
        else:
          step = np.sign(m[k])
        p[k] = p[k] - learning_rate * (weight_decay * p[k] + step)
      else:
        m[k] = b1_1d * m[k] + (1 - b1_1d) * g[k]
        v[k] = b2_1d * v[k] + (1 - b2_1d) * g[k] * g[k]
        denom = (np.sqrt(v[k]) / math.sqrt(1 - b2_1d ** t) + eps) * (1 - b1_1d ** t)
        p[k] = p[k] - learning_rate * lr_1d_factor * (weight_decay_1d * p[k] + m[k] / denom)
      last[k] = g[k].copy()
    out.append(_copy(p))
  return out


def mars_adamw(params, grad_fn, steps, **kw):
  return _mars(params, grad_fn, steps, "adamw", **kw)


def mars_lion(params, grad_fn, steps, **kw):
  return _mars(params, grad_fn, steps, "lion", **kw)


# --------------------------------------------------------------------- SPAM
def spam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-6,
         weight_decay=0.0, threshold=5000.0, delta_t=500, warmup_steps=150, clip_delay=20):
  """SPAM-Optimizer galore_torch/SPAM.py (AdamW class, no density mask)."""

  def death_rate(c):  # CosineDecay(0.99, warmup_steps).get_dr(c)
    if c >= warmup_steps:
      return 0.0
    return 0.99 * (1 + math.cos(math.pi * c / (warmup_steps + 1))) / 2

  p, m, v, out = _copy(params), _zeros(params), _zeros(params), []
  total_step, current_step = 0, warmup_steps + 1
  for t in range(steps):
    g = {k: np.array(x, dtype=np.float64, copy=True) for k, x in grad_fn(p, t).items()}
    scale = 1 - death_rate(current_step)
    step = total_step + 1
    for k in p:
      if delta_t and (total_step + 1) % delta_t == 0:
        m[k], v[k] = np.zeros_like(p[k]), np.zeros_like(p[k])
      if threshold != 0 and step >= clip_delay:
        if delta_t == 0 or step % delta_t >= clip_delay:
          spike = g[k] ** 2 > threshold * v[k]
          g[k] = np.where(spike, np.sign(g[k]) * np.sqrt(threshold * v[k]), g[k])
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      denom = np.sqrt(v[k]) + eps
      step_size = learning_rate * math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
      p[k] = p[k] - step_size * scale * (m[k] / denom)
      p[k] = p[k] - learning_rate * weight_decay * p[k]  # after the step, as official
    total_step += 1
    current_step += 1
    if delta_t and total_step != 0 and (total_step + 1) % delta_t == 0:
      current_step = 0
    out.append(_copy(p))
  return out


# ------------------------------------------------------------- AdamP / SGDP
def _projection(p, g, perturb, delta, wd_ratio, eps, channel_axis=-1):
  """clovaai/AdamP _projection: channel view, then layer view.

  The official (PyTorch) weights are (out, in, ...), channels on axis 0; JAX /
  flax kernels are (in, out) and (h, w, in, out), channels last. The tensors
  are put in the official layout (channel axis first), projected there, and
  put back.
  """
  if p.ndim <= 1:
    return perturb, 1.0
  if p.size == 0:  # optlab: an empty tensor is not projected (the official code fails)
    return perturb, 1.0
  shape = np.moveaxis(p, channel_axis, 0).shape
  p, g, perturb = (np.moveaxis(x, channel_axis, 0) for x in (p, g, perturb))
  for rows in (lambda x: x.reshape(shape[0], -1), lambda x: x.reshape(1, -1)):
    pr, gr = rows(p), rows(g)
    # torch.nn.functional.cosine_similarity (recent versions): each norm clamped at eps.
    pn_ = np.maximum(np.linalg.norm(pr, axis=1, keepdims=True), eps)
    gn_ = np.maximum(np.linalg.norm(gr, axis=1, keepdims=True), eps)
    cos = np.abs(np.sum((gr / gn_) * (pr / pn_), axis=1))
    if cos.max() < delta / math.sqrt(pr.shape[1]):
      p_n = pr / (np.linalg.norm(pr, axis=1, keepdims=True) + eps)
      ur = rows(perturb)
      ur = ur - p_n * np.sum(p_n * ur, axis=1, keepdims=True)
      return np.moveaxis(ur.reshape(shape), 0, channel_axis), wd_ratio
  return np.moveaxis(perturb, 0, channel_axis), 1.0


def adamp(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
          weight_decay=0.0, delta=0.1, wd_ratio=0.1, nesterov=False, channel_axis=-1):
  p, m, v, out = _copy(params), _zeros(params), _zeros(params), []
  for t in range(1, steps + 1):
    g = grad_fn(p, t - 1)
    for k in p:
      bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      denom = np.sqrt(v[k]) / math.sqrt(bc2) + eps
      if nesterov:
        perturb = (b1 * m[k] + (1 - b1) * g[k]) / denom
      else:
        perturb = m[k] / denom
      perturb, ratio = _projection(p[k], g[k], perturb, delta, wd_ratio, eps, channel_axis)
      p[k] = p[k] * (1 - learning_rate * weight_decay * ratio)
      p[k] = p[k] - (learning_rate / bc1) * perturb
    out.append(_copy(p))
  return out


def sgdp(params, grad_fn, steps, *, learning_rate, momentum=0.0, dampening=0.0,
         weight_decay=0.0, nesterov=False, eps=1e-8, delta=0.1, wd_ratio=0.1,
         channel_axis=-1):
  p, buf, out = _copy(params), _zeros(params), []
  for t in range(steps):
    g = grad_fn(p, t)
    for k in p:
      buf[k] = momentum * buf[k] + (1 - dampening) * g[k]
      d = g[k] + momentum * buf[k] if nesterov else buf[k]
      d, ratio = _projection(p[k], g[k], d, delta, wd_ratio, eps, channel_axis)
      p[k] = p[k] * (1 - learning_rate * weight_decay * ratio / (1 - momentum))
      p[k] = p[k] - learning_rate * d
    out.append(_copy(p))
  return out
