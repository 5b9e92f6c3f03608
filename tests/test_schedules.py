"""Tests of optlab.schedules: linear decay with warm-up and schedule refinement
(arXiv:2310.07831), the latter on a previous run of a built-in task."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab import schedules as S
from tests import problems


def test_linear_decay_values():
  sched = S.linear_decay(2.0, 10)
  np.testing.assert_allclose([sched(t) for t in (0, 5, 9, 10, 50)], [2.0, 1.0, 0.2, 0.0, 0.0],
                             rtol=1e-6, atol=1e-7)
  ref = optax.linear_schedule(2.0, 0.0, 10)  # the same without warm-up
  np.testing.assert_allclose([sched(t) for t in range(12)], [ref(t) for t in range(12)],
                             rtol=1e-6, atol=1e-7)
  warm = S.linear_decay(1.0, 10, warmup_steps=4, init_value=0.2, end_value=0.1)
  want = [0.2, 0.4, 0.6, 0.8, 1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1, 0.1]
  np.testing.assert_allclose([warm(t) for t in range(12)], want, rtol=1e-6)
  assert jax.jit(warm)(jnp.asarray(6)) == pytest.approx(0.7)  # traceable step
  with pytest.raises(ValueError, match="warmup_steps"):
    S.linear_decay(1.0, 10, warmup_steps=10)
  with pytest.raises(ValueError, match="peak_value"):
    S.linear_decay(-1.0, 10)


def test_median_filter():
  x = [1.0, 9.0, 2.0, 3.0, 100.0, 4.0]
  np.testing.assert_allclose(S.median_filter(x, 3), [5.0, 2.0, 3.0, 3.0, 4.0, 52.0])
  np.testing.assert_allclose(S.median_filter(x, 1), x)
  np.testing.assert_allclose(S.median_filter([7.0] * 5, 4), [7.0] * 5)


def test_refinement_by_hand():
  # Constant norms: w_t = 1 and eta_t = T - 1 - t (0-based) -- linear decay to 0.
  eta = S.refined_multipliers(np.full(5, 3.0))
  np.testing.assert_allclose(eta, [1.0, 0.75, 0.5, 0.25, 0.0])
  # No smoothing, norms (2, 1, 1): w = (1/4, 1, 1), tails (2, 1, 0), eta = (1/2, 1, 0).
  np.testing.assert_allclose(S.refined_multipliers([2.0, 1.0, 1.0], smoothing=0.0), [0.5, 1, 0])
  # The l1 / Adam form, norm_power 1: w = (1/2, 1, 1), eta = (1, 1, 0).
  np.testing.assert_allclose(S.refined_multipliers([2.0, 1.0, 1.0], 0.0, 1.0), [1, 1, 0])
  # Non-finite or zero norms are replaced by the smallest positive one.
  np.testing.assert_allclose(S.refined_multipliers([np.inf, 1.0, 0.0, 1.0], 0.0),
                             S.refined_multipliers([1.0, 1.0, 1.0, 1.0], 0.0))
  with pytest.raises(ValueError, match="smoothing"):
    S.refined_multipliers([1.0, 2.0], smoothing=2.0)
  sched = S.refine_schedule([2.0, 1.0, 1.0], 0.1, smoothing=0.0)
  np.testing.assert_allclose([sched(t) for t in (0, 1, 2, 7)], [0.05, 0.1, 0.0, 0.0], rtol=1e-6)


def _train(task, make_tx, schedule):
  """One run of `task` with optlab recipe `make_tx(schedule)`: (final loss, grad norms)."""
  params, loss, steps, _ = problems.TASKS[task]()
  tx = make_tx(schedule)

  @jax.jit
  def run(params):
    def body(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), optax.tree.norm(g)

    (p, _), norms = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return loss(p), norms

  final, norms = run(params)
  return float(loss(params)), float(final), np.asarray(norms)


def test_refined_schedule_from_a_previous_quadratic_run():
  """Refine the linear-decay schedule of an SGD run on the ill-conditioned quadratic.

  The gradient norms fall by orders of magnitude during that run, so the
  refined schedule warms up (its peak is late) and anneals to 0 at the end;
  re-run with it, SGD still trains to the contract's target. (On this small
  deterministic problem it does not beat linear decay at the same peak: about
  0.0022 against 0.0016 final loss.)
  """
  make = lambda lr: optlab.sgd(lr, momentum=0.9)
  initial, base, norms = _train("quadratic", make, S.linear_decay(0.15, 300))
  assert norms.shape == (300,) and norms[-1] < 0.1 * norms[0]
  eta = S.refined_multipliers(norms)
  assert eta.max() == 1.0 and eta[-1] == 0.0 and np.all(eta >= 0)
  assert 50 < int(np.argmax(eta)) < 299        # warm-up: the peak is not at the start
  assert eta[0] < 1e-3
  _, refined, _ = _train("quadratic", make, S.refine_schedule(norms, 0.15))
  assert np.isfinite(refined) and refined <= 0.05 * initial
  assert refined < 3 * base
