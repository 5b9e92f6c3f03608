"""Contract: gradients or a state that do not match (issue 12, items 4 and 9).

Each case is traced only (`jax.eval_shape`), so it costs no compile. A case passes
when it raises a ValueError that names the offending leaf, or, for a recipe that
needs params and is called without them, the error that asks for `params`."""

from __future__ import annotations

import jax
import pytest

from tests.test_contract import RECIPES, extra_for, grads_at, make_params, plain

# Compact states that pack every leaf's statistics into flat arrays whose sizes do
# not change when a matrix is transposed, so a state initialised for w1.T has the
# same shapes as one for w1 and nothing checkable while tracing tells them apart.
PACKED_STATE = {
    "adafactor": "row/column statistics packed over all leaves (same total size)",
    "badam": "the active block's moments packed flat (same size)",
    "smmf": "square-matricized factors packed flat (same size)",
    "microadam": "top-k window and 4-bit error packed flat (same size)",
    "adalomo": "row/column statistics packed over all leaves",
}
# States that hold nothing that depends on a leaf's layout: a state initialised for
# w1.T is a valid state for w1, and is accepted.
LAYOUT_FREE = {"sparse_mezo": "one magnitude threshold per tensor (a quantile of |p|)"}


def _cases(params, grads, state, other_state):
  yield "transposed w1 grads, no params", {**grads, "w1": grads["w1"].T}, state, None, "w1"
  yield "a (1, 6) grad for b1 (6,), no params", {**grads, "b1": grads["b1"][None]}, state, None, "b1"
  yield "a state initialised for w1.T", grads, other_state, params, "w1"
  yield "a state initialised for w1.T, no params", grads, other_state, None, "w1"


def _shape_cases():
  for r in RECIPES:
    for i, name in enumerate(["transposed", "extra_dim", "other_state", "other_state_no_params"]):
      marks = ()
      if r.name in PACKED_STATE and name == "other_state":
        marks = pytest.mark.xfail(strict=True, reason=PACKED_STATE[r.name])
      yield pytest.param(r, i, id=f"{name}-{r.name}", marks=marks)


@pytest.mark.parametrize("recipe,case", list(_shape_cases()))
def test_mismatched_shapes_are_named(recipe, case):
  tx, params = plain(recipe), make_params()
  other = tx.init({**params, "w1": params["w1"].T})
  what, grads, state, p, leaf = list(_cases(params, grads_at(params, 0), tx.init(params),
                                          other))[case]
  extra = extra_for(recipe, params)
  if recipe.name in LAYOUT_FREE and p is not None and state is other:
    jax.eval_shape(lambda: tx.update(grads, state, p, **extra))
    return
  with pytest.raises(ValueError) as err:
    jax.eval_shape(lambda: tx.update(grads, state, p, **extra))
  message = str(err.value)
  assert f"'{leaf}'" in message or (p is None and "needs `params`" in message), (
      f"{recipe.name}, {what}: the error does not name {leaf}: {message}")
