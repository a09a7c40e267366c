"""Image sources and the official image transforms, on the host, in numpy and Pillow.

A source is random access: `len(source)` images, `source.load(i)` decodes
image `i` to a Pillow image (or raises `CorruptImageError` naming it),
`source.open(i)` reads only its header (the pixels are decoded later, by
`load_pixels`, at a scale the caller may still choose), and in-memory and
folder sources also hold `labels`. Three kinds:

- `ArraySource`: images already in memory (the embedded Fashion-MNIST).
- `FolderSource`: an image-folder tree `root/<split>/<class>/*.jpg|jpeg|png`.
- `TfdsSource`: a TFDS dataset prepared on disk or in a bucket, ArrayRecord
  (TFDS data sources) or TFRecord (our record index + TFDS's numpy parser),
  both without TensorFlow; images are taken as encoded bytes and decoded
  here, so a corrupt one can be skipped.

Transforms follow the official recipe (torchvision on Pillow images):
RandomResizedCrop with scale (0.3, 1.0), ratio (3/4, 4/3), bilinear; optional
horizontal flip; evaluation resizes the short side to size / 0.875 and takes
the centre crop. Given an image that is only opened, the training crop decodes
a JPEG at 1/2, 1/4 or 1/8 scale (in the DCT, much cheaper) when the crop box
still has `size` pixels per side at that scale. Images leave the host as uint8
(4x less traffic than float32); `pixels.normalize` (mean/std) runs on the device
inside the jitted step.
"""

import contextlib
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

  def open(self, index: int) -> Image.Image: ...

  def name(self, index: int) -> str: ...

  def label(self, index: int) -> int: ...


@contextlib.contextmanager
def _named_errors(name: str):
  """Pillow's errors while reading an image -> CorruptImageError naming it."""
  try:
    yield
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise CorruptImageError(f'{name}: {type(e).__name__}: {e}') from None


def open_image(data: bytes, name: str) -> Image.Image:
  """Encoded bytes -> a Pillow image with its header read and its pixels not yet decoded
  (Pillow decodes lazily), so that a JPEG's decoding scale can still be chosen
  (`Image.draft`); CorruptImageError if the header cannot be read."""
  with _named_errors(name):
    return Image.open(io.BytesIO(data))


def load_pixels(img: Image.Image, name: str) -> Image.Image:
  """Decode an opened image's pixels (nothing to do if decoded); CorruptImageError if that
  fails (a truncated file only shows here)."""
  with _named_errors(name):
    img.load()
  return img


def decode(data: bytes, name: str) -> Image.Image:
  """Encoded bytes -> a fully decoded Pillow image; CorruptImageError if that fails."""
  return load_pixels(open_image(data, name), name)


def open_file(path: str) -> Image.Image:
  """The image file at `path`, read into memory, its header parsed (`open_image`);
  CorruptImageError if it cannot be read."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise CorruptImageError(f'{path}: unreadable: {e}') from None
  return open_image(data, path)


def read_image(path: str) -> Image.Image:
  """The decoded image file at `path`; CorruptImageError if it cannot be read or decoded."""
  return load_pixels(open_file(path), path)


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

  open = load  # already pixels

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

  def open(self, index: int) -> Image.Image:
    return open_file(self.paths[index])

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
      have = (sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root)
              else [])
      raise DataMissingError(
          f'image folder split {self.root} does not exist: the folder holds '
          f'{", ".join(have) or "no split folders"}; name a split folder with data.split (for '
          'training) or evals.train_split / evals.test_split (for evaluation; test by default), '
          'each holding one folder per class')
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
    return read_image(self.name(index))

  def open(self, index: int) -> Image.Image:
    return open_file(self.name(index))

  def name(self, index: int) -> str:
    return os.path.join(self.root, self.files[index])

  def label(self, index: int) -> int:
    return int(self.labels[index])


def _version(name: str) -> tuple[int, ...] | None:
  parts = name.split('.')
  if len(parts) == 3 and all(p.isdigit() for p in parts):
    return tuple(int(p) for p in parts)
  return None


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
      raise DataMissingError(f'data.dataset={name!r}: {base} holds builder configs '
                             f'{sorted(configs)}, not versions; set data.dataset={name}/<config>')
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
    return load_pixels(self.open(index), self.name(index))

  def open(self, index: int) -> Image.Image:
    try:
      record = self._get(int(index))
    except Exception as e:  # noqa: BLE001  (any damaged record: skipped like a damaged image)
      raise CorruptImageError(f'{self.name(index)}: unreadable record: {e}') from None
    return open_image(record['image'], self.name(index))

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
                            scale: Sequence[float],
                            ratio: Sequence[float]) -> tuple[int, int, int, int]:
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


def draft_scale(box_width: int, box_height: int, size: int) -> int:
  """The JPEG decoding scale divisor for a crop box resized to `size`: the largest of 8, 4
  and 2 at which the box keeps at least `size` pixels on each side, else 1. libjpeg makes
  the reduced image in the DCT, at a fraction of the cost; the crop is downsampled to
  `size` anyway, so it keeps its full resolution."""
  return next((s for s in (8, 4, 2) if min(box_width, box_height) >= s * size), 1)


def train_transform(img: Image.Image, rng: np.random.Generator, size: int, channels: int,
                    scale: Sequence[float], ratio: Sequence[float], flip: bool,
                    name: str = 'image') -> np.ndarray:
  """RandomResizedCrop(size, scale, ratio, bilinear) [+ flip] -> uint8 [size, size, channels].

  `img` is decoded, or only opened (`Source.open`; `name` names it in a CorruptImageError
  if its pixels do not decode). The box is drawn from the image's size; an opened JPEG is
  then decoded at 1/`draft_scale` of its size (`Image.draft`) and the box mapped onto the
  reduced image. At scale 1 (the box is under 2 * `size` on a side, or the image is not an
  opened JPEG) this is torchvision's crop then bilinear resize, to the bit. Grey images
  become 3-channel (and colour ones grey) to match `channels`.
  """
  width, height = img.size
  top, left, h, w = random_resized_crop_box(rng, height, width, scale, ratio)
  box = (left, top, left + w, top + h)
  s = draft_scale(w, h, size)
  drafted = img.draft(None, (width // s, height // s)) if s > 1 else None
  if drafted:  # the original image spans (0, 0, width / s, height / s) of the reduced one
    fx, fy = drafted[1][2] / width, drafted[1][3] / height
    box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
  img = load_pixels(img, name)
  # crop whole pixels (the box's, at scale 1), then resize the box's exact extent in them
  x0, y0, x1, y1 = box
  ix0, iy0 = math.floor(x0), math.floor(y0)
  crop = img.crop((ix0, iy0, min(math.ceil(x1), img.width), min(math.ceil(y1), img.height)))
  if crop.mode != _mode(channels):  # per pixel: the same before or after the crop
    crop = crop.convert(_mode(channels))
  out = crop.resize((size, size), Image.Resampling.BILINEAR,
                    box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0))
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
  if w <= h:
    nw, nh = short, max(short, round(h * short / w))
  else:
    nw, nh = max(short, round(w * short / h)), short
  img = img.resize((nw, nh), Image.Resampling.BILINEAR)
  left, top = (nw - size) // 2, (nh - size) // 2
  return _to_array(img.crop((left, top, left + size, top + size)), channels)

