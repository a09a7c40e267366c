"""main.py as a user runs it (the end-to-end demo run is in test_evaluation.py)."""

import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_override_fails_fast(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/demo.py',
                         f'--workdir={tmp_path}', '--config.data.image_size=30'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'data.image_size=30 must be a positive multiple of model.patch_size=4' in proc.stderr


@pytest.mark.parametrize('override, message', [
    ('--config.optim.lrr=0.1',
     "error: the config has no field 'optim.lrr' (--config.optim.lrr): did you mean 'optim.lr'?"),
    ('--config.optimm.lr=0.1',
     "error: the config has no field 'optimm.lr' (--config.optimm.lr): did you mean 'optim.lr'?"),
    ('--config.optim.lr=abc',
     "error: flag --config.optim.lr=abc: could not convert string to float: 'abc'"),
])
def test_config_typo_is_one_line_and_exit_2(tmp_path, override, message):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/demo.py',
                         f'--workdir={tmp_path}', override],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [message]
  assert os.listdir(tmp_path) == []  # nothing written


def test_unknown_field_names_the_closest_valid_one():
  from ijepa_jax import cli
  from ijepa_jax.recipes import fashion_mnist_demo
  c = fashion_mnist_demo()
  assert cli.unknown_field(c, 'optim.lr') is None
  assert cli.unknown_field(c, 'masks.num_targets') is None
  assert cli.unknown_field(c, 'masks.num_targts').endswith("did you mean 'masks.num_targets'?")
  assert cli.unknown_field(c, 'anti_colapse.var_weight').endswith(
      "did you mean 'anti_collapse.var_weight'?")
  # nothing close: the section's fields are listed
  msg = cli.unknown_field(c, 'evals.qqqqqqqq')
  assert msg.startswith("the config has no field 'evals.qqqqqqqq'")
  assert "'evals' has " in msg and 'baseline' in msg and 'every' in msg
