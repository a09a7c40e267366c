"""Mask-sampling throughput on one core: images' masks per second.

  python bench/bench_masks.py [--grid=14] [--batch=256] [--batches=80] [--mode=official]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ijepa_jax.masks import MaskConfig, MaskSampler  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--grid', type=int, default=14)
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--batches', type=int, default=80)
  p.add_argument('--mode', default='official', choices=['official', 'corrected'])
  a = p.parse_args()
  s = MaskSampler(MaskConfig(grid=(a.grid, a.grid), mode=a.mode))
  s(a.batch, 0, 0)
  t0 = time.perf_counter()
  for step in range(a.batches):
    s(a.batch, 0, step)
  dt = time.perf_counter() - t0
  print(f'{a.mode} masks, {a.grid}x{a.grid} grid, batch {a.batch}: '
        f'{a.batches * a.batch / dt:,.0f} images/s ({1000 * dt / a.batches:.2f} ms per batch; '
        f'Kc {s.context_len}, Kt {s.target_len})')


if __name__ == '__main__':
  main()
