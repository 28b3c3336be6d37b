"""Data parallelism: meshes, shardings, the jit and pmap paths, and multi-host set-up.

The same pure step runs three ways with the same numbers: `jit` over a `Mesh`
(the default), `pmap` (for pmap-style code), or plain `jax.jit` on one device.
"""

from collections.abc import Callable, Mapping, Sequence
import re
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import BatchError, ConfigError

DATA_AXIS = 'data'
PMAP_AXIS = 'batch'
ShardingRules = Sequence[tuple[str, P]]


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs: Any) -> None:
  """Joins this process to a multi-host run (wraps `jax.distributed.initialize`).

  On TPU pods and most clusters the arguments are discovered automatically.
  Call it before any other JAX computation.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id, **kwargs)


def make_mesh(axes: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (or the given) devices; by default one `data` axis.

  Args:
    axes: axis name → size, in order; one size may be -1 for "the rest",
      e.g. `{'data': -1, 'model': 2}`.
    devices: devices to use; all global devices by default.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = dict(axes or {DATA_AXIS: -1})
  known = int(np.prod([s for s in axes.values() if s != -1]))
  sizes = [len(devices) // known if s == -1 else s for s in axes.values()]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'mesh axes {axes} do not fit {len(devices)} devices')
  return jax.make_mesh(tuple(sizes), tuple(axes), axis_types=(AxisType.Auto,) * len(axes),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the mesh's `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated over the mesh."""
  return NamedSharding(mesh, P())


# Leaves smaller than this stay replicated under FSDP: biases and norm scales save
# little memory sharded, and each sharded leaf costs an all-gather per step.
FSDP_MIN_BYTES = 2**18


def _nbytes(leaf: Any) -> int:
  return int(np.prod(np.shape(leaf))) * np.dtype(getattr(leaf, 'dtype', np.float32)).itemsize


def fsdp_spec(shape: Sequence[int], n: int, *, axis: str = DATA_AXIS) -> P:
  """Splits the largest dimension of `shape` divisible by `n` over `axis` (replicated if none).

  Adam's moments and an EMA mirror their parameter's shape, so they get the
  same spec as the parameter they belong to.
  """
  if n <= 1:
    return P()
  fits = [i for i in np.argsort([-d for d in shape], kind='stable') if shape[i] % n == 0]
  if not fits:
    return P()
  return P(*[axis if i == fits[0] else None for i in range(len(shape))])


def state_shardings(state: Any, mesh: Mesh, rules: ShardingRules = (), *, fsdp: bool = False,
                    fsdp_min_bytes: int = FSDP_MIN_BYTES) -> Any:
  """Shardings for a whole train state (or any pytree of arrays or their shapes).

  Leaves are matched by ordered `(regex, PartitionSpec)` rules over their
  `/`-joined paths (`re.search`, so `.*embedding` also matches the optimizer
  moments under `opt_state/...`); the first match wins. With `fsdp`, an
  unmatched leaf of at least `fsdp_min_bytes` is split over the `data` axis
  along its largest divisible dimension (`fsdp_spec`): parameters, optimizer
  state, averages and model state alike. Anything else is replicated. With no
  rules and no `fsdp`, everything is replicated: plain data parallelism.

  Raises:
    ConfigError: when a rule names an axis the mesh lacks, or splits a
      dimension its axes do not divide.
  """
  compiled = [(re.compile(p), p, spec) for p, spec in rules]
  n = mesh.shape.get(DATA_AXIS, 1)

  def spec_for(path, leaf) -> NamedSharding:
    name = tree_lib.key_path_str(path)
    shape = tuple(np.shape(leaf))
    for regex, pattern, spec in compiled:
      if regex.search(name) and len(spec) <= len(shape):
        _check_rule(name, shape, pattern, spec, mesh)
        return NamedSharding(mesh, spec)
    if fsdp and _nbytes(leaf) >= fsdp_min_bytes:
      return NamedSharding(mesh, fsdp_spec(shape, n))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(spec_for, state)


def _check_rule(name: str, shape: tuple[int, ...], pattern: str, spec: P, mesh: Mesh) -> None:
  """Refuses a rule that jit would reject with a message naming neither rule nor leaf."""
  for dim, axes in zip(shape, spec):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    unknown = [a for a in axes if a not in mesh.shape]
    if unknown:
      raise ConfigError(f'sharding rule ({pattern!r}, {spec}) names mesh axes {unknown}; '
                        f'the mesh has {list(mesh.shape)}')
    size = int(np.prod([mesh.shape[a] for a in axes]))
    if dim % size:
      raise ConfigError(f'sharding rule ({pattern!r}, {spec}) splits {name} of shape {shape} '
                        f'{size} ways along a dimension of {dim}; change the rule or its regex')


def init_state(init: Callable[[], Any], mesh: Mesh, rules: ShardingRules = (), *,
               fsdp: bool = False, fsdp_min_bytes: int = FSDP_MIN_BYTES) -> Any:
  """Runs `init` (e.g. a `create_state` closure) straight into its shardings.

  Shapes first: `jax.eval_shape` gives the state's shapes, `state_shardings`
  their shardings, and `init` is jitted with those as `out_shardings`, so no
  device ever holds the whole state when it is sharded.

  Args:
    init: a traceable function of no arguments returning the state.
    mesh: from `make_mesh`.
    rules, fsdp, fsdp_min_bytes: see `state_shardings`.
  """
  shardings = state_shardings(jax.eval_shape(init), mesh, rules, fsdp=fsdp,
                              fsdp_min_bytes=fsdp_min_bytes)
  return jax.jit(init, out_shardings=shardings)()


def abstract_state(state: Any, mesh: Mesh, rules: ShardingRules = (), *, fsdp: bool = False,
                   fsdp_min_bytes: int = FSDP_MIN_BYTES) -> Any:
  """`state`'s shapes and dtypes with their shardings on `mesh`, as `jax.ShapeDtypeStruct`s.

  A target for `checkpoint.Checkpointer.restore`: a checkpoint saved on any
  mesh is read straight into these shardings, shard by shard.
  """
  shardings = state_shardings(state, mesh, rules, fsdp=fsdp, fsdp_min_bytes=fsdp_min_bytes)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      state, shardings)


def place_state(state: Any, mesh: Mesh, rules: ShardingRules = (), *, fsdp: bool = False,
                fsdp_min_bytes: int = FSDP_MIN_BYTES) -> Any:
  """Copies a state onto the mesh with `state_shardings`.

  The copy never aliases the input, so donating the placed state to a step
  leaves the original intact.
  """
  shardings = state_shardings(state, mesh, rules, fsdp=fsdp, fsdp_min_bytes=fsdp_min_bytes)
  # device_put may hand back the very buffer it was given; a jitted copy never does.
  placed = jax.device_put(state, shardings)
  return jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=shardings)(placed)


def _check_divisible(global_batch: int, n: int, what: str) -> None:
  if global_batch % n:
    fit = (global_batch // n + 1) * n
    raise BatchError(f'the global batch of {global_batch} examples is not divisible by the '
                     f'{n} {what}; use a batch size that is a multiple of {n} (e.g. {fit}).')


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this process's part of a batch on the mesh, split along `data`.

  In a multi-host run each process passes its own shard of the global batch;
  `jax.make_array_from_process_local_data` assembles the global arrays.
  """
  sharding = batch_sharding(mesh)
  local = {k: np.asarray(v) for k, v in batch.items()}
  n_local = {v.shape[0] for v in local.values()}
  if len(n_local) != 1:
    raise BatchError(f'batch arrays disagree on the batch size: '
                     f'{ {k: v.shape for k, v in local.items()} }; every array needs the '
                     'same leading dimension.')
  global_batch = n_local.pop() * jax.process_count()
  _check_divisible(global_batch, mesh.shape[DATA_AXIS], f"devices of the mesh's "
                   f"'{DATA_AXIS}' axis")
  return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch, *v.shape[1:]))
          for k, v in local.items()}


def jit(step: Callable, mesh: Mesh, state: Any, *, rules: ShardingRules = (),
        fsdp: bool = False, fsdp_min_bytes: int = FSDP_MIN_BYTES,
        donate: bool = True) -> Callable:
  """Jits a step over a mesh: state sharded by `rules` (and `fsdp`), batch split over `data`.

  Under FSDP, XLA gathers each sharded parameter where the step uses it and
  reduce-scatters its gradient, so the step's numbers are those of plain data
  parallelism.

  Args:
    step: `(state, batch) -> (state, metrics)`, or `(state, batch) -> metrics`
      for an eval step.
    mesh: from `make_mesh`.
    state: a train state (or its `jax.eval_shape`) fixing the state's shardings.
    rules, fsdp, fsdp_min_bytes: see `state_shardings`.
    donate: donate the input state's buffers to the output (train steps).
  """
  s_state = state_shardings(state, mesh, rules, fsdp=fsdp, fsdp_min_bytes=fsdp_min_bytes)
  s_batch = batch_sharding(mesh)
  out = replicated(mesh)
  return jax.jit(step, in_shardings=(s_state, s_batch),
                 out_shardings=(s_state, out) if donate else out,
                 donate_argnums=(0,) if donate else ())


def pmap(step: Callable, *, donate: bool = True, axis_name: str = PMAP_AXIS) -> Callable:
  """Maps a step over local devices with `jax.pmap`.

  The step must be built with the same `axis_name` (e.g.
  `make_train_step(objective, axis_name='batch')`) so that it averages
  gradients over devices. Inputs: a `replicate`d state and a `split_for_pmap` batch.
  """
  if getattr(step, 'axis_name', axis_name) != axis_name:
    raise ValueError(f"the step averages over axis {step.axis_name!r} but pmap maps "
                     f"{axis_name!r}; build it with axis_name={axis_name!r}")
  return jax.pmap(step, axis_name=axis_name, donate_argnums=(0,) if donate else ())


def replicate(tree: Any, n_devices: int | None = None) -> Any:
  """Stacks one copy of every leaf per local device, for `pmap`."""
  n = n_devices or jax.local_device_count()
  return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))).copy(), tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated tree."""
  return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(batch: Mapping[str, Any], n_devices: int | None = None) -> dict[str, Any]:
  """Reshapes a batch from (B, ...) to (devices, B // devices, ...)."""
  n = n_devices or jax.local_device_count()
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    _check_divisible(v.shape[0], n, 'local devices pmap maps over')
    out[k] = v.reshape(n, v.shape[0] // n, *v.shape[1:])
  return out
