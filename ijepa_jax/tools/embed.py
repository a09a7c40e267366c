"""Embeddings to .npz: python -m ijepa_jax.tools.embed --config=... (--workdir=... | --weights=...)
    (--images=<folder> | --split=<split>) --out=embeddings.npz

The frozen encoder's features (`--output`: mean-pooled, last4 or tokens; the
target encoder unless --config.evals.encoder=context) of every image under a
folder (recursively; .jpg/.jpeg/.png) or of a split of the config's
evaluation dataset, after the evaluation transform (evals.crop_fraction).
The .npz holds `embeddings` [N, D] (tokens: [N, T, D]), `names` and, for a
split, `labels`. Unreadable images are left out and named on stderr.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ijepa_jax import cli, multihost

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file of the model (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'A run\'s workdir (its latest or --step checkpoint).')
flags.DEFINE_string('weights', None, 'Or a weights file (official .pth.tar, timm safetensors).')
flags.DEFINE_integer('step', None, 'The checkpoint step (default: the latest).')
flags.DEFINE_string('images', None, 'A folder of images (searched recursively).')
flags.DEFINE_string('split', None, 'Or a split of the evaluation dataset (evals.dataset, else '
                    'data.dataset), e.g. test.')
flags.DEFINE_integer('limit', -1, 'At most this many images (-1: all).')
flags.DEFINE_enum('output', 'mean', ['mean', 'last4', 'tokens'], 'What to write per image.')
flags.DEFINE_string('out', None, 'The .npz file to write.')
flags.DEFINE_bool('overwrite', False, 'Replace an existing --out.')
flags.mark_flags_as_required(['config', 'out'])
multihost.define_flags(flags)


def main(argv):
  del argv
  cli.free_output(FLAGS.out, True, FLAGS.overwrite)  # before any work: nothing replaced unasked
  cli.start(logging.ERROR)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ijepa_jax import sharding  # pylint: disable=import-outside-toplevel
  from ijepa_jax.config import ConfigError  # pylint: disable=import-outside-toplevel
  from ijepa_jax.data import ImageFiles, open_source  # pylint: disable=import-outside-toplevel
  from ijepa_jax.evaluation import FeatureExtractor, LabelledSplit, subset_indices  # pylint: disable=import-outside-toplevel
  from ijepa_jax.formats import InteropError  # pylint: disable=import-outside-toplevel
  from ijepa_jax.loading import encoder_from  # pylint: disable=import-outside-toplevel
  from ijepa_jax.reporting import log  # pylint: disable=import-outside-toplevel
  from ijepa_jax.spec import resolve  # pylint: disable=import-outside-toplevel

  try:
    if bool(FLAGS.images) == bool(FLAGS.split):
      raise ValueError('give exactly one of --images=<folder> and --split=<split>')
    run = resolve(FLAGS.config, jax.device_count(), jax.process_count(), jax.default_backend())
    ev, d = run.evals, run.data
    source = (ImageFiles(FLAGS.images, '--images') if FLAGS.images
              else open_source(ev.dataset, FLAGS.split, ev.data_dir))
    mesh = sharding.make_mesh(*run.mesh)
    params, what, _ = encoder_from(run, mesh, workdir=FLAGS.workdir, weights=FLAGS.weights,
                                step=FLAGS.step, which=ev.encoder)
    indices = (subset_indices(len(source), FLAGS.limit) if FLAGS.limit > 0
               else np.arange(len(source)))
    split = LabelledSplit(source, indices, d.image_size, d.channels, ev.crop_fraction, d.workers,
                          False, FLAGS.images or FLAGS.split,
                          labelled=bool(getattr(source, 'num_classes', None)))  # else names only
    extract = FeatureExtractor.for_run(run, mesh, FLAGS.output)
    log(f'embedding {len(indices):,} images of {split.name} with the {what}')
    emb, labels, kept, skipped = [], [], [], []
    with sharding.scope(mesh):
      for chunk in split.chunks():
        emb.append(extract(params, chunk.images))
        labels.append(chunk.labels)
        kept.append(chunk.indices)
        skipped += chunk.skipped
    emb = np.concatenate(emb)
  except (ConfigError, FileNotFoundError, InteropError, ValueError) as e:
    cli.fail(e)
  for name in skipped:
    print(f'skipped an unreadable image: {name}', file=sys.stderr)
  names = [source.name(int(i)) for i in np.concatenate(kept)]
  if jax.process_index() == 0:
    tmp = FLAGS.out + '.tmp.npz'
    np.savez(tmp, embeddings=emb, names=np.asarray(names), labels=np.concatenate(labels))
    os.replace(tmp, FLAGS.out)
    log(f'wrote {emb.shape} embeddings to {FLAGS.out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
