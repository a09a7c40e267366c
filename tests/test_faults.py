"""Runs that survive: SIGKILL and resume, SIGTERM, a kill during an async save, non-finite
steps, a full disk and an unwritable workdir. Each run is `main.py` in a subprocess, as a
user (or a TPU/SLURM scheduler) runs it, on a tiny model over Fashion-MNIST."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bench.faults import TINY, data_files, final_state
from helpers import DAMAGE, assert_same_state, losses
from ijepa_jax import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.skipif(fashion_mnist.missing_files(None),
                                 reason='dataset-fashion-mnist not installed'),
              pytest.mark.slow]  # subprocess runs: the default suite, not the fast tier


def command(workdir, *overrides):
  return [sys.executable, 'main.py', '--config=configs/demo.py', f'--workdir={workdir}',
          *TINY, *overrides]


def env():
  e = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED='1')
  e.pop('XLA_FLAGS', None)  # one CPU device, like a user's run
  return e


def run(workdir, *overrides, **kw):
  return subprocess.run(command(workdir, *overrides), cwd=ROOT, env=env(), capture_output=True,
                        text=True, timeout=600, **kw)


def start(workdir, *overrides, **kw):
  return subprocess.Popen(command(workdir, *overrides), cwd=ROOT, env=env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def read_until(proc, needle, timeout=300):
  """Lines of proc's output up to (and including) the first one containing `needle`."""
  lines, t0 = [], time.time()
  for line in proc.stdout:
    lines.append(line)
    if needle in line:
      return lines
    assert time.time() - t0 < timeout, ''.join(lines[-20:])
  raise AssertionError(f'{needle!r} never printed:\n' + ''.join(lines[-30:]))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run of 8 steps, checkpoint every 2."""
  wd = tmp_path_factory.mktemp('reference')
  proc = run(wd, '--config.max_steps=8', '--config.checkpoint.every=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd


def test_sigkill_then_resume_is_bitwise_identical(reference, tmp_path):
  proc = start(tmp_path, '--config.max_steps=8', '--config.checkpoint.every=4')
  read_until(proc, 'checkpoint 4:')
  ckpt = tmp_path / 'checkpoints' / '4'
  for _ in range(400):  # the async write finishes (atomic rename), training goes on meanwhile
    if ckpt.exists():
      break
    time.sleep(0.05)
  read_until(proc, 'step      6/8')
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert ckpt.exists() and not (tmp_path / 'checkpoints' / '8').exists()
  assert max(losses(tmp_path)) >= 6  # rows past the checkpoint were written before the kill
  again = run(tmp_path, '--config.max_steps=8', '--config.checkpoint.every=4')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'resumed from checkpoint 4' in again.stdout
  assert 'Metadata file does not exist' not in again.stderr  # no alarm on an ordinary resume
  assert_same_state(final_state(tmp_path, 8), final_state(reference, 8))
  ref = losses(reference)
  got = losses(tmp_path)
  assert sorted(got) == list(range(1, 9))  # no duplicated or missing rows
  assert got == ref  # the same loss at every step


def test_sigterm_saves_and_exits_zero_then_resumes(reference, tmp_path):
  proc = start(tmp_path, '--config.max_steps=8', '--config.checkpoint.every=100')
  read_until(proc, 'step      3/8')
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out[-3000:]
  assert 'SIGTERM received' in out and 'stopped by SIGTERM at step' in out
  step = int(out.split('stopped by SIGTERM at step ')[1].split(':')[0])
  assert 3 <= step < 8 and (tmp_path / 'checkpoints' / str(step)).exists()
  again = run(tmp_path, '--config.max_steps=8', '--config.checkpoint.every=100')
  assert again.returncode == 0 and f'resumed from checkpoint {step}' in again.stdout
  assert_same_state(final_state(tmp_path, 8), final_state(reference, 8))


def test_kill_during_async_save_keeps_the_previous_checkpoint(reference, tmp_path):
  proc = start(tmp_path, '--config.max_steps=8', '--config.checkpoint.every=2')
  read_until(proc, 'checkpoint 4:')  # the save of 4 has just started writing in the background
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(int(p) for p in os.listdir(tmp_path / 'checkpoints') if p.isdigit())
  assert 2 in done  # the previous checkpoint is complete whatever happened to 4
  again = run(tmp_path, '--config.max_steps=8', '--config.checkpoint.every=2')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from checkpoint {max(done)}' in again.stdout
  assert not [p for p in os.listdir(tmp_path / 'checkpoints') if 'tmp' in p]
  assert_same_state(final_state(tmp_path, 8), final_state(reference, 8))


def test_non_finite_stops_by_default_and_skip_counts(tmp_path):
  stop = run(tmp_path / 'stop', '--config.max_steps=4', '--config.optim.lr=1e38',
             '--config.optim.start_lr=1e38')
  assert stop.returncode == 1
  assert 'is not finite' in stop.stderr and 'nonfinite=skip' in stop.stderr
  assert not os.listdir(tmp_path / 'stop' / 'checkpoints')  # nothing bad was saved
  skip = run(tmp_path / 'skip', '--config.max_steps=4', '--config.optim.lr=1e38',
             '--config.optim.start_lr=1e38', '--config.nonfinite=skip')
  assert skip.returncode == 0, skip.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / 'skip' / 'metrics.jsonl')]
  assert [r['nonfinite_steps'] for r in rows] == [1, 2, 3, 4]
  state = dict((jax.tree_util.keystr(p), x) for p, x in final_state(tmp_path / 'skip', 4))
  assert all(np.isfinite(x).all() for x in state.values())  # the weights never saw a bad step


def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(reference, tmp_path):
  first = run(tmp_path, '--config.max_steps=2', '--config.checkpoint.every=2')
  assert first.returncode == 0

  def small_files():  # like a disk that fills up: writes past 64 KiB fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
  full = run(tmp_path, '--config.max_steps=4', '--config.checkpoint.every=2',
             preexec_fn=small_files)
  assert full.returncode == 1, full.stderr[-3000:]
  assert 'failed' in full.stderr
  assert 'Checkpoints already complete there are untouched' in full.stderr
  done = sorted(int(p) for p in os.listdir(tmp_path / 'checkpoints') if p.isdigit())
  assert done[0] == 2 and final_state(tmp_path, 2)  # checkpoint 2 still restores


def test_unwritable_workdir(tmp_path):
  (tmp_path / 'file').write_text('a file, not a directory')
  proc = run(tmp_path / 'file' / 'work', '--config.max_steps=2')
  assert proc.returncode == 1 and 'is not writable' in proc.stderr


def test_image_folder_run_counts_corrupt_images_then_init_from(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for cls in ('a', 'b'):
    os.makedirs(tmp_path / 'data' / 'train' / cls)
    for i in range(15):
      Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(
          tmp_path / 'data' / 'train' / cls / f'{i}.jpg')
  (tmp_path / 'data' / 'train' / 'a' / 'broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
  (tmp_path / 'data' / 'train' / 'b' / 'empty.png').write_bytes(b'')
  folder = ['--config.data.dataset=image_folder', f'--config.data.data_dir={tmp_path / "data"}',
            '--config.data.dataset_size=-1', '--config.num_epochs=2']
  proc = run(tmp_path / 'run', *folder, '--config.max_steps=2')  # 32 images: one whole epoch
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'broken.jpg' in proc.stdout and 'empty.png' in proc.stdout
  assert 'data: image_folder/train, 32 images' in proc.stdout
  rows = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert rows[-1]['skipped_images'] == 2
  for mode in ('weights', 'full'):
    nxt = run(tmp_path / mode, *folder, '--config.max_steps=3',
              f'--config.init_from={tmp_path / "run"}', f'--config.init_from_mode={mode}')
    assert nxt.returncode == 0, nxt.stderr[-3000:]
    assert f'initialised from {tmp_path / "run" / "checkpoints"}/2 ({mode})' in nxt.stdout
    start = 0 if mode == 'weights' else 2
    assert f'at step {start}' in nxt.stdout
    assert sorted(losses(tmp_path / mode)) == list(range(start + 1, 4))


@pytest.fixture(scope='module')
def six_steps(tmp_path_factory):
  """A run stopped after step 6 with checkpoints 2, 4 and 6 (the reference's first 6 steps)."""
  wd = tmp_path_factory.mktemp('six')
  proc = run(wd, '--config.max_steps=6', '--config.checkpoint.every=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(wd / 'checkpoints')) == ['2', '4', '6']
  return wd


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_moved_aside_and_the_previous_resumes(
    reference, six_steps, tmp_path, damage):
  import shutil
  wd = tmp_path / 'run'
  shutil.copytree(six_steps, wd)
  assert data_files(str(wd / 'checkpoints' / '6'))
  DAMAGE[damage](wd / 'checkpoints' / '6')
  again = run(wd, '--config.max_steps=8', '--config.checkpoint.every=2')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Traceback' not in again.stderr, again.stderr[-3000:]
  assert 'WARNING: checkpoint 6 in' in again.stdout and 'is damaged' in again.stdout
  assert f'moved damaged checkpoint 6 to {wd}/damaged_checkpoints/6' in again.stdout
  assert 'resumed from checkpoint 4' in again.stdout
  assert (wd / 'damaged_checkpoints' / '6' / 'state').is_dir()  # kept, never deleted
  assert json.load(open(wd / 'final.json'))['damaged_checkpoints'] == 1
  rows = [json.loads(line) for line in open(wd / 'metrics.jsonl')]
  assert [r['damaged_checkpoints'] for r in rows if r['step'] > 4] == [1] * 4
  assert_same_state(final_state(wd, 8), final_state(reference, 8))
  assert losses(wd) == losses(reference)


def test_every_checkpoint_damaged_is_exit_2_and_nothing_moved(six_steps, tmp_path):
  import shutil
  wd = tmp_path / 'run'
  shutil.copytree(six_steps, wd)
  for step in ('2', '4', '6'):
    DAMAGE['truncated'](wd / 'checkpoints' / step)
  again = run(wd, '--config.max_steps=8', '--config.checkpoint.every=2')
  assert again.returncode == 2, again.stderr[-3000:]
  assert 'Traceback' not in again.stderr, again.stderr[-3000:]  # orbax's late reads: dropped
  errors = [line for line in again.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'every checkpoint in' in errors[0], again.stderr[-3000:]
  assert 'is damaged: 6: ' in errors[0] and 'Nothing was moved' in errors[0]
  assert sorted(os.listdir(wd / 'checkpoints')) == ['2', '4', '6']
  assert not (wd / 'damaged_checkpoints').exists()


def test_checkpoint_of_another_model_is_an_error_not_damage(six_steps, tmp_path):
  import shutil
  wd = tmp_path / 'run'
  shutil.copytree(six_steps, wd)
  before = (wd / 'config.py').read_text()
  again = run(wd, '--config.max_steps=8', '--config.model.width=48')
  assert again.returncode == 2  # the user's to fix, as a config error
  errors = [line for line in again.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'was written by another model than this config builds' in errors[0]
  assert 'model.width: 32 -> 48' in errors[0]
  assert sorted(os.listdir(wd / 'checkpoints')) == ['2', '4', '6']  # nothing moved
  assert (wd / 'config.py').read_text() == before  # the run's own config is kept


@pytest.mark.slow
def test_chaos_soak_short_ends_bitwise_identical(tmp_path):
  """bench/chaos_soak.py's driver, short: SIGKILLs (also while a checkpoint is being written),
  SIGTERMs and damaged checkpoints at random moments, then the run's end state against an
  uninterrupted run's, bit for bit."""
  from bench.faults import command, compare_states, soak
  ref = tmp_path / 'uninterrupted'
  proc = subprocess.run(command(str(ref), 16), cwd=ROOT, env=env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = soak(str(tmp_path / 'soaked'), 16, 5, seed=0, log=lambda *_: None)
  assert report['faults_total'] >= 5, report
  assert sum(n > 0 for n in report['faults'].values()) >= 3, report  # mixed kinds
  assert report['starts'] >= 4
  arrays, differing = compare_states(str(ref), str(tmp_path / 'soaked'), 16)
  assert arrays > 100 and differing == 0  # params, EMA params, Adam moments, step
