"""How strongly each term of the objective pulls on the context encoder, at initialisation.

  python -m bench.grad_balance --config=configs/demo.py [--config.anti_collapse.sigreg_weight=...]

AdamW normalises each parameter's step, so when one term's gradient is far larger than the
others it alone decides the encoder's update, whatever its weight within a wide range
(docs/RESULTS.md, "Why the demo collapsed"). This prints, for one batch of real training
images with the config's masks, each term's value and the norm of its (unweighted)
gradient with respect to the context encoder's parameters; SIGReg and the variance-covariance
terms are computed whatever their weights (weight 1 where the config has 0).
"""

import dataclasses

from absl import app, flags
from ml_collections import config_flags

from ijepa_jax import cli

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from ijepa_jax import create_train_state  # pylint: disable=import-outside-toplevel
  from ijepa_jax.data import eval_transform, open_source  # pylint: disable=import-outside-toplevel
  from ijepa_jax.spec import resolve_here  # pylint: disable=import-outside-toplevel
  from ijepa_jax.train_step import loss_terms  # pylint: disable=import-outside-toplevel

  run = resolve_here(FLAGS.config)
  model = run.model
  ac = model.anti_collapse
  model = dataclasses.replace(model, anti_collapse=dataclasses.replace(
      ac, var_weight=ac.var_weight or 1.0, cov_weight=ac.cov_weight or 1.0,
      sigreg_weight=ac.sigreg_weight or 1.0))
  d, b = run.data, run.batch_size
  source = open_source(d.dataset, d.split, d.data_dir)
  images = np.stack([eval_transform(source.load(i), d.image_size, d.channels, 1.0)
                     for i in range(b)])  # the first b training images, whole
  images = (images.astype(np.float32) / 255.0 - np.asarray(d.mean)) / np.asarray(d.std)
  batch = {'images': images.astype(np.float32),
           **run.sampler(b, run.seed, 0)._asdict()}
  state = nn.unbox(create_train_state(model, jax.random.key(run.seed), batch))
  print(f'{run.arch.variant} width {run.arch.width}, batch {b}, '
        f'anti_collapse.embeddings={ac.embeddings}, {ac.sigreg_directions} SIGReg directions')
  print(f'{"term":10s} {"value":>10s} {"|grad| (context encoder)":>26s}')
  for name in ('jepa_loss', 'var_loss', 'cov_loss', 'sigreg'):
    value, g = jax.value_and_grad(
        lambda p, n=name: loss_terms(model, p, state.target_params, batch, 0)[n])(state.params)
    print(f'{name:10s} {float(value):10.4g} {float(optax.tree.norm(g["encoder"])):26.4g}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
