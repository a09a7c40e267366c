"""What several test modules share: configs by name, the tiny model and its batches, the
mask picture's read-back, and the comparisons of runs. Test modules import this, never
each other."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from bench import load_config
from bench.faults import DAMAGE_KINDS, damage
from ijepa_jax.masks import MaskConfig, MaskSampler
from ijepa_jax.models import Predictor, VisionTransformer
from ijepa_jax.pictures import GAP, TITLE, panel_layout
from ijepa_jax.recipes import base_config
from ijepa_jax.schedules import Schedules
from ijepa_jax.train_step import IJepa, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = jnp.float32
B = 16  # the tiny model's batch
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
load = load_config  # configs/<name>.py's config, by name


# ------------------------------------------------------------------ the tiny model on 24 px RGB

def tiny_model(grad_clip=0.0):
  sched = Schedules.from_epochs(steps_per_epoch=10, num_epochs=10, warmup_epochs=1)
  return IJepa(VisionTransformer(4, 32, 2, 4, dtype=F32),
               Predictor((6, 6), 32, 16, 1, 4, dtype=F32),
               make_optimizer(sched, grad_clip=grad_clip), sched)


def batch_for(step, seed=0, strategy='multiblock'):
  masks = MaskSampler(MaskConfig(grid=(6, 6), mode="corrected", min_keep=2,
                                 target_scale=(0.15, 0.25), strategy=strategy))
  images = np.random.default_rng(seed).integers(0, 256, size=(B, 24, 24, 3), dtype=np.uint8)
  return {'images': images, **masks(B, 0, step)._asdict()}


def float_batch(step):
  b = batch_for(step)
  return dict(b, images=b['images'].astype(np.float32) / 255.0)


def shapes_of(batch):
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


# ------------------------------------------------------------------ the mask picture, read back

def coloured_patches(panel: np.ndarray, grid: int) -> set[int]:
  """Raster indices of the patches whose centre pixel is not grey (R, G, B not all equal)."""
  cell = panel.shape[0] // grid
  out = set()
  for r in range(grid):
    for c in range(grid):
      px = panel[r * cell + cell // 2, c * cell + cell // 2].astype(int)
      if px.max() != px.min():
        out.add(r * grid + c)
  return out


def check_section(picture, y0, masks, k, size, grid):
  """Every panel of a section's rows against the sampler's (unpadded) index sets."""
  p, stride = panel_layout(size)
  m = masks['tgt_idx'].shape[1]
  for i in range(k):
    y = y0 + TITLE + i * stride
    panel = lambda j, y=y: picture[y:y + p, GAP + j * stride:GAP + j * stride + p]
    image = panel(0)
    assert (image.max(-1) == image.min(-1)).all()  # the (grey) image itself: no colour
    ctx = set(masks['ctx_idx'][i, :masks['ctx_len'][i]].tolist())
    assert coloured_patches(panel(1), grid) == ctx
    union = set(ctx)
    for j in range(m):
      tgt = set(masks['tgt_idx'][i, j, :masks['tgt_len'][i, j]].tolist())
      assert tgt and not tgt & ctx
      assert coloured_patches(panel(2 + j), grid) == tgt
      union |= tgt
    assert coloured_patches(panel(2 + m), grid) == union


# ------------------------------------------------------------------ runs compared

def losses(workdir):
  rows = map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
  return {r['step']: r['loss'] for r in rows if 'loss' in r}  # evaluation rows have none


def assert_same_state(a, b):
  assert [p for p, _ in a] == [p for p, _ in b]
  for (path, x), (_, y) in zip(a, b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


# a checkpoint directory damaged each way the chaos soak damages one
DAMAGE = {how: (lambda ck, how=how: damage(str(ck), how)) for how in DAMAGE_KINDS}


# ------------------------------------------------------------------ an image-folder dataset

def folder_config(root, size=32):
  """A tiny model on the image folder at `root` (<split>/<class>/*.png; val is the test split)."""
  c = base_config()
  c.model.variant = 'custom'
  c.model.width, c.model.depth, c.model.num_heads, c.model.patch_size = 32, 2, 4, 4
  c.masks.mode, c.masks.min_keep = 'corrected', 2
  c.model.dtype = 'float32'
  c.data.dataset, c.data.data_dir, c.data.image_size = 'image_folder', str(root), size
  c.data.workers = 2
  c.evals.test_split = 'val'
  c.evals.crop_fraction = 1.0
  c.evals.batch_size = 16
  return c


def brightness_folder(root, sizes=(('train', 40), ('val', 20)), seed=0):
  """Two classes told apart by brightness ('bright' ~200, 'dark' ~40), 16x16 RGB PNGs."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for split, n in sizes:
    for cls, level in (('bright', 200), ('dark', 40)):
      os.makedirs(os.path.join(root, split, cls))
      for i in range(n):
        img = np.clip(level + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, split, cls, f'{i}.png'))
