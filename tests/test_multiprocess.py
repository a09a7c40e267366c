"""Real multi-process runs on one machine: processes join through jax.distributed.initialize
(explicit coordinator on localhost, gloo CPU collectives), each simulating 4 CPU devices and
reading its own shard of every global batch; orbax writes one checkpoint from all of them.

The result must not depend on the mesh: one process with 1 device, one process with 8 devices
(pure data parallel) and 2 processes x 4 devices on a 4 x 2 data x fsdp mesh, stopped and
resumed half way, train to the same losses and parameters within float tolerance."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ijepa_jax import fashion_mnist
from bench.faults import TINY, final_state
from helpers import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.skipif(fashion_mnist.missing_files(None),
                                 reason='dataset-fashion-mnist not installed'),
              pytest.mark.slow]  # subprocess runs: the default suite, not the fast tier
STEPS = 4
COMMON = [*TINY, '--config.batch_size=32', '--config.model.dtype=float32',
          '--config.checkpoint.every=2']


def env(devices):
  e = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
           PYTHON=sys.executable)
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return e


def main_args(workdir, *overrides):
  return ['main.py', '--config=configs/demo.py', f'--workdir={workdir}', *COMMON, *overrides]


def single(workdir, devices, *overrides):
  out = subprocess.run([sys.executable, *main_args(workdir, *overrides)], cwd=ROOT,
                       env=env(devices), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out.stdout


def local_sh(workdir, processes, devices, *overrides):
  """launch/local.sh, as a user runs it: process 0 on stdout, the others in workdir logs."""
  out = subprocess.run(['bash', 'launch/local.sh', str(processes), str(devices),
                        *main_args(workdir, *overrides)[1:]], cwd=ROOT, env=env(devices),
                       capture_output=True, text=True, timeout=600)
  logs = [open(os.path.join(workdir, f'process_{i}.log')).read() for i in range(1, processes)]
  assert out.returncode == 0, out.stdout[-3000:] + '\n'.join(log[-2000:] for log in logs)
  return out.stdout, logs


def test_same_training_on_1_device_8_devices_and_2_processes_x_4_devices(tmp_path):
  one = tmp_path / 'one'
  dp8 = tmp_path / 'dp8'
  multi = tmp_path / 'multi'
  # an evaluation at the last step: features extracted over the mesh (and, below, over two
  # processes that each hold every image) must give the same probes
  evals = [f'--config.evals.every={STEPS}', '--config.evals.train_examples=400',
           '--config.evals.test_examples=200', '--config.evals.probe_steps=100',
           '--config.evals.batch_size=64', f'--config.monitor.health_every={STEPS}']
  single(one, 1, f'--config.max_steps={STEPS}', *evals)
  out = single(dp8, 8, f'--config.max_steps={STEPS}')
  assert "mesh: {'data': 8, 'fsdp': 1} over 8 cpu device(s), 1 process(es)" in out
  fsdp = ['--config.mesh.data=4', '--config.mesh.fsdp=2']
  local_sh(multi, 2, 4, '--config.max_steps=2', *fsdp)
  out, logs = local_sh(multi, 2, 4, f'--config.max_steps={STEPS}', *fsdp, *evals)
  assert f'eval at step {STEPS}' in out
  ev_one, ev_multi = ([json.loads(line) for line in open(d / 'metrics.jsonl')
                       if 'eval_knn_top1' in line] for d in (one, multi))
  assert len(ev_one) == len(ev_multi) == 1
  for key in ('eval_knn_top1', 'eval_linear_top1'):  # 200 test images: one flip is 0.005
    assert abs(ev_one[0][key] - ev_multi[0][key]) <= 0.01, (key, ev_one, ev_multi)
  # the health statistics: one global batch, whatever the mesh
  h_one, h_multi = ([json.loads(line) for line in open(d / 'metrics.jsonl') if 'health_' in line]
                    for d in (one, multi))
  assert [r['step'] for r in h_one] == [r['step'] for r in h_multi] == [STEPS]
  for key in ('health_feature_std_mean', 'health_effective_rank', 'health_pred_cosine'):
    np.testing.assert_allclose(h_multi[0][key], h_one[0][key], rtol=1e-4, err_msg=key)
  # TensorBoard: one event file per start, from process 0 only
  assert len([f for f in os.listdir(multi) if f.startswith('events.out.tfevents')]) == 2
  assert "mesh: {'data': 4, 'fsdp': 2} over 8 cpu device(s), 2 process(es)" in out
  assert 'resumed from checkpoint 2' in out
  assert 'step ' not in logs[0]  # only process 0 logs training lines
  assert not (multi / 'metrics.jsonl.tmp').exists()

  ref = losses(one)
  assert sorted(ref) == list(range(1, STEPS + 1))
  for other in (dp8, multi):
    got = losses(other)
    assert sorted(got) == sorted(ref)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                               rtol=2e-5)
  a = final_state(one, STEPS)
  for other in (dp8, multi):
    b = final_state(other, STEPS)
    assert [p for p, _ in a] == [p for p, _ in b]
    # atol: the demo's variance-covariance terms sum over the global batch, so the devices'
    # reduction order differs; AdamW's normalised step turns that float noise in a near-zero
    # gradient into parameter differences of ~1e-6, against steps of ~lr = 2e-4 (a wrong,
    # per-device statistic would differ by whole steps)
    for (path, x), (_, y) in zip(a, b):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=str(path))


def _port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def two_processes(workdir, *overrides):
  port = _port()
  return [subprocess.Popen(
      [sys.executable, *main_args(workdir, *overrides, f'--coordinator_address=localhost:{port}',
                                  '--num_processes=2', f'--process_id={i}')],
      cwd=ROOT, env=env(1), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for i in range(2)]


@pytest.mark.parametrize('signalled', [(0,), (1,), (0, 1)], ids=['process0', 'process1', 'both'])
def test_sigterm_to_any_process_stops_both_at_the_same_step(tmp_path, signalled):
  """The stop is agreed every `stop_check_every` steps on the flags as they were before the
  all-gather: a signal that lands during it can no longer stop one process and not the
  other (which hung both: one in the checkpoint's barrier, one in the next all-gather)."""
  procs = two_processes(tmp_path, '--config.max_steps=200', '--config.checkpoint.every=100',
                        '--config.checkpoint.stop_check_every=2',
                        '--config.checkpoint.stop_deadline=90')
  lines, t0 = [], time.time()
  for line in procs[0].stdout:  # process 0 logs the steps
    lines.append(line)
    if 'step      3/' in line:
      break
    assert time.time() - t0 < 300, ''.join(lines[-20:])
  for i in signalled:
    procs[i].send_signal(signal.SIGTERM)
  t_signal = time.time()
  try:
    rest = [p.communicate(timeout=150)[0] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.send_signal(signal.SIGUSR1)  # main.py prints every thread's stack
    time.sleep(2)
    for p in procs:
      p.kill()
    raise AssertionError('a process hung:\n' + '\n-----\n'.join(
        (p.communicate()[0] or '')[-6000:] for p in procs)) from None
  assert [p.returncode for p in procs] == [0, 0], rest
  assert time.time() - t_signal < 90  # within the deadline, which would exit 3
  out0 = ''.join(lines) + rest[0]
  assert 'stopped by SIGTERM at step' in out0  # process 0 learnt it from process 1
  step = int(out0.split('stopped by SIGTERM at step ')[1].split(':')[0])
  assert 4 <= step < 200 and step % 2 == 0  # an agreement step after the signal
  # one checkpoint, written by both processes together (orbax's save is collective: had they
  # stopped at different steps, neither would have finished it)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [str(step)]


def test_damaged_checkpoint_two_processes_agree_on_the_previous_one(tmp_path):
  """Each process reads its own shards; a checkpoint counts as intact only if it restored on
  both, so both move it aside once and resume from the same older step."""
  from helpers import DAMAGE, assert_same_state
  fsdp = ['--config.mesh.data=1', '--config.mesh.fsdp=2', '--config.checkpoint.every=2']
  ref, wd = tmp_path / 'ref', tmp_path / 'run'
  local_sh(ref, 2, 1, '--config.max_steps=6', *fsdp)
  local_sh(wd, 2, 1, '--config.max_steps=4', *fsdp)
  assert sorted(os.listdir(wd / 'checkpoints')) == ['2', '4']
  DAMAGE['truncated'](wd / 'checkpoints' / '4')
  out, _ = local_sh(wd, 2, 1, '--config.max_steps=6', *fsdp)
  assert f'moved damaged checkpoint 4 to {wd}/damaged_checkpoints/4' in out
  assert 'resumed from checkpoint 2' in out
  assert sorted(os.listdir(wd / 'damaged_checkpoints')) == ['4']
  assert_same_state(final_state(wd, 6), final_state(ref, 6))
