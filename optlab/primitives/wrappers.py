"""Wrappers that change how an inner transformation is applied."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V

__all__ = ["SkipNonFiniteState", "skip_non_finite"]


class SkipNonFiniteState(NamedTuple):
  inner_state: Any
  skipped: jax.Array           # [], int32: steps skipped in a row
  total_skipped: jax.Array     # [], int32: steps skipped overall


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def skip_non_finite(inner: optax.GradientTransformation,
                    max_consecutive: Optional[int] = None,
                    axis_name: Optional[str] = None) -> optax.GradientTransformationExtraArgs:
  """Skips any step whose gradient (or resulting update) is not finite.

  On a skipped step the update is zero and `inner`'s state is returned
  unchanged, bit for bit; the counters go up. With `max_consecutive`, the
  step after that many skips in a row is applied anyway (as optax's
  apply_if_finite does), so that a run cannot stall silently. Under pmap, give
  `axis_name` so that all replicas skip together.
  """
  if max_consecutive is not None:
    V.check_range("skip_non_finite", "max_consecutive", max_consecutive, 1)
  inner = optax.with_extra_args_support(inner)

  def init(params):
    zero = jnp.zeros([], jnp.int32)
    return SkipNonFiniteState(inner.init(params), zero, zero)

  def update(updates, state, params=None, **extra):
    new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
    ok = jnp.logical_and(_all_finite(updates), _all_finite(new_updates))
    if axis_name is not None:
      ok = jax.lax.pmin(ok.astype(jnp.int32), axis_name).astype(bool)
    if max_consecutive is not None:
      ok = jnp.logical_or(ok, state.skipped >= max_consecutive)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    skipped = jnp.where(ok, 0, optax.safe_increment(state.skipped))
    total = state.total_skipped + jnp.where(ok, 0, 1).astype(jnp.int32)
    return new_updates, SkipNonFiniteState(keep(new_inner, state.inner_state), skipped, total)

  return optax.GradientTransformationExtraArgs(init, update)
