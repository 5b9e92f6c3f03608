"""Test-session set-up: 8 host CPU devices for the pmap / sharding contract.

XLA reads the flag when jax is first imported, so it is set here, before any
test module imports jax.
"""

import os

# The last two flags cut XLA:CPU compile time 3-5x (compilation is most of the
# suite's run time: every recipe is compiled a few dozen times on tiny trees).
# They change code generation, not the semantics of the computation; the
# benchmarks run with XLA's defaults.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_use_fusion_emitters=false"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One BLAS thread per xdist worker: the workers already use every core, and
# oversubscribed OpenBLAS makes LAPACK calls (SVD, eigh) 100x slower.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")


def pytest_collection_modifyitems(config, items):
  """Sends every test of one recipe to the same xdist worker (`--dist loadgroup`),
  so the per-recipe compiled steps cached in test_contract are shared."""
  import pytest
  for item in items:
    params = getattr(getattr(item, "callspec", None), "params", {})
    recipe = params.get("recipe")
    if recipe is not None and hasattr(recipe, "name"):
      item.add_marker(pytest.mark.xdist_group(recipe.name))
