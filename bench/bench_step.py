"""Time the I-JEPA train step for a config: compile time, step time, images/s, MFU.

  python -m bench.bench_step --config=configs/demo.py [--config.batch_size=...] [--steps=20]
      [--breakdown]

Runs on synthetic images (no dataset needed) with real masks from the config's
sampler. FLOPs are the analytic count of ijepa_jax/flops.py; MFU uses the peak
of the device kind (on a CPU, which has no entry, the achieved FLOP/s is shown).
The measurement itself is bench/stepping.py's `time_step`.

`--breakdown` then shows where the step's time goes (`stepping.step_breakdown`): its parts
compiled and timed one by one on the step's own shapes, state and masks (the target
encoder's forward; the context encoder's forward and backward, with a fixed cotangent; the
predictor's forward and backward; AdamW and the EMA), beside the whole step. What the parts
leave out (the loss, gathers, normalisation, less whatever XLA overlaps when it compiles
them together) is the remainder, which may be negative. Each part's analytic FLOPs and
its share of the step's are printed with it.
"""

from absl import app, flags
from ml_collections import config_flags

from bench.stepping import breakdown_table, step_breakdown, time_step
from ijepa_jax import cli

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 20, 'Timed steps (after one warm-up step).')
flags.DEFINE_bool('breakdown', False, 'Also time the step\'s parts one by one.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from ijepa_jax.spec import resolve_here  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  run = resolve_here(config)
  r = time_step(run, FLAGS.steps)
  print(f'device: {r["device"]}')
  print(f'config: batch {config.batch_size}, image {config.data.image_size}, patch '
        f'{config.model.patch_size}, dtype {config.model.dtype}, masks {config.masks.mode} '
        f'(Kc {r["context_len"]}, Kt {r["target_len"]}), scan_layers {run.arch.scan_layers}'
        + ('' if run.packer is None else f' | packed: {run.packer.describe()}'))
  print(f'compile: {r["compile_s"]:.1f} s | memory: {r["memory"]}')
  print(f'step: {r["step_ms"]:.1f} ms | {r["images_per_sec"]:,.1f} images/s | '
        f'{r["images_per_sec_per_device"]:,.1f} images/s/device')
  print(f'flops/step: {r["gflop_per_step"]:,.1f} GFLOP executed, {r["useful_gflop_per_step"]:,.1f} '
        f'useful (the masks\' real lengths) | achieved {r["gflops_per_device"]:,.1f} '
        'GFLOP/s/device' + (f' | MFU {100 * r["mfu"]:.1f}% ({100 * r["mfu_useful"]:.1f}% useful)'
                            if r['mfu'] is not None else ' | MFU n/a (no peak for this device)'))
  print(f'final loss: {r["loss"]:.4f}')
  if FLAGS.breakdown:
    print(breakdown_table(step_breakdown(run, FLAGS.steps)))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
