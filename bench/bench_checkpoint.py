"""Checkpoint save cost: how long the training loop is blocked per save, and the total write.

Builds the full train state of a config (params, EMA target, Adam moments;
filled with random numbers, which do not compress) on the devices and
saves it `--saves` times through the trainer's `Checkpoints` (async orbax),
as the loop does.

  python -m bench.bench_checkpoint --config=configs/demo.py
  python -m bench.bench_checkpoint --config=configs/vitl16.py --config.batch_size=8
"""

import os
import shutil
import tempfile
import time

from absl import app, flags, logging
from ml_collections import config_flags

from bench.stepping import random_state
from ijepa_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'configs/*.py', lock_config=True)
flags.DEFINE_integer('saves', 3, 'saves to time')
flags.DEFINE_string('dir', '', 'where to write (default: a temporary directory)')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  import numpy as np

  from ijepa_jax.checkpoint import Checkpoints

  from ijepa_jax.spec import resolve_here  # pylint: disable=import-outside-toplevel
  state = random_state(resolve_here(FLAGS.config))
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  root = FLAGS.dir or tempfile.mkdtemp(prefix='bench_ckpt_')
  ckpts = Checkpoints(os.path.join(root, 'checkpoints'), keep=2)
  blocked, total = [], []
  for i in range(FLAGS.saves + 1):
    t0 = time.perf_counter()
    blocked.append(ckpts.save(i + 1, state, {'step': i + 1}))
    ckpts.wait()
    total.append(time.perf_counter() - t0)
  ckpts.close()
  blocked, total = blocked[1:], total[1:]  # the first save also sets up the directory
  dev = jax.devices()[0]
  print(f'device: {jax.device_count()} x {dev.device_kind} ({dev.platform})')
  print(f'state: {nbytes / 2**30:.2f} GiB ({sum(x.size for x in jax.tree.leaves(state)):,} '
        f'numbers: params + EMA + Adam moments)')
  print(f'save: blocked {np.mean(blocked):.3f}s (max {np.max(blocked):.3f}s), '
        f'complete after {np.mean(total):.2f}s, over {len(blocked)} saves')
  if not FLAGS.dir:
    shutil.rmtree(root)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
