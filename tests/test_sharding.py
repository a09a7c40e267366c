"""The sharding rules: FSDP really shards every weight matrix, the EMA tree and the Adam
moments follow the parameters, and a dimension the mesh cannot divide stays replicated."""

import math

import flax.linen as nn
import jax
import pytest

from configs.vitb16 import get_config as vitb16
from ijepa_jax import sharding
from ijepa_jax.spec import resolve
from ijepa_jax.state import abstract_state, run_shapes


def state_shardings(config, mesh):
  run = resolve(config, mesh.size)
  boxed = abstract_state(run.model, run_shapes(run))
  return sharding.logical_shardings(boxed, mesh), nn.unbox(boxed)


def leaves(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_mesh_shape_resolves_the_rest_and_rejects_what_does_not_fit():
  assert sharding.mesh_shape(-1, 4, 64) == (16, 4)
  assert sharding.mesh_shape(2, -1, 8) == (2, 4)
  for bad in ((3, -1, 8), (-1, -1, 8), (2, 2, 8), (0, 8, 8)):
    with pytest.raises(ValueError, match='mesh'):
      sharding.mesh_shape(*bad)


def test_fsdp_shards_every_weight_matrix_and_the_ema_and_adam_state_alike():
  config = vitb16()
  config.batch_size, config.data.dataset_size = 8, 1_000
  mesh = sharding.make_mesh(2, 4)  # 8 CPU devices
  sh, abstract = state_shardings(config, mesh)
  large = 0
  for (path, x), (_, s) in zip(leaves(abstract.params), leaves(sh.params)):
    if x.size >= 2 ** 16:  # every weight matrix, the patch embedding
      assert s.spec.count('fsdp') == 1, (jax.tree_util.keystr(path), s.spec)
      assert math.prod(s.shard_shape(x.shape)) * 4 == x.size  # a quarter on each device
      large += 1
  assert large == 11  # encoder: patch embed, qkv, proj, fc1, fc2; predictor: embed, qkv,
                      # proj, fc1, fc2, predictor_proj
  enc = leaves(sh.params['encoder'])
  assert [s for _, s in leaves(sh.target_params)] == [s for _, s in enc]
  adam = sh.opt_state[0]
  assert [s for _, s in leaves(adam.mu)] == [s for _, s in leaves(sh.params)]
  assert [s for _, s in leaves(adam.nu)] == [s for _, s in leaves(sh.params)]


def test_a_dimension_the_mesh_cannot_divide_stays_replicated():
  config = vitb16()
  config.model.variant, config.model.width, config.model.depth = 'custom', 36, 2
  config.model.num_heads, config.model.pred_width, config.model.pred_depth = 3, 48, 1
  config.batch_size, config.data.dataset_size = 8, 1_000
  sh, abstract = state_shardings(config, sharding.make_mesh(1, 8))
  qkv = sh.params['encoder']['blocks']['layers']['attn']['qkv']['kernel']  # [depth, 36, 108]
  assert qkv.spec == jax.sharding.PartitionSpec(None, None, None)
  pred_qkv = sh.params['predictor']['predictor_blocks']['layers']['attn']['qkv']['kernel']
  assert pred_qkv.spec[1] == 'fsdp'  # 48 over 8 still shards
