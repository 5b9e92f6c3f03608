"""Test-session set-up: 8 host CPU devices for the pmap / sharding contract.

XLA reads the flag when jax is first imported, so it is set here, before any
test module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
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
