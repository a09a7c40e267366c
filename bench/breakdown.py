"""Where the train step's time goes: its parts compiled and timed one by one.

  python bench/breakdown.py --config=configs/vitl16.py [--config.batch_size=128] [--steps=5]

The parts, each jitted on its own on the step's own shapes, state and masks: the target
encoder's forward pass (whole images, no gradient); the context encoder's forward and
backward (its context tokens, a fixed cotangent); the predictor's forward and backward; the
optimizer (AdamW) and the EMA of the target encoder. The whole step is timed beside them;
what the parts do not account for (the loss, gathers, normalisation, and whatever XLA
overlaps or fuses across parts when it compiles them together) is the remainder, which may
be negative. Each part's analytic FLOPs and its share of the step's are printed with it.
`bench/device_check.py` runs it (`stepping.step_breakdown`) on the GPU; the figures are in docs/PERFORMANCE.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench.stepping import breakdown_table, step_breakdown  # noqa: E402
from ijepa_jax import cli  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 5, 'Timed calls per part (after one warm-up call).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from ijepa_jax.spec import resolve_here  # pylint: disable=import-outside-toplevel
  print(breakdown_table(step_breakdown(resolve_here(FLAGS.config), FLAGS.steps)))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
