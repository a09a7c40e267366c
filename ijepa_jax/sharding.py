"""Device mesh, logical-axis rules and the shardings of state and batch.

Every parameter dimension carries a logical name (models.py); this one table
maps logical names to the mesh axes `data` and `fsdp`. Pure data parallelism is
the mesh (N, 1); FSDP is the same rules on a mesh with fsdp > 1.
"""

import contextlib
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')  # the batch is split over every device

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),       # encoder width: FSDP shards each large weight along it
    ('pred_embed', 'fsdp'),  # predictor width
    ('mlp', None),
    ('qkv', None),
    ('heads', None),
    ('layers', None),        # the scanned depth axis
    ('length', None),
    ('act_embed', None),
)


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """Resolve -1 ("the rest") in a (data, fsdp) mesh request; error if it can't fit."""
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError('mesh: at most one of mesh.data, mesh.fsdp may be -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ValueError(f'mesh: mesh.data={data} x mesh.fsdp={fsdp} does not divide the '
                     f'{num_devices} devices; use sizes whose product is {num_devices} (or -1)')
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if sizes[0] * sizes[1] != num_devices:
    raise ValueError(f'mesh: mesh.data={sizes[0]} x mesh.fsdp={sizes[1]} must use all '
                     f'{num_devices} devices')
  return sizes[0], sizes[1]


def make_mesh(data: int = -1, fsdp: int = 1,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over `devices` (default: all), Auto axis types."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(data, fsdp, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def logical_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh,
                      rules=LOGICAL_RULES) -> Any:
  """NamedShardings for a (possibly partly) logically-boxed abstract pytree.

  A dimension whose size the mesh axes do not divide (e.g. the predictor's width 384
  over 256 fsdp devices) stays replicated instead of failing to compile.
  """
  specs = nn.get_partition_spec(abstract_boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x,
                        abstract_boxed, is_leaf=is_box)  # no constraint: these are abstract
  return jax.tree.map(lambda sh, x: _fit(sh, x.shape), shardings, shapes)


def _fit(sh: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  spec = list(sh.spec) + [None] * (len(shape) - len(sh.spec))
  for i, axes in enumerate(spec):
    if axes is not None:
      names = axes if isinstance(axes, tuple) else (axes,)
      if shape[i] % int(np.prod([sh.mesh.shape[a] for a in names])):
        spec[i] = None
  return NamedSharding(sh.mesh, P(*spec))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all devices; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def scope(mesh: jax.sharding.Mesh) -> Iterator[None]:
  """`mesh` as the current mesh with our logical axis rules: what tracing, initialising,
  restoring or compiling anything sharded needs around it."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield

