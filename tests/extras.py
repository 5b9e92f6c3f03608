"""The extra args that recipes declare in `catalog()`, built for the test problems.

One builder per extra-arg name. Each takes ``loss`` (a jax-traceable function
params -> scalar, the loss on the current batch) and the current ``params`` and
returns the value to pass as that keyword. The contract suite and the
reference harness both call `extra_args`; a recipe that needs a new kind of
extra arg adds one builder here.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

BUILDERS: dict[str, Callable[[Callable, Any], Any]] = {
    "obj_fn": lambda loss, params: loss,
    "value": lambda loss, params: jnp.asarray(loss(params)),
}


def extra_args(names, loss, params) -> dict[str, Any]:
  """The keyword extra args `names`, computed from `loss` at `params`."""
  unknown = [n for n in names if n not in BUILDERS]
  if unknown:
    raise KeyError(f"tests/extras.py has no builder for extra args {unknown}")
  return {n: BUILDERS[n](loss, params) for n in names}
