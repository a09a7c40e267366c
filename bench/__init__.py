"""The benchmarks: each program runs as a module from the repository root,

  .venv/bin/python -m bench.<name> [--flags]

with absl flags (`ijepa_jax.cli.parse_flags`), as main.py and the tools do; a program that
starts another runs it as `[sys.executable, '-m', 'bench.<name>', ...]` with cwd=ROOT.
The exception is torch_step.py, a standalone script for a Python with only torch and numpy.
"""

import os

from ijepa_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
  """configs/<name>.py's config, as `--config=configs/<name>.py` loads it."""
  return cli.load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))
