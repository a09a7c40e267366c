"""Checkpoints: restore onto other meshes, keep policy, half-written saves, no pickle."""

import os
import shutil
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from ijepa_jax import sharding
from ijepa_jax.checkpoint import Checkpoints, find_checkpoint
from ijepa_jax.state import abstract_state, init_state, restore_target
from helpers import batch_for, shapes_of, tiny_model

META = {'step': 3, 'data': {'next_step': 3}, 'accounting': {'train_seconds': 1.5}}


def _state_on(mesh_data, mesh_fsdp, devices):
  model = tiny_model()
  shapes = shapes_of(batch_for(0))
  mesh = sharding.make_mesh(mesh_data, mesh_fsdp, devices)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    boxed = abstract_state(model, shapes)
    state, sh = init_state(model, mesh, shapes, seed=0, abstract=boxed)
  return state, nn.unbox(boxed), boxed, model, shapes


def _target_on(boxed, abstract, data, fsdp, devices):
  mesh = sharding.make_mesh(data, fsdp, devices)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    return restore_target(abstract, sharding.logical_shardings(boxed, mesh)), mesh


def test_saved_on_8_devices_restores_on_1_and_on_4x2(tmp_path):
  state, abstract, boxed, _, _ = _state_on(8, 1, jax.devices())
  assert len(state.params['encoder']['patch_embed']['proj']['kernel'].sharding.device_set) == 8
  ckpts = Checkpoints(str(tmp_path / 'ck'))
  ckpts.save(3, state, META)
  ckpts.wait()
  want = jax.tree.leaves(jax.device_get(state))
  for data, fsdp, devices in ((1, 1, jax.devices()[:1]), (4, 2, jax.devices())):
    target, mesh = _target_on(boxed, abstract, data, fsdp, devices)
    got, meta = Checkpoints(str(tmp_path / 'ck')).restore(3, target)
    assert meta == META
    assert jax.tree.structure(got) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(jax.device_get(got)), want):
      np.testing.assert_array_equal(a, b)
    leaf = next(x for path, x in jax.tree_util.tree_flatten_with_path(got.opt_state)[0]
                if '.mu' in jax.tree_util.keystr(path) and 'fc1' in jax.tree_util.keystr(path)
                and 'kernel' in jax.tree_util.keystr(path))
    assert leaf.sharding.mesh.shape == mesh.shape
    if fsdp == 2:  # Adam moments really are split over the fsdp axis on the new mesh
      assert leaf.addressable_shards[0].data.size == leaf.size // 2


def test_keep_last_k_and_every_mth(tmp_path):
  state, *_ = _state_on(8, 1, jax.devices())
  ckpts = Checkpoints(str(tmp_path / 'ck'), keep=2, keep_every=4)
  for step in range(1, 10):
    ckpts.save(step, state, dict(META, step=step))
  ckpts.wait()
  assert ckpts.all_steps() == [4, 8, 9]
  assert Checkpoints(str(tmp_path / 'ck'), read_only=True).latest_step() == 9


def test_half_written_checkpoint_is_never_read(tmp_path):
  """What a kill during an async save leaves: a temporary directory, not a step."""
  state, abstract, boxed, _, _ = _state_on(8, 1, jax.devices())
  d = tmp_path / 'ck'
  ckpts = Checkpoints(str(d))
  ckpts.save(2, state, META)
  ckpts.wait()
  ckpts.close()
  # a copy of checkpoint 2 renamed as orbax's in-flight step 4, with files missing
  half = d / '4.orbax-checkpoint-tmp'
  shutil.copytree(d / '2', half)
  shutil.rmtree(half / 'state')
  reopened = Checkpoints(str(d))
  assert reopened.latest_step() == 2 and reopened.all_steps() == [2]
  reopened.wait()
  for _ in range(100):  # removed at start, in the background
    if not half.exists():
      break
    time.sleep(0.05)
  assert not half.exists()
  target, _ = _target_on(boxed, abstract, 8, 1, jax.devices())
  got, _ = reopened.restore(2, target)
  np.testing.assert_array_equal(jax.device_get(got.params['predictor']['mask_token']),
                                jax.device_get(state.params['predictor']['mask_token']))


def test_no_pickle_in_the_format(tmp_path):
  state, *_ = _state_on(8, 1, jax.devices())
  ckpts = Checkpoints(str(tmp_path / 'ck'))
  ckpts.save(1, state, META)
  ckpts.wait()
  for dirpath, _, files in os.walk(tmp_path / 'ck'):
    for name in files:
      with open(os.path.join(dirpath, name), 'rb') as f:
        head = f.read(2)
      assert not head.startswith(b'\x80'), f'{name} looks like a pickle'
      assert not name.endswith(('.pkl', '.pickle'))


def test_find_checkpoint(tmp_path):
  state, *_ = _state_on(8, 1, jax.devices())
  ckpts = Checkpoints(str(tmp_path / 'run' / 'checkpoints'))
  for step in (5, 10):
    ckpts.save(step, state, META)
  ckpts.wait()
  base = str(tmp_path / 'run' / 'checkpoints')
  assert find_checkpoint(str(tmp_path / 'run')) == (base, 10)
  assert find_checkpoint(base + '/5') == (base, 5)
  with pytest.raises(FileNotFoundError, match='does not exist; give the workdir of a run'):
    find_checkpoint(str(tmp_path / 'nothing'))


def test_config_changes_are_listed():
  from ijepa_jax.trainer import config_changes
  saved = {'num_epochs': 1.0, 'optim': {'lr': 1e-3, 'ema': [0.996, 1.0]}, 'seed': 0}
  now = {'num_epochs': 2.0, 'optim': {'lr': 1e-3, 'ema': [0.996, 1.0]}, 'seed': 0, 'new': 1}
  assert config_changes(saved, now) == ['new: None -> 1', 'num_epochs: 1.0 -> 2.0']
  assert config_changes(saved, saved) == []


def test_only_the_echoes_of_a_failed_checkpoint_read_are_dropped(monkeypatch, caplog):
  """Reading a damaged checkpoint leaves reads that fail unretrieved or finish on a closed
  asyncio loop; their tracebacks are dropped, every other unraisable or asyncio error kept."""
  import asyncio
  import gc
  import logging
  import sys
  from ijepa_jax import checkpoint
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: seen.append(u.exc_type.__name__))
  monkeypatch.setattr(checkpoint._unretrieved_reads, 'directories', set())
  monkeypatch.setattr(logging.getLogger('asyncio'), 'filters', [])
  checkpoint._quiet_failed_reads('/run/checkpoints')
  hook = sys.unraisablehook
  checkpoint._quiet_failed_reads('/run/checkpoints')
  assert sys.unraisablehook is hook  # installed once, not wrapped again
  assert logging.getLogger('asyncio').filters == [checkpoint._unretrieved_reads]
  loop = asyncio.new_event_loop()

  async def fails(message):
    raise ValueError(message)

  for message in ('reading /run/checkpoints/6/state/d/0 failed', 'elsewhere /data/x failed'):
    loop.run_until_complete(asyncio.sleep(0, loop.create_task(fails(message))))
  loop.close()
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    gc.collect()  # the unretrieved tasks log as they are collected
  logged = [str(r.exc_info[1]) for r in caplog.records if r.name == 'asyncio']
  assert logged == ['elsewhere /data/x failed']

  class Raises:
    def __init__(self, fn):
      self.fn = fn

    def __del__(self):
      self.fn()

  def late_callback():
    loop.call_soon_threadsafe(print)

  def same_message_elsewhere():
    raise RuntimeError('Event loop is closed')

  def other():
    raise ValueError('kept')

  for fn in (late_callback, same_message_elsewhere, other, late_callback):
    Raises(fn)
    gc.collect()
  assert seen == ['RuntimeError', 'ValueError']
