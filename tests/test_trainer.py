"""Pieces of the trainer's shell: the attention choice, the stop's agreement and deadline."""


import jax.numpy as jnp
import pytest

from ijepa_jax import config as cfg_lib
from ijepa_jax.spec import resolve
from ijepa_jax.models import attention_implementation
from helpers import load


def test_attention_choice():
  bf16 = jnp.bfloat16
  assert attention_implementation(None, 64, bf16, 'gpu') == 'cudnn'   # ViT-L/16
  assert attention_implementation(None, 80, bf16, 'gpu') == 'cudnn'   # ViT-H/14
  assert attention_implementation(None, 88, bf16, 'gpu') == 'cudnn'   # ViT-g/16
  assert attention_implementation(None, 24, bf16, 'gpu') == 'cudnn'   # the predictor
  assert attention_implementation(None, 20, bf16, 'gpu') == 'xla'     # not a multiple of 8
  assert attention_implementation(None, 64, jnp.float32, 'gpu') == 'xla'
  assert attention_implementation(None, 64, bf16, 'tpu') == 'xla'
  assert attention_implementation('xla', 64, bf16, 'gpu') == 'xla'
  c = load('vitl16')
  backends = {p: resolve(c, 8, platform=p).arch.attention_backends for p in ('gpu', 'cpu')}
  assert backends['gpu'] == {'encoder': 'cudnn', 'predictor': 'cudnn'}
  assert backends['cpu'] == {'encoder': 'xla', 'predictor': 'xla'}
  c.model.attention = 'cudnn'
  c.data.dataset_size = 1_000
  with pytest.raises(cfg_lib.ConfigError, match='needs a GPU'):
    resolve(c, 8, platform='cpu')
  c.model.pred_width = 320
  with pytest.raises(cfg_lib.ConfigError, match="predictor's head size 20"):
    resolve(c, 8, platform='gpu')


def test_stop_agreement_uses_the_gathered_flags_only(monkeypatch):
  """A signal that lands while the processes gather their flags must not stop this process
  alone: the decision is the gathered values', the same on every process (it used to read
  its own flag again after the gather, and the two processes then hung in different
  collectives)."""
  import signal

  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from ijepa_jax.stop import StopRequest

  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  stop = StopRequest(check_every=5)
  gathers = []

  def gather(x):  # the other process has no signal; ours arrives during the gather
    gathers.append(int(x))
    if len(gathers) == 1:
      stop._handle(signal.SIGTERM, None)
    return np.array([int(x), 0], np.int32)

  monkeypatch.setattr(multihost_utils, 'process_allgather', gather)
  assert [stop.requested(s) for s in range(1, 5)] == [False] * 4 and gathers == []  # no gather
  assert not stop.requested(5)  # gathered 0 from both: neither stops ...
  assert stop.signum == signal.SIGTERM  # ... although the signal has arrived here
  assert [stop.requested(s) for s in range(6, 10)] == [False] * 4
  assert stop.requested(10) and gathers == [0, signal.SIGTERM]  # both see it at step 10

  other = StopRequest(check_every=5)  # a process that was not signalled learns it
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda x: np.array([int(x), signal.SIGTERM], np.int32))
  assert other.requested(5) and other.name == 'SIGTERM'


def test_stop_deadline_dumps_stacks_and_exits_3(tmp_path):
  """A stop that cannot finish (here: the main thread never returns) ends with the threads'
  stacks on stderr and exit 3 instead of a hang."""
  import os
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = ('import os, signal, time\n'
            'from ijepa_jax.stop import StopRequest\n'
            'with StopRequest(deadline=1.0) as stop:\n'
            '  os.kill(os.getpid(), signal.SIGTERM)\n'
            '  assert stop.requested(1)\n'
            '  time.sleep(60)  # a save that never returns\n')
  t0 = time.time()
  proc = subprocess.run([sys.executable, '-c', script], cwd=root, capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu'))
  from ijepa_jax.stop import StopRequest
  assert proc.returncode == StopRequest.DEADLINE_EXIT == 3, proc.stderr[-2000:]
  assert time.time() - t0 < 30
  assert 'still running 1s after SIGTERM (checkpoint.stop_deadline)' in proc.stderr
  assert 'time.sleep(60)' in proc.stderr or 'line 6' in proc.stderr  # the main thread's stack


def test_a_short_run_trains_logs_checkpoints_and_resumes(tmp_path):
  """The fast tier's one whole run through `train_and_evaluate` (the step builder, the loop,
  the log, the checkpoint, the run's config.py), then a second start that resumes at the
  checkpoint and adds one step, with one log row per step and none twice."""
  import json

  import numpy as np

  from ijepa_jax import trainer
  from helpers import brightness_folder, folder_config

  brightness_folder(str(tmp_path / 'data'))
  c = folder_config(tmp_path / 'data')
  c.batch_size, c.num_epochs, c.log_every, c.max_steps = 16, 1.0, 1, 2  # 80 images: 5 steps
  c.model.pred_width, c.model.pred_depth = 16, 1
  c.evals.every, c.evals.at_end = 0, False
  c.monitor.pictures, c.monitor.health_every, c.monitor.tensorboard = False, 0, False
  work = tmp_path / 'work'
  last = trainer.train_and_evaluate(c, str(work))
  assert last['step'] == 2 and np.isfinite(last['loss']) and last['loss'] > 0
  assert (work / 'config.py').exists()
  c.max_steps = 3
  last = trainer.train_and_evaluate(c, str(work))
  assert last['step'] == 3
  rows = [json.loads(line) for line in open(work / 'metrics.jsonl')]
  steps = [r['step'] for r in rows if 'loss' in r]
  assert steps == [1, 2, 3]
  assert all(np.isfinite(r['loss']) for r in rows if 'loss' in r)
  final = json.loads((work / 'final.json').read_text())
  assert final['step'] == 3


@pytest.mark.slow
def test_a_packed_run_trains_as_the_padded_run(tmp_path, monkeypatch, capsys):
  """`main.py`'s loop with masks.pack (both networks packed, whatever it saves): the log says
  how, and every step's losses are the padded run's up to float rounding."""
  import json

  import numpy as np

  from ijepa_jax import packing, trainer
  from helpers import brightness_folder, folder_config

  monkeypatch.setattr(packing, '_MIN_SAVING', -1.0)
  brightness_folder(str(tmp_path / 'data'))
  losses = {}
  for pack in (False, True):
    c = folder_config(tmp_path / 'data')
    c.batch_size, c.num_epochs, c.log_every, c.max_steps = 16, 1.0, 1, 4
    c.model.pred_width, c.model.pred_depth = 16, 1
    c.evals.every, c.evals.at_end = 0, False
    c.monitor.pictures, c.monitor.health_every, c.monitor.tensorboard = False, 0, False
    c.masks.pack = pack
    work = tmp_path / f'work{pack}'
    trainer.train_and_evaluate(c, str(work))
    rows = [json.loads(line) for line in open(work / 'metrics.jsonl')]
    losses[pack] = [r['loss'] for r in rows if 'loss' in r]
  assert 'packed: encoder' in capsys.readouterr().out
  assert len(losses[True]) == 4
  np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
