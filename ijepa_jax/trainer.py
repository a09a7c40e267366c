"""The I-JEPA trainer: one readable loop around the pure train step.

Sections: (1) check the config and the data before compiling anything,
(2) build model, mesh and shardings, (3) initialise and compile,
(4) train, logging to stdout and `<workdir>/metrics.jsonl`, (5) the final
linear probe (when the config asks for it).
"""

import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ijepa_jax import config as cfg_lib
from ijepa_jax import fashion_mnist, sharding
from ijepa_jax.flops import train_step_flops
from ijepa_jax.input_pipeline import ArrayBatches, prefetch
from ijepa_jax.masks import MaskSampler
from ijepa_jax.probe import extract_features, linear_probe
from ijepa_jax.train_step import IJepa, TrainState, create_train_state, train_step

TFDS_DATASETS = ('imagenet2012', 'imagenet21k', 'imagenet2012_subset', 'imagenette')


class DataMissingError(FileNotFoundError):
  """The configured dataset is not on this machine; the message says how to point at it."""


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


# -- (1) data ----------------------------------------------------------------

def load_train_images(config: ml_collections.ConfigDict) -> np.ndarray:
  """Training images [N, H, W, C] float32, or a clear error when the data is not here."""
  d = config.data
  if d.dataset == 'fashion_mnist':
    images, _ = fashion_mnist.load('train', d.data_dir or None)
    return fashion_mnist.normalize(images)
  if d.dataset in TFDS_DATASETS:
    root = d.data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')
    path = os.path.join(root, d.dataset)
    if not os.path.isdir(path):
      raise DataMissingError(
          f'data.dataset={d.dataset!r} needs the TFDS-prepared dataset at {path}, which does not '
          f'exist. Prepare it once (for ImageNet: download the archives by hand, then `tfds build '
          f'{d.dataset} --manual_dir=<folder with the archives> --data_dir=<dir>`) and pass '
          f'--config.data.data_dir=<dir> (or set TFDS_DATA_DIR). Nothing is downloaded for you. '
          f'To try the trainer without ImageNet, use --config=configs/demo.py.')
    raise DataMissingError(
        f'{path} exists, but reading TFDS datasets is not implemented yet (it arrives with the '
        f'ImageNet input pipeline); for now only data.dataset=fashion_mnist trains.')
  raise cfg_lib.ConfigError(
      f"data.dataset={d.dataset!r}: choose 'fashion_mnist' or one of {TFDS_DATASETS}")


# -- (2)-(3) model, mesh, state ----------------------------------------------

def param_count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def make_step_fn(model: IJepa, state_shardings: Any, mesh: jax.sharding.Mesh):
  """train_step jitted over the mesh with a donated state."""
  return jax.jit(
      functools.partial(train_step, model),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))


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


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  return f'{h}h{rem // 60:02d}m' if h else f'{rem // 60}m{rem % 60:02d}s'


# -- the run -----------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrain as `config` says; returns the final metrics (and probe accuracies)."""
  t_start = time.time()
  n_dev, n_proc = jax.device_count(), jax.process_count()
  cfg_lib.validate(config, n_dev, n_proc)
  model = cfg_lib.build_model(config)
  masks = MaskSampler(cfg_lib.mask_config(config))
  size, ch = config.data.image_size, config.data.channels
  shapes = {
      'images': jax.ShapeDtypeStruct((config.batch_size, size, size, ch), jnp.float32),
      'ctx_idx': jax.ShapeDtypeStruct((config.batch_size, masks.context_len), jnp.int32),
      'ctx_len': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
      'tgt_idx': jax.ShapeDtypeStruct(
          (config.batch_size, masks.config.num_targets, masks.target_len), jnp.int32),
      'tgt_len': jax.ShapeDtypeStruct((config.batch_size, masks.config.num_targets), jnp.int32),
  }
  boxed = abstract_state(model, shapes)
  abstract = nn.unbox(boxed)
  width, depth, heads, mlp_dim = cfg_lib.encoder_dims(config)
  total = cfg_lib.total_steps(config)
  log(f'model: ViT {config.model.variant} width {width} depth {depth} heads {heads} mlp {mlp_dim} '
      f'patch {config.model.patch_size} @ {size}px | encoder '
      f'{param_count(abstract.params["encoder"]):,} params, predictor '
      f'{param_count(abstract.params["predictor"]):,} params')
  log(f'masks: {config.masks.mode} mode, grid {masks.height}x{masks.width}, context len '
      f'{masks.context_len}, {masks.config.num_targets} targets x len {masks.target_len}')
  log(f'schedule: {total} steps, global batch {config.batch_size}, '
      f'{cfg_lib.steps_per_epoch(config)} steps/epoch')

  images = load_train_images(config)  # a missing dataset stops the run here, before compiling
  source = ArrayBatches(images, config.batch_size, config.seed, masks,
                        jax.process_index(), n_proc)

  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  log(f'mesh: {dict(mesh.shape)} over {n_dev} {jax.devices()[0].platform} device(s), '
      f'{n_proc} process(es)')
  os.makedirs(workdir, exist_ok=True)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state, state_sh = init_state(model, mesh, shapes, config.seed, boxed)
    step_fn = make_step_fn(model, state_sh, mesh)
    t0 = time.time()
    compiled = step_fn.lower(state, shapes).compile()
    flops = train_step_flops(config, masks.context_len, masks.target_len)
    log(f'compiled the train step in {time.time() - t0:.1f}s | {flops / 1e9:,.1f} GFLOP/step | '
        f'{device_memory(compiled)}')

    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    last: dict[str, float] = {}
    t_log, n_log = time.time(), 0
    t_train = time.time()
    with open(metrics_path, 'a') as metrics_file:
      first = int(state.step)
      for step, local in enumerate(prefetch(source, first, total), start=first + 1):
        state, metrics = compiled(state, global_batch(local, mesh))
        n_log += 1
        if step % config.log_every and step != total:
          continue  # fetch metrics only when logging, so the device never waits on the host
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(metrics['loss']):
          raise FloatingPointError(f'non-finite loss {metrics["loss"]} at step {step}; '
                                   'lower optim.lr or use model.dtype=float32')
        dt = time.time() - t_log
        metrics.update(step=step, images_per_sec=n_log * config.batch_size / dt,
                       flops_per_sec=n_log * flops / dt, time=time.time() - t_start)
        eta = (total - step) * dt / n_log
        log(f'step {step:>6d}/{total} | loss {metrics["loss"]:.4f} | lr {metrics["lr"]:.2e} | '
            f'{metrics["images_per_sec"]:,.0f} img/s | ETA {_fmt_time(eta)}')
        if jax.process_index() == 0:
          metrics_file.write(json.dumps(metrics) + '\n')
          metrics_file.flush()
        last = metrics
        t_log, n_log = time.time(), 0
    last['train_seconds'] = time.time() - t_train
    log(f'trained {total} steps in {_fmt_time(last["train_seconds"])}')

    if config.probe.enabled:
      last.update(final_probe(config, model, state, shapes))
  last['total_seconds'] = time.time() - t_start
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'final.json'), 'w') as f:
      json.dump(last, f, indent=1)
  return last


def final_probe(config: ml_collections.ConfigDict, model: IJepa, state: TrainState,
                shapes: dict) -> dict[str, float]:
  """Linear-probe top-1 of the trained target encoder and of the same net at random init."""
  if config.data.dataset != 'fashion_mnist':
    raise cfg_lib.ConfigError('probe.enabled=True needs data.dataset=fashion_mnist for now')
  p = config.probe
  tr_x, tr_y = fashion_mnist.load('train', config.data.data_dir or None)
  te_x, te_y = fashion_mnist.load('test', config.data.data_dir or None)
  pick = np.random.default_rng(config.seed).permutation(len(tr_x))[:p.train_examples]
  tr_x, tr_y = fashion_mnist.normalize(tr_x[pick]), tr_y[pick]
  te_x, te_y = fashion_mnist.normalize(te_x[:p.test_examples]), te_y[:p.test_examples]
  random_state, _ = init_state(model, sharding.make_mesh(config.mesh.data, config.mesh.fsdp),
                               shapes, config.seed + 1)  # same architecture, fresh weights
  results = {}
  for name, params in (('pretrained', state.target_params),
                       ('random_init', random_state.target_params)):
    t0 = time.time()
    ftr = extract_features(model.encoder, params, tr_x)
    fte = extract_features(model.encoder, params, te_x)
    acc = linear_probe(ftr, tr_y, fte, te_y, fashion_mnist.NUM_CLASSES, steps=p.steps)
    results[f'probe_top1_{name}'] = acc
    log(f'linear probe ({name} target encoder, {len(tr_x)} train / {len(te_x)} test images): '
        f'top-1 {100 * acc:.2f}%  [{time.time() - t0:.0f}s]')
  return results
