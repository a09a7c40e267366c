"""Our train step beside the official PyTorch step (bench/torch_step.py) in one run, on the
same model sizes, masks and batch; prints both and the ratio.

  python bench/bench_vs_torch.py --config=configs/demo.py [--config.*=...] [--steps=20]
      [--torch_python=.venv-torch/bin/python] [--device=cpu]

Ours runs in this process (absl flags, any `--config.*` override); the PyTorch step runs in
`--torch_python` (default: .venv-torch/bin/python when it exists, else this Python) on the masks
our sampler drew: cut as the official collator cuts them for the official sampler, the same
padded lengths as ours for the corrected one (bench/torch_step.py). On a CPU both
use every core of the machine (XLA's default; torch.set_num_threads(os.cpu_count())).
"""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench.stepping import time_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 20, 'Timed steps of each (after one warm-up step).')
flags.DEFINE_string('torch_python', '', 'Python with torch (default: .venv-torch/bin/python '
                    'if present, else this Python).')
flags.DEFINE_string('device', 'cpu', "torch's device: cpu or cuda.")
FLAGS = flags.FLAGS


def torch_job(config, masks: dict, path: str) -> None:
  """Write the PyTorch step's job: model sizes and every step's masks."""
  import numpy as np

  from ijepa_jax import config as cfg_lib
  width, depth, heads, hidden = cfg_lib.encoder_dims(config)
  m = config.model
  np.savez(path, image=config.data.image_size, patch=m.patch_size, channels=config.data.channels,
           width=width, depth=depth, heads=heads, hidden=hidden, pred_width=m.pred_width,
           pred_depth=m.pred_depth, pred_heads=heads if m.pred_heads == -1 else m.pred_heads,
           **masks)


def run_torch(python: str, job: str, device: str, threads: int, cut: str) -> dict:
  """Run bench/torch_step.py on `job`; returns its result dict (raises with its stderr)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'torch.json')
    cmd = [python, os.path.join(ROOT, 'bench', 'torch_step.py'), '--job', job, '--out', out,
           '--device', device, '--threads', str(threads), '--cut', cut]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f'the PyTorch step failed ({" ".join(cmd)}):\n{proc.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)


def torch_cut(config) -> str:
  """How the PyTorch step cuts our masks (bench/torch_step.py): as the official collator for
  the official sampler; not at all (the same padded work as ours) for the corrected one."""
  return 'batch_min' if config.masks.mode == 'official' else 'none'


def default_torch_python() -> str:
  venv = os.path.join(ROOT, '.venv-torch', 'bin', 'python')
  return FLAGS.torch_python or (venv if os.path.exists(venv) else sys.executable)


def main(argv):
  del argv
  config = FLAGS.config
  ours = time_step(config, FLAGS.steps)
  with tempfile.TemporaryDirectory() as tmp:
    job = os.path.join(tmp, 'job.npz')
    torch_job(config, ours.pop('masks'), job)
    ref = run_torch(default_torch_python(), job, FLAGS.device, os.cpu_count() or 1,
                    torch_cut(config))
  print(f'config: {config.model.variant} (width {config.model.width}), image '
        f'{config.data.image_size}/{config.model.patch_size}, batch {config.batch_size}, '
        f'dtype {config.model.dtype}, masks {config.masks.mode}, scan_layers '
        f'{config.model.scan_layers}')
  print(f'| step | ms/step | images/s | tokens (context, target) |\n|---|---|---|---|')
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
  app.run(main)
