"""The benchmarks that the performance figures rest on run, and report what they measured."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = os.path.join(ROOT, '.venv-torch', 'bin', 'python')


def run(program, *args, timeout=900):
  """`python -m bench.<program> args` from the repository root, on one CPU device."""
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')  # one device, as the benchmarks run
  return subprocess.run([sys.executable, '-m', f'bench.{program}', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_every_benchmark_runs_as_a_module_and_parses_its_flags():
  """`python -m bench.<name> --only_check_args` for each program of bench/ (torch_step.py, a
  standalone script for the torch Python, aside): its imports and flags as a user starts it."""
  procs = {}
  for f in sorted(os.listdir(os.path.join(ROOT, 'bench'))):
    text = open(os.path.join(ROOT, 'bench', f)).read() if f.endswith('.py') else ''
    if "if __name__ == '__main__':" in text and f != 'torch_step.py':
      args = ['--config=configs/demo.py'] if 'DEFINE_config_file' in text else []
      procs[f[:-3]] = subprocess.Popen(
          [sys.executable, '-m', f'bench.{f[:-3]}', '--only_check_args', *args], cwd=ROOT,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  assert len(procs) >= 12, sorted(procs)
  outputs = {name: p.communicate(timeout=300)[0][-2000:] for name, p in procs.items()}
  assert not {name: out for name, out in outputs.items() if procs[name].returncode}


@pytest.mark.slow
def test_device_check_smoke(tmp_path):
  out = tmp_path / 'check.json'
  proc = run('device_check', '--smoke', '--out', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['smoke'] and report['device'].endswith('(cpu)')
  rows = report['rows']
  parity = [r for r in rows if r['part'] == 'attention']
  assert {(r['padded'], r['implementation']) for r in parity} == {
      (False, 'xla bf16 vs float32'), (True, 'xla bf16 vs float32')}
  for r in parity:  # bf16 against float32: off by roundings, not by a formula
    assert 1e-4 < r['out_rel'] < 5e-2 and 1e-4 < r['grad_rel'] < 5e-2 and r['ok']
  step, doubled = [r for r in rows if r['part'] == 'step']  # part 3, then part 7's 2x batch
  assert 'error' not in step and 'skipped' not in step, step
  assert (step['batch'], doubled['batch']) == (4, 8) and doubled['images_per_sec'] > 0, doubled
  # the demo as shipped on a CPU: unrolled blocks; its corrected masks pad, so the useful
  # work per step is below the executed
  assert step['scan_layers'] is False and step['images_per_sec'] > 0
  assert 0 < step['useful_gflop_per_step'] < step['gflop_per_step'] and math.isfinite(step['loss'])
  parts = {r['piece']: r for r in rows if r['part'] == 'breakdown'}
  assert list(parts) == ['target encoder forward', 'context encoder forward + backward',
                         'predictor forward + backward', 'optimizer (AdamW) + EMA',
                         'remainder (loss, gathers, normalisation; minus overlap)', 'whole step']
  # the parts' FLOPs add up to the step's, and the remainder's time closes the sum
  assert sum(p['flop_share'] for n, p in parts.items() if n != 'whole step') == pytest.approx(1.0)
  assert sum(p['ms'] for n, p in parts.items() if n != 'whole step') == pytest.approx(
      parts['whole step']['ms'])
  assert parts['optimizer (AdamW) + EMA']['gflop'] == 0
  assert parts['target encoder forward']['ms'] > 0
  (e2e,) = [r for r in rows if r['part'] == 'e2e']
  assert 'error' not in e2e, e2e
  assert e2e['jpegs']['images'] == 24 and e2e['images_per_sec'] > 0 and 0 <= e2e['input_wait'] < 1
  assert e2e['of_step'] == pytest.approx(e2e['images_per_sec'] / step['images_per_sec'])
  padded, packed = [r for r in rows if r['part'] == 'packing']  # corrected masks, both ways
  assert 'packed' not in padded and 'packed' in packed and packed['images_per_sec'] > 0
  assert packed['loss'] == pytest.approx(padded['loss'], rel=1e-4)  # the same masks and init
  (flags,) = [r for r in rows if r['part'] == 'xla_flags']
  assert flags['images_per_sec'] > 0
  (ref,) = [r for r in rows if r['part'] == 'torch']
  if os.path.exists(TORCH_PY):
    # the smoke model keeps the demo's corrected masks: the same padded work as ours
    assert ref['step_ms'] > 0 and math.isfinite(ref['loss']) and ref['cut'] == 'none'
    assert ref['attention'] == 'sdpa'
  else:
    assert 'torch' in ref['error']
  assert '| step | tiny (smoke) | scan off, remat none, xla | 4 |' in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCH_PY), reason='no .venv-torch (IJEPA_TORCH_REF=1)')
def test_bench_vs_torch_prints_both_and_the_ratio():
  proc = run('bench_vs_torch', '--config=configs/demo.py', '--config.batch_size=8',
             '--config.model.depth=1', '--config.model.pred_depth=1', '--steps=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  ours = next(line for line in lines if line.startswith('| ijepa-jax'))
  ref = next(line for line in lines if line.startswith('| PyTorch'))
  assert '32, 12 (fixed, padded)' in ours  # the demo's Kc and Kt
  assert '32.0, 12.0 (the same padded lengths)' in ref  # corrected masks: equal work
  ours_ips, ref_ips = (float(line.split('|')[3].replace(',', '')) for line in (ours, ref))
  ratio_line = next(line for line in lines if line.startswith('ratio'))
  ratio = float(ratio_line.split(':')[1].split('x')[0])
  assert ratio == pytest.approx(ours_ips / ref_ips, rel=0.02)


@pytest.mark.slow
def test_grad_balance_shows_each_terms_pull_on_the_encoder():
  proc = run('grad_balance', '--config=configs/demo.py', '--config.batch_size=16')
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {line.split()[0]: [float(v) for v in line.split()[1:]]
          for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in
          ('jepa_loss', 'var_loss', 'cov_loss', 'sigreg')}
  assert set(rows) == {'jepa_loss', 'var_loss', 'cov_loss', 'sigreg'}
  # at initialisation the I-JEPA gradient on the encoder is far the smallest (RESULTS.md)
  assert rows['sigreg'][1] > 100 * rows['jepa_loss'][1] > 0
  assert rows['var_loss'][1] > 10 * rows['jepa_loss'][1]
  assert 0 < rows['var_loss'][0] <= 1.0  # a hinge at std 1, mean over dimensions


def test_realistic_jpegs_are_imagenet_sized_and_repeatable(tmp_path):
  from PIL import Image
  from bench.jpegs import make_jpegs
  stats = make_jpegs(str(tmp_path / 'a'), 12, seed=1)
  files = sorted((tmp_path / 'a').rglob('*.jpg'))
  assert len(files) == stats['images'] == 12 and len({f.parent.name for f in files}) == 10
  for f in files:
    w, h = Image.open(f).size
    assert sorted((w, h)) in ([hh, ww] for ww in range(450, 551) for hh in range(337, 413)), (w, h)
  assert 70 < stats['mean_kb'] < 130  # a photograph's bytes at this size, not a flat image's
  make_jpegs(str(tmp_path / 'b'), 12, seed=1)
  assert all(f.read_bytes() == (tmp_path / 'b' / f.relative_to(tmp_path / 'a')).read_bytes()
             for f in files)


def test_padding_counts_the_fixed_shapes_against_the_real_lengths():
  from bench.stepping import padding_rows
  from helpers import load
  from ijepa_jax.spec import resolve
  r = padding_rows(load('vitl16'), steps=3, batch=64)
  assert (r['Kc'], r['Kt'], r['M']) == (49, 40, 4)
  # executed is exactly the fixed-shape count; official targets pad, contexts hardly
  run = resolve(load('vitl16'), 1)
  assert r['executed_gflop'] * 1e9 == pytest.approx(run.arch.step_flops(1, run.sampler),
                                                    rel=1e-12)
  assert 0 < r['excess'] < 0.05 and r['predictor_excess'] > 0 and r['tgt_mean'] <= 40
