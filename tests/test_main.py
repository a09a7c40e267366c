"""main.py as a user runs it (the end-to-end demo run is in test_evaluation.py)."""

import json
import os
import subprocess
import sys

import pytest

from ijepa_jax import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_override_fails_fast(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/demo.py',
                         f'--workdir={tmp_path}', '--config.data.image_size=30'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'data.image_size=30 must be a positive multiple of model.patch_size=4' in proc.stderr
