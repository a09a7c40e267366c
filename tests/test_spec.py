"""The config resolved once (ijepa_jax/spec.py): typed parts that name every config field,
every -1 worked out, and one open per data split in a whole start of the trainer."""

import dataclasses
import os

import ml_collections
import pytest

from ijepa_jax import data as data_lib
from ijepa_jax import trainer
from ijepa_jax.config import ConfigError
from ijepa_jax.input_pipeline import TransformConfig
from ijepa_jax.probes import ProbeSettings
from ijepa_jax.recipes import base_config
from ijepa_jax.spec import (CheckpointSpec, DataSpec, EvalSpec, MonitorSpec, _section,
                            resolve)
from helpers import brightness_folder, folder_config, load


def names(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def test_each_section_names_every_config_field():
  c = base_config()
  assert names(DataSpec) == set(c.data)
  assert names(MonitorSpec) == set(c.monitor)
  assert names(CheckpointSpec) == set(c.checkpoint)
  resolved_here = {'probe', 'configured_dataset', 'configured_data_dir'}
  assert names(EvalSpec) - resolved_here | names(ProbeSettings) == set(c.evals)
  assert not names(EvalSpec) & names(ProbeSettings)


def test_a_field_the_dataclass_lacks_is_an_error():
  section = ml_collections.ConfigDict(dict(base_config().monitor, new_field=1))
  with pytest.raises(TypeError, match='new_field'):
    _section(MonitorSpec, section)


def test_the_demo_resolved():
  run = resolve(load('demo'), num_devices=8, platform='cpu', dataset_size=60000)
  a = run.arch
  assert (a.width, a.depth, a.num_heads, a.mlp_dim, a.patch_size,
          a.grid) == (64, 4, 4, 256, 4, (7, 7))
  assert (a.pred_width, a.pred_depth, a.pred_heads, a.pred_out) == (32, 2, 4, 64)
  assert a.attention_backends == {'encoder': 'xla', 'predictor': 'xla'}
  assert run.steps_per_epoch == 60000 // 128 == 468
  assert run.total_steps == int(1.25 * 468) == 585
  assert run.mesh == (8, 1)
  assert run.data.workers == (os.cpu_count() or 1)  # -1: one per core
  assert TransformConfig.of(run.data).scale == (1.0, 1.0)
  assert (run.evals.dataset, run.evals.data_dir) == ('fashion_mnist', '')  # '' -> data.*
  assert (run.evals.configured_dataset, run.evals.probe.knn_k) == ('', 20)
  assert run.masks.context_len == 32 and run.sampler.context_len == 32
  assert run.model.anti_collapse.var_weight == 1.0
  assert run.config_dict()['data']['dataset_size'] == 60000


def test_pixel_targets_resolve_the_predictor_output():
  c = load('demo')
  c.target_space = 'pixels'
  assert resolve(c, 1).arch.pred_out == 4 * 4 * 1  # a patch's pixels


def test_without_a_dataset_size_the_schedule_is_unknown():
  c = load('vitl16')
  c.data.dataset_size = -1
  run = resolve(c, 8)
  assert run.steps_per_epoch is None and run.total_steps is None
  c.data.dataset_size = 100  # a size smaller than the batch: the schedule check runs
  with pytest.raises(ConfigError, match='smaller than batch_size'):
    resolve(c, 8)
  c.data.dataset_size = -1
  with pytest.raises(ConfigError, match='smaller than batch_size'):
    resolve(c, 8, dataset_size=100)
  with pytest.raises(ConfigError, match='smaller than batch_size'):
    run.sized(100)


@pytest.mark.slow
def test_a_start_opens_each_split_once(tmp_path, monkeypatch):
  """Training, the early check of the evaluation data, the periodic and final evaluators,
  the baseline and the monitor's pictures all read the same two splits: each opened once."""
  brightness_folder(str(tmp_path / 'data'))
  c = folder_config(tmp_path / 'data')
  c.batch_size, c.num_epochs, c.log_every = 16, 0.4, 1  # 80 images: 2 steps
  c.model.pred_width, c.model.pred_depth = 16, 1
  c.evals.every, c.evals.at_end, c.evals.baseline = 1, True, True
  c.evals.train_examples = c.evals.test_examples = 16
  c.evals.final_probes = ('knn',)
  c.evals.periodic_probes = ('knn',)
  c.monitor.pictures, c.monitor.health_every, c.monitor.tensorboard = True, 1, False
  opened = []
  real = data_lib.open_source

  def counting(dataset, split, data_dir):
    opened.append((dataset, split))
    return real(dataset, split, data_dir)

  monkeypatch.setattr(data_lib, 'open_source', counting)
  last = trainer.train_and_evaluate(c, str(tmp_path / 'work'))
  assert last['step'] == 2 and 'final_knn_top1' in last and 'baseline_knn_top1' in last
  assert sorted(opened) == [('image_folder', 'train'), ('image_folder', 'val')]
  assert os.path.exists(tmp_path / 'work' / 'pictures')


def test_the_opened_data_sizes_the_run():
  """A run resolved before its data is open is sized by it: a configured dataset size must
  be the split's, a configured steps_per_epoch wins over the split's whole batches."""
  c = load('demo')  # batch 128
  c.data.dataset_size = 60000  # a template's size
  with pytest.raises(ConfigError, match=r'data.dataset_size=60000 but my/split has 1000 images; '
                     r'pass --config.data.dataset_size=-1'):
    resolve(c, 8).sized(1000, 'my/split')
  c.data.dataset_size = -1
  run = resolve(c, 8)
  assert (run.steps_per_epoch, run.total_steps) == (None, None)
  sized = run.sized(1000)
  assert (sized.steps_per_epoch, sized.total_steps) == (1000 // 128, int(1.25 * 7))
  assert sized.model.schedules.total_steps == int(1.25 * 7)  # the schedules follow
  assert sized.config_dict()['data']['dataset_size'] == 1000
  assert sized.sampler is run.sampler  # built once
  c.steps_per_epoch = 3
  assert resolve(c, 8).sized(1000).steps_per_epoch == 3
  c.steps_per_epoch = 10  # 1,280 images an epoch from 1,000
  with pytest.raises(ConfigError, match='steps_per_epoch=10 x batch_size=128 is more images'):
    resolve(c, 8).sized(1000)
