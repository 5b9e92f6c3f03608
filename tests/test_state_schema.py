"""The state schema (`optlab/primitives/basis.py`, issue 13): every field of every
optimizer state declares its kind (how it follows a change of basis) and its
role (moment, anchor, statistic, counter), and the state walkers select by them.

The per-recipe check only traces (`jax.eval_shape`): nothing is compiled.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
import optlab.primitives
from optlab.primitives import basis as B
from tests.test_contract import by_recipe, extra_for, make_params, plain

_PARAM_SHAPES = {tuple(x.shape) for x in jax.tree.leaves(make_params())}


def _floating_tensor(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0


def _declared_fields(state: Any, path: str = "state") -> list:
  """(path, value, (kind, role)) of every declared field, found by a walk of
  this test's own (not basis.iter_fields), so that the two check each other."""
  decl = B.state_declaration(state)
  if decl is not None:
    out = []
    for name, spec in decl.items():
      value = getattr(state, name)
      out += (_declared_fields(value, f"{path}.{name}") if spec == B.NESTED else
              [(f"{path}.{name}", value, spec)])
    return out
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    return sum((_declared_fields(getattr(state, f), f"{path}.{f}") for f in state._fields), [])
  if isinstance(state, (tuple, list)):
    return sum((_declared_fields(s, f"{path}[{i}]") for i, s in enumerate(state)), [])
  if isinstance(state, dict):
    return sum((_declared_fields(v, f"{path}[{k!r}]") for k, v in state.items()), [])
  return []


def _undeclared_tensors(state: Any, path: str = "state") -> list[str]:
  """Floating tensors outside every declared state (this test's own walk)."""
  if B.state_declaration(state) is not None:
    fields = state._fields
    return sum((_undeclared_tensors(getattr(state, f), f"{path}.{f}") for f in fields
                if B.state_declaration(state)[f] == B.NESTED), [])
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    return sum((_undeclared_tensors(getattr(state, f), f"{path}.{f}") for f in state._fields),
               [])
  if isinstance(state, (tuple, list)):
    return sum((_undeclared_tensors(s, f"{path}[{i}]") for i, s in enumerate(state)), [])
  if isinstance(state, dict):
    return sum((_undeclared_tensors(v, f"{path}[{k!r}]") for k, v in state.items()), [])
  return [f"{path}{jax.tree_util.keystr(p)}"
          for p, x in jax.tree_util.tree_leaves_with_path(state) if _floating_tensor(x)]


class Spy:
  """A basis change that changes nothing and records what it is asked to move."""

  def __init__(self):
    self.calls = []

  def linear(self, tree):
    self.calls.append((B.LINEAR, tree))
    return tree

  def second(self, tree):
    self.calls.append((B.SECOND, tree))
    return tree


# ---------------------------------------------------- every recipe's state
@by_recipe
def test_state_is_declared_and_rebased_by_kind(recipe):
  params = make_params()
  tx = plain(recipe)
  state = jax.eval_shape(tx.init, params)

  undeclared = _undeclared_tensors(state)
  assert not undeclared, f"{recipe.name}: floating tensors in undeclared states: {undeclared}"

  fields = _declared_fields(state)
  assert [(p, s) for p, _, s in fields] == [
      (f.path, (f.kind, f.role)) for f in B.iter_fields(state)], "iter_fields disagrees"
  moved = [(p, v, s[0]) for p, v, s in fields if s[0] in (B.LINEAR, B.SECOND)]
  for p, v, _ in moved:  # a field that rotates like the gradient is shaped like it
    for q, x in jax.tree_util.tree_leaves_with_path(v):
      # (stacked blocks: a leading block axis over param-shaped blocks)
      shape = tuple(x.shape)[1:] if ".inner_state.blocks" in p else tuple(x.shape)
      assert shape in _PARAM_SHAPES, (
          f"{recipe.name}: {p}{jax.tree_util.keystr(q)} is declared linear/second but has "
          f"shape {x.shape}, not a param's")

  # rebase_state must refuse what cannot follow a change: tensors in OPAQUE fields,
  # non-floating leaves (quantised codes) in LINEAR / SECOND ones.
  refused = [f"{p}{jax.tree_util.keystr(q)}" for p, v, s in fields
             for q, x in jax.tree_util.tree_leaves_with_path(v)
             if (s[0] == B.OPAQUE and _floating_tensor(x)) or
             (s[0] in (B.LINEAR, B.SECOND) and not jnp.issubdtype(x.dtype, jnp.floating))]
  spy = Spy()

  def rebase(p):
    return B.rebase_state(tx.init(p), spy)

  if refused:
    with pytest.raises(TypeError) as err:
      jax.eval_shape(rebase, params)
    assert any(r in str(err.value) for r in refused), (refused, str(err.value))
    return
  out = jax.eval_shape(rebase, params)
  assert jax.tree.structure(out) == jax.tree.structure(state)
  assert [k for k, _ in spy.calls] == [k for _, _, k in moved]
  for (_, tree), (p, v, _) in zip(spy.calls, moved):
    assert jax.tree.structure(tree) == jax.tree.structure(v), p
    assert [x.shape for x in jax.tree.leaves(tree)] == [x.shape for x in jax.tree.leaves(v)], p


def _state_modules():
  mods = [importlib.import_module(f"optlab.primitives.{m.name}")
          for m in pkgutil.iter_modules(optlab.primitives.__path__)]
  try:
    mods.append(importlib.import_module("optlab.rules"))
  except ImportError:  # the moment rules live in optlab.primitives.moments
    pass
  return mods


def test_every_exported_state_type_is_declared():
  found, missing = set(), []
  for module in _state_modules():
    for name in dir(module):
      cls = getattr(module, name)
      if (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")
          and name.endswith("State")):
        found.add(cls)
        if B.state_declaration(cls) is None:
          missing.append(f"{module.__name__}.{name}")
  assert len(found) > 40  # the walk did find the state types
  assert not missing, f"state types without declare_state: {missing}"
  for cls in found:  # total by construction; and every spec is a known pair
    assert set(B.state_declaration(cls)) == set(cls._fields), cls


# ----------------------------------------------- roles: resets and storage keep x0
def _recipe(name):
  return next(r for r in optlab.catalog() if r.name == name)


def _spied(inner, seen):
  """`inner`, recording the state each update is handed."""
  def update(updates, state, params=None, **extra):
    seen.append(state)
    return inner.update(updates, state, params, **extra)

  return optax.GradientTransformationExtraArgs(inner.init, update)


def _grads(params, t):
  return jax.tree.map(lambda p: jnp.sin(p * (t + 1.0)) + 0.1 * (t + 1), params)


def _fields_by_role(state):
  out = {}
  for f in B.iter_fields(state):
    out.setdefault(f.role, []).append(f)
  return out


# Named here, independently of the declarations: what a reset must zero, and what
# feeds the method's distance estimate and must stay exact.
MOMENTS = {"dog": (".trace",), "dadapt_adam": (".mu", ".nu", ".trace")}
DISTANCE = {"dog": (".x0", ".rbar", ".sum_sq"), "dadapt_adam": (".s", ".d", ".numerator")}


def _named(state, suffixes):
  found = [f for f in B.iter_fields(state) if f.path.endswith(suffixes)]
  assert {f.path.rsplit(".", 1)[1] for f in found} == {x[1:] for x in suffixes}
  return found


@pytest.mark.parametrize("name", ["dog", "dadapt_adam"])
def test_momentum_reset_keeps_anchors_and_zeroes_moments(name):
  recipe = _recipe(name)
  params = make_params()
  # optax.trace gives DoG (which has no moment of its own) one to reset
  inner = optax.chain(plain(recipe), optax.trace(0.5))
  seen = []
  tx = optlab.with_momentum_reset(_spied(inner, seen), interval=2, warmup_steps=0)
  state = tx.init(params)
  kept = []
  for t in range(2):
    kept.append(state.inner_state)
    updates, state = tx.update(_grads(params, t), state, params, **extra_for(recipe, params))
    params = optax.apply_updates(params, updates)
  before, handed = kept[1], seen[1]  # the 2nd step (count 2) resets before `inner` runs
  old = {f.path: f.value for f in B.iter_fields(before)}
  for f in _named(handed, MOMENTS[name]):
    assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(old[f.path])), f.path
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(f.value)), f.path
  for f in _named(handed, DISTANCE[name]):
    for a, b in zip(jax.tree.leaves(f.value), jax.tree.leaves(old[f.path])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name}: {f.path}")
  # and by role: every moment zeroed, everything else kept
  roles = _fields_by_role(handed)
  moments = roles.pop(B.MOMENT)
  assert any(f.path.endswith(".trace") for f in moments)
  for f in moments:
    for x in jax.tree.leaves(f.value):
      assert not np.any(np.asarray(x)), f"{name}: {f.path} was not reset"
  for f in sum(roles.values(), []):  # anchors, statistics and counters are kept exactly
    for a, b in zip(jax.tree.leaves(f.value), jax.tree.leaves(old[f.path])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name}: {f.path}")
  if name == "dog":
    (x0,) = roles[B.ANCHOR]
    assert x0.path.endswith(".x0")
    for a, b in zip(jax.tree.leaves(x0.value), jax.tree.leaves(make_params())):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # x0 = the first params


@pytest.mark.parametrize("name", ["dog", "dadapt_adam"])
def test_8bit_storage_keeps_anchors_exact_and_quantizes_moments(name):
  recipe = _recipe(name)
  params0 = q = make_params()
  inner = optax.chain(plain(recipe), optax.trace(0.5))
  tx = optlab.with_quantized_state(inner, 8, block_size=8, min_size=1)
  state = tx.init(q)
  for t in range(2):
    u, state = tx.update(_grads(q, t), state, q, **extra_for(recipe, q))
    q = optax.apply_updates(q, u)
  stored = {f.path: f for f in B.iter_fields(state.inner_state)}
  n_moments = 0
  for path, f in stored.items():
    for x in jax.tree.leaves(f.value):
      if f.role == B.MOMENT and x.ndim > 0:
        n_moments += 1
        assert x.dtype == jnp.uint8, f"{name}: moment {path} is not quantised"
      elif x.ndim > 0:
        assert x.dtype != jnp.uint8, f"{name}: {path} ({f.role}) was quantised"
  assert n_moments > 0
  for f in _named(state.inner_state, MOMENTS[name]):
    assert all(x.dtype == jnp.uint8 for x in jax.tree.leaves(f.value) if x.ndim), f.path
  for f in _named(state.inner_state, DISTANCE[name]):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(f.value)), f.path
  if name == "dog":
    (x0,) = _named(state.inner_state, (".x0",))
    for a, b in zip(jax.tree.leaves(x0.value), jax.tree.leaves(params0)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # exactly the first params


# ------------------------------------------------------------- error paths
class _Buf(NamedTuple):
  buf: Any


def test_rebase_state_names_an_undeclared_tensor():
  params = {"w": jnp.ones((3, 2))}
  state = (optax.EmptyState(), {"inner": _Buf(params)})
  with pytest.raises(TypeError, match=r"rebase_state: state\[1\]\['inner'\]\.buf\['w'\] is a "
                                      r"tensor in an undeclared state"):
    B.rebase_state(state, Spy())
  B.rebase_state((_Buf({"n": jnp.ones(())}),), Spy())  # scalars are fine


def test_rebase_state_refuses_opaque_fields_and_quantized_codes():
  params = {"w": jnp.ones((3, 2))}
  with pytest.raises(TypeError, match=r"state\.v \(FactoredRmsState\) is declared opaque"):
    B.rebase_state(optlab.scale_by_factored_rms().init(params), Spy())
  q = optlab.with_quantized_state(optax.scale_by_adam(), min_size=1).init(params)
  with pytest.raises(TypeError, match=r"inner_state\.mu\['w'\] is declared linear but holds "
                                      "uint8"):
    B.rebase_state(q, Spy())


def test_declare_state_is_total_and_checked():
  class S(NamedTuple):
    a: Any
    b: Any

  with pytest.raises(ValueError, match=r"S leaves fields \['b'\] undeclared"):
    B.declare_state(S, a=B.LINEAR_MOMENT)
  with pytest.raises(ValueError, match="kind 'quadratic'"):
    B.declare_state(S, a=("quadratic", B.MOMENT), b=B.COUNT)
  with pytest.raises(ValueError, match="role 'momentum'"):
    B.declare_state(S, a=(B.LINEAR, "momentum"), b=B.COUNT)
  with pytest.raises(ValueError, match="a \\(kind, role\\) pair"):
    B.declare_state(S, a=B.LINEAR, b=B.COUNT)
  with pytest.raises(ValueError, match=r"has no fields \['c'\]"):
    B.declare_state(S, a=B.LINEAR_MOMENT, b=B.COUNT, c=B.COUNT)
  assert B.state_declaration(S) is None  # nothing was registered


def test_iter_and_map_fields_walk_nested_states():
  params = {"w": jnp.arange(4.0)}
  state = optax.chain(optlab.with_momentum_reset(optax.scale_by_adam()),
                      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
                      ).init(params)
  got = [(f.path, f.kind, f.role, f.owner.__name__) for f in B.iter_fields(state)]
  assert got == [
      ("state[0].count", B.INVARIANT, B.COUNTER, "MomentumResetState"),
      ("state[0].inner_state.count", B.INVARIANT, B.COUNTER, "ScaleByAdamState"),
      ("state[0].inner_state.mu", B.LINEAR, B.MOMENT, "ScaleByAdamState"),
      ("state[0].inner_state.nu", B.SECOND, B.MOMENT, "ScaleByAdamState"),
      ("state[1].inner_state[0].trace", B.LINEAR, B.MOMENT, "TraceState"),
  ]
  doubled = B.map_fields(
      lambda f: jax.tree.map(lambda x: 2 * x + 1, f.value) if f.role == B.MOMENT else f.value,
      state)
  assert jax.tree.structure(doubled) == jax.tree.structure(state)
  np.testing.assert_array_equal(doubled[0].inner_state.mu["w"], np.ones(4))
  np.testing.assert_array_equal(doubled[1].inner_state[0].trace["w"], np.ones(4))
  assert int(doubled[0].inner_state.count) == 0
  assert float(doubled[1].hyperparams["learning_rate"]) == pytest.approx(0.1)  # undeclared
