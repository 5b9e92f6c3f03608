"""Small shared problems for the tests: the reference problem and the contract
convergence problems (ill-conditioned quadratic, Rosenbrock valley, digits MLP
from scratch and fine-tuned from pre-trained weights)."""

from __future__ import annotations

import functools

import numpy as np

SHAPES = {"w1": (8, 6), "b1": (6,), "w2": (6, 8), "scale": ()}


def reference_problem(seed: int = 0):
  """Params (float64) and a NumPy gradient: a diagonal quadratic plus step-dependent noise.

  g_t = a * (p - c) + 0.3 * n_t, with curvatures a in [0.1, 10]. The Hessian is
  diag(a), so a Hutchinson estimate z * (H z) with Rademacher z is exactly a:
  references of curvature methods read it from ``grad_fn.hessian_diag``.
  """
  rng = np.random.default_rng(seed)
  params = {k: np.asarray(rng.normal(size=s)) for k, s in SHAPES.items()}
  curv = {k: np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=s)) for k, s in SHAPES.items()}
  centre = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  noise = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(64)]

  def grad_fn(p, t):
    return {k: curv[k] * (np.asarray(p[k]) - centre[k]) + 0.3 * noise[t % 64][k] for k in p}

  grad_fn.hessian_diag = curv

  noise_stack = {k: np.stack([n[k] for n in noise]) for k in SHAPES}

  def loss_fn(p, t):
    """The matching loss, jax-traceable in p and t (recipes that take obj_fn
    differentiate it; the harness passes t as a traced step number)."""
    import jax.numpy as jnp
    return sum(jnp.sum(0.5 * curv[k] * (p[k] - centre[k]) ** 2
                       + 0.3 * jnp.asarray(noise_stack[k])[t % 64] * p[k]) for k in p)

  return params, grad_fn, loss_fn


# ------------------------------------------------------------ convergence tasks
# Each task: (params, loss(params) -> scalar, steps, passes(final, initial) -> bool).

def _quadratic():
  import jax.numpy as jnp
  h = jnp.logspace(-3.0, 1.0, 20)  # condition number 1e4
  params = {"x": jnp.ones(20, jnp.float32)}
  loss = lambda p: 0.5 * jnp.sum(h * p["x"] ** 2)
  return params, loss, 300, lambda final, initial: final <= 0.05 * initial


def _rosenbrock():
  import jax.numpy as jnp
  params = {"x": jnp.full(10, -0.5, jnp.float32)}

  def loss(p):
    x = p["x"]
    return jnp.sum(10.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

  return params, loss, 400, lambda final, initial: final <= 0.3 * initial


@functools.lru_cache(maxsize=1)
def _all_digits():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  return (x / 16.0).astype(np.float32), y.astype(np.int32)


def digits_data():
  # 256 examples (full batch): every catalogue recipe passes at 256 as at 768, and
  # the zeroth-order recipes, which run hundreds of forward passes per step, take
  # half the time (deepzero 39 s -> 17 s).
  x, y = _all_digits()
  return x[:256], y[:256]


def digits_pretraining_data():
  """512 other digits, disjoint from `digits_data`: the fine-tuning task's source data."""
  x, y = _all_digits()
  return x[256:768], y[256:768]


def mlp_apply(p, x, tap=None):
  """The digits MLP's logits, its two layers marked for `optlab.capture_layer_stats`."""
  import jax.numpy as jnp
  tap = tap or (lambda inputs, outputs, *names, **bias: outputs)
  h = jnp.tanh(tap(x, x @ p["w1"] + p["b1"], "w1", bias="b1"))
  return tap(h, h @ p["w2"] + p["b2"], "w2", bias="b2")


def _mlp_loss(x, y):
  """The mean cross-entropy of `mlp_apply`; ``loss.layer_stats(p)`` are the layers'
  empirical-Fisher statistics on the same batch (the extra arg of K-FAC-style recipes)."""
  import jax
  import jax.numpy as jnp
  import optlab
  x, y = jnp.asarray(x), jnp.asarray(y)

  def loss(p):
    logits = mlp_apply(p, x)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])

  loss.layer_stats = lambda p: optlab.capture_layer_stats(mlp_apply, p, x, targets=y)[2]
  # the logits of the first 16 examples (the extra arg logits_fn): a Gauss-Newton
  # sub-batch, whose (16 x 10)-row Jacobian keeps EGN's per-step solve small
  loss.logits_fn = lambda p: mlp_apply(p, x[:16])
  return loss


@functools.lru_cache(maxsize=1)
def _digits_loss():
  """One loss object for the digits tasks, so that a runner that caches its compiled
  step by loss (test_converges) compiles "digits" and "digits_finetune" once."""
  return _mlp_loss(*digits_data())


def _digits_init():
  import jax
  import jax.numpy as jnp
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {"w1": jax.random.normal(k1, (64, 32)) / 8.0, "b1": jnp.zeros(32),
          "w2": jax.random.normal(k2, (32, 10)) / jnp.sqrt(32.0), "b2": jnp.zeros(10)}


def _digits_mlp():
  return _digits_init(), _digits_loss(), 250, lambda final, initial: final <= 0.3 * initial


# Pre-training of the fine-tuning task: optax's AdamW (not optlab's, so the start
# point does not depend on the code under test) from the digits init.
PRETRAIN_STEPS, PRETRAIN_LR = 200, 1e-2


@functools.lru_cache(maxsize=1)
def pretrained_digits_params():
  """The digits MLP after PRETRAIN_STEPS full-batch AdamW steps on
  `digits_pretraining_data` (deterministic; computed once per process)."""
  import jax
  import optax
  loss, tx = _mlp_loss(*digits_pretraining_data()), optax.adamw(PRETRAIN_LR, weight_decay=1e-4)

  @jax.jit
  def pretrain(params):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(body, (params, tx.init(params)), None, length=PRETRAIN_STEPS)[0][0]

  return jax.tree.map(np.asarray, pretrain(_digits_init()))


def _digits_finetune():
  """Fine-tuning, where MeZO (arXiv:2305.17333) and Sparse MeZO (arXiv:2402.15751)
  claim to work: the digits MLP pre-trained on 512 other digits (training loss
  ~0.007) is fine-tuned on the contract's 256, on which it starts at a loss of
  ~0.48. It passes at 0.8 of that in 200 steps: a zero update stays at 1.0, and
  the slowest recipes at their catalogue hparams were measured at 0.70
  (sparse_mezo, which perturbs only the small weights) and 0.19 (dadapt_lion,
  whose steps grow from d0 = 1e-6: at step 100 they are ~1e-3 of their size at
  step 250, and the loss is still at 0.99; fewer steps would fail it)."""
  import jax
  import jax.numpy as jnp
  params = jax.tree.map(jnp.asarray, pretrained_digits_params())
  return params, _digits_loss(), 200, lambda final, initial: final <= 0.8 * initial


TASKS = {"quadratic": _quadratic, "rosenbrock": _rosenbrock, "digits": _digits_mlp,
         "digits_finetune": _digits_finetune}
