import gzip

import numpy as np
import pytest

from ijepa_jax import fashion_mnist


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_dir(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (('train', 30), ('test', 10)):
    img, lab = fashion_mnist.FILES[split]
    write_idx(tmp_path / img, rng.integers(0, 256, (n, 28, 28)))
    write_idx(tmp_path / lab, rng.integers(0, 10, (n,)))
  return tmp_path


def test_reads_idx(fake_dir):
  x, y = fashion_mnist.load('test', str(fake_dir))
  assert x.shape == (10, 28, 28) and x.dtype == np.uint8 and y.shape == (10,)
  norm = fashion_mnist.normalize(x)
  assert norm.shape == (10, 28, 28, 1)
  np.testing.assert_allclose(norm[0, 3, 4, 0], (x[0, 3, 4] / 255 - 0.2860) / 0.3530, rtol=1e-5)


def test_truncated_file_is_a_clear_error(fake_dir):
  path = fake_dir / fashion_mnist.FILES['test'][0]
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(raw[:1000])
  with pytest.raises(ValueError, match='truncated or corrupt'):
    fashion_mnist.load('test', str(fake_dir))


def test_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match='dataset-fashion-mnist'):
    fashion_mnist.load('train', str(tmp_path))


@pytest.mark.skipif(fashion_mnist.missing_files(None), reason='dataset-fashion-mnist not installed')
def test_real_data():
  x, y = fashion_mnist.load('train')
  assert x.shape == (60000, 28, 28) and set(np.unique(y)) == set(range(10))
  assert abs(x.mean() / 255 - fashion_mnist.MEAN) < 1e-3
