"""The train state and the compiled step, built from shapes: what the trainer, the tools,
the benchmarks and the tests share (nothing here reads data or writes files).

`StepOnMesh.build(run, mesh)` is the one way to put a run's step on a mesh: the global
batch's shapes (`batch_shapes`), the state's abstract tree and its shardings, the target
a checkpoint is restored onto, a fresh sharded state (`init`), and the jitted, donated step
on uint8 images (`jit`), lowered or compiled from shapes alone or on a real state;
`scope()` is the mesh context everything sharded is traced in. `global_batch` makes a host
batch global arrays, `device_memory` says what a compiled step needs per device and
`encoder_params` picks an encoder out of a state.
"""

import dataclasses
import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ijepa_jax import sharding
from ijepa_jax.features import ENCODERS
from ijepa_jax.masks import MaskSampler
from ijepa_jax.packing import Packer
from ijepa_jax.pixels import normalize
from ijepa_jax.spec import Run
from ijepa_jax.train_step import IJepa, TrainState, create_train_state, guarded_train_step


def param_count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def make_step_fn(model: IJepa, state_shardings: Any, mesh: jax.sharding.Mesh,
                 mean: tuple[float, ...], std: tuple[float, ...]):
  """guarded_train_step on uint8 images (normalised on the device), jitted over the mesh
  with a donated state."""
  def step(state, batch):
    batch = dict(batch, images=normalize(batch['images'], mean, std))
    return guarded_train_step(model, state, batch)

  return jax.jit(
      step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))


def run_shapes(run: Run) -> dict:
  """The global batch `run`'s step takes (`batch_shapes`)."""
  return batch_shapes(run.batch_size, run.arch.image_size, run.arch.channels, run.sampler,
                      run.packer)


def batch_shapes(batch_size: int, image_size: int, channels: int, masks: MaskSampler,
                 packer: Packer | None = None) -> dict:
  """The global batch the step takes: uint8 images, the fixed-shape mask arrays and, packed
  (masks.pack), the packed rows' arrays."""
  b, size, ch, m = batch_size, image_size, channels, masks
  packed = {} if packer is None else packer.shapes()
  return {k: jax.ShapeDtypeStruct(v, jnp.int32) for k, v in packed.items()} | {
      'images': jax.ShapeDtypeStruct((b, size, size, ch), jnp.uint8),
      'ctx_idx': jax.ShapeDtypeStruct((b, m.context_len), jnp.int32),
      'ctx_len': jax.ShapeDtypeStruct((b,), jnp.int32),
      'tgt_idx': jax.ShapeDtypeStruct((b, m.num_targets, m.target_len), jnp.int32),
      'tgt_len': jax.ShapeDtypeStruct((b, m.num_targets), jnp.int32),
  }


def abstract_state(model: IJepa, shapes: dict) -> TrainState:
  """The train state's shapes, still in logical-partitioning boxes (no compute, no compile)."""
  return jax.eval_shape(functools.partial(create_train_state, model), jax.random.key(0), shapes)


def init_state(model: IJepa, mesh: jax.sharding.Mesh, shapes: dict, seed: int,
               abstract: TrainState | None = None):
  """Create the sharded train state from batch shapes; returns (state, its shardings).

  `abstract` (from `abstract_state`) saves tracing the init a second time.
  """
  def init(rng):
    batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
    return create_train_state(model, rng, batch)

  abstract = abstract if abstract is not None else abstract_state(model, shapes)
  shardings = sharding.logical_shardings(abstract, mesh)
  state = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))
  return state, shardings


def restore_target(abstract: Any, shardings: Any) -> Any:
  """Abstract state whose leaves carry the shardings to restore (or lower) onto."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def encoder_params(state: Any, which: str) -> Any:
  """The target (EMA) or context encoder's parameters of a TrainState."""
  if which not in ENCODERS:
    raise ValueError(f'evals.encoder={which!r}: choose one of {ENCODERS}')
  return state.target_params if which == 'target' else state.params['encoder']


@dataclasses.dataclass(frozen=True)
class StepOnMesh:
  """A run's train step placed on `mesh` (`build`): shapes and shardings, no compute yet."""
  run: Run
  mesh: jax.sharding.Mesh
  shapes: dict            # the global batch the step takes
  boxed: TrainState       # the state's shapes in logical-partitioning boxes
  shardings: Any          # the state's shardings on the mesh

  @classmethod
  def build(cls, run: Run, mesh: jax.sharding.Mesh) -> 'StepOnMesh':
    shapes = run_shapes(run)
    boxed = abstract_state(run.model, shapes)
    with sharding.scope(mesh):
      shardings = sharding.logical_shardings(boxed, mesh)
    return cls(run, mesh, shapes, boxed, shardings)

  def scope(self):
    """The mesh context (with the logical rules) to restore, init, trace and run in."""
    return sharding.scope(self.mesh)

  @property
  def abstract(self) -> TrainState:
    """The state's shapes as plain `ShapeDtypeStruct`s (no sharding constraint applied, so
    this works inside `scope()` too)."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                        if isinstance(x, nn.Partitioned) else x,
                        self.boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))

  @property
  def target(self) -> Any:
    """The abstract state with its shardings: what a checkpoint is restored onto."""
    return restore_target(self.abstract, self.shardings)

  def init(self, seed: int) -> TrainState:
    """A fresh sharded state (the official init) from `seed`."""
    with self.scope():
      return init_state(self.run.model, self.mesh, self.shapes, seed, self.boxed)[0]

  def jit(self):
    """The jitted step: guarded_train_step on uint8 images, the state donated."""
    return make_step_fn(self.run.model, self.shardings, self.mesh, self.run.data.mean,
                        self.run.data.std)

  def lower(self, state: Any = None):
    """(lowered step, seconds) on `state`, or on shapes alone (nothing is allocated)."""
    t0 = time.perf_counter()
    with self.scope():
      lowered = self.jit().lower(self.target if state is None else state, self.shapes)
    return lowered, time.perf_counter() - t0

  def compile(self, state: Any = None):
    """(compiled step, seconds to lower and compile) on `state` or shapes alone."""
    lowered, seconds = self.lower(state)
    t0 = time.perf_counter()
    with self.scope():
      compiled = lowered.compile()
    return compiled, seconds + time.perf_counter() - t0


def lower_abstract_step(run: Run, mesh: jax.sharding.Mesh):
  """The train step of `run` on `mesh` lowered from shapes alone: (lowered, seconds)."""
  return StepOnMesh.build(run, mesh).lower()


def compile_abstract_step(run: Run, mesh: jax.sharding.Mesh):
  """The train step of `run` on `mesh` compiled from shapes alone (memory and compile-time
  figures): (compiled, seconds to lower and compile)."""
  return StepOnMesh.build(run, mesh).compile()


def global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax.Arrays split over the mesh's batch axes."""
  s = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(s, v) for k, v in local.items()}


def device_memory(compiled) -> str:
  """Per-device memory of a compiled step (arguments + outputs + temporaries - aliased)."""
  m = compiled.memory_analysis()
  if m is None:
    return 'memory analysis unavailable'
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return (f'{total / 2**30:.2f} GiB/device (state+batch {m.argument_size_in_bytes / 2**30:.2f}, '
          f'temporaries {m.temp_size_in_bytes / 2**30:.2f})')
