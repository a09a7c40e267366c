"""Host input throughput: JPEG decode + RandomResizedCrop (+ normalise), images/s per core.

Writes a few thousand 224x224 JPEGs (Fashion-MNIST upscaled and tinted, or
noise when it is not installed) into an image folder, then times the
training pipeline (`Batches`, the exact code the trainer runs: read, decode,
crop, resize, uint8 batch) with 1..N worker threads. The trainer normalises
on the device (`data.normalize` inside the jitted step); what the same
normalisation would cost on the host (numpy, in place) is printed too.

  python bench/bench_input.py --images=2048 --batch=256 --threads=1,2
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ijepa_jax import fashion_mnist  # noqa: E402
from ijepa_jax.data import FolderSource  # noqa: E402
from ijepa_jax.input_pipeline import Batches, TransformConfig  # noqa: E402
from ijepa_jax.masks import MaskConfig, MaskSampler  # noqa: E402
from ijepa_jax.pixels import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def make_jpegs(root: str, n: int, size: int) -> None:
  if fashion_mnist.missing_files(None):
    grey = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
  else:
    grey = fashion_mnist.load('train')[0][:n]
  tint = np.random.default_rng(1).uniform(0.5, 1.0, (n, 3))
  for i in range(n):
    cls = os.path.join(root, 'train', f'c{i % 10}')
    os.makedirs(cls, exist_ok=True)
    big = np.asarray(Image.fromarray(grey[i]).resize((size, size), Image.BILINEAR), np.float32)
    rgb = (big[..., None] * tint[i]).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(cls, f'{i}.jpg'), quality=90)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--images', type=int, default=2048)
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--threads', default=','.join(str(t) for t in sorted({1, os.cpu_count() or 1})))
  p.add_argument('--masks', action='store_true', help='also sample the official masks per batch')
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as root:
    t0 = time.perf_counter()
    make_jpegs(root, args.images, args.size)
    jpeg_kb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    print(f'wrote {args.images} JPEGs of {args.size}x{args.size} '
          f'({jpeg_kb / args.images / 1024:.1f} KiB each) in {time.perf_counter() - t0:.1f}s')
    source = FolderSource(root, 'train')
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    grid = args.size // 16
    masks = MaskSampler(MaskConfig(grid=(grid, grid), mode='official'))
    if not args.masks:
      masks = lambda n, seed, step, proc: type('M', (), {'_asdict': lambda self: {}})()  # noqa: E731
    for threads in (int(t) for t in args.threads.split(',')):
      pipe = Batches(source, args.batch, 0, masks, TransformConfig(args.size, 3), workers=threads)
      pipe(0)  # warm the page cache and the pool
      steps = max(1, args.images // args.batch)
      t0 = time.perf_counter()
      for step in range(steps):
        batch = pipe(step)
      dt = time.perf_counter() - t0
      rate = steps * args.batch / dt
      print(f'threads {threads}: {rate:,.0f} img/s, {rate / threads:,.0f} img/s per thread '
            f'(decode + crop + resize -> {batch["images"].shape} uint8, '
            f'{"with" if args.masks else "without"} masks)')
      pipe.close()
    t0 = time.perf_counter()
    for img in batch['images']:  # per image, in place: no batch-sized temporaries
      x = img.astype(np.float32)
      x *= 1.0 / (255.0 * std)
      x -= mean / std
    norm = (time.perf_counter() - t0) / len(batch['images'])
    print(f'host normalise (numpy, in place, one thread): {norm * 1e3:.3f} ms/img; '
          f'the trainer does it on the device instead')
  print(f'cpu cores: {os.cpu_count()}')


if __name__ == '__main__':
  main()
