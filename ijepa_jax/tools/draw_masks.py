"""Draw the mask sampler's blocks for any config, without training:

  python -m ijepa_jax.tools.draw_masks --config=configs/vitl16.py [--out=masks.png] \
      [--num_images=4] [--seed=0] [--step=0] [--config.masks.<field>=...]

One section per sampler mode (this config's first; one section for the random, block and
rasterized strategies of `masks.strategy`): for each image, the context (blue)
and each target block (one colour each), one panel per set, then all together. The images
are the first of the config's training split (evaluation transform); when that data is
not on this machine, plain grey squares of the config's image size stand in. A mode that
cannot sample the config shows its error. Exit 2 on a config error.
"""

import numpy as np
from absl import app, flags
from ijepa_jax import cli
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py); '
                                '--config.<field>=<value> overrides (masks.*).', lock_config=True)
flags.DEFINE_string('out', 'masks.png', 'The PNG to write (the default name, where taken: '
                    'masks.1.png, ...).')
flags.DEFINE_bool('overwrite', False, 'Replace an existing --out.')
flags.DEFINE_integer('num_images', 4, 'Images (rows per mode).')
flags.DEFINE_integer('seed', None, 'Mask seed (default: the config\'s).')
flags.DEFINE_integer('step', 0, 'The global batch whose masks to draw (0: the first, that '
                     'of training step 1).')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  from ijepa_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from ijepa_jax.masks import MaskSampler  # pylint: disable=import-outside-toplevel
  from ijepa_jax.monitor import mask_sections, picture_images  # pylint: disable=import-outside-toplevel
  from ijepa_jax.pictures import mask_picture, save_png  # pylint: disable=import-outside-toplevel
  from ijepa_jax.spec import data_spec, mask_config  # pylint: disable=import-outside-toplevel

  config = FLAGS.config
  if FLAGS.num_images < 1:
    cli.fail('--num_images must be >= 1')
  d = config.data
  if d.image_size % config.model.patch_size:
    cli.fail(f'data.image_size={d.image_size} is not a multiple of model.patch_size='
             f'{config.model.patch_size}')
  try:
    source = data_lib.open_source(d.dataset, d.split, d.data_dir)
    images = picture_images(source, data_spec(config), config.evals.crop_fraction,
                            FLAGS.num_images)
    where = f'{d.dataset}/{d.split}'
  except (data_lib.DataMissingError, OSError, ValueError):
    images = np.full((FLAGS.num_images, d.image_size, d.image_size, d.channels), 160, np.uint8)
    where = (f'grey squares (data.dataset={d.dataset} is not readable here; the masks do not '
             'depend on the images)')
  seed = config.seed if FLAGS.seed is None else FLAGS.seed
  sections = mask_sections(mask_config(config), len(images), seed, FLAGS.step)
  if not any(isinstance(m, dict) for _, m in sections):
    try:  # this config's own mode, for its whole message (the picture's sections cut theirs)
      MaskSampler(mask_config(config))
    except ValueError as e:
      cli.fail(f'masks.mode={config.masks.mode} (and the other mode) cannot sample this '
               f'config: {e}')
  picture = mask_picture(images, sections, config.model.patch_size)
  out = cli.free_output(FLAGS.out, FLAGS['out'].present, FLAGS.overwrite)
  save_png(out, picture)
  grid = mask_config(config).grid
  print(f'wrote {out} ({picture.shape[1]}x{picture.shape[0]}): {len(images)} images from '
        f'{where}, a {grid[0]}x{grid[1]} patch grid, seed {seed}, step {FLAGS.step}')
  for title, masks in sections:
    print(f'  {title if isinstance(masks, dict) else title + ": " + masks}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
