"""The host pipeline: per-process shards, determinism, corrupt images, prefetch."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from ijepa_jax import input_pipeline
from ijepa_jax.data import ArraySource, FolderSource
from ijepa_jax.input_pipeline import Batches, TransformConfig, prefetch
from ijepa_jax.masks import MaskConfig, MaskSampler

MASKS = MaskSampler(MaskConfig(grid=(7, 7), mode='corrected', min_keep=2))
# image i is filled with the value i, so a batch says which images it holds
IMAGES = np.repeat(np.arange(100, dtype=np.uint8)[:, None, None], 28, 1).repeat(28, 2)
FULL = TransformConfig(28, 1, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # identity crop


def ids(batch):
  return batch['images'][:, 0, 0, 0].astype(int)


def batches(images=IMAGES, global_batch=20, seed=1, p=0, n=1, transform=FULL, source=None):
  return Batches(source or ArraySource(images), global_batch, seed, MASKS, transform, p, n,
                 workers=2)


def test_processes_are_disjoint_and_cover_the_epoch():
  parts = [batches(p=p, n=4) for p in range(4)]
  per_process = [np.concatenate([ids(src(step)) for step in range(5)]) for src in parts]
  for a in range(4):
    for b in range(a + 1, 4):
      assert not set(per_process[a]) & set(per_process[b])  # disjoint shards
  seen = np.concatenate(per_process)
  assert len(seen) == 100 and len(np.unique(seen)) == 100  # one epoch, every image once
  a, b = parts[0](7), batches(p=0, n=4)(7)
  np.testing.assert_array_equal(a['images'], b['images'])  # a function of (seed, step, process)
  np.testing.assert_array_equal(a['ctx_idx'], b['ctx_idx'])
  assert a['images'].shape == (5, 28, 28, 1) and a['images'].dtype == np.uint8
  assert a['ctx_idx'].shape == (5, MASKS.context_len)


def test_global_batch_does_not_depend_on_the_process_count():
  """The same global batch (images and crops) whether 1, 2 or 4 processes read it."""
  crop = TransformConfig(28, 1)
  whole = batches(n=1, transform=crop)(3)['images']
  for n in (2, 4):
    parts = np.concatenate([batches(p=p, n=n, transform=crop)(3)['images'] for p in range(n)])
    np.testing.assert_array_equal(parts, whole)


def test_lookahead_gives_the_same_batches_in_any_order():
  """The next step's images are queued before a step's are collected; the batches are the
  same asked in order, out of order, or each from a fresh pipeline, and nothing piles up."""
  crop = TransformConfig(28, 1)
  fresh = {s: batches(transform=crop)(s) for s in (0, 1, 2, 5)}
  src = batches(transform=crop)
  for s in (0, 1, 2, 5, 1):  # in order, a jump, then back
    got = src(s)
    np.testing.assert_array_equal(got['images'], fresh[s]['images'])
    np.testing.assert_array_equal(got['ctx_idx'], fresh[s]['ctx_idx'])
    np.testing.assert_array_equal(got['tgt_len'], fresh[s]['tgt_len'])
    assert set(src._pending) == {s + 1}  # only the next step is queued
  src.close()


def test_epochs_reshuffle_and_drop_the_tail():
  src = batches(global_batch=30, seed=0)
  assert src.steps_per_epoch == 3  # 100 // 30; the last 10 of each epoch are dropped
  assert not np.array_equal(np.sort(ids(src(0))), np.sort(ids(src(3))))


def _write(path, value, fmt):
  Image.fromarray(np.full((40, 30, 3), value, np.uint8)).save(path, format=fmt)


def test_image_folder_skips_and_counts_corrupt_images(tmp_path):
  root = tmp_path / 'train'
  for c, cls in enumerate(('cat', 'dog')):
    os.makedirs(root / cls)
    for i in range(10):
      _write(root / cls / f'{i}.{"png" if i % 2 else "jpg"}', 10 * c + i,
             'PNG' if i % 2 else 'JPEG')
  (root / 'dog' / 'bad.jpg').write_bytes(b'not an image at all')
  good = io.BytesIO()
  _write(good, 7, 'JPEG')
  (root / 'cat' / 'truncated.jpg').write_bytes(good.getvalue()[:200])
  (root / 'cat' / 'notes.txt').write_text('ignored: not an image extension')
  src = FolderSource(str(tmp_path), 'train')
  assert len(src) == 22 and src.classes == ['cat', 'dog']
  assert np.bincount(src.labels).tolist() == [11, 11]
  pipe = batches(source=src, global_batch=22, transform=TransformConfig(16, 3))
  batch = pipe(0)  # the whole dataset: both bad files are in it
  assert batch['images'].shape == (22, 16, 16, 3)
  assert len(batch['skipped']) == 2
  assert any('bad.jpg' in s for s in batch['skipped'])
  assert any('truncated.jpg' in s for s in batch['skipped'])
  again = pipe(0)
  np.testing.assert_array_equal(again['images'], batch['images'])  # replacements are deterministic


def test_a_truncated_jpegs_replacement_gets_the_crop_it_always_got(tmp_path):
  """The box is drawn before the pixels are decoded, so a truncated JPEG fails after using
  the element's random draws; its replacement still gets the element's first draws."""
  from ijepa_jax.data import train_transform
  os.makedirs(tmp_path / 'train' / 'c')
  for i in range(4):
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8)).save(
        tmp_path / 'train' / 'c' / f'{i}.jpg')
  whole = (tmp_path / 'train' / 'c' / '0.jpg').read_bytes()
  (tmp_path / 'train' / 'c' / '0.jpg').write_bytes(whole[:len(whole) // 2])
  src = FolderSource(str(tmp_path), 'train')
  pipe = batches(source=src, global_batch=4, transform=TransformConfig(16, 3))
  out, skipped = pipe.element(5, 2, 0)
  assert len(skipped) == 1 and '0.jpg: OSError' in skipped[0]
  replacement = 7919 % 4
  rng = np.random.default_rng([input_pipeline._CROP_STREAM, 1, 5, 2])  # seed 1, step 5, position 2
  np.testing.assert_array_equal(
      out, train_transform(src.open(replacement), rng, 16, 3, (0.3, 1.0), (3 / 4, 4 / 3), False))


def test_grey_images_become_three_channels():
  src = ArraySource(IMAGES)
  out = batches(source=src, transform=TransformConfig(14, 3))(0)['images']
  assert out.shape == (20, 14, 14, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_empty_or_missing_split(tmp_path):
  from ijepa_jax.data import DataMissingError
  with pytest.raises(DataMissingError, match='does not exist'):
    FolderSource(str(tmp_path), 'train')
  os.makedirs(tmp_path / 'val' / 'cls')
  with pytest.raises(DataMissingError, match='holds no images'):
    FolderSource(str(tmp_path), 'val')


def test_prefetch_order_and_errors():
  out = [b for b in prefetch(lambda s: {'s': s}, 3, 8)]
  assert [b['s'] for b in out] == [3, 4, 5, 6, 7]

  def bad(step):
    if step == 2:
      raise OSError('disk gone')
    return step
  got = []
  with pytest.raises(OSError, match='disk gone'):
    for v in prefetch(bad, 0, 5):
      got.append(v)
  assert got == [0, 1]


def test_a_configured_epoch_length_is_honoured():
  """steps_per_epoch=2 over 100 images of batch 20: a new permutation every 2 steps."""
  short = Batches(ArraySource(IMAGES), 20, 1, MASKS, FULL, workers=2, steps_per_epoch=2)
  whole = batches()  # 5 steps an epoch
  assert (short.steps_per_epoch, whole.steps_per_epoch) == (2, 5)
  np.testing.assert_array_equal(ids(short(1)), ids(whole(1)))  # the same first epoch's order
  assert not np.array_equal(ids(short(2)), ids(whole(2)))       # then the next epoch's
  epoch1 = np.random.default_rng([input_pipeline._EPOCH_STREAM, 1, 1]).permutation(100)
  np.testing.assert_array_equal(ids(short(2)), epoch1[:20])
  with pytest.raises(ValueError, match='more images than the dataset holds'):
    Batches(ArraySource(IMAGES), 20, 1, MASKS, FULL, steps_per_epoch=6)
