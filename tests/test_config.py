"""Config errors surface before anything compiles, naming the field and the fix."""

import importlib.util
import os

import jax
import pytest

from ijepa_jax import config as cfg_lib
from ijepa_jax import trainer
from ijepa_jax.spec import resolve
from ijepa_jax.checkpoint import CheckpointError
from helpers import load



@pytest.mark.parametrize('name', ['demo', 'fashion_mnist_long', 'vits16', 'vitb16', 'vitl16',
                                  'vith14', 'vith16_448', 'vitg16'])
def test_configs_validate(name):
  c = load(name)
  run = resolve(c, num_devices=8)
  assert run.model.encoder.width == run.arch.width > 0


@pytest.mark.parametrize('name', ['demo', 'vitl16', 'vitg16'])
def test_blocks_unrolled_by_default_except_on_tpus(name):
  c = load(name)
  for platform, scan in (('gpu', False), ('cpu', False), ('tpu', True)):
    run = resolve(c, 8, platform=platform)
    model = run.model
    scans = (model.encoder.scan_layers, model.predictor.scan_layers, run.arch.scan_layers)
    assert scans == (scan,) * 3
  c.model.scan_layers = True  # a set value wins everywhere
  assert resolve(c, 8, platform='gpu').model.encoder.scan_layers
  c.model.scan_layers = False
  assert not resolve(c, 8, platform='tpu').model.predictor.scan_layers


@pytest.mark.parametrize('name', ['vits16', 'vitb16', 'vitl16', 'vith14', 'vith16_448', 'vitg16'])
def test_paper_recipes_keep_the_official_objective(name):
  c = load(name)
  model = resolve(c, 8).model
  assert not model.anti_collapse.active and model.loss == 'smooth_l1'
  assert c.model.patch_init == 'official'
  # representation targets (the predictor maps back to the encoder's width) and multi-block masks
  assert model.target_space == 'representation' and model.predictor.out_dim is None
  assert c.masks.strategy == 'multiblock'


def test_paper_recipes():
  c = load('vith14')
  assert (c.model.patch_size, c.data.image_size, c.num_epochs,
          c.optim.warmup_epochs) == (14, 224, 300, 40)
  assert resolve(c, 8).steps_per_epoch == 625 and c.batch_size == 2048
  assert (c.optim.start_lr, c.optim.lr, c.optim.final_lr) == (2e-4, 1e-3, 1e-6)
  assert (c.optim.weight_decay, c.optim.final_weight_decay,
          tuple(c.optim.ema)) == (0.04, 0.4, (0.996, 1.0))
  assert c.masks.mode == 'official' and c.masks.min_keep == 10 and c.loss == 'smooth_l1'
  g = load('vitg16')
  assert (g.model.variant, g.model.pred_depth, g.num_epochs,
          g.optim.warmup_epochs) == ('giant', 16, 44, 3)
  h448 = load('vith16_448')
  assert (h448.model.patch_size, h448.data.image_size) == (16, 448)
  assert load('vitl16').model.variant == 'large'


@pytest.mark.parametrize('field,value,match', [
    ('data.image_size', 30, 'multiple of model.patch_size'),
    ('batch_size', 100, 'divisible by the 8 devices'),
    ('model.variant', 'enormous', 'model.variant'),
    ('model.num_heads', 5, 'divisible by model.num_heads'),
    ('masks.min_keep', 40, 'min_keep'),
    ('masks.mode', 'random', 'masks.mode'),
    ('masks.strategy', 'stripes', 'masks.strategy'),
    ('masks.target_fraction', 1.5, r'masks.target_fraction=1.5 must be in \(0, 1\)'),
    ('loss', 'l1', 'loss'),
    ('model.dtype', 'float16', 'model.dtype'),
    ('optim.lr', -1.0, 'optim.lr'),
    ('optim.ema', (0.999, 0.99), 'optim.ema'),
    ('num_epochs', 0.0, 'num_epochs'),
    ('mesh.fsdp', 3, 'mesh'),
    ('model.remat_policy', 'some', 'remat_policy'),
    ('data.crop_scale', (0.0, 1.0), r'data.crop_scale=\(0.0, 1.0\) must satisfy 0 < min'),
    ('data.crop_ratio', (2.0, 1.0), 'data.crop_ratio'),
    ('data.mean', (0.5, 0.5, 0.5), 'data.mean has 3 values but data.channels=1'),
    ('data.std', (0.0,), 'data.std'),
    ('data.workers', 0, 'data.workers=0'),
    ('data.prefetch', 0, 'data.prefetch'),
    ('data.data_dir', '/no/such/dir', "data.data_dir='/no/such/dir' is not a directory"),
    ('data.dataset', 'image_folder', 'image_folder needs data.data_dir'),
    ('data.split', '', 'data.split'),
    ('data.dataset_size', 0, 'data.dataset_size'),
    ('steps_per_epoch', 0, 'steps_per_epoch=0'),
    ('checkpoint.every', 0, 'checkpoint.every=0'),
    ('checkpoint.keep', 0, 'checkpoint.keep=0'),
    ('checkpoint.keep_every', -1, 'checkpoint.keep_every'),
    ('nonfinite', 'ignore', "nonfinite='ignore'"),
    ('init_from', '/no/such/run', 'init_from=.*does not exist'),
    ('init_from_mode', 'optimizer', 'init_from_mode'),
    ('max_steps', 0, 'max_steps'),
    ('log_every', 0, 'log_every'),
    ('checkpoint.keep_every', 250,
     'checkpoint.keep_every=250 must be a multiple of checkpoint.every=100'),
    ('anti_collapse.var_weight', -1.0,
     'anti_collapse.var_weight=-1.0 must be a finite number >= 0'),
    ('anti_collapse.sigreg_weight', float('nan'), 'anti_collapse.sigreg_weight'),
    ('anti_collapse.embeddings', 'tokens', "anti_collapse.embeddings='tokens'"),
    ('anti_collapse.sigreg_points', 1, 'sigreg_points=1'),
    ('anti_collapse.target_std', 0.0, 'anti_collapse.target_std'),
    ('target_space', 'latent', "target_space='latent': choose one of"),
    ('model.patch_init', 'xavier', "model.patch_init='xavier'"),
])
def test_bad_values(field, value, match):
  c = load('demo')
  section, _, key = field.rpartition('.')
  (c[section] if section else c)[key] = value
  with pytest.raises(cfg_lib.ConfigError, match=match):
    resolve(c, num_devices=8)


def test_bucket_urls_only_where_they_work(tmp_path):
  c = load('demo')
  c.data.data_dir = 'gs://bucket/fashion'
  with pytest.raises(cfg_lib.ConfigError, match='bucket URLs work for TFDS datasets'):
    resolve(c, num_devices=8)
  c = load('demo')
  c.init_from = 'gs://bucket/run'
  with pytest.raises(cfg_lib.ConfigError, match='init_from'):
    resolve(c, num_devices=8)
  if importlib.util.find_spec('gcsfs') is None:  # else it would try the network
    with pytest.raises(CheckpointError, match=r'gs:// install the gcs extra'):
      trainer.train_and_evaluate(load('demo'), 'gs://bucket/work')


def test_errors_before_compiling(tmp_path, capsys, monkeypatch):
  """A bad value stops train_and_evaluate before any jit is built."""
  def no_jit(*a, **k):
    raise AssertionError('compiled before validating')
  monkeypatch.setattr(jax, 'jit', no_jit)
  c = load('demo')
  c.masks.min_keep = 40
  with pytest.raises(cfg_lib.ConfigError, match='min_keep'):
    trainer.train_and_evaluate(c, str(tmp_path))


def test_vitl16_without_imagenet_stops_before_compiling(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(jax, 'jit', lambda *a, **k: (_ for _ in ()).throw(AssertionError('jit')))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no_such_dir'))
  c = load('vitl16')
  c.batch_size = 64
  with pytest.raises(trainer.DataMissingError, match='imagenet2012.*data_dir'):
    trainer.train_and_evaluate(c, str(tmp_path / 'work'))
  assert os.path.isdir(tmp_path / 'work')  # the workdir was checked (written) first


def test_missing_fashion_mnist(tmp_path):
  c = load('demo')
  c.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='apt-get install -y dataset-fashion-mnist'):
    trainer.train_and_evaluate(c, str(tmp_path / 'work'))
