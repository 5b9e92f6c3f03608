"""A spec file for `optlab bench --spec`: chains of your own next to catalogue recipes.

    optlab bench --task digits-mlp --spec examples/bench_spec.py \
        --optimizers adamw,cautious_lion_soap_basis,mars_cautious_lion --steps 300 --tune lr

OPTIMIZERS maps a name to a `learning_rate -> transformation` callable (its learning
rate is tuned from LEARNING_RATES[name]) or to a ready transformation (run as is).
EXTRA_ARGS names the extra args a chain's update needs (obj_fn, value or
logits_fn); the bench builds them from the task's loss.
"""

import optax

import optlab


def cautious_lion_soap_basis(learning_rate):
  inner = optlab.scale_by_lion_momentum(0.9, 0.99)
  if hasattr(optlab, "in_eigenbasis"):
    inner = optlab.in_eigenbasis(inner, precondition_frequency=10)
  return optax.chain(optlab.cautious(inner), optlab.add_decayed_weights(1e-3),
                     optlab.scale_by_learning_rate(learning_rate))


OPTIMIZERS = {
    "cautious_lion_soap_basis": cautious_lion_soap_basis,
    "mars_cautious_lion": lambda learning_rate: optax.chain(
        optlab.add_mars_correction(b1=0.9, gamma=0.025),
        optlab.clip_by_global_norm(1.0),
        optlab.cautious(optlab.scale_by_lion_momentum(0.9, 0.99)),
        optlab.scale_by_learning_rate(learning_rate)),
}
LEARNING_RATES = {"cautious_lion_soap_basis": 3e-3, "mars_cautious_lion": 3e-3}
EXTRA_ARGS = {}
