"""Test-session set-up: 8 host CPU devices for the pmap / sharding contract.

XLA reads the flag when jax is first imported, so it is set here, before any
test module imports jax.
"""

import os

# Compilation is most of this suite's run time. The legacy CPU fusion emitters
# compile about a quarter faster than the default MLIR ones; they fuse reductions
# differently, which moves last-bit rounding only in the recipes that
# test_contract.SENSITIVE_RTOL documents. LLVM at -O1 instead of -O2 halves the
# compile time of the largest steps (zo_adamu 5.5 s -> 2.4 s) with the same run
# time; the whole suite passed unchanged with it (13.8 min vs 15.1 min). (-O0
# would cut compile time 3x, but it slows the long runs 2x and flips a
# stochastic-rounding decision in quzo's float64 reference check.)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_use_fusion_emitters=false"
                           " --xla_backend_optimization_level=1").strip()
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
