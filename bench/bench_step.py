"""Time the I-JEPA train step for a config: compile time, step time, images/s, MFU.

  python bench/bench_step.py --config=configs/demo.py [--config.batch_size=...] [--steps=20]

Runs on synthetic images (no dataset needed) with real masks from the config's
sampler. FLOPs are the analytic count of ijepa_jax/flops.py; MFU uses the peak
of the device kind (on a CPU, which has no entry, the achieved FLOP/s is shown).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 20, 'Timed steps (after one warm-up step).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import numpy as np

  from ijepa_jax import config as cfg_lib
  from ijepa_jax import sharding
  from ijepa_jax.flops import peak_flops, train_step_flops
  from ijepa_jax.masks import MaskSampler
  from ijepa_jax.trainer import device_memory, global_batch, init_state, make_step_fn

  config = FLAGS.config
  cfg_lib.validate(config, jax.device_count(), jax.process_count())
  model = cfg_lib.build_model(config)
  local = config.batch_size // jax.process_count()
  masks = MaskSampler(cfg_lib.mask_config(config))
  size, ch = config.data.image_size, config.data.channels
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(local, size, size, ch), dtype=np.uint8)
  batches = [{'images': images, **masks(local, 0, s)._asdict()} for s in range(FLAGS.steps + 1)]
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    shapes = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype)
              for k, v in batches[0].items()}
    state, sh = init_state(model, mesh, shapes, 0)
    t0 = time.perf_counter()
    step = make_step_fn(model, sh, mesh, tuple(config.data.mean),
                        tuple(config.data.std)).lower(state, shapes).compile()
    compile_s = time.perf_counter() - t0
    memory = device_memory(step)
    device_batches = [global_batch(b, mesh) for b in batches]
    state, m = step(state, device_batches[0])
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for b in device_batches[1:]:
      state, m = step(state, b)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / FLAGS.steps
  flops = train_step_flops(config, masks.context_len, masks.target_len)
  dev = jax.devices()[0]
  per_dev = flops / step_s / jax.device_count()
  peak = peak_flops(dev.device_kind)
  print(f'device: {jax.device_count()} x {dev.device_kind} ({dev.platform})')
  print(f'config: batch {config.batch_size}, image {size}, patch {config.model.patch_size}, '
        f'dtype {config.model.dtype}, masks {config.masks.mode} (Kc {masks.context_len}, '
        f'Kt {masks.target_len})')
  print(f'compile: {compile_s:.1f} s | memory: {memory}')
  print(f'step: {1000 * step_s:.1f} ms | {config.batch_size / step_s:,.1f} images/s | '
        f'{config.batch_size / step_s / jax.device_count():,.1f} images/s/device')
  print(f'flops/step: {flops / 1e9:,.1f} GFLOP | achieved {per_dev / 1e9:,.1f} GFLOP/s/device'
        + (f' | MFU {100 * per_dev / peak:.1f}%' if peak else ' | MFU n/a (no peak for this device)'))
  print(f'final loss: {float(m["loss"]):.4f}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
