"""Our train step beside the official PyTorch step (bench/torch_step.py) in one run, on the
same model sizes, masks and batch; prints both and the ratio.

  python -m bench.bench_vs_torch --config=configs/demo.py [--config.*=...] [--steps=20]
      [--torch_python=.venv-torch/bin/python] [--device=cpu]

Ours runs in this process (absl flags, any `--config.*` override); the PyTorch step runs in
`--torch_python` (default: .venv-torch/bin/python when it exists, else this Python) on the masks
our sampler drew: cut as the official collator cuts them for the official sampler, the same
padded lengths as ours for the corrected one (bench/torch_step.py). On a CPU both
use every core of the machine (XLA's default; torch.set_num_threads(os.cpu_count())).
"""

from absl import app, flags
from ml_collections import config_flags

from bench.stepping import run_torch, time_step
from ijepa_jax import cli

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 20, 'Timed steps of each (after one warm-up step).')
flags.DEFINE_string('torch_python', '', 'Python with torch (default: .venv-torch/bin/python '
                    'on a CPU if present, else this Python).')
flags.DEFINE_string('device', 'cpu', "torch's device: cpu or cuda.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from ijepa_jax.spec import resolve_here  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  run = resolve_here(config)
  ours = time_step(run, FLAGS.steps)
  ref = run_torch(run, ours.pop('masks'), FLAGS.device, FLAGS.torch_python)
  print(f'config: {config.model.variant} (width {config.model.width}), image '
        f'{config.data.image_size}/{config.model.patch_size}, batch {config.batch_size}, '
        f'dtype {config.model.dtype}, masks {config.masks.mode}, scan_layers '
        f'{run.arch.scan_layers}')
  print('| step | ms/step | images/s | tokens (context, target) |\n|---|---|---|---|')
  print(f'| ijepa-jax ({ours["device"]}) | {ours["step_ms"]:,.1f} | {ours["images_per_sec"]:,.1f} '
        f'| {ours["context_len"]}, {ours["target_len"]} (fixed, padded) |')
  print(f'| PyTorch {ref["torch"]} ({ref["device"]}, {ref["threads"]} threads) | '
        f'{ref["step_ms"]:,.1f} | {ref["images_per_sec"]:,.1f} | {ref["mean_context_len"]:.1f}, '
        f'{ref["mean_target_len"]:.1f} ' + ('(batch minimum, mean) |' if ref['cut'] == 'batch_min'
                                           else '(the same padded lengths) |'))
  print(f'ratio (ours / PyTorch images/s): {ours["images_per_sec"] / ref["images_per_sec"]:.2f}x'
        f' | compile {ours["compile_s"]:.1f} s | final loss ours {ours["loss"]:.4f}, PyTorch '
        f'{ref["loss"]:.4f}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
