"""RAdam, AdaBound, AMSBound and AdaMod in NumPy, from the papers and the
official PyTorch code (LiyuanLucasLiu/RAdam, Luolc/AdaBound, lancopku/AdaMod).

Each function keeps the official code's loop structure: per-tensor state, a
scalar step size built from the bias corrections, then the per-coordinate
clip / average. A learning rate may be a callable ``step -> lr`` (0-based),
the way a schedule would change the param group's lr before each step.
"""

import math

import numpy as np


def _lr(learning_rate, step):
  return float(learning_rate(step)) if callable(learning_rate) else float(learning_rate)


def _copy(p):
  return {k: v.copy() for k, v in p.items()}


def radam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0,
          threshold=5.0, weight_decay=0.0, nesterov=False):
  """Algorithm 2 of arXiv:1908.03265 with optax's conventions.

  rho_t >= threshold (official: N_sma >= 5) selects the rectified step;
  otherwise the plain momentum step lr * m_hat. eps is added to sqrt(v_hat)
  (optax, paper) rather than to the raw sqrt(v) (official). Weight decay is
  the official code's: p <- p - lr * wd * p, on every step.
  """
  p = _copy(params)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  out = []
  for step in range(1, steps + 1):
    g = grad_fn(p, step - 1)
    lr = _lr(learning_rate, step - 1)
    beta2_t = b2 ** step
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    rectified = rho_t >= threshold
    if rectified:
      r_t = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                      / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
    for k in p:
      m[k] = b1 * m[k] + (1.0 - b1) * g[k]
      v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
      if nesterov:
        m_hat = (b1 * m[k] / (1.0 - b1 ** (step + 1))
                 + (1.0 - b1) * g[k] / (1.0 - b1 ** step))
      else:
        m_hat = m[k] / (1.0 - b1 ** step)
      if rectified:
        l_t = 1.0 / (np.sqrt(v[k] / (1.0 - beta2_t) + eps_root) + eps)
        d = r_t * m_hat * l_t
      else:
        d = m_hat
      p[k] = p[k] - lr * weight_decay * p[k] - lr * d
    out.append(_copy(p))
  return out


def adabound(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
             final_lr=0.1, gamma=1e-3, weight_decay=0.0, base_lr=None, amsbound=False):
  """AdaBound.step of the official code (Luolc/AdaBound, adabound.py)."""
  p = _copy(params)
  exp_avg = {k: np.zeros_like(x) for k, x in p.items()}
  exp_avg_sq = {k: np.zeros_like(x) for k, x in p.items()}
  max_exp_avg_sq = {k: np.zeros_like(x) for k, x in p.items()}
  base = _lr(learning_rate, 0) if base_lr is None else float(base_lr)
  out = []
  for step in range(1, steps + 1):
    grads = grad_fn(p, step - 1)
    lr = _lr(learning_rate, step - 1)
    for k in p:
      grad = grads[k] + weight_decay * p[k]
      exp_avg[k] = exp_avg[k] * b1 + (1.0 - b1) * grad
      exp_avg_sq[k] = exp_avg_sq[k] * b2 + (1.0 - b2) * grad * grad
      if amsbound:
        max_exp_avg_sq[k] = np.maximum(max_exp_avg_sq[k], exp_avg_sq[k])
        denom = np.sqrt(max_exp_avg_sq[k]) + eps
      else:
        denom = np.sqrt(exp_avg_sq[k]) + eps
      step_size = lr * math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
      fl = final_lr * lr / base
      lower = fl * (1.0 - 1.0 / (gamma * step + 1.0))
      upper = fl * (1.0 + 1.0 / (gamma * step))
      p[k] = p[k] - np.clip(step_size / denom, lower, upper) * exp_avg[k]
    out.append(_copy(p))
  return out


def amsbound(params, grad_fn, steps, **kw):
  """AdaBound(amsbound=True) of the official code."""
  return adabound(params, grad_fn, steps, **kw, amsbound=True)


def adamod(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, beta3=0.999, eps=1e-8,
           weight_decay=0.0):
  """AdaMod.step of the official code (lancopku/AdaMod, adamod.py)."""
  p = _copy(params)
  exp_avg = {k: np.zeros_like(x) for k, x in p.items()}
  exp_avg_sq = {k: np.zeros_like(x) for k, x in p.items()}
  exp_avg_lr = {k: np.zeros_like(x) for k, x in p.items()}
  out = []
  for step in range(1, steps + 1):
    grads = grad_fn(p, step - 1)
    lr = _lr(learning_rate, step - 1)
    for k in p:
      exp_avg[k] = exp_avg[k] * b1 + (1.0 - b1) * grads[k]
      exp_avg_sq[k] = exp_avg_sq[k] * b2 + (1.0 - b2) * grads[k] * grads[k]
      denom = np.sqrt(exp_avg_sq[k]) + eps
      step_size = lr * math.sqrt(1.0 - b2 ** step) / (1.0 - b1 ** step)
      p[k] = p[k] - weight_decay * lr * p[k]
      eta = step_size / denom
      exp_avg_lr[k] = exp_avg_lr[k] * beta3 + (1.0 - beta3) * eta
      p[k] = p[k] - np.minimum(eta, exp_avg_lr[k]) * exp_avg[k]
    out.append(_copy(p))
  return out
