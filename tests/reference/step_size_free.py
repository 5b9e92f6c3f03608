"""Step-size-free methods in NumPy, written from the official codes
(formll/dog, facebookresearch/dadaptation, fabian-sp/MoMo, the PSPS / SANIA
authors' code) and the papers. Defaults are the official ones.

Every parameter tensor of the reference problem is one "layer" (the official
codes loop over torch parameters, which are the same tensors).
"""

import numpy as np


def _copy(p):
  return {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()}


def _zeros(p):
  return {k: np.zeros_like(v, dtype=np.float64) for k, v in p.items()}


def _norm(x):
  return float(np.sqrt(np.sum(np.square(x))))


def _gnorm(tree):
  return float(np.sqrt(sum(np.sum(np.square(v)) for v in tree.values())))


def _dot(a, b):
  return float(sum(np.sum(a[k] * b[k]) for k in a))


# ------------------------------------------------------------------- DoG / LDoG
def _dog(params, grad_fn, steps, *, layerwise, learning_rate=1.0,
         init_step=("heuristic", 1e-6), eps=1e-8, weight_decay=None):
  """formll/dog: DoG.step / LDoG._update_group_state.

  First step: rbar = reps_rel (1 + ||x0||), G = ||g0||^2 + eps; later
  rbar = max(rbar, ||x - x0||), G += ||g||^2; eta = lr * rbar / sqrt(G);
  init_eta replaces the first eta (official: not multiplied by lr).
  init_step ("distance", r) starts rbar at r (optax's extension).
  """
  tag, value = init_step
  p = _copy(params)
  keys = list(p)
  groups = [[k] for k in keys] if layerwise else [keys]
  x0 = None
  rbar, big_g = {}, {}
  out = []
  for t in range(steps):
    g = grad_fn(p, t)
    if weight_decay:
      g = {k: g[k] + weight_decay * p[k] for k in keys}
    if t == 0:
      x0 = _copy(p)
    for i, grp in enumerate(groups):
      g_sq = sum(float(np.sum(g[k] ** 2)) for k in grp)
      if t == 0:
        if tag == "heuristic":
          rbar[i] = value * (1 + np.sqrt(sum(float(np.sum(p[k] ** 2)) for k in grp)))
        elif tag == "distance":
          rbar[i] = value
        else:
          rbar[i] = 0.0
        big_g[i] = g_sq + eps
      else:
        d = np.sqrt(sum(float(np.sum((p[k] - x0[k]) ** 2)) for k in grp))
        rbar[i] = max(rbar[i], d)
        big_g[i] += g_sq
      eta = learning_rate * rbar[i] / np.sqrt(big_g[i])
      if t == 0 and tag == "learning_rate":
        eta = value  # official init_eta (the same as optlab's lr * eta_0 for lr = 1)
      for k in grp:
        p[k] = p[k] - eta * g[k]
    out.append(_copy(p))
  return out


def dog(params, grad_fn, steps, **kw):
  return _dog(params, grad_fn, steps, layerwise=False, **kw)


def ldog(params, grad_fn, steps, **kw):
  return _dog(params, grad_fn, steps, layerwise=True, **kw)


# --------------------------------------------------------------- D-Adaptation
def dadapt_sgd(params, grad_fn, steps, *, learning_rate=1.0, momentum=0.0, weight_decay=0.0,
               d0=1e-6, growth_rate=float("inf")):
  """facebookresearch/dadaptation DAdaptSGD.step (one param group, lr constant).

  g0_norm is measured on the first step from the raw gradient (the official
  `grad.add(...)` there is not in place, so the decay term is not in it).
  """
  p = _copy(params)
  s, x0 = _zeros(p), _copy(p)
  d, numerator, g0_norm = d0, 0.0, None
  out = []
  for k in range(steps):
    g = grad_fn(p, k)
    if k == 0:
      g0_norm = _gnorm(g)
    dlr = d * learning_rate / g0_norm
    g = {key: g[key] + weight_decay * p[key] for key in p}
    numerator += dlr * _dot(g, s)
    for key in p:
      s[key] = s[key] + dlr * g[key]
    sk_norm = _gnorm(s)
    if learning_rate > 0:
      d_hat = 2 * numerator / sk_norm
      d = max(d, min(d_hat, d * growth_rate))
    ck = 1 - momentum
    for key in p:
      z = x0[key] - s[key]
      p[key] = (1 - ck) * p[key] + ck * z
    out.append(_copy(p))
  return out


def dadapt_adam(params, grad_fn, steps, *, learning_rate=1.0, b1=0.9, b2=0.999, eps=1e-8,
                weight_decay=0.0, d0=1e-6, growth_rate=float("inf"), decouple=False,
                use_bias_correction=False):
  """facebookresearch/dadaptation DAdaptAdam.step (one param group, layer_scale 1)."""
  p = _copy(params)
  m, v, s = _zeros(p), _zeros(p), _zeros(p)
  d, numerator_weighted = d0, 0.0
  sqrt_b2 = b2 ** 0.5
  out = []
  for k in range(steps):
    g = grad_fn(p, k)
    bc = ((1 - b2 ** (k + 1)) ** 0.5) / (1 - b1 ** (k + 1)) if use_bias_correction else 1.0
    dlr = d * learning_rate * bc
    if weight_decay != 0 and not decouple:
      g = {key: g[key] + weight_decay * p[key] for key in p}
    numerator_acum = 0.0
    sk_l1 = 0.0
    for key in p:
      denom = np.sqrt(v[key]) + eps
      numerator_acum += dlr * float(np.sum(g[key] * (s[key] / denom)))
      m[key] = b1 * m[key] + dlr * (1 - b1) * g[key]
      v[key] = b2 * v[key] + (1 - b2) * g[key] * g[key]
      s[key] = sqrt_b2 * s[key] + dlr * (1 - sqrt_b2) * g[key]
      sk_l1 += float(np.sum(np.abs(s[key])))
    numerator_weighted = sqrt_b2 * numerator_weighted + (1 - sqrt_b2) * numerator_acum
    if learning_rate > 0:
      d_hat = numerator_weighted / ((1 - sqrt_b2) * sk_l1)
      d = max(d, min(d_hat, d * growth_rate))
    for key in p:
      denom = np.sqrt(v[key]) + eps
      if weight_decay != 0 and decouple:
        p[key] = p[key] - weight_decay * dlr * p[key]
      p[key] = p[key] - m[key] / denom
    out.append(_copy(p))
  return out


def dadapt_lion(params, grad_fn, steps, *, learning_rate=1.0, b1=0.9, b2=0.99,
                weight_decay=0.0, d0=1e-6):
  """facebookresearch/dadaptation DAdaptLion.step."""
  p = _copy(params)
  m, s = _zeros(p), _zeros(p)
  d, numerator_weighted = d0, 0.0
  sqrt_b2 = b2 ** 0.5
  out = []
  for k in range(steps):
    g = grad_fn(p, k)
    dlr = d * learning_rate
    numerator_acum, sk_l1 = 0.0, 0.0
    for key in p:
      p[key] = p[key] * (1 - dlr * weight_decay)
      u = np.sign(b1 * m[key] + (1 - b1) * g[key])
      p[key] = p[key] - dlr * u
      m[key] = b2 * m[key] + (1 - b2) * dlr * g[key]
      numerator_acum += dlr * float(np.sum(u * s[key]))
      s[key] = sqrt_b2 * s[key] + (1 - sqrt_b2) * dlr * u
      sk_l1 += float(np.sum(np.abs(s[key])))
    numerator_weighted = sqrt_b2 * numerator_weighted + (1 - sqrt_b2) * numerator_acum
    if learning_rate > 0:
      d = max(d, numerator_weighted / ((1 - sqrt_b2) * sk_l1))
    out.append(_copy(p))
  return out


# ------------------------------------------------------------------ loss values
def _loss_of(grad_fn):
  """The reference problem's loss value f(p, t), for the methods that need ``value``.

  Uses ``grad_fn.loss`` / ``grad_fn.loss_fn`` when the problem provides one.
  Otherwise it is rebuilt from the quantities the gradient closure holds
  (tests/problems.reference_problem: g = curv (p - centre) + 0.3 noise_t, so
  f = sum 0.5 curv (p - centre)^2 + 0.3 noise_t p, the problem's loss_fn).
  """
  for name in ("loss", "loss_fn"):
    fn = getattr(grad_fn, name, None)
    if fn is not None:
      return lambda p, t: float(fn(p, t))
  cells = dict(zip(grad_fn.__code__.co_freevars,
                   (c.cell_contents for c in grad_fn.__closure__ or ())))
  if not {"curv", "centre", "noise"} <= set(cells):
    raise TypeError("the reference needs the loss value: give grad_fn a `loss` attribute")
  curv, centre, noise = cells["curv"], cells["centre"], cells["noise"]

  def loss(p, t):
    n = noise[t % len(noise)]
    return float(sum(np.sum(0.5 * curv[k] * (p[k] - centre[k]) ** 2 + 0.3 * n[k] * p[k])
                     for k in p))

  return loss


# ------------------------------------------------------------------------- MoMo
def momo(params, grad_fn, steps, *, learning_rate=1.0, beta=0.9, lower_bound=0.0,
         weight_decay=0.0, adapt_lower_bound=False, bias_correction=False):
  """fabian-sp/MoMo Momo.step (lb = lower_bound, use_fstar = adapt_lower_bound)."""
  loss_fn = _loss_of(grad_fn)
  p = _copy(params)
  lr, lmbda, lb, lb0 = learning_rate, weight_decay, lower_bound, lower_bound
  grad_avg, grad_dot_w, loss_avg = None, None, None
  out = []
  for k in range(1, steps + 1):
    loss = loss_fn(p, k - 1)
    g = grad_fn(p, k - 1)
    if k == 1:
      if bias_correction:
        loss_avg = 0.0
        grad_avg, grad_dot_w = _zeros(p), {key: 0.0 for key in p}
      else:
        loss_avg = loss
        grad_avg = _copy(g)
        grad_dot_w = {key: float(np.sum(p[key] * g[key])) for key in p}
    loss_avg = beta * loss_avg + (1 - beta) * loss
    rho = 1 - beta ** k if bias_correction else 1.0
    dot = gamma = norm = 0.0
    for key in p:
      grad_avg[key] = beta * grad_avg[key] + (1 - beta) * g[key]
      grad_dot_w[key] = beta * grad_dot_w[key] + (1 - beta) * float(np.sum(p[key] * g[key]))
      dot += float(np.sum(p[key] * grad_avg[key]))
      gamma += grad_dot_w[key]
      norm += float(np.sum(grad_avg[key] ** 2))
    if adapt_lower_bound:
      cap = (1 + lr * lmbda) * loss_avg + dot - (1 + lr * lmbda) * gamma
      if cap < (1 + lr * lmbda) * rho * lb:
        lb = max(cap / (2 * (1 + lr * lmbda) * rho), lb0)
    if lmbda > 0:
      t1 = max((1 + lr * lmbda) * (loss_avg - rho * lb) + dot - (1 + lr * lmbda) * gamma,
               0.0) / norm
    else:
      t1 = max(loss_avg - rho * lb + dot - gamma, 0.0) / norm
    tau = min(lr / rho, t1)
    if adapt_lower_bound:
      lb = max((loss_avg + dot - gamma - 0.5 * tau * norm) / rho, lb0)
    for key in p:
      p[key] = p[key] - tau * grad_avg[key]
      if lmbda > 0:
        p[key] = p[key] / (1 + lr * lmbda)
    out.append(_copy(p))
  return out


def momo_adam(params, grad_fn, steps, *, learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8,
              lower_bound=0.0, weight_decay=0.0, adapt_lower_bound=False, divide=True):
  """fabian-sp/MoMo MomoAdam.step."""
  loss_fn = _loss_of(grad_fn)
  p = _copy(params)
  lr, lmbda, lb, lb0 = learning_rate, weight_decay, lower_bound, lower_bound
  m, v = _zeros(p), _zeros(p)
  dot_w = {key: 0.0 for key in p}
  loss_avg = 0.0
  out = []
  for k in range(1, steps + 1):
    loss = loss_fn(p, k - 1)
    g = grad_fn(p, k - 1)
    bc1, bc2 = 1 - b1 ** k, 1 - b2 ** k
    dot = gamma = norm = 0.0
    for key in p:
      m[key] = b1 * m[key] + (1 - b1) * g[key]
      v[key] = b2 * v[key] + (1 - b2) * g[key] * g[key]
      dot_w[key] = b1 * dot_w[key] + (1 - b1) * float(np.sum(p[key] * g[key]))
      dk = np.sqrt(v[key] / bc2) + eps
      dot += float(np.sum(p[key] * m[key]))
      gamma += dot_w[key]
      norm += float(np.sum(m[key] * (m[key] / dk)))
    loss_avg = (1 - b1) * loss + b1 * loss_avg
    c = 1 + lr * lmbda
    if adapt_lower_bound:
      cap = c * loss_avg + dot - c * gamma
      if cap < c * bc1 * lb:
        lb = max(cap / (2 * c * bc1), lb0)
    nom = c * (loss_avg - bc1 * lb) + dot - c * gamma
    t1 = max(nom, 0.0) / norm
    tau = min(lr / bc1, t1)
    if adapt_lower_bound:
      lb = max((loss_avg + dot - gamma - 0.5 * tau * norm) / bc1, lb0)
    for key in p:
      dk = np.sqrt(v[key] / bc2) + eps
      if lmbda > 0 and not divide:
        p[key] = p[key] * (1 - lmbda * lr)
      p[key] = p[key] - tau * m[key] / dk
      if lmbda > 0 and divide:
        p[key] = p[key] / (1 + lmbda * lr)
    out.append(_copy(p))
  return out


# ------------------------------------------------------------ SPS and SANIA
def _diag_precond(p, kind, b2, hess):
  """A preconditioner statistic S_t in the official codes' form, as a stateful closure.

  hutchinson: the PSPS code's Hutch (100-probe start, then b2-smoothing of one
  probe a step); on the reference problem z * (H z) = diag(H) for every
  Rademacher z, so each sample is `hess`. adam: v / (1 - b2^t); adagrad: sum g^2.
  """
  state = {"t": 0, "s": _zeros(p)}

  def step(g):
    state["t"] += 1
    t, s = state["t"], state["s"]
    for k in s:
      if kind == "hutchinson":
        if t == 1:
          s[k] = np.array(hess[k], dtype=np.float64)  # the mean of 100 exact samples
        s[k] = b2 * s[k] + (1 - b2) * hess[k]
      elif kind == "adam":
        s[k] = b2 * s[k] + (1 - b2) * g[k] ** 2
      elif kind == "adagrad":
        s[k] = s[k] + g[k] ** 2
    if kind == "adam":
      return {k: s[k] / (1 - b2 ** t) for k in s}
    return {k: s[k].copy() for k in s}

  return step


def sps(params, grad_fn, steps, *, learning_rate=1.0, preconditioner="hutchinson",
        lower_bound=0.0, slack=None, lmd=0.01, b2=0.999, alpha=0.1, **_):
  """PSPS (the authors' code, SPS class: update_sps / update_L1 / update_L2).

  DkhatInv = 1 / max(|D|, alpha) (Hutch). For Adam / AdaGrad: D = sqrt(S),
  truncated the same way. lr multiplies the step (1 in the paper).
  """
  loss_fn = _loss_of(grad_fn)
  p = _copy(params)
  precond = _diag_precond(p, preconditioner, b2, grad_fn.hessian_diag)
  s_slack, lmd_hat = 0.0, 1.0 / (1.0 + lmd)
  out = []
  for t in range(steps):
    loss = loss_fn(p, t) - lower_bound
    g = grad_fn(p, t)
    if preconditioner == "none":
      inv = {k: np.ones_like(p[k]) for k in p}
    else:
      stat = precond(g)
      d = stat if preconditioner == "hutchinson" else {k: np.sqrt(stat[k]) for k in stat}
      inv = {k: 1.0 / np.maximum(np.abs(d[k]), alpha) for k in d}
    scaled = {k: inv[k] * g[k] for k in p}
    gnorm_sq = _dot(scaled, g)
    if gnorm_sq >= 1e-13:
      if slack == "l1":
        temp = max(0.0, loss - s_slack + lmd) / (1 + gnorm_sq)
        step = min(temp, loss / gnorm_sq)
        s_slack = max(0.0, s_slack - lmd + temp)
      elif slack == "l2":
        step = max(0.0, loss - lmd_hat * s_slack) / (gnorm_sq + lmd_hat)
        s_slack = lmd_hat * (s_slack + step)
      else:
        step = loss / gnorm_sq
      for k in p:
        p[k] = p[k] - learning_rate * step * scaled[k]
    out.append(_copy(p))
  return out


def sania(params, grad_fn, steps, *, learning_rate=1.0, preconditioner="adam", b2=0.999,
          eps=0.1, is_sqrt=False, lower_bound=0.0, **_):
  """SANIA (the authors' torch code: SANIA_AdamSQR / SANIA_AdagradSQR; "none" is
  their numpy SANIA with B = I; "hutchinson" the PSPS Hutch statistic)."""
  loss_fn = _loss_of(grad_fn)
  p = _copy(params)
  precond = _diag_precond(p, preconditioner, b2, grad_fn.hessian_diag)
  out = []
  for t in range(steps):
    loss = loss_fn(p, t) - lower_bound
    g = grad_fn(p, t)
    if preconditioner == "none":
      scaled = {k: g[k].copy() for k in p}
    else:
      stat = precond(g)
      reg = {k: np.maximum(eps, stat[k]) for k in stat}
      scaled = {k: g[k] / (np.sqrt(reg[k]) if is_sqrt else reg[k]) for k in p}
    grad_norm = _dot(scaled, g)
    step_size = 1.0
    if 2 * loss <= grad_norm:
      det = 1 - 2 * loss / grad_norm
      if det > 0.0:
        step_size = 1 - np.sqrt(det)
    for k in p:
      p[k] = p[k] - learning_rate * step_size * scaled[k]
    out.append(_copy(p))
  return out
