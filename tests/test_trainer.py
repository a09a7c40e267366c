"""Pieces of the trainer's shell: the attention choice."""


import jax.numpy as jnp
import pytest

from ijepa_jax import config as cfg_lib
from ijepa_jax.models import attention_implementation
from test_config import load


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
