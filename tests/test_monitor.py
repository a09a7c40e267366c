"""A short demo run with everything the monitor does: the TensorBoard scalars equal the
metrics.jsonl rows (read back with TensorBoard's reader), the pictures are there (PNG and
TensorBoard), the mask picture shows the first batch's masks, and the collapse alarm's
warning reaches the log, the metrics and final.json."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ijepa_jax.spec import mask_config
from ijepa_jax import fashion_mnist
from ijepa_jax.masks import MaskSampler
from ijepa_jax.monitor import feature_steps
from ijepa_jax.pictures import GAP, feature_picture_size, mask_picture_size
from ijepa_jax.reporting import tag_for
from helpers import check_section, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_feature_steps():
  assert feature_steps(468, 5) == {0, 117, 234, 351, 468}
  assert feature_steps(10, 1) == {10} and feature_steps(10, 0) == set()


@pytest.mark.slow
@pytest.mark.skipif(fashion_mnist.missing_files(None), reason='dataset-fashion-mnist not installed')
def test_a_monitored_run(tmp_path):
  run = tmp_path / 'run'
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  args = ['--config.max_steps=6', '--config.log_every=3', '--config.batch_size=64',
          '--config.evals.every=3', '--config.evals.at_end=False',
          '--config.evals.train_examples=300', '--config.evals.test_examples=100',
          '--config.evals.probe_steps=50', '--config.monitor.health_every=3',
          '--config.monitor.feature_maps=3', '--config.monitor.feature_images=4',
          '--config.monitor.collapse_std_floor=10.0']  # far above any real std: the alarm fires
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/demo.py',
                         f'--workdir={run}', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert 'parameters (blocks stacked on a leading depth axis):' in out
  assert 'encoder 201,152 | predictor 29,696 | total 230,848' in out
  assert 'WARNING at step 3: the representation is collapsing (mean per-dimension std' in out
  assert 'WARNING at step 6: still collapsing' in out
  assert '\r' not in out  # stdout is a pipe here: no live line
  final = json.load(open(run / 'final.json'))
  assert final['collapse_warnings'] == 2

  rows = [json.loads(line) for line in open(run / 'metrics.jsonl')]
  health = [r for r in rows if 'health_effective_rank' in r]
  assert [r['step'] for r in health] == [3, 6]
  assert all(r['health_collapse_warning'] == 1.0 for r in health)
  # the health checks' and feature maps' time is counted apart from the throughput
  train = [r for r in rows if 'images_per_sec' in r]
  assert [r['step'] for r in train] == [3, 6]
  assert 0 < train[0]['monitor_seconds'] < train[1]['monitor_seconds']
  assert final['monitor_seconds'] == pytest.approx(train[1]['monitor_seconds'])
  assert 0 < final['monitor_fraction'] < 1

  acc = EventAccumulator(str(run), size_guidance={'scalars': 0, 'images': 0})
  acc.Reload()
  tags = set(acc.Tags()['scalars'])
  for key in ('loss', 'lr', 'weight_decay', 'momentum', 'grad_norm', 'images_per_sec',
              'images_per_sec_per_device', 'eval_knn_top1', 'eval_linear_top1',
              'health_effective_rank', 'health_feature_std_mean', 'health_pred_cosine'):
    assert tag_for(key) in tags, key
  n = 0
  for row in rows:  # every number of every row, at its step
    for key, value in row.items():
      if key != 'step':
        (event,) = [e for e in acc.Scalars(tag_for(key)) if e.step == row['step']]
        assert event.value == pytest.approx(value, rel=1e-6, abs=1e-30), key
        n += 1
  assert n > 40
  assert set(acc.Tags()['images']) == {'pictures/masks', 'pictures/features', 'pictures/curves'}
  assert [e.step for e in acc.Images('pictures/features')] == [0, 3, 6]

  pics = run / 'pictures'
  assert sorted(os.listdir(pics)) == ['curves.png', 'features_step0000000.png',
                                      'features_step0000003.png', 'features_step0000006.png',
                                      'masks.png']
  assert np.asarray(Image.open(pics / 'curves.png')).shape[:2] == (800, 1500)
  assert np.asarray(Image.open(pics / 'features_step0000003.png')).shape[:2] == \
      feature_picture_size(4, 28)
  # the mask picture: the first batch's masks (positions 0-3 of global batch 0) in this config's
  # (corrected) mode, then the official sampler's for the same images
  picture = np.asarray(Image.open(pics / 'masks.png').convert('RGB'))
  assert picture.shape[:2] == mask_picture_size(4, 4, 28, sections=2)
  config = load('demo')
  masks = MaskSampler(mask_config(config))(64, seed=0, step=0)._asdict()
  check_section(picture, GAP, {k: v[:4] for k, v in masks.items()}, 4, 28, 7)
  config.masks.mode = 'official'
  masks = MaskSampler(mask_config(config))(4, seed=0, step=0)._asdict()
  check_section(picture, GAP + mask_picture_size(4, 4, 28)[0] - GAP, masks, 4, 28, 7)

  # the same command again on the finished run: nothing to do, and nothing it wrote changes
  before = {f: open(run / f, 'rb').read() for f in ('final.json', 'metrics.jsonl')}
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/demo.py',
                         f'--workdir={run}', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0 and 'already trained: checkpoint 6 of 6 steps' in proc.stdout
  assert {f: open(run / f, 'rb').read() for f in before} == before
