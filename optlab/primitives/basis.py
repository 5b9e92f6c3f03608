"""The basis protocol: how optimizer state follows a change of coordinates.

Wrappers such as `in_eigenbasis` (SOAP) and `in_subspace` (GaLore) run an inner
transformation on gradients expressed in another basis. When they refresh that
basis, the inner state was accumulated in the old coordinates and must be
re-expressed in the new ones. How depends on what a state field *is*:

* ``"linear"``    -- transforms like the gradient itself (first moments,
  previous gradients, momentum buffers). Re-expressed exactly: map back to
  parameter space with the old basis, then into the new basis.
* ``"second"``    -- an element-wise, non-negative statistic of the gradient
  in the current coordinates (EMA of g^2, running max, belief). It has no exact
  image in the new basis; the basis decides (SOAP permutes it to follow the
  eigenvalue order, a projector may re-project or keep it).
* ``"invariant"`` -- everything else (step counts, scalars, random keys).

A state type declares its fields once, with `declare_basis`; `rebase_state`
walks any (nested) inner state and applies a `BasisChange`. Undeclared
containers are searched recursively, so wrappers compose; an undeclared
floating leaf that is not a scalar raises, because silently leaving it in the
old basis would be wrong.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "LINEAR", "SECOND", "INVARIANT", "BasisChange", "declare_basis",
    "basis_declaration", "rebase_state",
]

LINEAR, SECOND, INVARIANT = "linear", "second", "invariant"
_KINDS = (LINEAR, SECOND, INVARIANT)
_DECLARATIONS: dict[type, dict[str, str]] = {}


class BasisChange(Protocol):
  """What a basis wrapper supplies to re-express inner state.

  Both methods take and return a tree shaped like the inner transformation's
  (rotated or projected) gradients.
  """

  def linear(self, tree: Any) -> Any:
    ...

  def second(self, tree: Any) -> Any:
    ...


def declare_basis(state_type: type | None = None, **fields: str):
  """Declares how the fields of a NamedTuple state transform under a basis change.

  Usable directly, ``declare_basis(optax.TraceState, trace=LINEAR)``, or as a
  class decorator, ``@declare_basis(mu=LINEAR, nu=SECOND)``. Fields not named
  are invariant.
  """
  for name, kind in fields.items():
    if kind not in _KINDS:
      raise ValueError(f"optlab.declare_basis: field {name!r} has kind {kind!r}; "
                       f"expected one of {_KINDS}")

  def register(cls):
    unknown = set(fields) - set(getattr(cls, "_fields", ()))
    if unknown:
      raise ValueError(f"optlab.declare_basis: {cls.__name__} has no fields {sorted(unknown)}")
    _DECLARATIONS[cls] = dict(fields)
    return cls

  return register if state_type is None else register(state_type)


def basis_declaration(state: Any) -> dict[str, str] | None:
  return _DECLARATIONS.get(type(state))


def _check_invariant(state: Any, where: str) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) and jnp.ndim(leaf) > 0:
      raise TypeError(
          f"optlab.rebase_state: {where}{jax.tree_util.keystr(path)} is a tensor in an "
          "undeclared state; declare how its fields transform with "
          "optlab.declare_basis(<StateType>, field='linear'|'second')")


def rebase_state(state: Any, change: BasisChange, where: str = "state") -> Any:
  """Re-expresses every declared field of `state` (any nesting) through `change`."""
  decl = basis_declaration(state)
  if decl is not None:
    new = {}
    for name in state._fields:
      value, kind = getattr(state, name), decl.get(name, INVARIANT)
      new[name] = (change.linear(value) if kind == LINEAR else
                   change.second(value) if kind == SECOND else value)
    return type(state)(**new)
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    return type(state)(*(rebase_state(getattr(state, f), change, f"{where}.{f}")
                         for f in state._fields))
  if isinstance(state, (tuple, list)):
    return type(state)(rebase_state(s, change, f"{where}[{i}]") for i, s in enumerate(state))
  if isinstance(state, dict):
    return {k: rebase_state(v, change, f"{where}[{k!r}]") for k, v in state.items()}
  _check_invariant(state, where)
  return state


# optax's own moment states, so that e.g. in_eigenbasis(optax.scale_by_adam()) works.
def _declare_optax(name: str, **fields: str) -> None:
  cls = getattr(optax, name, None)
  if cls is not None:
    declare_basis(cls, **fields)


_declare_optax("ScaleByAdamState", mu=LINEAR, nu=SECOND)
_declare_optax("ScaleByAmsgradState", mu=LINEAR, nu=SECOND, nu_max=SECOND)
_declare_optax("ScaleByBeliefState", mu=LINEAR, nu=SECOND)
_declare_optax("ScaleByLionState", mu=LINEAR)
_declare_optax("ScaleByRmsState", nu=SECOND)
_declare_optax("ScaleByRssState", sum_of_squares=SECOND)
_declare_optax("TraceState", trace=LINEAR)
_declare_optax("ScaleByRStdDevState", mu=LINEAR, nu=SECOND)
