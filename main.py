"""Pretrain with I-JEPA: python main.py --config=configs/demo.py --workdir=/tmp/demo"""

import faulthandler
import signal

from absl import app, flags, logging
from ml_collections import config_flags

from ijepa_jax import cli, multihost

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py); override fields '
                                'with --config.<field>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics; a run started again '
                    'with the same workdir resumes from its latest complete checkpoint.')
flags.mark_flags_as_required(['config', 'workdir'])
multihost.define_flags(flags)


def main(argv):
  del argv
  # `kill -USR1 <pid>` prints every thread's stack (a hung process tells where it waits)
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  cli.start(logging.WARNING)  # -v 0 shows orbax's INFO lines
  from ijepa_jax.checkpoint import CheckpointError, DamagedCheckpointsError
  from ijepa_jax.config import ConfigError
  from ijepa_jax.data import CorruptImageError
  from ijepa_jax.trainer import NonFiniteError, train_and_evaluate
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)  # returns normally when preempted, too
  except (ConfigError, FileNotFoundError, CorruptImageError, DamagedCheckpointsError) as e:
    # the user's to fix: no traceback, just the fix (a missing or unlabelled dataset, images
    # that will not decode, every checkpoint damaged: a restarter must not loop on it)
    cli.fail(e)
  except (CheckpointError, NonFiniteError) as e:
    cli.fail(e, 1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
