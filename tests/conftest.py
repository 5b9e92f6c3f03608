"""Test-session set-up: 8 host CPU devices for the pmap / sharding contract.

XLA reads the flag when jax is first imported, so it is set here, before any
test module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
