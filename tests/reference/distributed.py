"""Distributed Lion, 1-bit Adam and the FedOpt server optimizers in NumPy.

Written from the papers (arXiv:2404.00438 Algorithm 1; arXiv:2003.00295
Algorithm 2) and, for 1-bit Adam, DeepSpeed's ``OnebitAdam`` and
``NcclBackend.compressed_allreduce`` (sign(0) = +1, scale = ||x|| / sqrt(n),
server chunks, no bias correction). The deliberate differences that optlab
documents are reproduced and marked "optlab:".

The distributed references simulate N workers on one device: pass
``worker_grad_fns`` (one ``grad_fn(params, t)`` per worker); by default there
is one worker whose gradient is ``grad_fn``. ``axis_name`` is accepted and
ignored (it only names the device axis in optlab).
"""

import math

import numpy as np


def _copy(p):
  return {k: np.array(v, dtype=np.float64, copy=True) for k, v in p.items()}


def _zeros(p):
  return {k: np.zeros_like(np.asarray(v, dtype=np.float64)) for k, v in p.items()}


def _workers(grad_fn, worker_grad_fns):
  return list(worker_grad_fns) if worker_grad_fns else [grad_fn]


# --------------------------------------------------------- Distributed Lion
def distributed_lion(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.99,
                     weight_decay=0.0, aggregate="vote", abstain_zeros=True, axis_name=None,
                     worker_grad_fns=None):
  """Algorithm 1: local Lion directions, majority vote (or average) of the signs."""
  del axis_name
  fns = _workers(grad_fn, worker_grad_fns)
  p, out = _copy(params), []
  m = [_zeros(params) for _ in fns]
  for t in range(steps):
    grads = [f(p, t) for f in fns]  # all workers see the same (synchronised) weights
    for k in p:
      total = np.zeros_like(p[k])
      for i, g in enumerate(grads):
        d = np.sign(b1 * m[i][k] + (1 - b1) * g[k])
        m[i][k] = b2 * m[i][k] + (1 - b2) * g[k]
        vote = np.where(d >= 0, 1.0, -1.0)  # the sent bit; optlab: 0 abstains by default
        if abstain_zeros:
          vote = vote * (d != 0)
        total = total + vote
      step = np.sign(total) if aggregate == "vote" else total / len(fns)
      p[k] = p[k] - learning_rate * (step + weight_decay * p[k])
    out.append(_copy(p))
  return out


# ---------------------------------------------------------------- 1-bit Adam
def _bit_sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def _compressed_allreduce(bufs, worker_errors, server_error):
  """DeepSpeed's compressed_allreduce on flat vectors (optlab: no zero padding)."""
  n_workers, n = len(bufs), bufs[0].size
  sent = []
  for i in range(n_workers):
    b = bufs[i] + worker_errors[i]
    scale = np.linalg.norm(b) / math.sqrt(n)
    worker_errors[i] = b - scale * _bit_sign(b)
    sent.append(scale * _bit_sign(b))
  c = sum(s / n_workers for s in sent) + server_error
  size = -(-n // n_workers)
  out = np.zeros(n)
  for j in range(n_workers):
    chunk = c[j * size:(j + 1) * size]
    if chunk.size == 0:
      continue
    r = np.linalg.norm(chunk) / math.sqrt(chunk.size)
    out[j * size:(j + 1) * size] = r * _bit_sign(chunk)
  return out, c - out


def onebit_adam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8,
                weight_decay=0.0, warmup_steps=100000, axis_name=None, worker_grad_fns=None):
  """DeepSpeed OnebitAdam.step: Adam on averaged grads for freeze_step steps, then frozen
  v and 1-bit compressed momentum (optlab: the first step is an ordinary update)."""
  del axis_name
  fns = _workers(grad_fn, worker_grad_fns)
  n_w = len(fns)
  p, m, v, out = _copy(params), _zeros(params), _zeros(params), []
  we = [{k: np.zeros(np.size(x)) for k, x in params.items()} for _ in fns]
  se = {k: np.zeros(np.size(x)) for k, x in params.items()}
  for step in range(1, steps + 1):
    grads = [f(p, step - 1) for f in fns]
    for k in p:
      if step <= warmup_steps:
        g = sum(gr[k] for gr in grads) / n_w  # the engine's all-reduce
        m[k] = b1 * m[k] + (1 - b1) * g
        v[k] = b2 * v[k] + (1 - b2) * g * g
      else:
        local = [(b1 * m[k] + (1 - b1) * gr[k]).ravel() for gr in grads]
        errs = [w[k] for w in we]
        flat, se[k] = _compressed_allreduce(local, errs, se[k])
        for w, e in zip(we, errs):
          w[k] = e
        m[k] = flat.reshape(np.shape(p[k]))
      update = m[k] / (np.sqrt(v[k]) + eps)
      p[k] = p[k] - learning_rate * (update + weight_decay * p[k])
    out.append(_copy(p))
  return out


# ------------------------------------------------------------------- FedOpt
def _fedopt(params, grad_fn, steps, rule, *, learning_rate, b1, b2, eps, worker_grad_fns):
  """Algorithm 2's server step; the pseudo-gradient is the mean of the clients' inputs."""
  fns = _workers(grad_fn, worker_grad_fns)
  p, m, out = _copy(params), _zeros(params), []
  v = {k: np.full(np.shape(x), eps ** 2) for k, x in params.items()}  # v_{-1} = tau^2
  for t in range(steps):
    grads = [f(p, t) for f in fns]
    for k in p:
      delta = -sum(gr[k] for gr in grads) / len(fns)  # Delta_t = mean client delta
      m[k] = b1 * m[k] + (1 - b1) * delta
      d2 = delta * delta
      if rule == "adagrad":
        v[k] = v[k] + d2
      elif rule == "yogi":
        v[k] = v[k] - (1 - b2) * d2 * np.sign(v[k] - d2)
      else:
        v[k] = b2 * v[k] + (1 - b2) * d2
      p[k] = p[k] + learning_rate * m[k] / (np.sqrt(v[k]) + eps)
    out.append(_copy(p))
  return out


def fedadam(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.99, eps=1e-3,
            axis_name=None, worker_grad_fns=None):
  del axis_name
  return _fedopt(params, grad_fn, steps, "adam", learning_rate=learning_rate, b1=b1, b2=b2,
                 eps=eps, worker_grad_fns=worker_grad_fns)


def fedyogi(params, grad_fn, steps, *, learning_rate, b1=0.9, b2=0.99, eps=1e-3,
            axis_name=None, worker_grad_fns=None):
  del axis_name
  return _fedopt(params, grad_fn, steps, "yogi", learning_rate=learning_rate, b1=b1, b2=b2,
                 eps=eps, worker_grad_fns=worker_grad_fns)


def fedadagrad(params, grad_fn, steps, *, learning_rate, b1=0.9, eps=1e-3, axis_name=None,
               worker_grad_fns=None):
  del axis_name
  return _fedopt(params, grad_fn, steps, "adagrad", learning_rate=learning_rate, b1=b1,
                 b2=None, eps=eps, worker_grad_fns=worker_grad_fns)
