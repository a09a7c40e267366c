"""Reader for the embedded default data: Fashion-MNIST IDX files (Debian's
dataset-fashion-mnist)."""

import gzip
import os

import numpy as np

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
MEAN, STD = 0.2860, 0.3530  # pixel statistics of the training split (in [0, 1])
NUM_CLASSES = 10
HOW_TO_GET = ('install it with '
              '`sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist` '
              f'(it lands in {DEFAULT_DIR}), or put the four IDX .gz files of '
              'https://github.com/zalandoresearch/fashion-mnist in a folder and pass '
              '--config.data.data_dir=<that folder>')


def missing_files(data_dir: str | None) -> list[str]:
  """Paths of the expected IDX files that are absent (empty when all are there)."""
  data_dir = data_dir or DEFAULT_DIR
  return [os.path.join(data_dir, f) for pair in FILES.values() for f in pair
          if not os.path.isfile(os.path.join(data_dir, f))]


def _read_idx(path: str) -> np.ndarray:
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f'{path} is not an unsigned-byte IDX file (bad magic {raw[:4]!r})')
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f'{path} is truncated or corrupt: header says {dims}, '
                     f'found {data.size} bytes of data')
  return data.reshape(dims)


def load(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28], labels int32 [N]) for split 'train' (60k) or 'test' (10k)."""
  if split not in FILES:
    raise ValueError(f'fashion_mnist split {split!r}: choose one of {sorted(FILES)}')
  data_dir = data_dir or DEFAULT_DIR
  missing = missing_files(data_dir)
  if missing:
    raise FileNotFoundError(f'Fashion-MNIST not found ({missing[0]} is missing): {HOW_TO_GET}')
  images, labels = (_read_idx(os.path.join(data_dir, f)) for f in FILES[split])
  if len(images) != len(labels):
    raise ValueError(f'Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels')
  return images, labels.astype(np.int32)


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1], standardised."""
  return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[..., None]
