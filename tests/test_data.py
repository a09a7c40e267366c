"""Sources and transforms: TFDS ArrayRecord and TFRecord without TensorFlow, RandomResizedCrop
(with the reduced JPEG decode), eval crop."""

import io
import math
import os

import numpy as np
import pytest
from PIL import Image

from ijepa_jax import data, pixels
from ijepa_jax.input_pipeline import Batches, TransformConfig
from ijepa_jax.masks import MaskConfig, MaskSampler


def _png(value, shape=(20, 16, 3)):
  buf = io.BytesIO()
  Image.fromarray(np.full(shape, value, np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  """A TFDS dataset prepared on disk as ArrayRecord, built here without TensorFlow."""
  tfds = pytest.importorskip('tensorflow_datasets')
  root = tmp_path_factory.mktemp('tfds')

  class TinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(24), 'empty_ish': self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'image': io.BytesIO(_png(10 * i)), 'label': i % 3}

  TinyImages(data_dir=str(root), file_format='array_record').download_and_prepare()
  return str(root)


def test_tfds_array_record_source(tiny_tfds):
  src = data.open_source('tiny_images', 'train', tiny_tfds)
  assert len(src) == 24
  values = sorted(int(np.asarray(src.load(i))[0, 0, 0]) for i in range(24))
  assert values == [10 * i for i in range(24)]  # every record, decoded by us from its bytes
  pipe = Batches(src, 8, 0, MaskSampler(MaskConfig(grid=(8, 8), mode='corrected', min_keep=2)),
                 TransformConfig(8, 3), process_index=1, process_count=2, workers=2)
  batch = pipe(0)
  assert batch['images'].shape == (4, 8, 8, 3) and batch['skipped'] == []


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> bytes:
  return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, 'little')


def _as_tfrecord(array_record_dir, out_dir):
  """The same dataset in TFDS's TFRecord layout: same serialized examples, TFRecord framing
  (length, masked CRC-32C of it, data, masked CRC-32C of the data), fileFormat tfrecord."""
  from array_record.python.array_record_data_source import ArrayRecordDataSource
  os.makedirs(out_dir)
  for name in os.listdir(array_record_dir):
    src = os.path.join(array_record_dir, name)
    if '.array_record-' not in name:
      if name == 'dataset_info.json':
        text = open(src).read().replace('"array_record"', '"tfrecord"')
        open(os.path.join(out_dir, name), 'w').write(text)
      elif os.path.isfile(src):
        open(os.path.join(out_dir, name), 'wb').write(open(src, 'rb').read())
      continue
    records = ArrayRecordDataSource([src])
    with open(os.path.join(out_dir, name.replace('.array_record-', '.tfrecord-')), 'wb') as f:
      for i in range(len(records)):
        data = records[i]
        head = len(data).to_bytes(8, 'little')
        f.write(head + _masked(_crc32c(head)) + data + _masked(_crc32c(data)))


def test_tfds_tfrecord_source_without_tensorflow(tiny_tfds, tmp_path):
  _as_tfrecord(os.path.join(tiny_tfds, 'tiny_images', '1.0.0'),
               tmp_path / 'tiny_images' / '1.0.0')
  src = data.open_source('tiny_images', 'train', str(tmp_path))
  assert src.file_format == 'tfrecord' and len(src) == 24
  values = sorted(int(np.asarray(src.load(i))[0, 0, 0]) for i in range(24))
  assert values == [10 * i for i in range(24)]
  # a shard cut mid-record: the whole records before the cut are still read
  shard = next(p for p in (tmp_path / 'tiny_images' / '1.0.0').iterdir()
               if 'train.tfrecord' in p.name)
  raw = shard.read_bytes()
  shard.write_bytes(raw[:len(raw) - 10])
  assert len(data.open_source('tiny_images', 'train', str(tmp_path))) == 23


def test_record_header_crc_matches_an_independent_crc32c():
  for payload in (b'', b'a', (1234).to_bytes(8, 'little'), bytes(range(256))):
    assert data.masked_crc32c(payload) == _masked(_crc32c(payload))
  assert _crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value


def test_damaged_record_header_ends_that_files_index(tiny_tfds, tmp_path, capsys):
  _as_tfrecord(os.path.join(tiny_tfds, 'tiny_images', '1.0.0'), tmp_path / 'tiny_images' / '1.0.0')
  shard = next(p for p in (tmp_path / 'tiny_images' / '1.0.0').iterdir()
               if 'train.tfrecord' in p.name)
  raw = bytearray(shard.read_bytes())
  first = int.from_bytes(raw[:8], 'little')
  third = 2 * (12 + first + 4)  # records of one PNG size: the third header starts here
  assert int.from_bytes(raw[third:third + 8], 'little') == first
  raw[third] ^= 0xFF  # a flipped bit in the third record's length
  shard.write_bytes(bytes(raw))
  assert len(data.open_source('tiny_images', 'train', str(tmp_path))) == 2
  assert 'damaged record header' in capsys.readouterr().out


def test_tfds_version_choice(tmp_path):
  for v in ('9.0.0', '10.0.0', 'incomplete.ABC_11.0.0'):
    os.makedirs(tmp_path / 'ds' / v)
    (tmp_path / 'ds' / v / 'dataset_info.json').write_text('{}')
  os.makedirs(tmp_path / 'ds' / '12.0.0')  # no dataset_info.json: not prepared
  assert data.tfds_dataset_dir('ds', str(tmp_path)).endswith('/ds/10.0.0')
  os.makedirs(tmp_path / 'multi' / '10pct' / '5.0.0')
  with pytest.raises(data.DataMissingError, match=r"builder configs \['10pct'\].*multi/<config>"):
    data.tfds_dataset_dir('multi', str(tmp_path))


def test_tfds_missing_dataset_and_split(tiny_tfds, tmp_path):
  with pytest.raises(data.DataMissingError, match=r'tfds build imagenet2012.*--manual_dir'):
    data.open_source('imagenet2012', 'train', str(tmp_path))
  with pytest.raises(data.DataMissingError, match="data.split='validation'"):
    data.open_source('tiny_images', 'validation', tiny_tfds)


def test_random_resized_crop_box_follows_torchvision_rules():
  rng = np.random.default_rng(0)
  for h, w in ((224, 224), (300, 500), (500, 120)):
    for _ in range(500):
      top, left, ch, cw = data.random_resized_crop_box(rng, h, w, (0.3, 1.0), (3 / 4, 4 / 3))
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
      if (ch, cw) != (h, w) and not (cw == w or ch == h):  # a box from the ten tries
        # rounding each side can move the area and aspect by at most one pixel's worth
        assert 0.3 * h * w * 0.98 <= ch * cw <= 1.0 * h * w
        assert 3 / 4 * 0.95 <= cw / ch <= 4 / 3 * 1.05
  # impossible scale: the fallback is the whole image clamped to the ratio, centred
  top, left, ch, cw = data.random_resized_crop_box(rng, 100, 400, (2.0, 2.0), (3 / 4, 4 / 3))
  assert (ch, cw) == (100, round(100 * 4 / 3)) and left == (400 - cw) // 2 and top == 0


def test_train_transform_matches_crop_then_bilinear_resize():
  """torchvision's RandomResizedCrop on a Pillow image: crop the box, then resize bilinearly."""
  img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
  rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
  out = data.train_transform(img, rng_a, 32, 3, (0.3, 1.0), (3 / 4, 4 / 3), flip=False)
  top, left, h, w = data.random_resized_crop_box(rng_b, 60, 80, (0.3, 1.0), (3 / 4, 4 / 3))
  ref = np.asarray(img.crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR))
  np.testing.assert_array_equal(out, ref)
  # scale (1, 1) and ratio (1, 1) on a square image at its own size: the identity
  sq = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
  same = data.train_transform(sq, rng_a, 8, 1, (1.0, 1.0), (1.0, 1.0), flip=False)
  np.testing.assert_array_equal(same[..., 0], np.asarray(sq))


SCALE, RATIO = (0.3, 1.0), (3 / 4, 4 / 3)


def photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
  """A JPEG with structure at 30-100 px in every channel: a crop off by a pixel shows."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  rng = np.random.default_rng(seed)
  arr = np.stack([127 + 90 * np.sin(x / rng.uniform(5, 15) + y / rng.uniform(7, 20) + c)
                  for c in range(3)], -1)
  buf = io.BytesIO()
  Image.fromarray(arr.astype(np.uint8)).save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def test_draft_scale_keeps_size_pixels_per_side():
  assert [data.draft_scale(w, h, 224) for w, h in
          ((447, 900), (448, 448), (900, 895), (896, 900), (1792, 1800), (5000, 4000))] == [
              1, 2, 2, 4, 8, 8]
  assert data.draft_scale(100, 100, 224) == 1  # an upsampled crop: never reduced


def test_opened_jpeg_decodes_reduced_where_the_box_allows():
  """Opened (not decoded), a JPEG is decoded at 1/s of its size when the crop box keeps
  `size` pixels per side at 1/s: its size says so, and the crop is within 2.5 uint8 levels
  (mean) of torchvision's crop + resize of the full decode (a box off by one reduced pixel
  is ~24 off). Where s is 1, it is that crop to the bit."""
  jpeg = photo_jpeg(640, 480)
  full = data.decode(jpeg, 'photo')
  scales = set()
  for size in (64, 112, 224):
    for seed in range(4):
      top, left, h, w = data.random_resized_crop_box(np.random.default_rng(seed), 480, 640,
                                                     SCALE, RATIO)
      ref = np.asarray(full.crop((left, top, left + w, top + h)).resize((size, size),
                                                                        Image.BILINEAR))
      img = data.open_image(jpeg, 'photo')
      out = data.train_transform(img, np.random.default_rng(seed), size, 3, SCALE, RATIO, False)
      s = data.draft_scale(w, h, size)
      assert img.size == (math.ceil(640 / s), math.ceil(480 / s)), (size, seed)
      if s == 1:
        np.testing.assert_array_equal(out, ref)
      else:
        assert np.abs(out.astype(int) - ref).mean() < 2.5, (size, seed, s)
      scales.add(s)
  assert scales == {1, 2, 4}


def test_only_opened_jpegs_decode_reduced():
  """A PNG, or a JPEG decoded before the crop: the whole image, torchvision's crop exactly."""
  jpeg = photo_jpeg(640, 480)
  buf = io.BytesIO()
  data.decode(jpeg, 'photo').save(buf, format='PNG')
  rng = lambda: np.random.default_rng(3)
  top, left, h, w = data.random_resized_crop_box(rng(), 480, 640, SCALE, RATIO)
  assert data.draft_scale(w, h, 64) > 1
  for img in (data.open_image(buf.getvalue(), 'png'), data.decode(jpeg, 'photo')):
    ref = np.asarray(img.crop((left, top, left + w, top + h)).resize((64, 64), Image.BILINEAR))
    out = data.train_transform(img, rng(), 64, 3, SCALE, RATIO, False)
    assert img.size == (640, 480)
    np.testing.assert_array_equal(out, ref)


def test_opened_truncated_jpeg_is_a_corrupt_image_named():
  truncated = photo_jpeg(640, 480)[:3000]
  img = data.open_image(truncated, 'cut.jpg')  # the header reads
  with pytest.raises(data.CorruptImageError, match=r'^cut\.jpg: OSError'):
    data.train_transform(img, np.random.default_rng(0), 64, 3, SCALE, RATIO, False, 'cut.jpg')
  with pytest.raises(data.CorruptImageError, match=r'^cut\.jpg: OSError'):
    data.decode(truncated, 'cut.jpg')


def test_flip_is_half_the_time():
  img = Image.fromarray(np.tile(np.arange(8, dtype=np.uint8), (8, 1)))
  flips = 0
  for seed in range(200):
    out = data.train_transform(img, np.random.default_rng(seed), 8, 1, (1, 1), (1, 1), flip=True)
    flips += int(out[0, 0, 0] == 7)
  assert 70 < flips < 130


def test_eval_transform_resizes_short_side_and_centre_crops():
  img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8))
  out = data.eval_transform(img, 224, 3)
  assert out.shape == (224, 224, 3)
  short = round(224 / 0.875)  # 256
  resized = img.resize((round(400 * short / 300), short), Image.BILINEAR)
  left, top = (resized.width - 224) // 2, (256 - 224) // 2
  np.testing.assert_array_equal(out, np.asarray(resized)[top:top + 224, left:left + 224])


def test_normalize_on_device():
  x = np.array([[[0, 255, 51]]], np.uint8)
  out = np.asarray(pixels.normalize(x, (0.0, 0.5, 0.2), (1.0, 0.5, 0.1)))
  np.testing.assert_allclose(out[0, 0], [0.0, 1.0, 0.0], atol=1e-6)


def test_image_files_take_every_image_under_a_folder(tmp_path):
  for rel in ('b/2.png', 'a/deep/1.jpg', 'c.JPEG', 'notes.txt'):
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    if rel.endswith('.txt'):
      (tmp_path / rel).write_text('not an image')
    else:
      Image.fromarray(np.full((4, 5, 3), 7, np.uint8)).save(tmp_path / rel, format='PNG')
  src = data.ImageFiles(str(tmp_path), '--images')
  assert [os.path.relpath(src.name(i), tmp_path) for i in range(len(src))] == [
      'a/deep/1.jpg', 'b/2.png', 'c.JPEG']  # sorted paths, any depth, case-blind extensions
  assert src.num_classes is None and src.label(0) == -1
  assert np.asarray(src.load(1)).shape == (4, 5, 3)
  with pytest.raises(data.DataMissingError, match="--images='.*nope' is not a folder"):
    data.ImageFiles(str(tmp_path / 'nope'), '--images')
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(data.DataMissingError, match='holds no .jpg/.jpeg/.png images'):
    data.ImageFiles(str(tmp_path / 'empty'))
