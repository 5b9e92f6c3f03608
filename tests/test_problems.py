"""The contract's convergence problems themselves: the fine-tuning task must start
from partly trained weights and must not pass without real progress."""

import jax
import numpy as np
import optax

from tests import problems


def test_digits_finetune_starts_partly_trained():
  params, loss, steps, _ = problems.TASKS["digits_finetune"]()
  _, scratch_loss, _, _ = problems.TASKS["digits"]()
  assert loss is scratch_loss  # one loss: test_converges compiles the digits step once
  scratch = float(loss(problems.TASKS["digits"]()[0]))
  source = float(problems._mlp_loss(*problems.digits_pretraining_data())(params))
  start = float(loss(params))
  # well trained on its own (disjoint) data, far from trained on the task's
  assert source < 0.05 and 0.1 < start < 0.5 * scratch, (source, start, scratch)
  assert len(problems.digits_data()[0]) == 256
  assert len(problems.digits_pretraining_data()[0]) == 512


def test_digits_finetune_needs_real_progress():
  params, loss, steps, passes = problems.TASKS["digits_finetune"]()
  initial = float(loss(params))
  assert not passes(initial, initial)            # a zero update fails
  assert not passes(0.95 * initial, initial)     # so does a small gain

  def final(tx):
    def body(_, carry):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, u), s

    return float(loss(jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))[0]))

  # plain gradient descent passes at a sound step size, not with tiny steps
  assert passes(final(optax.sgd(0.5)), initial)
  assert not passes(final(optax.sgd(1e-3)), initial)
  assert np.isfinite(initial)
