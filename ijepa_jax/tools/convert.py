"""Weights in and out: python -m ijepa_jax.tools.convert --mode=import|export ...

import: an official I-JEPA checkpoint (`*.pth.tar`, read without torch and
  without executing pickled code) -> a run directory whose checkpoint 0 holds
  its encoder, target encoder and predictor (fresh optimizer state):
  `--config.init_from=<that dir>` fine-tunes or continues from it, and
  `ijepa_jax.tools.evaluate` / `ijepa_jax.tools.embed` take it as `--workdir`.
    python -m ijepa_jax.tools.convert --mode=import --config=configs/vith14.py \\
        --weights=IN1K-vit.h.14-300e.pth.tar --workdir=runs/vith14_official

export: a run's checkpoint -> `--format`
  official: the official `.pth.tar` layout (encoder, predictor, target_encoder,
            `module.` prefixes), loadable by the official code and torch.load;
  timm:     the (target or context) encoder as safetensors, loadable by timm's
            VisionTransformer(class_token=False, global_pool='avg', fc_norm=False);
  hf:       a folder that transformers' IJepaModel.from_pretrained loads.
    python -m ijepa_jax.tools.convert --mode=export --config=configs/demo.py \\
        --workdir=workdir/demo --format=hf --out=workdir/demo_hf
"""

import os

from absl import app, flags, logging
from ijepa_jax import cli
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file of the model (configs/*.py).',
                                lock_config=True)
flags.DEFINE_enum('mode', None, ['import', 'export'], 'import an official checkpoint into a run '
                  'directory, or export a run\'s checkpoint.')
flags.DEFINE_string('workdir', None, 'import: the run directory to create; export: the run.')
flags.DEFINE_string('weights', None, 'import: the official .pth.tar file.')
flags.DEFINE_integer('step', None, 'export: the checkpoint step (default: the latest).')
flags.DEFINE_enum('format', 'official', ['official', 'timm', 'hf'], 'export: the layout.')
flags.DEFINE_enum('which', 'target', ['target', 'context'], 'export timm/hf: which encoder.')
flags.DEFINE_string('out', None, 'export: the file (official, timm) or folder (hf) to write.')
flags.DEFINE_bool('overwrite', False, 'export: replace an existing --out.')
flags.mark_flags_as_required(['config', 'mode', 'workdir'])


def import_official(config, weights: str, workdir: str) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ijepa_jax import layouts, sharding  # pylint: disable=import-outside-toplevel
  from ijepa_jax.checkpoint import Checkpoints  # pylint: disable=import-outside-toplevel
  from ijepa_jax.loading import check_architecture  # pylint: disable=import-outside-toplevel
  from ijepa_jax.spec import resolve  # pylint: disable=import-outside-toplevel
  from ijepa_jax.state import StepOnMesh  # pylint: disable=import-outside-toplevel

  run = resolve(config, jax.device_count(), jax.process_count(), jax.default_backend())
  directory = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(f'{directory} already holds checkpoints; import into a new --workdir')
  loaded = layouts.load_official(weights)
  check_architecture(run.arch, loaded['architecture'], weights)
  grid = run.arch.grid
  if tuple(loaded['grid']) != grid:
    raise ValueError(f'{weights} was trained on a {loaded["grid"][0]}x{loaded["grid"][1]} patch '
                     f'grid; the config has {grid[0]}x{grid[1]} (data.image_size / '
                     'model.patch_size): set data.image_size to match')
  on_mesh = StepOnMesh.build(run, sharding.make_mesh(*run.mesh))
  shardings = on_mesh.shardings
  with on_mesh.scope():
    fresh = on_mesh.init(run.seed)

    def put(tree, sh):
      return jax.tree.map(lambda a, s: jax.device_put(np.asarray(a), s), tree, sh)

    state = fresh.replace(
        params={'encoder': put(loaded['encoder'], shardings.params['encoder']),
                'predictor': put(loaded['predictor'], shardings.params['predictor'])},
        target_params=put(loaded['target_encoder'], shardings.target_params))
    ckpts = Checkpoints(directory, async_save=False)
    ckpts.save(0, state, {
        'step': 0, 'imported_from': os.path.abspath(weights), 'epoch': loaded['epoch'],
        'data': {'seed': run.seed, 'dataset_size': -1, 'global_batch': run.batch_size,
                 'next_step': 0},
        'host_rng': {'seed': run.seed, 'step': 0},
        'accounting': {'train_seconds': 0.0, 'skipped_images': 0, 'nonfinite_steps': 0,
                       'starts': 0},
        'config': run.config_dict()})
    ckpts.wait()
    ckpts.close()
  return (f'imported {weights} (epoch {loaded["epoch"]}, {loaded["architecture"]}) into '
          f'{directory}/0')


def export(config, workdir: str, step, fmt: str, which: str, out: str) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ijepa_jax import formats, layouts, sharding  # pylint: disable=import-outside-toplevel
  from ijepa_jax.loading import restore_state  # pylint: disable=import-outside-toplevel
  from ijepa_jax.state import encoder_params  # pylint: disable=import-outside-toplevel
  from ijepa_jax.spec import resolve  # pylint: disable=import-outside-toplevel

  run = resolve(config, jax.device_count(), jax.process_count(), jax.default_backend())
  mesh = sharding.make_mesh(*run.mesh)
  state, step, _ = restore_state(run, workdir, mesh, step)
  host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
  grid = run.arch.grid
  if fmt == 'official':
    spe = run.steps_per_epoch or 0
    formats.write_torch(out, layouts.official_checkpoint(
        host(state.params['encoder']), host(state.target_params), host(state.params['predictor']),
        grid, epoch=step // spe if spe else 0, step=int(step)))
  elif fmt == 'timm':
    formats.write_safetensors(out, layouts.encoder_to_official(
        host(encoder_params(state, which)), grid), {'format': 'pt', 'step': str(step)})
  else:
    layouts.write_hf(out, host(encoder_params(state, which)), grid, run.arch.num_heads)
  return f'exported step {step} of {workdir} as {fmt} to {out}'


def main(argv):
  del argv
  cli.start(logging.ERROR, distributed=False)
  from ijepa_jax.config import ConfigError  # pylint: disable=import-outside-toplevel
  from ijepa_jax.formats import InteropError  # pylint: disable=import-outside-toplevel
  try:
    if FLAGS.mode == 'import':
      if not FLAGS.weights:
        raise ValueError('--mode=import needs --weights=<official .pth.tar>')
      msg = import_official(FLAGS.config, FLAGS.weights, FLAGS.workdir)
    else:
      if not FLAGS.out:
        raise ValueError('--mode=export needs --out=<file or folder>')
      cli.free_output(FLAGS.out, True, FLAGS.overwrite)
      msg = export(FLAGS.config, FLAGS.workdir, FLAGS.step, FLAGS.format, FLAGS.which, FLAGS.out)
  except (ConfigError, InteropError, FileNotFoundError, FileExistsError, ValueError) as e:
    cli.fail(e)
  print(msg)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
