"""Pretrain with I-JEPA: python main.py --config=configs/demo.py --workdir=/tmp/demo"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py); override fields '
                                'with --config.<field>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics; a run started again '
                    'with the same workdir resumes from its latest complete checkpoint.')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  'Join a multi-process run with jax.distributed.initialize: auto (when '
                  '--coordinator_address is given or a multi-task SLURM / Open MPI job is '
                  'detected), on (always; JAX detects Cloud TPU pods, SLURM and Open MPI), off.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (explicit setups).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (explicit setups).')
flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, num_processes).')
flags.DEFINE_list('local_device_ids', None, 'Devices this process drives, e.g. 0,1,2,3 '
                  '(default: JAX\'s choice; SLURM: one GPU per task).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO; -v 0 shows it
  from ijepa_jax import multihost  # after absl parsed the flags
  try:  # before anything touches a device
    multihost.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id, [int(i) for i in FLAGS.local_device_ids or []])
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  from ijepa_jax.checkpoint import CheckpointError
  from ijepa_jax.config import ConfigError
  from ijepa_jax.trainer import NonFiniteError, train_and_evaluate
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)  # returns normally when preempted, too
  except (ConfigError, FileNotFoundError) as e:  # the user's to fix: no traceback, just the fix
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except (CheckpointError, NonFiniteError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
