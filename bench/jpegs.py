"""Realistic training JPEGs for the input benchmarks: an ImageNet-like image folder.

ImageNet's training JPEGs average about 110 KB at about 400x350 to 500x375 pixels; what a
decoder costs depends on the pixels and the bytes, so a benchmark on small flat images
flatters it. `make_jpegs(root, n)` writes `root/train/c<k>/<i>.jpg`: about 500x375 (a fifth
portrait, each side varying by +-10%), quality 90, and texture at every scale (smooth noise
octaves from coarse to pixel-level, random shapes with edges, colour that varies over the
image, sensor grain). The grain is tuned per image (up to 4 encodes) so that each file is
within 8% of `kb` (100 KB: 92-108 KB), as photographs of that size are.
Deterministic in `seed`; about 2,000 images a minute per core. No `main`: bench_input.py
and device_check.py write them (tests/test_layout.py).
"""

import concurrent.futures
import io
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = 10
REFERENCE_PIXELS = 500 * 375  # `kb` is per this many pixels
KB_PER_GRAIN_LEVEL = 1.3  # at 500x375, quality 90: the tuning's first slope (measured)


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """float32 [height, width, 3]: smooth noise octaves (1/f-like amplitudes) per channel
  around a random palette, channels partly correlated, then random shapes with hard edges."""
  img = np.empty((height, width, 3), np.float32)
  img[:] = rng.uniform(40, 215, 3)
  for octave in range(7):  # cells of 256 pixels down to 4
    cell = 2 ** (8 - octave)
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    amp = 60.0 / (1.1 ** octave)
    field = rng.standard_normal((gh, gw, 3), dtype=np.float32)
    mix = rng.uniform(0.4, 1.0)  # channels partly correlated, as in natural images
    field = amp * (mix * field[..., :1] + (1 - mix) * field)
    for c in range(3):
      img[..., c] += np.asarray(Image.fromarray(field[..., c]).resize(
          (width, height), Image.Resampling.BICUBIC))
  pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for _ in range(int(rng.integers(4, 12))):  # objects with edges
    x0, y0 = rng.integers(0, width), rng.integers(0, height)
    x1, y1 = x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
  return np.asarray(pil, np.float32)


def encode(rng: np.random.Generator, width: int, height: int, quality: int,
           target: float) -> bytes:
  """One realistic JPEG's bytes: `texture` plus sensor grain whose strength is tuned (secant
  steps from 16 levels) until the file is within 8% of `target` bytes."""
  base = texture(rng, width, height)
  noise = rng.standard_normal(base.shape, dtype=np.float32)
  grain, slope, last = 16.0, KB_PER_GRAIN_LEVEL * 1024 * width * height / REFERENCE_PIXELS, None
  for _ in range(4):
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + grain * noise, 0, 255).astype(np.uint8)).save(
        buf, format='JPEG', quality=quality)
    if abs(buf.tell() - target) <= 0.08 * target:
      break
    if last is not None and grain != last[0] and buf.tell() != last[1]:
      slope = max(slope / 4, (buf.tell() - last[1]) / (grain - last[0]))
    last = grain, buf.tell()
    grain = max(0.0, grain + (target - buf.tell()) / slope)
  return buf.getvalue()


def _one(root: str, seed: int, i: int, size: tuple[int, int] | None, quality: int,
         kb: float) -> int:
  rng = np.random.default_rng([seed, i])
  if size is None:
    w, h = int(500 * rng.uniform(0.9, 1.1)), int(375 * rng.uniform(0.9, 1.1))
    if rng.random() < 0.2:
      w, h = h, w  # portrait
    target = kb * 1024
  else:
    w, h = size
    target = kb * 1024 * w * h / REFERENCE_PIXELS
  data = encode(rng, w, h, quality, target)
  with open(os.path.join(root, 'train', f'c{i % CLASSES}', f'{i:06d}.jpg'), 'wb') as f:
    f.write(data)
  return len(data)


def make_jpegs(root: str, n: int, seed: int = 0, size: tuple[int, int] | None = None,
               quality: int = 90, threads: int = 0, kb: float = 100.0) -> dict:
  """Write `n` realistic JPEGs into the image folder `root` (split `train`, 10 classes);
  `size` (w, h) fixes their size (default: about 500x375, `kb` KB each; at a fixed size, `kb`
  per 500x375 pixels). Returns {'images', 'mean_kb', 'min_kb', 'max_kb'}."""
  for k in range(CLASSES):
    os.makedirs(os.path.join(root, 'train', f'c{k}'), exist_ok=True)
  with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
    sizes = list(pool.map(lambda i: _one(root, seed, i, size, quality, kb), range(n)))
  kib = np.asarray(sizes) / 1024
  return {'images': n, 'mean_kb': float(kib.mean()), 'min_kb': float(kib.min()),
          'max_kb': float(kib.max())}
