"""flax NNX, flax linen TrainState, a pure-JAX model with captured layer statistics and
orbax: the examples in examples/ run a few steps."""

from __future__ import annotations

import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

import optlab
from tests import recipe_config as cfg

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("integration")


def _example(name):
  return runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="example")


def test_flax_nnx_optimizer_with_and_without_extra_args(capsys):
  finals = _example("flax_nnx")["main"](steps=15)
  assert all(v < 2.0 for v in finals.values()), finals  # initial loss is ~2.3
  if any(r.needs_extra_args == ("obj_fn",) for r in optlab.catalog()):
    assert any("obj_fn" in k for k in finals)
  assert "after 15 steps" in capsys.readouterr().out
  assert "kfac (layer_stats)" in finals  # optlab.capture_nnx feeds layer_stats


def test_flax_nnx_missing_layer_stats_is_named():
  from flax import nnx
  module = _example("flax_nnx")
  model = module["MLP"](nnx.Rngs(0), hidden=4)
  optimizer = nnx.Optimizer(model, optlab.kfac(0.1), wrt=nnx.Param)
  x, y = jax.numpy.ones((2, 64)), jax.numpy.zeros(2, "int32")
  _, grads, stats = optlab.capture_nnx(model, x, targets=y)
  with pytest.raises(TypeError, match="layer_stats"):
    optimizer.update(model, grads)
  optimizer.update(model, grads, layer_stats=stats)
  other = {"['hidden']['kernel']": stats["['out']['kernel']"]}  # widths of another layer
  with pytest.raises(ValueError, match=r"layer_stats\[\"\['hidden'\]\['kernel'\]\"\]\.inputs"):
    optimizer.update(model, grads, layer_stats=other)


def test_pure_jax_layer_stats_example():
  finals = _example("kfac_pure_jax")["main"](steps=15)
  assert set(finals) == {"adamw", "kfac"}
  assert all(np.isfinite(v) and v < 2.0 for v in finals.values()), finals


def test_flax_nnx_missing_extra_arg_is_named():
  from flax import nnx
  needs = [r for r in optlab.catalog() if r.needs_extra_args == ("obj_fn",)]
  if not needs:
    pytest.skip("no recipe needing obj_fn in this catalogue")
  module = _example("flax_nnx")
  model = module["MLP"](nnx.Rngs(0), hidden=4)
  optimizer = nnx.Optimizer(model, cfg.build(needs[0]), wrt=nnx.Param)
  grads = nnx.grad(lambda m: module["cross_entropy"](m, jax.numpy.ones((2, 64)),
                                                     jax.numpy.zeros(2, "int32")))(model)
  with pytest.raises(TypeError, match="obj_fn"):
    optimizer.update(model, grads)


def test_flax_linen_train_state():
  finals = _example("flax_linen")["main"](steps=15)
  assert all(np.isfinite(v) and v < 2.2 for v in finals.values()), finals
  assert "kfac (layer_stats)" in finals  # optlab.capture_linen feeds layer_stats


def test_orbax_restore_continues_bit_identically(tmp_path):
  module = _example("orbax_checkpoint")
  recipes = [optlab.adamw(1e-2)]
  names = {r.name for r in optlab.catalog()}
  for name in ("sophia_h", "soap", "adafactor"):  # keys, bases, empty leaves
    if name in names:
      recipes.append(cfg.build(name))
  for i, tx in enumerate(recipes):
    p_a, p_b = module["run"](tx, steps_before=3, steps_after=3, directory=str(tmp_path / str(i)))
    for a, b in zip(jax.tree.leaves(p_a), jax.tree.leaves(p_b)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_example_spec_file_loads():
  from optlab import bench
  specs = bench.load_spec_file(str(ROOT / "examples" / "bench_spec.py"))
  assert set(specs) == {"cautious_lion_soap_basis", "mars_cautious_lion"}
  params = {"w": jax.numpy.ones((4, 3))}
  for spec in specs.values():
    tx = spec.build(spec.learning_rate, 0)
    updates, _ = tx.update(params, tx.init(params), params)
    assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))
