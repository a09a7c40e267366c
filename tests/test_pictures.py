"""Pictures: the mask picture's coloured patches are exactly the sampler's indices (read
back from the PNG), for both modes, from the module and from the draw_masks command; the
feature picture's PCA; the plot command's PNG."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ijepa_jax.spec import mask_config
from ijepa_jax import fashion_mnist
from ijepa_jax.masks import MaskSampler
from ijepa_jax.pictures import (GAP, TITLE, feature_picture, feature_picture_size,
                                mask_picture, mask_picture_size, panel_layout, pca_rgb,
                                save_png)
from helpers import ROOT, check_section, load



@pytest.mark.parametrize('mode', ['official', 'corrected'])
def test_mask_picture_shows_the_samplers_indices(tmp_path, mode):
  config = load('vitb16')  # 224 px, 14 x 14 patches of 16 px
  config.masks.mode = mode
  masks = MaskSampler(mask_config(config))(3, seed=5, step=7)._asdict()
  rng = np.random.default_rng(0)
  images = np.repeat(rng.integers(0, 256, (3, 224, 224, 1), dtype=np.uint8), 3, axis=-1)
  picture = mask_picture(images, [(f'{mode} mode', masks)], patch=16)
  save_png(tmp_path / 'm.png', picture)
  back = np.asarray(Image.open(tmp_path / 'm.png'))
  assert back.shape[:2] == mask_picture_size(3, 4, 224) == (TITLE + 3 * (224 + GAP) + GAP,
                                                             GAP + 7 * (224 + GAP))
  check_section(back, GAP, masks, 3, 224, 14)


@pytest.mark.parametrize('strategy, m', [('random', 1), ('block', 1), ('rasterized', 3)])
def test_mask_picture_of_each_strategy(strategy, m):
  """The masking ablation's strategies: their sections, from the monitor's builder, colour
  exactly the sampler's patches (random: scattered; block: one rectangle; rasterized:
  one quadrant of context, three of targets)."""
  from ijepa_jax.monitor import mask_sections
  config = load('vitb16')
  config.masks.mode, config.masks.strategy = 'corrected', strategy
  sections = mask_sections(mask_config(config), 3, seed=5, step=7)
  assert [t.split(':')[0] for t, _ in sections] == [
      f'{strategy} strategy, corrected mode (this config)']
  masks = MaskSampler(mask_config(config))(3, seed=5, step=7)._asdict()
  for k, v in masks.items():
    np.testing.assert_array_equal(sections[0][1][k], v)
  rng = np.random.default_rng(0)
  images = np.repeat(rng.integers(0, 256, (3, 224, 224, 1), dtype=np.uint8), 3, axis=-1)
  picture = mask_picture(images, sections, patch=16)
  assert picture.shape[:2] == mask_picture_size(3, m, 224)
  check_section(picture, GAP, masks, 3, 224, 14)


@pytest.mark.slow
@pytest.mark.skipif(fashion_mnist.missing_files(None), reason='dataset-fashion-mnist not installed')
def test_draw_masks_command(tmp_path):
  """For the demo (Fashion-MNIST on the machine) and for ViT-L/16 (ImageNet absent: grey
  squares): the PNG's size and, for both modes, the coloured patches = the sampler's."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  for name, size, patch, extra in (('demo', 28, 4, []),
                                   ('vitl16', 224, 16, ['--config.masks.num_targets=3'])):
    out = tmp_path / f'{name}.png'
    proc = subprocess.run([sys.executable, '-m', 'ijepa_jax.tools.draw_masks',
                           f'--config=configs/{name}.py', f'--out={out}', '--num_images=2',
                           '--step=3', *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = load(name)
    for arg in extra:
      config.masks.num_targets = int(arg.split('=')[1])
    m = config.masks.num_targets
    picture = np.asarray(Image.open(out).convert('RGB'))
    assert picture.shape[:2] == mask_picture_size(2, m, size, sections=2)
    p, stride = panel_layout(size)
    section = TITLE + 2 * stride
    modes = sorted(('official', 'corrected'), key=lambda x: x != config.masks.mode)
    for s, mode in enumerate(modes):
      config.masks.mode = mode
      masks = MaskSampler(mask_config(config))(2, seed=config.seed, step=3)._asdict()
      check_section(picture, GAP + s * section, masks, 2, size, size // patch)
  assert 'grey squares' in proc.stdout  # ImageNet is not on this machine
  # an impossible setting is an error that names the fields, exit 2
  proc = subprocess.run([sys.executable, '-m', 'ijepa_jax.tools.draw_masks',
                         '--config=configs/demo.py', f'--out={tmp_path / "x.png"}',
                         '--config.masks.min_keep=40'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'min_keep' in proc.stderr and not (tmp_path / 'x.png').exists()


def test_pca_colours_follow_the_principal_axes():
  rng = np.random.default_rng(0)
  # three centred, mutually orthogonal coefficient vectors over the 2 x 49 tokens
  q = np.linalg.qr(np.column_stack([np.ones(98), rng.normal(size=(98, 3))]))[0][:, 1:]
  a, b, c = (q[:, i].reshape(2, 49) * 10 for i in range(3))
  d = np.linalg.qr(rng.normal(size=(32, 32)))[0]  # an orthonormal basis
  tokens = (10 * a[..., None] * d[0] + 4 * b[..., None] * d[1] + 1 * c[..., None] * d[2]
            + 0.01 * rng.normal(size=(2, 49, 32)))
  rgb = pca_rgb(tokens).reshape(-1, 3).astype(float)
  for channel, truth in zip(range(3), (a, b, c)):
    assert abs(np.corrcoef(rgb[:, channel], truth.reshape(-1))[0, 1]) > 0.95


def test_feature_picture_layout():
  images = np.zeros((3, 28, 28, 1), np.uint8)
  images[:, 10:20, 10:20] = 200
  tokens = np.random.default_rng(0).normal(size=(3, 49, 16))
  pic = feature_picture(images, tokens, (7, 7), 'step 0')
  assert pic.shape == feature_picture_size(3, 28) + (3,) == (TITLE + 3 * 116 + GAP,
                                                             GAP + 3 * 116, 3)
  p = 112
  np.testing.assert_array_equal(pic[TITLE + GAP + 40:TITLE + GAP + 80, GAP + 40:GAP + 80], 200)
  fmap = pic[TITLE + GAP + (p + GAP):TITLE + GAP + (p + GAP) + p, GAP:GAP + p]
  # 16 x 16 cells, one per patch: constant inside each cell
  assert (fmap[:16, :16] == fmap[0, 0]).all() and fmap.reshape(-1, 3).std(0).max() > 10


@pytest.mark.slow
def test_plot_command(tmp_path):
  rows = [{'step': s, 'loss': 1 / s, 'lr': 1e-3 * min(s, 5) / 5, 'weight_decay': 0.04 + s * 1e-3,
           'momentum': 0.996 + s * 1e-4} for s in range(1, 11)]
  rows += [{'step': 5, 'eval_knn_top1': 0.5, 'eval_linear_top1': 0.6},
           {'step': 10, 'health_effective_rank': 5.0, 'health_feature_std_mean': 0.04},
           {'step': 10, 'final_knn_top1': 0.55, 'baseline_knn_top1': 0.4}]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 11, "lo')  # torn last line
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-m', 'ijepa_jax.tools.plot', f'--workdir={tmp_path}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  picture = np.asarray(Image.open(tmp_path / 'pictures' / 'curves.png').convert('RGB'))
  assert picture.shape == (800, 1500, 3)
  # the tool draws exactly the rows before the torn line (the library's drawing of them) ...
  from ijepa_jax.pictures import curves_image
  np.testing.assert_array_equal(picture, curves_image(rows))
  # ... and each series lands in its own panel: another loss changes the top-left one only
  other = curves_image([dict(r, loss=float(r['step'])) if 'loss' in r else r for r in rows])
  ys, xs = np.nonzero((other != curves_image(rows)).any(axis=-1))
  assert len(ys) > 1000 and ys.max() < 400 and xs.max() < 500
  proc = subprocess.run([sys.executable, '-m', 'ijepa_jax.tools.plot',
                         f'--workdir={tmp_path / "no"}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'metrics.jsonl does not exist' in proc.stderr


def test_short_runs_draw_their_points():
  """A run of one log line and one health check draws them (a line through one point draws
  nothing): the loss panel and the health panel change when the point is there."""
  from ijepa_jax.pictures import curves_image
  empty = curves_image([])
  one = curves_image([{'step': 20, 'loss': 0.5, 'lr': 1e-3, 'weight_decay': 0.04,
                       'momentum': 0.996},
                      {'step': 20, 'health_effective_rank': 5.0, 'health_feature_std_mean': 0.04}])
  ys, xs = np.nonzero((one != empty).any(axis=-1))
  loss_panel = (ys < 400) & (xs < 500)
  health_panel = (ys > 400) & (xs > 1000)
  # the axes' tick labels move too; the markers add a dot's worth of coloured pixels
  blue = (one[..., 2] > 150) & (one[..., 0] < 100)
  assert blue[:400, :500].sum() > 10 and loss_panel.sum() > 10 and health_panel.sum() > 10

