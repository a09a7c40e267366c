"""Padded work: executed against useful FLOPs of the shipped configs' train steps.

The mask sampler returns fixed shapes (contexts padded or cut to Kc, target blocks padded to
Kt) so that the step compiles once; every padded token is compute the chip pays for. For
each config in configs/ (as shipped, and with the other mask mode), this samples the
config's own masks and prints the executed FLOPs per image (`flops.train_step_flops`, the
fixed shapes) against the useful ones (`flops.useful_step_flops`, each image's real
lengths: what the official step computes on the same masks, since it cuts contexts to the
batch minimum and draws one target size per batch), and where the excess is; then the
same with `masks.pack=True` (ijepa_jax/packing.py: each device's sequences packed into rows).

  python -m bench.padding [--steps 100] [--batch 128] [--configs vitl16,vith14]
"""

from absl import app, flags

from bench import load_config
from bench.stepping import padding_rows
from ijepa_jax import cli

flags.DEFINE_integer('steps', 100, 'global batches sampled per config')
flags.DEFINE_integer('batch', 128, 'images per batch (official: per GPU)')
flags.DEFINE_list('configs', ['vits16', 'vitb16', 'vitl16', 'vith14', 'vith16_448', 'vitg16',
                              'demo'], 'configs/<name>.py to count')
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  print('| config | masks | grid | Kc | Kt | mean context | mean target | executed GFLOP/img '
        '| useful GFLOP/img | excess | context encoder excess | predictor excess | packed: '
        'executed GFLOP/img | packed: excess |')
  print('|' + '---|' * 14)
  notes = []
  for name in FLAGS.configs:
    base = load_config(name)
    other = base.copy_and_resolve_references()
    other.masks.mode = 'corrected' if base.masks.mode == 'official' else 'official'
    for label, config in ((name, base), (f'{name}, masks.mode={other.masks.mode}', other)):
      try:
        r = padding_rows(config, FLAGS.steps, FLAGS.batch)
      except ValueError as e:  # e.g. the official sampler cannot be built on the demo's grid
        print(f'| {label} | {config.masks.mode} | | | | | | | | {str(e)[:80]} | | | | |')
        continue
      print(f"| {label} | {r['mode']} | {r['grid']}x{r['grid']} | {r['Kc']} | {r['Kt']} x {r['M']} "
            f"| {r['ctx_mean']:.1f} | {r['tgt_mean']:.1f} | {r['executed_gflop']:,.1f} | "
            f"{r['useful_gflop']:,.1f} | {100 * r['excess']:+.1f}% | "
            f"{100 * r['context_excess']:+.1f}% | {100 * r['predictor_excess']:+.1f}% | "
            f"{r['packed_gflop']:,.1f} | {100 * r['packed_excess']:+.1f}% |")
      notes.append(f'{label}: {r["packed"]}')
  print('\nPacked (masks.pack=True, --batch images per device):')
  for note in notes:
    print(f'- {note}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
