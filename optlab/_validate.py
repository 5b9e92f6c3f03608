"""Input checks shared by every primitive and recipe.

Every check runs at trace time only (on shapes, dtypes and Python numbers), so
it costs nothing inside a compiled step. Errors name the recipe, the argument or
the parameter path, e.g. ``optlab.adam: b1 must be in [0, 1), got 1.5``.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(value: Any):
  """Returns a Python float for a concrete scalar, else None (schedules, tracers)."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, numbers.Number):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0:
    try:
      return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
      return None
  return None


def check_range(where: str, name: str, value: Any, low: float | None = None,
                high: float | None = None, *, low_open: bool = False,
                high_open: bool = False) -> None:
  """Raises ValueError naming `name` when a concrete `value` is out of range.

  Schedules (callables) and traced values, as passed by
  `optax.inject_hyperparams` under jit, are not checked.
  """
  if value is None:
    return
  v = _concrete(value)
  if v is None:
    if not (callable(value) or isinstance(value, jax.core.Tracer)
            or isinstance(value, (jax.Array, np.ndarray))):
      raise TypeError(f"optlab.{where}: {name} must be a number, got {value!r}")
    return
  bad = np.isnan(v)
  if low is not None:
    bad |= v <= low if low_open else v < low
  if high is not None:
    bad |= v >= high if high_open else v > high
  if bad:
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    interval = ("(" if low_open or low is None else "[") + f"{lo}, {hi}" + (
        ")" if high_open or high is None else "]")
    raise ValueError(f"optlab.{where}: {name} must be in {interval}, got {value!r}")


def check_decay(where: str, name: str, value: Any) -> None:
  """A decay rate (b1, b2, momentum): must lie in [0, 1)."""
  check_range(where, name, value, 0.0, 1.0, high_open=True)


def check_nonneg(where: str, name: str, value: Any) -> None:
  check_range(where, name, value, 0.0)


def check_positive(where: str, name: str, value: Any) -> None:
  check_range(where, name, value, 0.0, low_open=True)


def check_learning_rate(where: str, value: Any) -> None:
  check_nonneg(where, "learning_rate", value)


def check_int(where: str, name: str, value: Any, help: str = "") -> None:
  """An integer argument (an axis, a seed): a Python or NumPy int, or an integer
  array as `optax.inject_hyperparams` passes it. A float, NaN included, is
  refused here rather than deep inside jax at init or update."""
  if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
    return
  dtype = getattr(value, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jnp.integer) and np.ndim(value) == 0:
    return
  raise TypeError(f"optlab.{where}: {name} must be an int" + (f" ({help})" if help else "")
                  + f", got {value!r}")


def check_seed(where: str, value: Any) -> None:
  check_int(where, "seed", value, "the PRNG seed")


def path_str(path) -> str:
  return "params" + jax.tree_util.keystr(path)


def check_float_params(where: str, tree: Any, what: str = "params") -> None:
  """Raises TypeError naming the first leaf whose dtype is not floating."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = np.asarray(leaf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"optlab.{where}: {what}{jax.tree_util.keystr(path)} has dtype {dtype}; "
          "optimizers need floating-point leaves (cast it, or exclude it with "
          "optax.masked / optax.partition)")


def check_same_tree(where: str, a: Any, a_name: str, b: Any, b_name: str,
                    *, shapes: bool = True) -> None:
  """Raises ValueError naming the first path where trees `a` and `b` differ."""
  a_leaves = dict(jax.tree_util.tree_leaves_with_path(a))
  b_leaves = dict(jax.tree_util.tree_leaves_with_path(b))
  ks = jax.tree_util.keystr
  for path in a_leaves:
    if path not in b_leaves:
      raise ValueError(f"optlab.{where}: {a_name}{ks(path)} has no counterpart in "
                       f"{b_name} (the trees do not match)")
  for path in b_leaves:
    if path not in a_leaves:
      raise ValueError(f"optlab.{where}: {a_name} is missing {b_name}{ks(path)} "
                       "(the trees do not match)")
  if jax.tree.structure(a) != jax.tree.structure(b):
    raise ValueError(f"optlab.{where}: {a_name} and {b_name} have different tree "
                     f"structures:\n{jax.tree.structure(a)}\nvs\n{jax.tree.structure(b)}")
  if shapes:
    for path, leaf in a_leaves.items():
      sa, sb = np.shape(leaf), np.shape(b_leaves[path])
      if sa != sb:
        raise ValueError(f"optlab.{where}: {a_name}{ks(path)} has shape {sa} but "
                         f"{b_name}{ks(path)} has shape {sb}")


def require_params(where: str, params: Any) -> Any:
  """Returns `params`, or raises a ValueError saying that `where` needs them."""
  if params is None:
    raise ValueError(f"optlab.{where}: update() needs `params` "
                     "(tx.update(grads, state, params))")
  return params


def require_extra_arg(where: str, extra_args: dict, name: str,
                      help: str = "") -> Any:
  """Returns extra_args[name] or raises a TypeError naming the missing argument."""
  value = extra_args.get(name)
  if value is None:
    raise TypeError(
        f"optlab.{where}: update() needs the extra keyword argument `{name}`"
        + (f" ({help})" if help else "") + "; pass it as "
        f"tx.update(grads, state, params, {name}=...)")
  if name == "value" and np.ndim(value) != 0:
    raise ValueError(f"optlab.{where}: the extra arg `value` must be the scalar loss, got "
                     f"shape {np.shape(value)} (reduce a per-example loss to its mean)")
  if name == "obj_fn":
    return _scalar_valued(where, value)
  return value


def _scalar_valued(where: str, obj_fn: Any) -> Any:
  """`obj_fn`, checked while tracing to return a scalar loss."""
  def checked(*args, **kwargs):
    out = obj_fn(*args, **kwargs)
    if np.ndim(out) != 0:
      raise ValueError(f"optlab.{where}: the extra arg `obj_fn` must return the scalar loss, "
                       f"got shape {np.shape(out)} (reduce a per-example loss to its mean)")
    return out

  return checked


def check_choice(where: str, name: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"optlab.{where}: {name} must be one of {choices}, got {value!r}")
