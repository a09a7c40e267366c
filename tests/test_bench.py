"""The benchmarks that the performance figures rest on run, and report what they measured."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = os.path.join(ROOT, '.venv-torch', 'bin', 'python')


def run(*args, timeout=900):
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')  # one device, as the benchmarks run
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.slow
def test_device_check_smoke(tmp_path):
  out = tmp_path / 'check.json'
  proc = run('bench/device_check.py', '--smoke', '--out', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['smoke'] and report['device'].endswith('(cpu)')
  rows = report['rows']
  parity = [r for r in rows if r['part'] == 'attention']
  assert {(r['padded'], r['implementation']) for r in parity} == {
      (False, 'xla bf16 vs float32'), (True, 'xla bf16 vs float32')}
  for r in parity:  # bf16 against float32: off by roundings, not by a formula
    assert 1e-4 < r['out_rel'] < 5e-2 and 1e-4 < r['grad_rel'] < 5e-2 and r['ok']
  steps = [r for r in rows if r['part'] == 'step']
  assert {(r['scan_layers'], r['remat']) for r in steps} == {
      (s, m) for s in (True, False) for m in ('none', 'dots_saveable')}
  for r in steps:
    assert 'error' not in r and 'skipped' not in r, r
    assert r['images_per_sec'] > 0 and math.isfinite(r['loss']) and r['compile_s'] > 0
  # the same init, masks and images whatever the layout: the same first-step loss
  assert np.ptp([r['loss'] for r in steps]) < 1e-4
  (ref,) = [r for r in rows if r['part'] == 'torch']
  if os.path.exists(TORCH_PY):
    # the smoke model keeps the demo's corrected masks: the same padded work as ours
    assert ref['step_ms'] > 0 and math.isfinite(ref['loss']) and ref['cut'] == 'none'
  else:
    assert 'torch' in ref['error']
  assert '| step | tiny (smoke) | scan off, remat none, xla | 4 |' in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCH_PY), reason='no .venv-torch (IJEPA_TORCH_REF=1)')
def test_bench_vs_torch_prints_both_and_the_ratio():
  proc = run('bench/bench_vs_torch.py', '--config=configs/demo.py', '--config.batch_size=8',
             '--config.model.depth=1', '--config.model.pred_depth=1', '--steps=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  ours = next(l for l in lines if l.startswith('| ijepa-jax'))
  ref = next(l for l in lines if l.startswith('| PyTorch'))
  assert '32, 12 (fixed, padded)' in ours  # the demo's Kc and Kt
  assert '32.0, 12.0 (the same padded lengths)' in ref  # corrected masks: equal work
  ours_ips, ref_ips = (float(l.split('|')[3].replace(',', '')) for l in (ours, ref))
  ratio = float(next(l for l in lines if l.startswith('ratio')).split(':')[1].split('x')[0])
  assert ratio == pytest.approx(ours_ips / ref_ips, rel=0.02)


@pytest.mark.slow
def test_grad_balance_shows_each_terms_pull_on_the_encoder():
  proc = run('bench/grad_balance.py', '--config=configs/demo.py', '--config.batch_size=16')
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {line.split()[0]: [float(v) for v in line.split()[1:]]
          for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in
          ('jepa_loss', 'var_loss', 'cov_loss', 'sigreg')}
  assert set(rows) == {'jepa_loss', 'var_loss', 'cov_loss', 'sigreg'}
  # at initialisation the I-JEPA gradient on the encoder is far the smallest (RESULTS.md)
  assert rows['sigreg'][1] > 100 * rows['jepa_loss'][1] > 0
  assert rows['var_loss'][1] > 10 * rows['jepa_loss'][1]
  assert 0 < rows['var_loss'][0] <= 1.0  # a hinge at std 1, mean over dimensions
