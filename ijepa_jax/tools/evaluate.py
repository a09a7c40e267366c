"""Evaluate a frozen encoder: python -m ijepa_jax.tools.evaluate --config=... --workdir=...

The probes of `evals.final_probes` (linear, k-NN, low-shot, attentive: `ijepa_jax.probes`) on the
config's evaluation data (`evals.*`: dataset, splits, subsets, pooling) for
the latest (or `--step`) checkpoint of a run, or for a weights file
(`--weights`: an official I-JEPA `.pth.tar`, a timm/official encoder state
dict, or our safetensors export). Prints the results and writes them as JSON
(`--output`, default `<workdir>/eval_<step>.json`).
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from ijepa_jax import cli, multihost

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py) of the model and of '
                                'its evaluation (evals.*); --config.<field>=<value> overrides.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'A run\'s workdir (or its checkpoints/<step> folder).')
flags.DEFINE_string('weights', None, 'A weights file instead of a run: official .pth.tar, '
                    'timm/official encoder state dict (.pth/.safetensors).')
flags.DEFINE_integer('step', None, 'The checkpoint step (default: the latest).')
flags.DEFINE_bool('baseline', False, 'Also evaluate the same network at random initialisation '
                  '(drawn with the run\'s seed + 1, as the trainer\'s baseline).')
flags.DEFINE_string('output', None, 'Where to write the results (JSON).')
flags.DEFINE_bool('overwrite', False, 'Replace an existing --output (a default name that is '
                  'taken gets a new one instead).')
flags.mark_flags_as_required(['config'])
multihost.define_flags(flags)


def main(argv):
  del argv
  cli.start(logging.ERROR)
  import jax  # pylint: disable=import-outside-toplevel
  from ijepa_jax import config as cfg_lib, sharding  # pylint: disable=import-outside-toplevel
  from ijepa_jax.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  from ijepa_jax.evaluation import Evaluator, with_baseline  # pylint: disable=import-outside-toplevel
  from ijepa_jax.formats import InteropError  # pylint: disable=import-outside-toplevel
  from ijepa_jax.loading import encoder_from, random_encoder  # pylint: disable=import-outside-toplevel
  from ijepa_jax.reporting import log  # pylint: disable=import-outside-toplevel
  from ijepa_jax.spec import resolve  # pylint: disable=import-outside-toplevel

  if FLAGS.output is not None:  # before any work: nothing replaced unasked
    cli.free_output(FLAGS.output, True, FLAGS.overwrite)
  config = FLAGS.config
  try:
    run = resolve(config, jax.device_count(), jax.process_count(), jax.default_backend())
    ev = run.evals
    mesh = sharding.make_mesh(*run.mesh)
    params, what, meta = encoder_from(run, mesh, workdir=FLAGS.workdir, weights=FLAGS.weights,
                                      step=FLAGS.step, which=ev.encoder)
    # the baseline is the run's own architecture drawn with its seed + 1, as at its end
    seed = meta.get('config', {}).get('seed', run.seed)
    log(f'evaluating the {what}')
    with sharding.scope(mesh):
      evaluator = Evaluator(run, mesh, ev.final_train_examples, ev.final_test_examples,
                            ev.final_probes, cache=FLAGS.baseline)
      log(f'data: {evaluator.describe()}')
      baseline = random_encoder(run, mesh, seed + 1, ev.encoder) if FLAGS.baseline else None
      results = {'evaluated': what, 'config': json.loads(config.to_json_best_effort())}
      results.update(with_baseline(evaluator, 'eval', params, baseline, log))
  except (cfg_lib.ConfigError, FileNotFoundError, InteropError, ValueError) as e:
    cli.fail(e)
  except CheckpointError as e:
    cli.fail(e, 1)
  out = FLAGS.output
  if out is None:
    base = FLAGS.workdir if FLAGS.workdir else os.path.dirname(os.path.abspath(FLAGS.weights))
    tag = what.rsplit('step ', 1)[-1] if FLAGS.workdir else os.path.basename(FLAGS.weights)
    out = os.path.join(base, f'eval_{tag}.json')
  out = cli.free_output(out, FLAGS.output is not None, FLAGS.overwrite)
  if jax.process_index() == 0:
    with open(out, 'w') as f:
      json.dump(results, f, indent=1)
    log(f'results written to {out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
