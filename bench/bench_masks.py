"""Mask-sampling throughput on one core: images' masks per second.

  python -m bench.bench_masks [--grid=14] [--batch=256] [--batches=80] [--mode=official]
"""

import time

from absl import app, flags

from ijepa_jax import cli
from ijepa_jax.masks import MaskConfig, MaskSampler

flags.DEFINE_integer('grid', 14, 'Patches per side of the image.')
flags.DEFINE_integer('batch', 256, 'Images per batch.')
flags.DEFINE_integer('batches', 80, 'Batches timed (after one warm-up batch).')
flags.DEFINE_enum('mode', 'official', ['official', 'corrected'], 'The sampler\'s mode.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  s = MaskSampler(MaskConfig(grid=(FLAGS.grid, FLAGS.grid), mode=FLAGS.mode))
  s(FLAGS.batch, 0, 0)
  t0 = time.perf_counter()
  for step in range(FLAGS.batches):
    s(FLAGS.batch, 0, step)
  dt = time.perf_counter() - t0
  print(f'{FLAGS.mode} masks, {FLAGS.grid}x{FLAGS.grid} grid, batch {FLAGS.batch}: '
        f'{FLAGS.batches * FLAGS.batch / dt:,.0f} images/s ({1000 * dt / FLAGS.batches:.2f} ms per '
        f'batch; Kc {s.context_len}, Kt {s.target_len})')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
