"""What a run reports: metrics.jsonl across restarts, TensorBoard event files read back with
TensorBoard's own reader, the console's live line, the parameter overview."""

import io
import json

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ijepa_jax import sharding
from ijepa_jax.loading import model_for
from ijepa_jax.spec import resolve
from ijepa_jax.reporting import (Console, MetricsLog, Progress, RunLog, TensorBoard,
                                 parameter_overview, tag_for)
from helpers import load


def steps_in(path):
  return [json.loads(line)['step'] for line in open(path)]


@pytest.mark.parametrize('rewrite', [False, True])
def test_metrics_log_resumes_without_duplicates(tmp_path, rewrite):
  path = str(tmp_path / 'metrics.jsonl')
  log = MetricsLog(path, resume_step=0, rewrite=rewrite)
  for step in range(1, 6):
    log.write({'step': step, 'loss': 1.0 / step})
  log.flush()
  log.close()
  assert steps_in(path) == [1, 2, 3, 4, 5]
  with open(path, 'a') as f:
    f.write('{"step": 6, "lo')  # a line torn by a kill
  log = MetricsLog(path, resume_step=3, rewrite=rewrite)  # the checkpoint was at step 3
  assert steps_in(path) == [1, 2, 3]
  log.write({'step': 4, 'loss': 0.3})
  log.flush()
  assert steps_in(path) == [1, 2, 3, 4]
  log.close()
  assert json.loads(open(path).read().splitlines()[-1])['loss'] == 0.3


def read_events(logdir):
  acc = EventAccumulator(str(logdir), size_guidance={'scalars': 0, 'images': 0})
  acc.Reload()
  return acc


def test_tags():
  assert tag_for('loss') == 'train/loss'
  assert tag_for('lr') == 'schedule/lr'
  assert tag_for('momentum') == 'schedule/momentum'
  assert tag_for('weight_decay') == 'schedule/weight_decay'
  assert tag_for('images_per_sec_per_device') == 'perf/images_per_sec_per_device'
  assert tag_for('mfu') == 'perf/mfu'
  assert tag_for('eval_knn_top1') == 'eval/knn_top1'
  assert tag_for('final_lowshot_1pct_top1') == 'final/lowshot_1pct_top1'
  assert tag_for('health_effective_rank') == 'health/effective_rank'


def test_tensorboard_scalars_images_and_resume(tmp_path):
  log = RunLog(str(tmp_path), resume_step=0)
  for step in range(1, 6):
    log.write({'step': step, 'loss': 1.0 / step, 'lr': 1e-3 * step, 'mfu': 0.25,
               'bad': float('nan'), 'name': 'text is not a scalar'})
  log.write({'step': 5, 'eval_knn_top1': 0.625})
  picture = np.zeros((20, 30, 3), np.uint8)
  picture[:, :10, 0] = 255
  log.picture('masks', picture, 1)
  log.close()
  acc = read_events(tmp_path)
  assert set(acc.Tags()['scalars']) == {'train/loss', 'schedule/lr', 'perf/mfu', 'eval/knn_top1'}
  loss = acc.Scalars('train/loss')
  assert [e.step for e in loss] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([e.value for e in loss], [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5], rtol=1e-6)
  assert acc.Scalars('eval/knn_top1')[0].value == 0.625
  (img,) = acc.Images('pictures/masks')
  assert (img.width, img.height, img.step) == (30, 20, 1)
  assert (tmp_path / 'pictures' / 'masks.png').exists()
  # a restart from the checkpoint at step 3: the events past it are purged, as in the JSONL
  log = RunLog(str(tmp_path), resume_step=3)
  log.write({'step': 4, 'loss': 0.7})
  log.close()
  loss = read_events(tmp_path).Scalars('train/loss')
  assert [(e.step, round(e.value, 6)) for e in loss] == [(1, 1), (2, 0.5), (3, 0.333333), (4, 0.7)]
  assert steps_in(tmp_path / 'metrics.jsonl') == [1, 2, 3, 4]


def test_tensorboard_off_writes_nothing(tmp_path):
  tb = TensorBoard(str(tmp_path), enabled=False)
  tb.scalars({'step': 1, 'loss': 1.0})
  tb.close()
  assert not list(tmp_path.iterdir())


def test_console_live_line_only_in_a_terminal(monkeypatch):
  log_file = io.StringIO()
  plain = Console(log_file)  # StringIO is not a terminal
  progress = Progress(total=100, batch_size=8, console=plain)
  for step in range(1, 5):
    progress.step(step, 0.5)
  plain.print('step 4/100 | loss 0.5')
  assert log_file.getvalue() == 'step 4/100 | loss 0.5\n'  # no carriage returns in a log

  tty = io.StringIO()
  live = Console(tty, live=True)
  progress = Progress(total=100, batch_size=8, console=live)
  times = iter([0.0, 0.5, 1.0])  # two steps a second
  monkeypatch.setattr('ijepa_jax.reporting.time.monotonic', lambda: next(times))
  progress.step(1, 0.5)
  progress.step(2, 0.4)
  assert tty.getvalue() == '\r\033[Kstep      2/100 | loss 0.4000 | 16 img/s | ETA 0m49s'
  live.print('a log line')
  assert tty.getvalue().endswith('\r\033[Ka log line\n')  # the live line is cleared first


def test_parameter_overview_counts_and_bytes_per_device():
  config = load('demo')
  _, _, boxed = model_for(resolve(config, 1))
  import flax.linen as nn
  abstract = nn.unbox(boxed)
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  text = parameter_overview(abstract, sharding.logical_shardings(boxed, mesh))
  # by hand: patch_embed 4*4*1*64 + 64; each of 4 blocks: 2 LayerNorms 4*64, qkv 64*192 + 192,
  # proj 64*64 + 64, fc1 64*256 + 256, fc2 256*64 + 64; the final norm 2*64
  encoder = 4 * 4 * 64 + 64 + 4 * (4 * 64 + 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256
                                   + 256 * 64 + 64) + 2 * 64
  assert encoder == 201_152
  assert f'encoder {encoder:,} |' in text
  assert 'encoder/blocks/layers/attn/qkv/kernel' in text and '[4, 64, 192]' in text
  total = int(text.split('| total ')[1].split()[0].replace(',', ''))
  assert total == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  # float32: params 4 bytes each; the EMA target is the encoder; Adam keeps two moments
  assert f'params {total * 4 / 2**20:,.1f} MiB' in text
  assert f'EMA target {encoder * 4 / 2**20:,.1f} MiB' in text
  # FSDP over 8 devices: each weight's model-width axis split 8 ways, the rest replicated
  text8 = parameter_overview(abstract, sharding.logical_shardings(boxed, sharding.make_mesh(1, 8)))
  mib8 = float(text8.split('EMA target ')[1].split(' MiB')[0])
  assert mib8 < encoder * 4 / 2**20 / 4


def test_host_description_names_the_versions_devices_and_cpu():
  import hashlib
  import os
  import platform
  import re
  from ijepa_jax.reporting import host_description
  h = host_description()
  assert (h['jax'], h['python']) == (jax.__version__, platform.python_version())
  assert (h['platform'], h['devices'], h['processes']) == ('cpu', 8, 1)  # conftest's 8
  assert h['cpu_count'] == os.cpu_count()
  if not os.path.exists('/proc/cpuinfo'):
    return
  text = open('/proc/cpuinfo').read()
  model = re.search(r'^model name\s*:\s*(.*)$', text, re.M)
  flags = re.search(r'^(?:flags|Features)\s*:\s*(.*)$', text, re.M)
  if model:
    assert h['cpu'] == model.group(1).strip()
  if flags:  # the same set of flags in any order gives the same digest
    assert h['cpu_flags_sha1'] == hashlib.sha1(
        ' '.join(sorted(flags.group(1).split())).encode()).hexdigest()[:12]
