"""Host input throughput: JPEG decode + RandomResizedCrop, images/s per core, before and after.

Writes realistic JPEGs (bench/jpegs.py: ImageNet-like, about 500x375 and 100 KB, or
--jpeg_size) into an image folder, then times the training pipeline (`Batches`, the exact
code the trainer runs: read, decode, crop, resize, uint8 batch) with 1..N worker threads,
two ways side by side, alternating, best of --repeats:

- `full decode`: each image decoded whole before its crop box is drawn (the code before
  the reduced decode; a source whose `open` is its `load`);
- `reduced decode`: the trainer's way: the box is drawn from the header and a JPEG is
  decoded at 1/2, 1/4 or 1/8 scale where the box keeps --size pixels per side at that scale.

It prints how far the two ways' crops differ (mean absolute difference in uint8 levels over
the first 200 images, how many of them were decoded reduced, and for scale how far bicubic
is from bilinear on the same crops). With --short_side, the
same again on copies of the folder made by `ijepa_jax.tools.prepare` at those short sides.
What normalising (mean/std) on the host would cost is printed too; the trainer does it on
the device.

  python -m bench.bench_input --images=2048 --batch=256 --threads=1,2 [--short_side=320]
      [--jpeg_size=1000x750]
"""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from bench import ROOT
from bench.jpegs import make_jpegs
from ijepa_jax import cli, data
from ijepa_jax.input_pipeline import Batches, TransformConfig
from ijepa_jax.masks import MaskConfig, MaskSampler
from ijepa_jax.pixels import IMAGENET_MEAN, IMAGENET_STD

flags.DEFINE_integer('images', 2048, 'JPEGs written and read per measurement.')
flags.DEFINE_integer('batch', 256, 'Images per batch.')
flags.DEFINE_integer('size', 224, 'The crops\' side in pixels.')
flags.DEFINE_string('jpeg_size', '', 'WxH of every JPEG (default: ImageNet-like, about 500x375)')
flags.DEFINE_string('short_side', '',
                    'also measure copies prepared at these short sides (comma-separated)')
flags.DEFINE_string('threads', ','.join(str(t) for t in sorted({1, os.cpu_count() or 1})),
                    'Worker thread counts to measure (comma-separated).')
flags.DEFINE_integer('repeats', 2, 'Measurements per way and thread count (the best is kept).')
flags.DEFINE_bool('masks', False, 'also sample the official masks per batch')
FLAGS = flags.FLAGS

DIFF_IMAGES = 200


class FullDecode:
  """A source whose images are decoded whole before the crop box is drawn."""

  def __init__(self, source: data.Source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def open(self, index: int):
    return self.source.load(index)

  def name(self, index: int) -> str:
    return self.source.name(index)


def rate(source, args, masks, threads: int) -> float:
  """Images/s of `Batches` over the folder (one warm-up batch first)."""
  pipe = Batches(source, args.batch, 0, masks, TransformConfig(args.size, 3), workers=threads)
  pipe(0)  # warm the page cache and the pool
  steps = max(1, args.images // args.batch)
  t0 = time.perf_counter()
  for step in range(steps):
    batch = pipe(step)
  dt = time.perf_counter() - t0
  pipe.close()
  assert batch['images'].shape == (pipe.local_batch, args.size, args.size, 3)
  return steps * args.batch / dt


def pixel_difference(source, size: int) -> tuple[float, float, int, int]:
  """Over the first images: (mean |reduced - full decode| in uint8 levels, the same for
  bicubic instead of bilinear on the full decode's crops, for scale; images decoded
  reduced, images compared)."""
  n = min(DIFF_IMAGES, len(source))
  diffs, filters, reduced = [], [], 0
  for i in range(n):
    img, full = source.open(i), source.load(i)
    width = img.width
    crop = [data.train_transform(im, np.random.default_rng(i), size, 3, (0.3, 1.0),
                                 (3 / 4, 4 / 3), False) for im in (img, full)]
    reduced += img.width < width  # draft() shrank it
    diffs.append(np.abs(crop[0].astype(np.int16) - crop[1]).mean())
    top, left, h, w = data.random_resized_crop_box(np.random.default_rng(i), full.height,
                                                   full.width, (0.3, 1.0), (3 / 4, 4 / 3))
    bicubic = full.convert('RGB').crop((left, top, left + w, top + h)).resize(
        (size, size), Image.Resampling.BICUBIC)
    filters.append(np.abs(np.asarray(bicubic, np.int16) - crop[1]).mean())
  return float(np.mean(diffs)), float(np.mean(filters)), reduced, n


def measure(root: str, label: str, args, masks) -> None:
  source = data.FolderSource(root, 'train')
  ways = {'full decode': FullDecode(source), 'reduced decode': source}
  for threads in (int(t) for t in args.threads.split(',')):
    best = {way: 0.0 for way in ways}
    for _ in range(args.repeats):  # alternating, so that a busy moment hits both ways
      for way, src in ways.items():
        best[way] = max(best[way], rate(src, args, masks, threads))
    for way, r in best.items():
      print(f'{label}, {way}, threads {threads}: {r:,.0f} img/s, {r / threads:,.0f} img/s per '
            f'thread')
    print(f'{label}, threads {threads}: reduced / full = '
          f'{best["reduced decode"] / best["full decode"]:.2f}x')
  mad, filters, reduced, n = pixel_difference(source, args.size)
  print(f'{label}: reduced vs full decode: {reduced} of {n} images decoded reduced, mean |diff| '
        f'{mad:.3f} uint8 levels (bicubic vs bilinear on the same crops: {filters:.3f})')


def main(argv):
  del argv
  jpeg_size = tuple(int(v) for v in FLAGS.jpeg_size.split('x')) if FLAGS.jpeg_size else None
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, 'jpegs')
    t0 = time.perf_counter()
    stats = make_jpegs(root, FLAGS.images, size=jpeg_size)
    print(f'wrote {FLAGS.images} JPEGs of {FLAGS.jpeg_size or "about 500x375"} '
          f'({stats["mean_kb"]:.1f} KiB each, {stats["min_kb"]:.0f}-{stats["max_kb"]:.0f}) in '
          f'{time.perf_counter() - t0:.1f}s')
    grid = FLAGS.size // 16
    masks = MaskSampler(MaskConfig(grid=(grid, grid), mode='official'))
    if not FLAGS.masks:
      masks = lambda n, seed, step, proc: type('M', (), {'_asdict': lambda self: {}})()
    measure(root, 'original', FLAGS, masks)
    for short in (int(s) for s in FLAGS.short_side.split(',') if s):
      prepared = os.path.join(tmp, f'prepared{short}')
      done = subprocess.run([sys.executable, '-m', 'ijepa_jax.tools.prepare', f'--src={root}',
                             f'--dst={prepared}', f'--short_side={short}'], check=True,
                            capture_output=True, text=True, cwd=ROOT)
      kib = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(prepared)
                for f in fs) / 1024 / FLAGS.images
      print(f'prepare --short_side={short}: {done.stdout.strip()}; {kib:.1f} KiB each')
      measure(prepared, f'prepared {short}', FLAGS, masks)
  batch = np.random.default_rng(0).integers(0, 256, (FLAGS.batch, FLAGS.size, FLAGS.size, 3),
                                            dtype=np.uint8)
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  t0 = time.perf_counter()
  for img in batch:  # per image, in place: no batch-sized temporaries
    x = img.astype(np.float32)
    x *= 1.0 / (255.0 * std)
    x -= mean / std
  norm = (time.perf_counter() - t0) / len(batch)
  print(f'host normalise (numpy, in place, one thread): {norm * 1e3:.3f} ms/img; '
        f'the trainer does it on the device instead')
  print(f'cpu cores: {os.cpu_count()}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
