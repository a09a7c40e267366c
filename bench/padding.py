"""Padded work: executed against useful FLOPs of the shipped configs' train steps.

The mask sampler returns fixed shapes (contexts padded or cut to Kc, target blocks padded to
Kt) so that the step compiles once; every padded token is compute the chip pays for. For
each config in configs/ (as shipped, and with the other mask mode), this samples the
config's own masks and prints the executed FLOPs per image (`flops.train_step_flops`, the
fixed shapes) against the useful ones (`flops.useful_step_flops`, each image's real
lengths: what the official step computes on the same masks, since it cuts contexts to the
batch minimum and draws one target size per batch), and where the excess is.

  python bench/padding.py [--steps 100] [--batch 128] [--configs vitl16,vith14]
"""

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.stepping import padding_rows  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--steps', type=int, default=100, help='global batches sampled per config')
  ap.add_argument('--batch', type=int, default=128, help='images per batch (official: per GPU)')
  ap.add_argument('--configs', default='vits16,vitb16,vitl16,vith14,vith16_448,vitg16,demo')
  args = ap.parse_args()
  print('| config | masks | grid | Kc | Kt | mean context | mean target | executed GFLOP/img '
        '| useful GFLOP/img | excess | context encoder excess | predictor excess |')
  print('|' + '---|' * 12)
  for name in args.configs.split(','):
    base = importlib.import_module(f'configs.{name}').get_config()
    other = base.copy_and_resolve_references()
    other.masks.mode = 'corrected' if base.masks.mode == 'official' else 'official'
    for label, config in ((name, base), (f'{name}, masks.mode={other.masks.mode}', other)):
      try:
        r = padding_rows(config, args.steps, args.batch)
      except ValueError as e:  # e.g. the official sampler cannot be built on the demo's grid
        print(f'| {label} | {config.masks.mode} | | | | | | | | {str(e)[:80]} | | |')
        continue
      print(f"| {label} | {r['mode']} | {r['grid']}x{r['grid']} | {r['Kc']} | {r['Kt']} x {r['M']} "
            f"| {r['ctx_mean']:.1f} | {r['tgt_mean']:.1f} | {r['executed_gflop']:,.1f} | "
            f"{r['useful_gflop']:,.1f} | {100 * r['excess']:+.1f}% | "
            f"{100 * r['context_excess']:+.1f}% | {100 * r['predictor_excess']:+.1f}% |")


if __name__ == '__main__':
  main()
