"""Test-session set-up: 8 host CPU devices for the pmap / sharding contract.

XLA reads the flag when jax is first imported, so it is set here, before any
test module imports jax.
"""

import os
import signal

import pytest

# Compilation is most of this suite's run time.
# * The legacy CPU fusion emitters compile about a quarter faster than the default
#   MLIR ones; they fuse reductions differently, which moves last-bit rounding only
#   in the recipes that test_contract.SENSITIVE_RTOL documents.
# * LLVM at -O0 instead of -O2 cuts compile time 2.5-3x (a 20-leaf SOAP update:
#   4.3 s at -O1, 1.7 s at -O0). The zeroth-order recipes' long runs and their NumPy
#   reference comparisons compile at -O1 (test_contract._trainer, tests/harness.py
#   REFERENCE_XLA): at -O0 a float32 random draw fused into a step rounds
#   differently in the last bit from the same draw made alone, which flipped a
#   stochastic rounding in quzo's reference comparison.
# * One LLVM module per program instead of XLA's parallel codegen split: the split
#   compiles the parts on threads, which two workers on two cores cannot use, and
#   costs CPU to split and link. Compile CPU time of ten recipes' steps: 1.9 s -> 1.2 s.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_use_fusion_emitters=false"
                           " --xla_backend_optimization_level=0"
                           " --xla_cpu_parallel_codegen_split_count=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _recipe_names():
  import optlab
  return {r.name for r in optlab.catalog() + optlab.held_out()}


def _recipe_of(nodeid, names):
  """The first recipe name among the `-`-separated parts of a test's parameter id, or None."""
  if nodeid.endswith("]") and "[" in nodeid:
    for part in nodeid[nodeid.index("[") + 1:-1].split("-"):
      if part in names:
        return part
  return None


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

  names = _recipe_names()

  class ByRecipe(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      recipe = _recipe_of(nodeid, names)
      return nodeid if recipe is None else "recipe:" + recipe

  # scopes go out in collection order, which `_costly_first` arranges
  config.option.loadscopereorder = False
  return ByRecipe(config, log)


# The recipes whose contract steps cost most (many objective evaluations per
# step), costliest first: scheduled first, so that no worker is left running one
# of them alone at the end (measured: ~40-100 s of CPU each, a typical recipe 10 s).
COSTLY_RECIPES = ("zo_adamu", "quzo", "deepzero", "mezo", "sparse_mezo", "microadam")


def _costly_first(items, names):
  """Orders the tests as the workers should take them, costliest scope first:
  the COSTLY_RECIPES, then the other recipes (most tests first), then the tests
  marked slow (single checks over ~10 s), then the rest. The order within a
  scope is kept."""
  count = {}
  for item in items:
    recipe = _recipe_of(item.nodeid, names)
    count[recipe] = count.get(recipe, 0) + 1

  def rank(item):
    recipe = _recipe_of(item.nodeid, names)
    if recipe in COSTLY_RECIPES:
      return (0, COSTLY_RECIPES.index(recipe), "")
    if recipe is not None:
      return (1, -count[recipe], recipe)
    return (2 if item.get_closest_marker("slow") else 3, 0, "")

  items.sort(key=rank)  # stable: each scope keeps its collection order


# `make quick` (`pytest -m quick`): for every recipe, the first collected case of
# each of these tests -- its NumPy reference at the contract's hparams (25 jitted
# float64 steps), and one contract point that is traced, not compiled (an update
# at those hparams traces, and a missing extra arg is named) -- plus every
# test that is neither per recipe, nor a hypothesis sweep (test_properties: every
# primitive on drawn awkward gradients, a third of the unit tests' time), nor
# marked slow: the unit tests and the import of every module. This is the only
# place that defines the selection.
QUICK_PER_RECIPE = ("test_matches_numpy_reference", "test_missing_extra_args_are_named")


def pytest_collection_modifyitems(config, items):
  names, seen = _recipe_names(), set()
  _costly_first(items, names)
  for item in items:
    recipe = _recipe_of(item.nodeid, names)
    if recipe is None:
      sweep = getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
      quick = not sweep and item.get_closest_marker("slow") is None
    else:
      key = (item.originalname, recipe)
      quick = item.originalname in QUICK_PER_RECIPE and key not in seen
      seen.add(key)
    if quick:
      item.add_marker("quick")
  # The selection must not rot: a renamed test or a recipe left out fails loudly.
  whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS
  for test in QUICK_PER_RECIPE:
    covered = {name for t, name in seen if t == test}
    if whole_suite and covered != names:
      raise pytest.UsageError(f"tests/conftest.py QUICK_PER_RECIPE: {test} was not collected "
                              f"for {sorted(names - covered) or 'any recipe'}")


def pytest_configure(config):
  """Ctrl-C (SIGINT) stops the suite within seconds.

  * SIGINT raises KeyboardInterrupt here even when the run inherited it ignored
    (a background job of a non-interactive shell does): Python then installs no
    handler of its own, and the suite ignored SIGINT until its end.
  * An xdist worker dies at once on SIGINT (the default action, not a Python
    handler): a Python handler runs only between bytecodes, so a worker inside an
    XLA compile or a long jitted run did not stop until that returned.
  * The controller passes its SIGINT on to the workers (a `kill -INT` of the
    pytest process alone reaches only it), then stops; `--max-worker-restart=0`
    (pyproject's addopts) keeps xdist from replacing the workers that died.
  """
  if hasattr(config, "workerinput"):
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return

  def interrupt(signum, frame):
    for pid in _worker_pids(config):
      try:
        os.kill(pid, signal.SIGINT)
      except OSError:
        pass
    signal.default_int_handler(signum, frame)

  signal.signal(signal.SIGINT, interrupt)


def _worker_pids(config):
  """The process ids of the running xdist workers (none without xdist)."""
  dsession = config.pluginmanager.getplugin("dsession")
  group = getattr(getattr(dsession, "nodemanager", None), "group", None) or ()
  popens = (getattr(getattr(gw, "_io", None), "popen", None) for gw in group)
  return [p.pid for p in popens if p is not None and p.poll() is None]


def _hypothesis_profiles():
  """`make test` draws the same hypothesis examples on every run (CI must not be
  flaky); `HYPOTHESIS_PROFILE=explore` draws fresh random examples on each run."""
  from hypothesis import settings
  settings.register_profile("ci", derandomize=True, database=None)
  settings.register_profile("explore", derandomize=False)
  settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()
