"""optlab.state_sharding and the stacked blocks under an 8-device FSDP mesh and pmap
(issue 14: each device holds its share of SOAP's and Shampoo's state, and the sharded
update equals the single-device one)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

import optlab

# 3 layers of square matrices (axis 0 divides 8) and a vector each. Square, so that every
# Kronecker factor of a random gradient has distinct eigenvalues (wide matrices: see
# test_soap_on_a_transformer_tree_matches_one_device).
SHAPES = {f"l{i}": {"a": (16, 16), "b": (32, 32), "c": (64, 64), "n": (16,)} for i in range(3)}


def _params():
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), SHAPES,
                      is_leaf=lambda s: isinstance(s, tuple))


def _grads(params, t):
  rng = np.random.default_rng(10 + t)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _soap(multiple, **kw):
  inner = optlab.in_eigenbasis(optlab.scale_by_adam(0.95, 0.95), precondition_frequency=2,
                               block_multiple=multiple, **kw)
  return optax.chain(inner, optax.scale(-1e-2))


def _shampoo(multiple, **kw):
  # matrix_eps 1e-2: a well-conditioned inverse root, so that float32 rounding (a
  # different reduction order across devices) is not amplified by (1e-6 lambda_max)^(-1/4)
  return optax.chain(optlab.scale_by_shampoo(block_size=32, matrix_eps=1e-2,
                                             start_preconditioning_step=1,
                                             graft_type="rmsprop", block_multiple=multiple,
                                             **kw),
                     optax.scale(-1e-2))


# The recipes as the mesh tests build them (with or without axis_name): 8 devices,
# a refresh every 2 steps, Shampoo preconditioning from step 1.
RECIPES = {"soap": lambda **kw: optlab.soap(1e-3, block_multiple=8, precondition_frequency=2,
                                            **kw),
           "shampoo": lambda **kw: optlab.shampoo(1e-3, block_multiple=8,
                                                  start_preconditioning_step=1, **kw),
           "muon": lambda **kw: optlab.muon(0.02, **kw)}


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()[:8]), ("d",))


def _fsdp(mesh, params):
  return jax.tree.map(lambda p: NamedSharding(mesh, P("d") if p.shape[0] % 8 == 0 else P()),
                      params)


def _device0_share(state):
  total = sum(x.nbytes for x in jax.tree.leaves(state))
  dev = jax.devices()[0]
  held = sum(s.data.nbytes for x in jax.tree.leaves(state)
             for s in x.addressable_shards if s.device == dev)
  return held / total


def _train_step(tx):
  """A jitted step, update and apply_updates, with no output shardings (XLA
  propagates them, as in a user's train step)."""
  def run(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  return jax.jit(run)


def _placed(tx, params, shardings, mesh):
  """The params and tx's state placed on the mesh (the state by `state_sharding`)."""
  p_sh = jax.device_put(params, shardings)
  state_sh = optlab.state_sharding(tx, params, mesh, param_shardings=shardings)
  return p_sh, jax.jit(tx.init, out_shardings=state_sh)(p_sh)


def _step_text(tx, params, shardings, mesh):
  """The compiled train step of tx, its state placed by `_placed`, as HLO text."""
  p, s = _placed(tx, params, shardings, mesh)
  return _train_step(tx).lower(p, s, p).compile().as_text()


def _assert_sharded_matches_one_device(tx, ref, params, shardings, mesh, steps):
  """`steps` train steps of tx on the mesh give the params of ref's on one device."""
  sharded, single = _train_step(tx), _train_step(ref)
  (p, s), (p1, s1) = _placed(tx, params, shardings, mesh), (params, ref.init(params))
  for t in range(steps):
    g = _grads(params, t)
    p, s = sharded(p, s, jax.device_put(g, shardings))
    p1, s1 = single(p1, s1, g)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p1)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-5, atol=1e-6)


def _decomposition_trip_counts(text):
  """The trip counts of the compiled while loops whose body calls LAPACK, itself or
  through the computations it calls (the CPU per-matrix eigh / QR loop of
  `linalg._per_matrix`)."""
  bodies = {}
  for name, body in re.findall(r"\n(%?[\w.\-]+) \([^\n]*\{\n(.*?)\n\}", text, re.S):
    bodies[name.lstrip("%")] = body

  def calls_lapack(name, seen):
    body = bodies.get(name, "")
    if "lapack" in body:
      return True
    seen.add(name)
    called = {c for c in re.findall(r"%?([\w.\-]+)", body) if c in bodies} - seen
    return any(calls_lapack(c, seen) for c in called)

  return [int(n) for body_name, n in re.findall(
      r'body=%?([\w.\-]+),.*?"known_trip_count":\{"n":"(\d+)"\}', text)
          if calls_lapack(body_name, set())]


@pytest.mark.parametrize("make", [_soap, _shampoo], ids=["soap", "shampoo"])
def test_one_device_holds_an_eighth_and_updates_match(make, mesh):
  params = _params()
  shardings = _fsdp(mesh, params)
  p_sh = jax.device_put(params, shardings)
  tx = make(8, axis_name=mesh)
  state_sh = optlab.state_sharding(tx, p_sh, mesh)
  state = jax.jit(tx.init, out_shardings=state_sh)(p_sh)
  share = _device0_share(state)
  assert share <= 0.25, f"device 0 holds {share:.3f} of the state"
  # replicated (the default) holds it all: the check above can fail
  full = jax.jit(tx.init)(p_sh)
  assert _device0_share(jax.device_put(full, NamedSharding(mesh, P()))) == 1.0

  step = jax.jit(lambda g, s, p: tx.update(g, s, p), out_shardings=(shardings, state_sh))
  # each device decomposes the eighth of the stacked matrices that it holds (the CPU
  # per-matrix loop); without the mesh XLA gathers all of them into every device's loop
  mine = _decomposition_trip_counts(step.lower(_grads(params, 0), state, p_sh).compile().as_text())
  plain = make(8)
  text = jax.jit(lambda g, s, p: plain.update(g, s, p), out_shardings=(shardings, state_sh)).lower(
      _grads(params, 0), state, p_sh).compile().as_text()
  gathered = _decomposition_trip_counts(text)
  assert mine and sorted(8 * n for n in mine) == sorted(gathered), (mine, gathered)
  single = jax.jit(lambda g, s, p: make(8).update(g, s, p))
  s1, p1 = make(8).init(params), params
  for t in range(4):  # past two basis refreshes
    u, state = step(_grads(params, t), state, p_sh)
    p_sh = jax.jit(optax.apply_updates, out_shardings=shardings)(p_sh, u)
    u1, s1 = single(_grads(params, t), s1, p1)
    p1 = optax.apply_updates(p1, u1)
  for a, b in zip(jax.tree.leaves(p_sh), jax.tree.leaves(p1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  for x, want in zip(jax.tree.leaves(state), jax.tree.leaves(state_sh)):
    assert x.sharding.is_equivalent_to(want, x.ndim)


@pytest.mark.slow  # SOAP on a transformer-like tree, on 8 devices and on one (~8 s)
def test_soap_on_a_transformer_tree_matches_one_device(mesh):
  # Wide matrices have a degenerate G^T G, whose eigenbasis is arbitrary inside the
  # degenerate subspace: SOAP matches one device only if every device computes each
  # block's statistics as one device does. A train step jitted without output
  # shardings (XLA propagates them) used to split the stacks on another axis and
  # reduce the statistics across devices in another order: the params moved 4e-3
  # apart in 5 steps. `BlockStacks` now splits them on their block axis.
  rng = np.random.default_rng(1)
  w = lambda *s: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32)
  params = {"embed": w(256, 16), **{f"l{i}": {"qkv": w(16, 48), "o": w(16, 16), "f1": w(16, 64),
                                             "f2": w(64, 16), "n": jnp.ones(16)}
                                    for i in range(2)}}
  soap = RECIPES["soap"]
  # 5 steps: past two basis refreshes
  _assert_sharded_matches_one_device(soap(axis_name=mesh), soap(), params, _fsdp(mesh, params),
                                     mesh, 5)


def _fsdp_update_text(make, mesh) -> str:
  """The compiled update of make(8, axis_name=mesh) on `_params()` split FSDP-style,
  its state placed by `state_sharding`."""
  params = _params()
  shardings = _fsdp(mesh, params)
  tx = make(8, axis_name=mesh)
  state_sh = optlab.state_sharding(tx, params, mesh, param_shardings=shardings)
  state = jax.eval_shape(tx.init, params)
  return jax.jit(lambda g, s, p: tx.update(g, s, p), in_shardings=(shardings, state_sh, shardings),
                 out_shardings=(shardings, state_sh)).lower(params, state, params).compile().as_text()


@pytest.mark.parametrize("make", [_soap, _shampoo], ids=["soap", "shampoo"])
def test_no_device_gathers_a_whole_stack(make, mesh):
  # Under a mesh the leaves are cut out of their stacks at constant offsets: at
  # run-time ones XLA cannot tell which device holds a piece and all-gathers the
  # whole stack onto every device (it did for Shampoo's preconditioned blocks).
  text = _fsdp_update_text(make, mesh)
  assert "all-to-all" in text  # blocks do move between devices (FSDP rows -> block split)
  assert "all-gather" not in text, re.findall(r"\n[^\n]*all-gather\([^\n]*", text)[:3]


def test_the_refresh_moves_no_block_between_devices(mesh):
  # `linalg.by_size` joins the factors of one size (SOAP's L and R of every stack)
  # where they lie on the mesh. Joined end to end, the blocks of the second stack
  # moved to other devices and back at every refresh: 24 collective permutes and 24
  # all-to-alls in this step (now 6 all-to-alls, the FSDP rows onto the block axis).
  text = _fsdp_update_text(_soap, mesh)
  assert "collective-permute" not in text
  assert len(re.findall(r"all-to-all(?:-start)?\(", text)) <= 6


def test_state_sharding_rules(mesh):
  params = _params()
  tx = _soap(8)
  sh = optlab.state_sharding(tx, params, mesh, param_shardings=jax.tree.map(
      lambda p: P("d") if p.shape[0] % 8 == 0 else P(), params))
  state = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(sh, is_leaf=lambda x: isinstance(x, NamedSharding)) == \
      jax.tree.structure(state)
  basis = sh[0]
  # stacked factors and the inner moments of the stacks: split on the block axis
  for x in jax.tree.leaves((basis.stats, basis.basis, basis.inner_state.blocks)):
    assert x.spec in (P("d"), P()), x.spec
  assert any(x.spec == P("d") for x in jax.tree.leaves(basis.stats))
  assert basis.count.spec == P()
  with pytest.raises(ValueError, match="'x' is not an axis"):
    optlab.state_sharding(tx, params, mesh, axis="x")


def test_adam_state_follows_param_shardings(mesh):
  params = _params()
  specs = jax.tree.map(lambda p: P(None, "d") if p.ndim == 2 and p.shape[1] % 8 == 0 else P(),
                       params)
  tx = optlab.adamw(1e-3)
  sh = optlab.state_sharding(tx, params, mesh, param_shardings=specs)
  state = jax.eval_shape(tx.init, params)
  pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(sh)))
  # the moments follow their params' specs (not the leading-axis rule for other leaves)
  assert sum(x.spec == P(None, "d") for _, x in pairs) == 2 * 9  # mu and nu of 9 matrices
  for leaf, x in pairs:
    want = P(None, "d") if leaf.ndim == 2 and leaf.shape[1] % 8 == 0 else P()
    assert x.spec == want, (leaf.shape, x.spec)


def test_muon_on_a_mesh_orthogonalises_whole_matrices(mesh):
  # With axis_name=mesh each device runs Newton-Schulz on the whole matrices of
  # its share (one all-to-all in and out); without it, XLA all-gathers the
  # FSDP-split matrices inside the iterations.
  params = _params()
  shardings = _fsdp(mesh, params)

  def compiled(tx):
    return _step_text(tx, params, shardings, mesh)

  text = compiled(optlab.muon(0.02, axis_name=mesh))
  assert "all-gather" not in text and "all-to-all" in text
  assert "all-gather" in compiled(optlab.muon(0.02))  # the check above can fail
  _assert_sharded_matches_one_device(optlab.muon(0.02, axis_name=mesh), optlab.muon(0.02),
                                     params, shardings, mesh, 3)


def _collective_bytes(text, kind):
  """Bytes that the collectives `kind` (e.g. "all-gather") of a compiled SPMD program
  return on one device (every array of a tuple result)."""
  width = {"f32": 4, "s32": 4, "pred": 1}
  return sum(int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) * width[dt]
             for result in re.findall(rf"^\s*%?\S+ = (.*?) {kind}(?:-start)?\(", text, re.M)
             for dt, dims in re.findall(r"(f32|s32|pred)\[([\d,]*)\]", result))


def _gathered_bytes(text):
  return _collective_bytes(text, "all-gather")


@pytest.mark.parametrize("method", ["soap", "muon"])
def test_a_two_axis_mesh_with_column_split_params(method):
  # A 2 x 4 mesh, the matrices split on their columns over "model": the stacks are
  # split over both axes, which XLA reached by replicating each stack first
  # ("involuntary full rematerialization": SOAP gathered 4.7x the params per device
  # and step, Muon 7.5x). `BlockStacks` now moves one mesh axis at a time.
  mesh2 = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
  rng = np.random.default_rng(2)
  w = lambda *s: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32)
  params = {"embed": w(128, 16), **{f"l{i}": {"qkv": w(16, 48), "o": w(16, 16), "f1": w(16, 64),
                                             "f2": w(64, 16), "n": jnp.ones(16)}
                                    for i in range(2)}}
  shardings = jax.tree.map(lambda p: NamedSharding(mesh2, P(None, "model") if p.ndim == 2
                                                   else P()), params)
  make = RECIPES[method]
  tx = make(axis_name=mesh2)
  text = _step_text(tx, params, shardings, mesh2)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  assert _gathered_bytes(text) < 0.05 * param_bytes, (_gathered_bytes(text), param_bytes)
  _assert_sharded_matches_one_device(tx, make(), params, shardings, mesh2, 3)


def test_the_sharding_examples_run():
  import doctest
  import optlab.sharding
  result = doctest.testmod(optlab.sharding)
  assert result.attempted >= 8 and result.failed == 0, result


def test_mesh_route_groups_the_axes_that_split_one_dimension():
  mesh3 = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("x", "y", "z"))
  route = lambda *specs: optlab.mesh_route(mesh3, list(specs)).groups
  assert optlab.mesh_route(mesh3).groups == (("x",), ("y",), ("z",))
  # rows over y and z jointly: one group, after the unused x
  assert route(P(("y", "z"), None), P()) == (("x",), ("y", "z"))
  assert route(P(P.UNCONSTRAINED, ("y", "z"))) == (("x",), ("y", "z"))
  # rows on z, columns on x: separate groups, in the mesh's order
  assert route(P("z", "x"), NamedSharding(mesh3, P(None, "y"))) == (("x",), ("y",), ("z",))
  # groups that share an axis are merged, and every group is in the mesh's order
  assert route(P(("z", "y")), P(("x", "y"))) == (("x", "y", "z"),)
  assert route(P("z"), P(("z", "y"))) == (("x",), ("y", "z"))
  with pytest.raises(ValueError, match="mesh_route: param_shardings names axis 'w'"):
    route(P("w"))
  with pytest.raises(TypeError, match="mesh_route: param_shardings holds 3"):
    optlab.mesh_route(mesh3, [3])
  with pytest.raises(ValueError, match="every axis of the mesh"):
    optlab.MeshRoute(mesh3, (("x", "y"),))
  with pytest.raises(ValueError, match="every axis of the mesh"):
    optlab.MeshRoute(mesh3, (("x", "y"), ("y", "z")))


def test_a_route_knows_the_specs_of_its_params_and_their_masked_parts():
  mesh2 = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
  specs = {"w": P(("a", "b"), None), "v": {"x": P(None, "b"), "n": P()}}
  route = optlab.mesh_route(mesh2, jax.tree.map(lambda s: NamedSharding(mesh2, s), specs,
                                                is_leaf=lambda s: isinstance(s, P)))
  params = {"w": jnp.ones((8, 2)), "v": {"x": jnp.ones((2, 4)), "n": jnp.ones(3)}}
  assert route.specs_of(params) == [P(), P(None, "b"), P(("a", "b"), None)]  # v.n, v.x, w
  masked = {"w": jnp.ones((8, 2)), "v": {"x": optax.MaskedNode(), "n": jnp.ones(3)}}
  assert route.specs_of(masked) == [P(), P(("a", "b"), None)]
  assert route.specs_of([jnp.ones(3)]) is None  # another tree: the groups serve it
  assert route.specs_of({"w": 1, "v": 2}) is None
  assert optlab.mesh_route(mesh2).specs_of(params) is None
  assert optlab.MeshRoute(mesh2, route.groups).specs_of(params) is None


@pytest.mark.parametrize("method", ["soap", "shampoo", "muon"])
def test_replicated_params_are_cut_into_the_stacks_where_they_lie(mesh, method):
  # Data parallelism: the params whole on every device, the state split. Each
  # device's blocks are a slice of what it holds; without the route's specs XLA
  # split the leaves' rows and moved them with all-to-alls (SOAP, section 4b's tree
  # held whole on 8 devices: 1.99x the params per device and step, now 1.60x).
  params = _params()
  shardings = jax.tree.map(lambda p: NamedSharding(mesh, P()), params)
  make = RECIPES[method]

  def all_to_all_bytes(route):
    tx = make(axis_name=route)
    return _collective_bytes(_step_text(tx, params, shardings, mesh), "all-to-all")

  assert all_to_all_bytes(optlab.mesh_route(mesh, shardings)) == 0
  assert all_to_all_bytes(optlab.mesh_route(mesh)) > 0  # without the specs
  _assert_sharded_matches_one_device(make(axis_name=optlab.mesh_route(mesh, shardings)),
                                     make(), params, shardings, mesh, 3)


def test_a_stack_hops_over_each_group_of_axes_but_size_one_ones():
  from optlab.primitives import linalg
  plan = lambda shape: linalg.BlockPlan.make(shape)
  hops = lambda shape, names, specs=None: linalg.BlockStacks(
      [jnp.ones((8, 8))], plan, 8, optlab.mesh_route(
          Mesh(np.array(jax.devices()[:8]).reshape(shape), names)), specs).hops
  assert hops((2, 4), ("a", "b")) == [[("a",)]]  # then all of the mesh's axes
  assert hops((2, 2, 2), ("a", "b", "c")) == [[("a",), ("a", "b")]]
  assert hops((2, 2, 2), ("a", "b", "c"), [P(("b", "c"))]) == [[("a",)]]
  assert hops((1, 8), ("a", "b")) == [[]]  # a split over "a" alone splits nothing
  assert hops((8, 1), ("a", "b")) == [[]]


@pytest.mark.parametrize("method", ["soap", "shampoo", "muon"])
def test_each_stack_takes_the_route_of_its_own_leaves(method):
  # One leaf's rows split over both axes jointly make the tree's route one hop
  # over ("a", "b"); a leaf split on its rows over "b" and its columns over "a"
  # cannot reach that split in one hop, and XLA replicated its padded stack
  # (section 4c's seed 1: SOAP gathered 17x these params per device and step).
  # Its own route takes the axes one at a time.
  mesh2 = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
  rng = np.random.default_rng(5)
  params = {"w": jnp.asarray(rng.normal(size=(100, 256)) / 10, jnp.float32),
            "v": jnp.asarray(rng.normal(size=(48, 24)) / 7, jnp.float32)}
  shardings = {"w": NamedSharding(mesh2, P("b", "a")),
               "v": NamedSharding(mesh2, P(("a", "b"), None))}
  route = optlab.mesh_route(mesh2, shardings)
  assert route.groups == (("a", "b"),)
  make = RECIPES[method]

  def gathered(route):
    tx = make(axis_name=route)
    return _gathered_bytes(_step_text(tx, params, shardings, mesh2))

  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  assert gathered(route) < 0.05 * param_bytes
  if method != "muon":  # Muon's whole matrices reach the one-hop split without a gather
    assert gathered(optlab.MeshRoute(mesh2, route.groups)) > param_bytes
  _assert_sharded_matches_one_device(make(axis_name=route), make(), params, shardings, mesh2, 3)


@pytest.mark.parametrize("method", ["soap", "shampoo", "muon"])
def test_params_split_over_two_axes_jointly_move_without_gathering(method):
  # FSDP over a whole 2 x 4 mesh, rows split P(("data", "fsdp")): with
  # axis_name=mesh the stacks were split over "data" first, which XLA reached by
  # replicating them (SOAP gathered 5.7x the params per device and step on the
  # second_order.py section 4b tree); `mesh_route` moves both axes in one hop.
  mesh2 = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  params = _params()
  shardings = jax.tree.map(lambda p: NamedSharding(
      mesh2, P(("data", "fsdp")) if p.shape[0] % 8 == 0 else P()), params)
  make = RECIPES[method]
  route = optlab.mesh_route(mesh2, shardings)
  tx = make(axis_name=route)
  assert optlab.state_sharding(tx, params, route, param_shardings=shardings) == \
      optlab.state_sharding(tx, params, mesh2, param_shardings=shardings)

  def gathered(tx):
    return _gathered_bytes(_step_text(tx, params, shardings, mesh2))

  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  routed = gathered(tx)
  assert routed < 0.05 * param_bytes, (routed, param_bytes)
  assert gathered(make(axis_name=mesh2)) > param_bytes  # the check above can fail
  _assert_sharded_matches_one_device(tx, make(), params, shardings, mesh2, 3)


@pytest.mark.parametrize("method", ["soap", "shampoo", "muon"])
def test_unusual_leaves_on_a_three_axis_mesh_match_one_device(method):
  # What the transformer trees lack: a conv kernel (rank 4), sizes that divide
  # nothing (37 x 12), a scan-stacked (layers, d, d) leaf, bfloat16 params and a
  # scalar, on a 2 x 2 x 2 mesh, split the ways section 4c of second_order.py
  # draws at random: rows, columns, an inner dimension of a rank-3 leaf, the
  # output channels over two axes jointly. Each device's blocks are computed
  # whole, so the sharded steps equal one device's, and each holds 1/8 of the
  # stacked factors.
  mesh3 = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("x", "y", "z"))
  rng = np.random.default_rng(3)
  w = lambda *s, dt=jnp.float32: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), dt)
  params = {"conv": w(3, 3, 4, 8), "odd": w(37, 12), "stacked": w(2, 8, 8),
            "bf16": w(16, 24, dt=jnp.bfloat16), "scale": jnp.ones(()), "bias": jnp.zeros(12)}
  specs = {"conv": P(None, None, None, ("x", "y")), "odd": P(None, "z"),
           "stacked": P(None, "y"), "bf16": P("z", "x"), "scale": P(), "bias": P()}
  shardings = {k: NamedSharding(mesh3, specs[k]) for k in params}
  route = optlab.mesh_route(mesh3, shardings)
  assert route.groups == (("x", "y"), ("z",))
  make = RECIPES[method]
  tx = make(axis_name=route)
  _assert_sharded_matches_one_device(tx, make(), params, shardings, mesh3, 3)
  _, state = _placed(tx, params, shardings, mesh3)
  factors = [x for path, x in jax.tree_util.tree_leaves_with_path(state)
             if re.search(r"\.(stats|basis|roots)\b", jax.tree_util.keystr(path))]
  assert bool(factors) == (method != "muon")
  if factors:
    assert _device0_share(factors) == pytest.approx(1 / 8)


@pytest.mark.parametrize("make", [lambda m: optlab.soap(1e-3, axis_name=m),
                                  lambda m: optlab.shampoo(1e-3, axis_name=m),
                                  lambda m: optlab.muon(0.02, axis_name=m)],
                         ids=["soap", "shampoo", "muon"])
def test_a_mesh_with_explicit_axes_is_refused(make):
  # The stacks are placed with sharding constraints that leave some dimensions
  # unconstrained, which explicit sharding does not accept: refused by name, at
  # construction, instead of a JAX error inside the first step.
  explicit = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"),
                  axis_types=(AxisType.Explicit, AxisType.Auto))
  with pytest.raises(ValueError, match=r"axis_name must be a mesh of Auto axes.*\['a'\]"):
    make(explicit)
  make(Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b")))  # Auto: accepted


@pytest.mark.parametrize("name", ["soap", "shampoo", "muon"])
def test_pmap_axis_name_splits_the_refresh(name):
  """With axis_name, each of the 8 devices decomposes 1/8 of the blocks and the results
  are all-gathered; the update equals the single-device one."""
  params = _params()
  if name == "soap":
    make = lambda **kw: optax.chain(optlab.in_eigenbasis(
        optlab.scale_by_adam(0.95, 0.95), precondition_frequency=2, **kw), optax.scale(-1e-2))
  elif name == "muon":
    make = lambda **kw: optlab.scale_by_newton_schulz(**kw)
  else:
    make = lambda **kw: optax.chain(optlab.scale_by_shampoo(
        block_size=32, matrix_eps=1e-2, start_preconditioning_step=1, **kw), optax.scale(-1e-2))
  tx, ref = make(axis_name="i"), make()
  rep = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * 8), tree)
  pstep = jax.pmap(lambda g, s: tx.update(g, s), axis_name="i")
  text = pstep.lower(rep(_grads(params, 0)), rep(tx.init(params))).as_text()
  assert "all_gather" in text or "all-gather" in text  # the refresh is split
  s, s1 = rep(tx.init(params)), ref.init(params)
  single = jax.jit(ref.update)
  for t in range(4):
    u, s = pstep(rep(_grads(params, t)), s)
    u1, s1 = single(_grads(params, t), s1)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u1)):
      # Newton-Schulz's float32 products on an eighth of the batch round apart (~3e-7)
      np.testing.assert_allclose(np.asarray(a[3]), np.asarray(b), rtol=1e-5,
                                 atol=1e-6 if name == "muon" else 1e-7)
