"""Pieces of the trainer's shell: the metrics log across restarts (local files are appended
to; buckets, which cannot append, are rewritten at each flush), and the attention choice."""

import json

import jax.numpy as jnp
import pytest

from ijepa_jax import config as cfg_lib
from ijepa_jax.models import attention_implementation
from ijepa_jax.trainer import MetricsLog
from test_config import load


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
  assert cfg_lib.attention_backends(c, 'gpu') == {'encoder': 'cudnn', 'predictor': 'cudnn'}
  assert cfg_lib.attention_backends(c, 'cpu') == {'encoder': 'xla', 'predictor': 'xla'}
  c.model.attention = 'cudnn'
  c.data.dataset_size = 1_000
  with pytest.raises(cfg_lib.ConfigError, match='needs a GPU'):
    cfg_lib.validate(c, num_devices=8, platform='cpu')
  c.model.pred_width = 320
  with pytest.raises(cfg_lib.ConfigError, match="predictor's head size 20"):
    cfg_lib.validate(c, num_devices=8, platform='gpu')
