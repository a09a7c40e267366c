"""Realistic training JPEGs for the input benchmarks: an ImageNet-like image folder.

ImageNet's training JPEGs average about 110 KB at about 400x350 to 500x375 pixels; what a
decoder costs depends on the pixels and the bytes, so a benchmark on small flat images
flatters it. `make_jpegs(root, n)` writes `root/train/c<k>/<i>.jpg`: about 500x375 (a few
portrait, sizes varying by +-10%), quality 90, and texture at every scale (smooth noise
octaves from coarse to pixel-level, random shapes with edges, colour that varies over the
image), which encodes to 90-110 KB, as photographs do. Deterministic in `seed`.

  python -m bench.jpegs --root /tmp/jpegs --images 2048
"""

import argparse
import concurrent.futures
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = 10


def realistic_image(rng: np.random.Generator, width: int, height: int,
                    grain: float = 16.0) -> Image.Image:
  """One textured RGB image: smooth noise octaves (1/f-like amplitudes) per channel around a
  random palette, random shapes with hard edges, and `grain` levels of pixel noise."""
  img = np.zeros((height, width, 3), np.float32)
  base = rng.uniform(40, 215, 3)
  for octave in range(7):  # cells of 2^(7-octave)... down to 2 pixels
    cell = max(2, 2 ** (8 - octave))
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    amp = 60.0 / (1.1 ** octave)
    field = rng.standard_normal((gh, gw, 3)).astype(np.float32)
    mix = rng.uniform(0.4, 1.0)  # channels partly correlated, as in natural images
    field = mix * field[..., :1] + (1 - mix) * field
    up = np.stack([np.asarray(Image.fromarray(field[..., c]).resize((width, height),
                                                                    Image.Resampling.BICUBIC))
                   for c in range(3)], -1)
    img += amp * up
  img += base
  pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for _ in range(int(rng.integers(4, 12))):  # objects with edges
    x0, y0 = rng.integers(0, width), rng.integers(0, height)
    x1, y1 = x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
  arr = np.asarray(pil).astype(np.float32)
  arr += rng.normal(0, grain, arr.shape).astype(np.float32)  # sensor grain
  return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _one(root: str, seed: int, i: int, size: tuple[int, int] | None, quality: int) -> int:
  rng = np.random.default_rng([seed, i])
  if size is None:
    w, h = int(500 * rng.uniform(0.9, 1.1)), int(375 * rng.uniform(0.9, 1.1))
    if rng.random() < 0.2:
      w, h = h, w  # portrait
  else:
    w, h = size
  path = os.path.join(root, 'train', f'c{i % CLASSES}', f'{i:06d}.jpg')
  realistic_image(rng, w, h).save(path, quality=quality)
  return os.path.getsize(path)


def make_jpegs(root: str, n: int, seed: int = 0, size: tuple[int, int] | None = None,
               quality: int = 90, threads: int = 0) -> dict:
  """Write `n` realistic JPEGs into the image folder `root` (split `train`, 10 classes);
  `size` (w, h) fixes their size (default: about 500x375). Returns {'images', 'mean_kb',
  'min_kb', 'max_kb'}."""
  for k in range(CLASSES):
    os.makedirs(os.path.join(root, 'train', f'c{k}'), exist_ok=True)
  with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
    sizes = list(pool.map(lambda i: _one(root, seed, i, size, quality), range(n)))
  kb = np.asarray(sizes) / 1024
  return {'images': n, 'mean_kb': float(kb.mean()), 'min_kb': float(kb.min()),
          'max_kb': float(kb.max())}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--root', required=True)
  ap.add_argument('--images', type=int, default=2048)
  ap.add_argument('--seed', type=int, default=0)
  args = ap.parse_args()
  print(make_jpegs(args.root, args.images, args.seed))


if __name__ == '__main__':
  main()
