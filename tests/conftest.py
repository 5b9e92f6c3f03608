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



def pytest_xdist_make_scheduler(config, log):
  """Sends every test of one recipe to the same xdist worker, in collection order,
  so the per-recipe transformations and compiled steps cached in test_contract
  are shared by all of that recipe's tests.

  A scheduler of our own, not `--dist loadgroup`: with pytest 9.2 and xdist 3.8
  the `xdist_group` marks are not applied to the node ids (pytest-dev/pytest-xdist
  #1386), so loadgroup quietly spread each recipe's tests over both workers and
  every worker compiled every step again. A test's scope is the first recipe name
  among the `-`-separated parts of its parameter id; other tests are their own scope.
  """
  from xdist.scheduler import LoadScopeScheduling

  import optlab
  names = {r.name for r in optlab.catalog() + optlab.held_out()}

  class ByRecipe(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      if nodeid.endswith("]") and "[" in nodeid:
        for part in nodeid[nodeid.index("[") + 1:-1].split("-"):
          if part in names:
            return "recipe:" + part
      return nodeid

  return ByRecipe(config, log)


def _hypothesis_profiles():
  """`make test` draws the same hypothesis examples on every run (CI must not be
  flaky); `HYPOTHESIS_PROFILE=explore` draws fresh random examples on each run."""
  from hypothesis import settings
  settings.register_profile("ci", derandomize=True, database=None)
  settings.register_profile("explore", derandomize=False)
  settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()
