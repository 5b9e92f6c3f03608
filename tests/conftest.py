"""Test-session set-up: 8 host CPU devices for the pmap / sharding contract.

XLA reads the flag when jax is first imported, so it is set here, before any
test module imports jax.
"""

import os

# The legacy CPU fusion emitters compile about a quarter faster than the default
# MLIR ones, and compilation is most of this suite's run time. They fuse
# reductions differently, which moves last-bit rounding only in the recipes that
# test_contract.SENSITIVE_RTOL documents. (--xla_backend_optimization_level=0 would
# halve the compile time, but flips a stochastic-rounding decision in quzo's
# float64 reference check.)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_use_fusion_emitters=false").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")



def pytest_collection_modifyitems(config, items):
  """Sends every test of one recipe to the same xdist worker (`--dist loadgroup`),
  so the per-recipe compiled steps cached in test_contract are shared."""
  import pytest
  for item in items:
    params = getattr(getattr(item, "callspec", None), "params", {})
    recipe = params.get("recipe")
    if recipe is not None and hasattr(recipe, "name"):
      item.add_marker(pytest.mark.xdist_group(recipe.name))


def _hypothesis_profiles():
  """`make test` draws the same hypothesis examples on every run (CI must not be
  flaky); `HYPOTHESIS_PROFILE=explore` draws fresh random examples on each run."""
  from hypothesis import settings
  settings.register_profile("ci", derandomize=True, database=None)
  settings.register_profile("explore", derandomize=False)
  settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()
