"""Pretrain with I-JEPA: python main.py --config=configs/demo.py --workdir=/tmp/demo"""

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py); override fields '
                                'with --config.<field>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for metrics (and, later, checkpoints).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  from ijepa_jax.config import ConfigError  # after absl parsed the flags
  from ijepa_jax.trainer import train_and_evaluate
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, FileNotFoundError) as e:  # the user's to fix: no traceback, just the fix
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
