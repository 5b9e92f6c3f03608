"""The state schema: what every field of an optimizer state is, and how it
follows a change of coordinates.

Every NamedTuple state declares, for each of its fields, two things (a total
declaration: `declare_state` refuses one that leaves a field out):

* its **kind**, how it transforms when a wrapper such as `in_eigenbasis` (SOAP)
  or `in_subspace` (GaLore) re-expresses the inner state in a new basis:

  * ``LINEAR``    -- transforms like the gradient itself (first moments, previous
    gradients, anchor points). Re-expressed exactly: map back to parameter space
    with the old basis, then into the new basis.
  * ``SECOND``    -- an element-wise, non-negative statistic of the gradient in
    the current coordinates (EMA of g^2, running max of ``|g|``, belief). It has no
    exact image in the new basis; the basis decides (SOAP permutes it to follow
    the eigenvalue order, a projector may re-project or keep it).
  * ``INVARIANT`` -- does not depend on the coordinates (step counts, scalars,
    random keys, per-tensor norms).

* its **role**, what the field is to the optimizer, which the state walkers
  select by (a momentum reset zeroes moments only; 8-bit storage quantizes
  moments only, so a parameter-free method's anchor stays exact):

  * ``MOMENT``    -- a running moment of the gradient (momentum, EMA of g^2,
    running max), which SPAM may reset and 8-bit storage may quantize;
  * ``ANCHOR``    -- a point in parameter space, such as DoG's x0;
  * ``STATISTIC`` -- anything else carried: a previous gradient, running norms,
    keys, scalars, curvature bookkeeping;
  * ``COUNTER``   -- step counts.

* or ``NESTED``: the field holds other (declared or undeclared) states, expressed
  in the same coordinates as this one, and the walkers enter it.

The pairs used at the declaration sites have short names: `LINEAR_MOMENT`,
`SECOND_MOMENT`, `ANCHOR_POINT`, `COUNT`, `INVARIANT_STAT`, `LINEAR_STAT`,
`SECOND_STAT`, `OPAQUE_STAT`.

`iter_fields` is the one walker over a (nested) state: chains, dicts, lists and
undeclared NamedTuples (optax's InjectHyperparamsState, MaskedState, ...) are
searched recursively. `map_fields` rebuilds a state with some fields replaced;
`rebase_state`, the momentum reset, the quantized storage and the moment finders
are built on these two. `rebase_state` refuses a floating tensor that no
declaration covers: leaving it silently in the old basis would be a wrong answer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "LINEAR", "SECOND", "INVARIANT", "OPAQUE", "NESTED", "MOMENT", "ANCHOR", "STATISTIC", "COUNTER",
    "LINEAR_MOMENT", "SECOND_MOMENT", "ANCHOR_POINT", "COUNT", "INVARIANT_STAT",
    "LINEAR_STAT", "SECOND_STAT", "OPAQUE_STAT", "BasisChange", "StateField", "declare_state",
    "state_declaration", "iter_fields", "map_fields", "check_declared", "rebase_state",
]

# kinds: how a field transforms under a change of basis
LINEAR, SECOND, INVARIANT, OPAQUE = "linear", "second", "invariant", "opaque"
NESTED = "nested"  # a field holding other states (role None): walkers enter it
# roles: what a field is
MOMENT, ANCHOR, STATISTIC, COUNTER = "moment", "anchor", "statistic", "counter"
_KINDS = (LINEAR, SECOND, INVARIANT, OPAQUE)
_ROLES = (MOMENT, ANCHOR, STATISTIC, COUNTER)

# The (kind, role) pairs of the declaration sites.
LINEAR_MOMENT = (LINEAR, MOMENT)     # momentum, EMA of g
SECOND_MOMENT = (SECOND, MOMENT)     # EMA of g^2, running max of |g|, belief
ANCHOR_POINT = (LINEAR, ANCHOR)      # a point in parameter space (x0)
COUNT = (INVARIANT, COUNTER)         # step counts
INVARIANT_STAT = (INVARIANT, STATISTIC)  # keys, scalars, per-tensor norms, bookkeeping
LINEAR_STAT = (LINEAR, STATISTIC)    # previous gradients, error feedback, sums of g
SECOND_STAT = (SECOND, STATISTIC)    # element-wise non-negative, not a moment (step sizes)
OPAQUE_STAT = (OPAQUE, STATISTIC)    # factored/packed statistics, bases, projectors

_DECLARATIONS: dict[type, dict[str, Any]] = {}


class BasisChange(Protocol):
  """What a basis wrapper supplies to re-express inner state.

  Both methods take and return a tree shaped like the inner transformation's
  (rotated or projected) gradients.
  """

  def linear(self, tree: Any) -> Any:
    ...

  def second(self, tree: Any) -> Any:
    ...


class StateField(NamedTuple):
  """One field found by `iter_fields`: where it is, what it holds, what it is."""
  path: str              # as in errors, e.g. "state[0].mu"
  value: Any             # the field's value (a tree)
  kind: Optional[str]    # LINEAR, SECOND, INVARIANT or OPAQUE; None when undeclared
  role: Optional[str]    # MOMENT, ANCHOR, STATISTIC or COUNTER; None when undeclared
  owner: Optional[type]  # the declared state type holding the field; None when undeclared


def declare_state(state_type: type | None = None, **fields: Any):
  """Declares the kind and role of every field of a NamedTuple state.

  Each field gets a ``(kind, role)`` pair (or `NESTED`); the declaration must
  name every field. Usable as a class decorator,
  ``@declare_state(count=COUNT, mu=LINEAR_MOMENT)``, or directly, e.g.
  ``declare_state(optax.TraceState, trace=LINEAR_MOMENT)``.
  """
  for name, spec in fields.items():
    if spec == NESTED:
      continue
    if not (isinstance(spec, tuple) and len(spec) == 2):
      raise ValueError(f"optlab.declare_state: field {name!r} is declared {spec!r}; expected "
                       f"a (kind, role) pair or {NESTED!r}")
    kind, role = spec
    if kind not in _KINDS:
      raise ValueError(f"optlab.declare_state: field {name!r} has kind {kind!r}; "
                       f"expected one of {_KINDS}")
    if role not in _ROLES:
      raise ValueError(f"optlab.declare_state: field {name!r} has role {role!r}; "
                       f"expected one of {_ROLES}")

  def register(cls):
    names = tuple(getattr(cls, "_fields", ()))
    unknown = set(fields) - set(names)
    if unknown:
      raise ValueError(f"optlab.declare_state: {cls.__name__} has no fields {sorted(unknown)}")
    missing = [f for f in names if f not in fields]
    if missing:
      raise ValueError(f"optlab.declare_state: {cls.__name__} leaves fields {missing} "
                       "undeclared; give each a (kind, role) pair or NESTED")
    _DECLARATIONS[cls] = {f: fields[f] for f in names}
    return cls

  return register if state_type is None else register(state_type)


def state_declaration(state: Any) -> dict[str, Any] | None:
  """The declaration of a state (or state type): field -> (kind, role) or NESTED."""
  return _DECLARATIONS.get(state if isinstance(state, type) else type(state))


def _is_namedtuple(x: Any) -> bool:
  return isinstance(x, tuple) and hasattr(x, "_fields")


def _walk(state: Any, path: str, rebuild: Optional[Callable[[StateField], Any]]):
  """The fields of `state`, as a list; with `rebuild`, the rebuilt state instead.

  Both in one function, so that the walk that finds fields and the one that
  replaces them cannot drift apart.
  """
  out = []

  def visit(record):
    if rebuild is None:
      out.append(record)
      return record.value
    return rebuild(record)

  def go(s, where):
    decl = state_declaration(s)
    if decl is not None:
      new = {}
      for name, spec in decl.items():
        value, at = getattr(s, name), f"{where}.{name}"
        if spec == NESTED:
          new[name] = go(value, at)
        else:
          new[name] = visit(StateField(at, value, spec[0], spec[1], type(s)))
      return type(s)(**new)
    if _is_namedtuple(s):
      return type(s)(*(go(getattr(s, f), f"{where}.{f}") for f in s._fields))
    if isinstance(s, (tuple, list)):
      return type(s)(go(x, f"{where}[{i}]") for i, x in enumerate(s))
    if isinstance(s, dict):
      return type(s)((k, go(v, f"{where}[{k!r}]")) for k, v in s.items())
    return visit(StateField(where, s, None, None, None))

  rebuilt = go(state, path)
  return out if rebuild is None else rebuilt


def iter_fields(state: Any, path: str = "state", *,
                undeclared: bool = False) -> Iterator[StateField]:
  """Every declared field of a (nested) state, in tree order, as `StateField` values.

  NESTED fields are entered; tuples, lists, dicts and undeclared NamedTuples are
  searched. With ``undeclared=True`` the values found outside any declaration
  (leaves or unknown pytrees) come too, with kind, role and owner None.
  """
  for record in _walk(state, path, None):
    if undeclared or record.owner is not None:
      yield record


def map_fields(fn: Callable[[StateField], Any], state: Any, path: str = "state", *,
               undeclared: bool = False) -> Any:
  """`state` with every declared field replaced by ``fn(record)``; values outside
  any declaration are kept, or, with ``undeclared=True``, passed to `fn` too."""
  return _walk(state, path,
               lambda r: r.value if r.owner is None and not undeclared else fn(r))


def _floating_tensors(record: StateField) -> Iterator[str]:
  for p, leaf in jax.tree_util.tree_leaves_with_path(record.value):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) and jnp.ndim(leaf) > 0:
      yield f"{record.path}{jax.tree_util.keystr(p)}"


def check_declared(caller: str, state: Any, path: str = "state") -> None:
  """Raises TypeError naming the first floating tensor of `state` that no
  declaration covers: `caller` cannot know what it is."""
  for record in iter_fields(state, path, undeclared=True):
    if record.owner is None:
      for at in _floating_tensors(record):
        raise TypeError(
            f"optlab.{caller}: {at} is a tensor in an undeclared state; declare every "
            "field of its state type with optlab.declare_state(<StateType>, "
            "field=(kind, role), ...)")


def rebase_state(state: Any, change: BasisChange, where: str = "state") -> Any:
  """Re-expresses every LINEAR and SECOND field of `state` (any nesting) through
  `change`. Raises TypeError naming the first floating tensor outside a declared
  field (its basis behaviour is unknown) or in an OPAQUE field (it cannot
  follow), or a non-floating leaf in a LINEAR or SECOND field (e.g. the uint8
  codes of `with_quantized_state`)."""
  check_declared("rebase_state", state, where)
  for record in iter_fields(state, where):
    if record.kind == OPAQUE:
      for at in _floating_tensors(record):
        raise TypeError(
            f"optlab.rebase_state: {at} ({record.owner.__name__}) is declared opaque: it "
            "depends on the coordinates but cannot follow a change of basis, so this "
            "state cannot run inside a basis wrapper")

  def move(record):
    if record.kind in (LINEAR, SECOND):
      for p, leaf in jax.tree_util.tree_leaves_with_path(record.value):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
          raise TypeError(
              f"optlab.rebase_state: {record.path}{jax.tree_util.keystr(p)} is declared "
              f"{record.kind} but holds {jnp.result_type(leaf)} values (quantised "
              "codes?); only floating tensors can be re-expressed in a new basis")
    if record.kind == LINEAR:
      return change.linear(record.value)
    if record.kind == SECOND:
      return change.second(record.value)
    return record.value

  return map_fields(move, state, where)


# optax's own states, so that e.g. in_eigenbasis(optax.scale_by_adam()) works and
# optax's moments are reset and quantized like optlab's.
def _declare_optax(name: str, **fields: Any) -> None:
  cls = getattr(optax, name, None)
  if cls is not None:
    declare_state(cls, **fields)


_declare_optax("ScaleByAdamState", count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT)
_declare_optax("ScaleByAmsgradState", count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT,
               nu_max=SECOND_MOMENT)
_declare_optax("ScaleByBeliefState", count=COUNT, mu=LINEAR_MOMENT, nu=SECOND_MOMENT)
_declare_optax("ScaleByLionState", count=COUNT, mu=LINEAR_MOMENT)
_declare_optax("ScaleByRmsState", nu=SECOND_MOMENT)
_declare_optax("ScaleByRssState", sum_of_squares=SECOND_MOMENT)
_declare_optax("TraceState", trace=LINEAR_MOMENT)
_declare_optax("ScaleByRStdDevState", mu=LINEAR_MOMENT, nu=SECOND_MOMENT)
