import numpy as np

from ijepa_jax.input_pipeline import ArrayBatches, prefetch
from ijepa_jax.masks import MaskConfig, MaskSampler

MASKS = MaskSampler(MaskConfig(grid=(7, 7), mode='corrected', min_keep=2))
IMAGES = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1) * np.ones((1, 28, 28, 1), np.float32)


def ids(batch):
  return batch['images'][:, 0, 0, 0].astype(int)


def test_processes_are_disjoint_and_cover_the_epoch():
  parts = [ArrayBatches(IMAGES, 20, seed=1, masks=MASKS, process_index=p, process_count=4)
           for p in range(4)]
  seen = np.concatenate([ids(src(step)) for step in range(5) for src in parts])
  assert len(seen) == 100 and len(np.unique(seen)) == 100  # one epoch, every image once
  a, b = parts[0](7), ArrayBatches(IMAGES, 20, 1, MASKS, 0, 4)(7)
  np.testing.assert_array_equal(ids(a), ids(b))  # a function of (seed, step, process)
  np.testing.assert_array_equal(a['ctx_idx'], b['ctx_idx'])
  assert a['images'].shape == (5, 28, 28, 1) and a['ctx_idx'].shape == (5, MASKS.context_len)


def test_epochs_reshuffle():
  src = ArrayBatches(IMAGES, 50, seed=0, masks=MASKS)
  assert not np.array_equal(np.sort(ids(src(0))), np.sort(ids(src(2))))


def test_prefetch_order_and_errors():
  out = [b for b in prefetch(lambda s: {'s': s}, 3, 8)]
  assert [b['s'] for b in out] == [3, 4, 5, 6, 7]

  def bad(step):
    if step == 2:
      raise OSError('disk gone')
    return step
  got = []
  try:
    for v in prefetch(bad, 0, 5):
      got.append(v)
  except OSError as e:
    assert 'disk gone' in str(e)
  assert got == [0, 1]
