"""main.py end to end on Fashion-MNIST (tiny run), in a subprocess like a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from ijepa_jax import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(fashion_mnist.missing_files(None), reason='dataset-fashion-mnist not installed')
def test_demo_runs_and_reports_probe(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  cmd = [sys.executable, 'main.py', '--config=configs/demo.py', f'--workdir={tmp_path}',
         '--config.max_steps=6', '--config.log_every=3', '--config.batch_size=64',
         '--config.probe.train_examples=1000', '--config.probe.test_examples=500',
         '--config.probe.steps=50']
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert 'step      3/6' in out and 'img/s' in out and 'ETA' in out
  assert 'linear probe (pretrained' in out and 'linear probe (random_init' in out
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [3, 6]
  for key in ('loss', 'lr', 'weight_decay', 'momentum', 'grad_norm', 'context_len',
              'target_len', 'images_per_sec'):
    assert key in rows[-1]
  final = json.load(open(tmp_path / 'final.json'))
  assert 0.0 <= final['probe_top1_pretrained'] <= 1.0
  assert 0.0 <= final['probe_top1_random_init'] <= 1.0


def test_bad_override_fails_fast(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/demo.py',
                         f'--workdir={tmp_path}', '--config.data.image_size=30'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'data.image_size=30 must be a positive multiple of model.patch_size=4' in proc.stderr
