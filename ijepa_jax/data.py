"""Image sources and the official image transforms, on the host, in numpy and Pillow.

A source is random access: `len(source)` images, `source.load(i)` decodes
image `i` to a Pillow image (or raises `CorruptImageError` naming it), and
in-memory and folder sources also hold `labels`. Three kinds:

- `ArraySource`: images already in memory (the embedded Fashion-MNIST).
- `FolderSource`: an image-folder tree `root/<split>/<class>/*.jpg|jpeg|png`.
- `TfdsSource`: a TFDS dataset prepared on disk or in a bucket, ArrayRecord
  (TFDS data sources) or TFRecord (our record index + TFDS's numpy parser),
  both without TensorFlow; images are taken as encoded bytes and decoded
  here, so a corrupt one can be skipped.

Transforms follow the official recipe (torchvision on Pillow images):
RandomResizedCrop with scale (0.3, 1.0), ratio (3/4, 4/3), bilinear; optional
horizontal flip; evaluation resizes the short side to size / 0.875 and takes
the centre crop. Images leave the host as uint8 (4x less traffic than float32);
`pixels.normalize` (mean/std) runs on the device inside the jitted step.
"""

import io
import math
import os
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from ijepa_jax import fashion_mnist

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
TFDS_HOW_TO = ('prepare it once with `tfds build {name} --data_dir=<dir>` (for ImageNet, download '
               'the archives by hand and add `--manual_dir=<folder with them>`; '
               '`--file_format=array_record` is the faster format to read) and pass '
               '--config.data.data_dir=<dir> (or set TFDS_DATA_DIR). Nothing is downloaded for you')


class CorruptImageError(ValueError):
  """An image that cannot be decoded; the pipeline skips it and counts it."""


class DataMissingError(FileNotFoundError):
  """The configured dataset is not on this machine; the message says how to get it."""


class Source(Protocol):
  def __len__(self) -> int: ...

  def load(self, index: int) -> Image.Image: ...

  def name(self, index: int) -> str: ...

  def label(self, index: int) -> int: ...


def decode(data: bytes, name: str) -> Image.Image:
  """Encoded bytes -> a fully decoded Pillow image; CorruptImageError if that fails."""
  try:
    img = Image.open(io.BytesIO(data))
    img.load()  # Pillow decodes lazily; truncation only shows here
    return img
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise CorruptImageError(f'{name}: {type(e).__name__}: {e}') from None


def read_image(path: str) -> Image.Image:
  """The decoded image file at `path`; CorruptImageError if it cannot be read or decoded."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise CorruptImageError(f'{path}: unreadable: {e}') from None
  return decode(data, path)


class ArraySource:
  """In-memory uint8 images [N, H, W] or [N, H, W, C] with their labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, name: str = 'array'):
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
      raise ValueError(f'ArraySource wants uint8 [N, H, W(, C)] images, got {images.dtype} '
                       f'{images.shape}')
    self.images = images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images
    self.labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels)
    self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
    self._name = name

  def __len__(self) -> int:
    return len(self.images)

  def load(self, index: int) -> Image.Image:
    return Image.fromarray(self.images[index])

  def name(self, index: int) -> str:
    return f'{self._name}[{index}]'

  def label(self, index: int) -> int:
    return int(self.labels[index])


class ImageFiles:
  """Every image under `root` at any depth, in sorted path order: a source without labels
  (`num_classes` None; `label` is -1), e.g. a loose folder to embed. `what` names the
  setting in errors."""

  def __init__(self, root: str, what: str = 'the image folder'):
    if not os.path.isdir(root):
      raise DataMissingError(f'{what}={root!r} is not a folder')
    self.paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                        if f.lower().endswith(IMAGE_EXTENSIONS))
    if not self.paths:
      raise DataMissingError(f'{what}={root!r} holds no {"/".join(IMAGE_EXTENSIONS)} images')
    self.num_classes = None

  def __len__(self) -> int:
    return len(self.paths)

  def load(self, index: int) -> Image.Image:
    return read_image(self.paths[index])

  def name(self, index: int) -> str:
    return self.paths[index]

  def label(self, index: int) -> int:
    del index
    return -1


class FolderSource:
  """`root/<split>/<class>/<image>`: classes are the sorted sub-folder names."""

  def __init__(self, root: str, split: str):
    self.root = os.path.join(root, split)
    if not os.path.isdir(self.root):
      raise DataMissingError(
          f'image folder split {self.root} does not exist: data.data_dir must hold one folder '
          f'per split (here {split!r}, from data.split), each with one folder per class')
    classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
    files, labels = [], []
    for label, cls in enumerate(classes):
      names = sorted(e.name for e in os.scandir(os.path.join(self.root, cls))
                     if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
      files += [os.path.join(cls, n) for n in names]
      labels += [label] * len(names)
    if not files:
      raise DataMissingError(
          f'image folder split {self.root} holds no images: expected '
          f'{self.root}/<class>/<name>{{{",".join(IMAGE_EXTENSIONS)}}}')
    self.classes = classes
    self.num_classes = len(classes)
    self.files = files
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.files)

  def load(self, index: int) -> Image.Image:
    return read_image(os.path.join(self.root, self.files[index]))

  def name(self, index: int) -> str:
    return os.path.join(self.root, self.files[index])

  def label(self, index: int) -> int:
    return int(self.labels[index])


def _version(name: str) -> tuple[int, ...] | None:
  parts = name.split('.')
  return tuple(int(p) for p in parts) if len(parts) == 3 and all(p.isdigit() for p in parts) else None


def tfds_dataset_dir(name: str, data_dir: str) -> str:
  """`<data_dir>/<name>/<version>` of a prepared TFDS dataset (the newest version), or
  DataMissingError. `name` may carry a builder config: `imagenet2012_subset/10pct`.
  Works on local paths and buckets alike (TFDS's `etils.epath`)."""
  from etils import epath
  base = epath.Path(data_dir) / name
  versions = []
  if base.is_dir():
    versions = [(v, d) for d in base.iterdir() if (v := _version(d.name)) is not None
                and (d / 'dataset_info.json').exists()]  # skips a killed build's incomplete.*
  if not versions:
    configs = [d.name for d in base.iterdir() if d.is_dir()] if base.is_dir() else []
    if configs:
      raise DataMissingError(f'data.dataset={name!r}: {base} holds builder configs {sorted(configs)}'
                             f', not versions; set data.dataset={name}/<config>')
    raise DataMissingError(f'data.dataset={name!r}: no prepared TFDS dataset under {base}; '
                           + TFDS_HOW_TO.format(name=name.split('/')[0]))
  return str(max(versions)[1])


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    table.append(c)
  return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> bytes:
  """TFRecord's masked CRC-32C (Castagnoli) of `data`, as its 4 little-endian bytes."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, 'little')


class TfRecordFiles:
  """Random access to the records of TFRecord files, without TensorFlow.

  The files are indexed once (each record is `uint64 length, uint32 masked
  CRC-32C of the length, data, uint32 masked CRC-32C of the data`; only the
  headers are read and the length's CRC is checked), then record `i` is one
  seek and one read. The data CRC is not checked: a damaged record fails to
  parse and is skipped like a damaged image. A damaged length ends the
  file's index there, with a warning.
  """

  def __init__(self, paths: Sequence[str]):
    from etils import epath  # TFDS's path library: local files and buckets alike
    self.paths = [epath.Path(p) for p in paths]
    offsets, lengths, files = [], [], []
    for k, path in enumerate(self.paths):
      o, n = self._scan(path)
      offsets += o
      lengths += n
      files += [k] * len(o)
    self.offsets = np.asarray(offsets, np.int64)
    self.lengths = np.asarray(lengths, np.int64)
    self.files = np.asarray(files, np.int32)

  @staticmethod
  def _scan(path) -> tuple[list[int], list[int]]:
    offsets, lengths = [], []
    size = path.stat().length
    with path.open('rb') as f:
      pos = 0
      while pos + 12 <= size:
        f.seek(pos)
        head = f.read(12)
        n = int.from_bytes(head[:8], 'little')
        if len(head) < 12 or pos + 12 + n + 4 > size:
          break  # a truncated tail: index what is whole
        if masked_crc32c(head[:8]) != head[8:12]:
          print(f'warning: {path}: damaged record header at byte {pos}; the rest of this file '
                'is not read', flush=True)
          break
        offsets.append(pos + 12)
        lengths.append(n)
        pos += 12 + n + 4
    return offsets, lengths

  def __len__(self) -> int:
    return len(self.offsets)

  def __getitem__(self, index: int) -> bytes:
    with self.paths[self.files[index]].open('rb') as f:
      f.seek(int(self.offsets[index]))
      return f.read(int(self.lengths[index]))


class TfdsSource:
  """A prepared TFDS dataset, random access without TensorFlow.

  ArrayRecord datasets are read through TFDS's data sources; TFRecord ones
  through `TfRecordFiles` and TFDS's numpy example parser.
  """

  def __init__(self, name: str, split: str, data_dir: str):
    import tensorflow_datasets as tfds  # imported here: only this source needs it
    path = tfds_dataset_dir(name, data_dir)
    builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
      raise DataMissingError(f'data.split={split!r}: {path} has splits '
                             f'{sorted(builder.info.splits)}; set data.split to one of them')
    features = builder.info.features
    if 'image' not in features:
      raise DataMissingError(f'{path} has no "image" feature (features: {sorted(features)})')
    decoders = {'image': tfds.decode.SkipDecoding()}  # keep the bytes: we decode (and skip)
    fmt = getattr(builder.info.file_format, 'value', str(builder.info.file_format))
    if fmt == 'array_record':
      ds = builder.as_data_source(split=split, decoders=decoders)
      self._len, self._get = len(ds), ds.__getitem__
    elif fmt == 'tfrecord':
      files = TfRecordFiles([str(p) for p in builder.info.splits[split].filepaths])
      self._len = len(files)
      self._get = lambda i: features.deserialize_example_np(files[i], decoders=decoders)
      expected = builder.info.splits[split].num_examples
      if len(files) != expected:
        print(f'warning: {name}/{split}: dataset_info says {expected} records, the TFRecord '
              f'files hold {len(files)} whole ones (a truncated shard?); using those', flush=True)
    else:
      raise DataMissingError(f'{path} is prepared as {fmt}; re-prepare it with `tfds build '
                             f'{name} --file_format=array_record --data_dir=<dir>`')
    if self._len == 0:
      raise DataMissingError(f'data.split={split!r} of {path} is empty')
    self.file_format = fmt
    self._desc = f'{name}/{split}'
    label = features['label'] if 'label' in features else None
    self.num_classes = getattr(label, 'num_classes', None)

  def __len__(self) -> int:
    return self._len

  def load(self, index: int) -> Image.Image:
    try:
      record = self._get(int(index))
    except Exception as e:  # a damaged record: skip it like a damaged image
      raise CorruptImageError(f'{self.name(index)}: unreadable record: {e}') from None
    return decode(record['image'], self.name(index))

  def name(self, index: int) -> str:
    return f'{self._desc}[{index}]'

  def label(self, index: int) -> int:
    """The record's `label` (a second read of the record; evaluation only)."""
    if self.num_classes is None:
      raise DataMissingError(f'{self._desc} has no class "label" feature: the probes need one')
    return int(self._get(int(index))['label'])


def open_source(dataset: str, split: str, data_dir: str) -> Source:
  """The source a config names (data.dataset / data.split / data.data_dir)."""
  if dataset == 'fashion_mnist':
    fm_split = {'train': 'train', 'test': 'test', 'validation': 'test'}.get(split)
    if fm_split is None:
      raise DataMissingError(f"data.split={split!r}: fashion_mnist has 'train' and 'test'")
    images, labels = fashion_mnist.load(fm_split, data_dir or None)
    return ArraySource(images, labels, f'fashion_mnist/{fm_split}')
  if dataset == 'image_folder':
    if not data_dir:
      raise DataMissingError('data.dataset=image_folder needs data.data_dir=<root> '
                             '(holding <root>/<split>/<class>/*.jpg)')
    return FolderSource(data_dir, split)
  root = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')
  return TfdsSource(dataset, split, root)


class Sources:
  """`sources(dataset, split, data_dir)`: each source opened once and handed out again, so
  that one start opens a split once however many parts of the run read it (the training
  data, the evaluation splits, the monitor's pictures; on an ImageNet folder each open lists
  1.28M files)."""

  def __init__(self):
    self._open: dict[tuple[str, str, str], Source] = {}

  def __call__(self, dataset: str, split: str, data_dir: str) -> Source:
    key = (dataset, split, data_dir)
    if key not in self._open:
      self._open[key] = open_source(dataset, split, data_dir)
    return self._open[key]


# -- transforms ---------------------------------------------------------------

def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Sequence[float], ratio: Sequence[float]) -> tuple[int, int, int, int]:
  """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws it.

  Ten tries for a box of area fraction in `scale` and aspect (w/h) in
  `ratio` (log-uniform); then the largest centred box whose aspect is clamped
  into `ratio`.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _mode(channels: int) -> str:
  return 'L' if channels == 1 else 'RGB'


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
  arr = np.asarray(img)  # uint8 for modes L and RGB (asking for the dtype costs a second copy)
  return arr[..., None] if channels == 1 else arr


def train_transform(img: Image.Image, rng: np.random.Generator, size: int, channels: int,
                    scale: Sequence[float], ratio: Sequence[float], flip: bool) -> np.ndarray:
  """RandomResizedCrop(size, scale, ratio, bilinear) [+ flip] -> uint8 [size, size, channels].

  Grey images become 3-channel (and colour ones grey) to match `channels`.
  """
  if img.mode != _mode(channels):
    img = img.convert(_mode(channels))
  top, left, h, w = random_resized_crop_box(rng, img.height, img.width, scale, ratio)
  # crop, then resize, as torchvision does: Pillow's resize(box=) would also read the pixels
  # just outside the box at its edges
  out = img.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)
  if flip and rng.random() < 0.5:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return _to_array(out, channels)


def eval_transform(img: Image.Image, size: int, channels: int,
                   crop_fraction: float = 0.875) -> np.ndarray:
  """Resize the short side to size / crop_fraction (bilinear), centre-crop size x size."""
  if img.mode != _mode(channels):
    img = img.convert(_mode(channels))
  short = int(round(size / crop_fraction))
  w, h = img.size
  nw, nh = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
  img = img.resize((nw, nh), Image.Resampling.BILINEAR)
  left, top = (nw - size) // 2, (nh - size) // 2
  return _to_array(img.crop((left, top, left + size, top + size)), channels)

