"""Save an optlab optimizer state with orbax mid-run, restore it, continue bit-identically.

    python examples/orbax_checkpoint.py

optlab states are pytrees of arrays (NamedTuples, int32 step counts, raw
uint32 random keys), so orbax's `StandardCheckpointer` saves and restores them
like params, whole. Restoring against an abstract target (`jax.eval_shape` of
the saved tree) gives back the same tree structure and dtypes. (orbax refuses
zero-size arrays; no optlab state holds one for params without zero-size
leaves: a statistic that no tensor has, such as SOAP's eigenbases for a tree of
vectors, is None.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import optlab


def _problem():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (32, 16))
  b = jax.random.normal(k2, (32,))
  loss = lambda p: jnp.mean((a @ p["w"] + p["b"] - b) ** 2)
  return {"w": jnp.zeros(16), "b": jnp.zeros(())}, loss


def run(tx, steps_before: int = 5, steps_after: int = 5, directory: str | None = None):
  """Train, checkpoint (params + opt_state), restore, train on; returns both runs' params."""
  params, loss = _problem()

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p, value=loss(p), obj_fn=loss)  # extra args are ignored if unused
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps_before):
    params, state = step(params, state)
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(directory or tmp).absolute() / "ckpt"
    checkpointer = ocp.StandardCheckpointer()
    tree = {"params": params, "opt_state": state}
    checkpointer.save(path, tree)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(path, jax.eval_shape(lambda: tree))
    checkpointer.close()
  p_a, s_a = params, state                                   # the uninterrupted run
  p_b, s_b = restored["params"], restored["opt_state"]       # the restored run
  assert jax.tree.structure(s_b) == jax.tree.structure(s_a)
  assert jax.tree.map(lambda x: x.dtype, s_b) == jax.tree.map(lambda x: x.dtype, s_a)
  for _ in range(steps_after):
    p_a, s_a = step(p_a, s_a)
    p_b, s_b = step(p_b, s_b)
  return p_a, p_b


def main() -> None:
  names = {r.name for r in optlab.catalog()}
  recipes = {"adamw": optlab.adamw(1e-2)}
  if "sophia_h" in names:  # keeps a random key and a Hessian estimate in its state
    recipes["sophia_h"] = optlab.sophia_h(1e-2)
  if "soap" in names:  # an eigenbasis per matrix; none for this problem's vector and scalar
    recipes["soap"] = optlab.soap(3e-3, precondition_frequency=2)
  for name, tx in recipes.items():
    p_a, p_b = run(tx)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_a), jax.tree.leaves(p_b)))
    print(f"{name}: restored run continues bit-identically: {same}")
    assert same


if __name__ == "__main__":
  main()
