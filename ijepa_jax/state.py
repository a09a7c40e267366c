"""The train state and the compiled step, built from shapes: what the trainer, the tools,
the benchmarks and the tests share (nothing here reads data or writes files).

`batch_shapes` gives the global batch a run's step takes; `abstract_state` the state's
shapes (no compute); `init_state` the sharded state; `make_step_fn` the jitted, donated
step on uint8 images; `global_batch` a host batch as global arrays;
`lower_abstract_step` / `compile_abstract_step` the step from shapes alone (memory and
compile figures) and `device_memory` what a compiled step needs per device.
"""

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ijepa_jax import sharding
from ijepa_jax.checkpoint import restore_target
from ijepa_jax.masks import MaskSampler
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
  return batch_shapes(run.batch_size, run.arch.image_size, run.arch.channels, run.sampler())


def batch_shapes(batch_size: int, image_size: int, channels: int, masks: MaskSampler) -> dict:
  """The global batch the step takes: uint8 images and the fixed-shape mask arrays."""
  b, size, ch, m = batch_size, image_size, channels, masks
  return {
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


def lower_abstract_step(run: Run, mesh: jax.sharding.Mesh):
  """Lower the train step of `run` on `mesh` from shapes alone (nothing is allocated);
  returns (lowered, seconds to lower)."""
  model, shapes = run.model, run_shapes(run)
  boxed = abstract_state(model, shapes)
  state_sh = sharding.logical_shardings(boxed, mesh)
  state = restore_target(nn.unbox(boxed), state_sh)  # abstract leaves that carry shardings
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    step = make_step_fn(model, state_sh, mesh, run.data.mean, run.data.std)
    lowered = step.lower(state, shapes)
  return lowered, time.perf_counter() - t0


def compile_abstract_step(run: Run, mesh: jax.sharding.Mesh):
  """Compile the train step of `run` on `mesh` from shapes alone (nothing is allocated);
  returns (compiled, seconds to lower and compile). For memory and compile-time figures."""
  lowered, seconds = lower_abstract_step(run, mesh)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    compiled = lowered.compile()
  return compiled, seconds + time.perf_counter() - t0


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
