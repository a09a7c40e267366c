"""Sequence packing (ijepa_jax/packing.py): the rows hold every token once, attention stays
within each sequence, and a packed step is the padded step up to float rounding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import B, MEAN, STD, batch_for, shapes_of, tiny_model
from ijepa_jax import sharding
from ijepa_jax.masks import MaskConfig, MaskSampler
from ijepa_jax.models import dot_product_attention
from ijepa_jax.packing import Packer, first_fit
from ijepa_jax.recipes import fashion_mnist_demo
from ijepa_jax.spec import resolve
from ijepa_jax.state import global_batch, init_state, make_step_fn

CORRECTED = MaskSampler(MaskConfig(grid=(14, 14), mode='corrected'))
TINY = MaskSampler(MaskConfig(grid=(6, 6), mode='corrected', min_keep=2,
                              target_scale=(0.15, 0.25)))  # helpers.batch_for's


def test_first_fit_decreasing_by_hand():
  # longest first: 5 -> row 0; 3 does not fit row 0's last slot -> row 1; 2 -> row 1 after it
  row, offset = first_fit(np.array([3, 5, 2]), 2, 6)
  assert row.tolist() == [1, 0, 1] and offset.tolist() == [0, 0, 3]
  row, offset = first_fit(np.array([3, 5, 2]), 1, 10)
  assert row.tolist() == [0, 0, 0] and offset.tolist() == [5, 0, 8]
  assert first_fit(np.array([4, 4, 4]), 2, 6) is None  # 12 tokens, 12 slots, no two fit a row


def check_rows(packer, masks, packed, num_patches):
  """Every real token of every sequence sits in exactly one slot of its group's rows, the
  slots of one sequence are contiguous in one row, and the unpack indices find them."""
  b, m = packer.group, masks.tgt_idx.shape[1]
  kc, kt = masks.ctx_idx.shape[1], masks.tgt_idx.shape[2]
  for g in range(len(masks.ctx_len) // b):
    cl = masks.ctx_len[g * b:(g + 1) * b]
    tl = masks.tgt_len[g * b:(g + 1) * b]
    ctx_idx = masks.ctx_idx[g * b:(g + 1) * b]
    pack, seg = packed['ctx_pack'][g].ravel(), packed['ctx_seg'][g].ravel()
    assert (seg >= 0).sum() == cl.sum()
    for j in range(b):
      slots = packed['ctx_unpack'][g, j, :cl[j]]
      assert np.array_equal(np.flatnonzero(seg == j), slots)
      assert len(set(slots // packer.encoder.width)) == 1  # one row
      np.testing.assert_array_equal(pack[slots], j * num_patches + ctx_idx[j, :cl[j]])
    pack, seg = packed['pred_pack'][g].ravel(), packed['pred_seg'][g].ravel()
    assert (seg >= 0).sum() == (cl[:, None] + tl).sum()
    for j in range(b):
      for t in range(m):
        slots = np.flatnonzero(seg == j * m + t)
        assert np.all(np.diff(slots) == 1) and len(set(slots // packer.predictor.width)) == 1
        want = set(j * kc + np.arange(cl[j])) | set(b * kc + (j * m + t) * kt + np.arange(tl[j, t]))
        assert set(pack[slots].tolist()) == want
        unpack = packed['pred_unpack'][g, j, t, :tl[j, t]]
        np.testing.assert_array_equal(pack[unpack], b * kc + (j * m + t) * kt + np.arange(tl[j, t]))


def test_the_rows_hold_every_token_once():
  packer = Packer(CORRECTED, 32, 2, 196, (384, 1536), (384, 1536))
  assert packer.encoder is not None and packer.predictor is not None
  for step in range(4):
    masks, packed = packer(CORRECTED(32, 0, step), 0, step)
    assert {k: v.shape for k, v in packed.items()} == packer.shapes() | {}
    check_rows(packer, masks, packed, 196)
  assert packer.cuts == 0


def test_packing_saves_work_on_corrected_masks_and_leaves_official_ones():
  """ViT-L/16 sizes, 128 images per device: the packed rows cost well under the padded
  sequences (the useful share is about 52% for contexts, 58% for the predictor) and are never
  below what the real lengths need; the official masks' contexts all have about Kc tokens,
  so nothing is packed."""
  packer = Packer(CORRECTED, 128, 1, 196, (1024, 4096), (384, 1536))
  e, p = packer.encoder, packer.predictor
  assert e.flops < 0.7 * e.padded_flops and p.flops < 0.8 * p.padded_flops
  masks = [CORRECTED(128, 1, s) for s in range(20)]
  assert max(m.ctx_len.sum() for m in masks) <= e.rows * e.width
  assert max((m.ctx_len[:, None] + m.tgt_len).sum() for m in masks) <= p.rows * p.width
  official = MaskSampler(MaskConfig(grid=(14, 14), mode='official'))
  assert not Packer(official, 128, 1, 196, (1024, 4096), (384, 1536)).active


def test_the_rows_hold_a_thousand_groups_without_a_cut_and_are_mostly_full():
  """Sizing from the sampler's own distribution: 1,000 groups of 32 images (250 batches of 4
  devices) fit without a cut, and the rows carry no more margin than they need: their slots
  are on average 70-90% filled (128 images per device fill them more: 84% / 87%)."""
  packer = Packer(CORRECTED, 128, 4, 196, (1024, 4096), (384, 1536))
  fills = []
  for step in range(250):
    masks, _ = packer(CORRECTED(128, 7, step), 7, step)
    fills.append(packer.filled(masks))
  assert packer.cuts == 0
  for name in ('encoder', 'predictor'):
    assert 0.7 < np.mean([f[name] for f in fills]) < 0.9, name


def test_a_group_that_does_not_fit_has_its_longest_contexts_subsampled():
  packer = Packer(TINY, 16, 1, 36, (32, 128), (16, 64), min_saving=-1.0)
  masks = TINY(16, 0, 7)
  need = int(masks.ctx_len.sum())
  packer.encoder = dataclasses.replace(packer.encoder, rows=(need - 20) // packer.encoder.width)
  cut, packed = packer(masks, 0, 7)
  assert packer.cuts == 1
  cap = cut.ctx_len.max()
  assert cap < masks.ctx_len.max()
  for j in range(16):  # shorter contexts kept whole, longer ones a subset of cap tokens
    before = set(masks.ctx_idx[j, :masks.ctx_len[j]].tolist())
    after = cut.ctx_idx[j, :cut.ctx_len[j]]
    assert set(after.tolist()) <= before and np.all(np.diff(after) > 0)
    assert cut.ctx_len[j] == min(masks.ctx_len[j], cap)
  check_rows(packer, cut, packed, 36)
  np.testing.assert_array_equal(cut.tgt_idx, masks.tgt_idx)


def test_segment_attention_matches_a_hand_computed_softmax():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 6, 2, 4)).astype(np.float32) for _ in range(3))
  seg = np.array([[0, 0, 1, 1, 1, -1], [0, 1, 1, 2, 2, 2]], np.int32)
  out = np.asarray(dot_product_attention(q, k, v, 0.5, 'xla', jnp.asarray(seg)))
  for b in range(2):
    for i in range(6):
      keys = seg[b] == seg[b, i]
      for h in range(2):
        logits = 0.5 * k[b, keys, h] @ q[b, i, h]
        w = np.exp(logits - logits.max())
        np.testing.assert_allclose(out[b, i, h], (w / w.sum()) @ v[b, keys, h], rtol=1e-5,
                                   atol=1e-6)


def one_step(model, devices, batch):
  mesh = sharding.make_mesh(-1, 1, devices)
  unpacked = {k: v for k, v in batch.items() if '_pack' not in k and '_seg' not in k
              and '_unpack' not in k}
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state, sh = init_state(model, mesh, shapes_of(unpacked), seed=0)
    step_fn = make_step_fn(model, sh, mesh, MEAN, STD)
    return step_fn(state, global_batch(batch, mesh))


@pytest.mark.parametrize('devices', [1, pytest.param(8, marks=pytest.mark.slow)])
def test_a_packed_step_is_the_padded_step(devices):
  """The same batch padded and packed (one group per device): the same loss, gradient norm
  and updated parameters up to float rounding."""
  model = tiny_model()
  padded = batch_for(3)
  packer = Packer(TINY, B, devices, 36, (32, 128), (16, 64), min_saving=-1.0)
  masks, rows = packer(TINY(B, 0, 3), 0, 3)
  np.testing.assert_array_equal(masks.ctx_idx, padded['ctx_idx'])  # nothing was cut
  s0, m0 = one_step(model, jax.devices()[:devices], padded)
  s1, m1 = one_step(model, jax.devices()[:devices], padded | rows)
  assert float(m1['loss']) == pytest.approx(float(m0['loss']), rel=1e-5)
  assert float(m1['grad_norm']) == pytest.approx(float(m0['grad_norm']), rel=1e-4)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize('devices', [1, pytest.param(8, marks=pytest.mark.slow)])
def test_packed_micro_batches_are_the_padded_ones(devices):
  """Gradient accumulation (2 micro-batches) over packed rows: a device's micro-batch j packs
  its images j, j + 2, ..., the ones `micro_batches` gives it, so the update is the padded
  accumulated update."""
  model = dataclasses.replace(tiny_model(), accum_steps=2)
  padded = batch_for(3)
  packer = Packer(TINY, B, devices, 36, (32, 128), (16, 64), min_saving=-1.0, accum_steps=2)
  assert packer.groups == 2 * devices and packer.group == B // (2 * devices)
  masks, rows = packer(TINY(B, 0, 3), 0, 3)
  np.testing.assert_array_equal(masks.ctx_len, padded['ctx_len'])
  s0, m0 = one_step(model, jax.devices()[:devices], padded)
  s1, m1 = one_step(model, jax.devices()[:devices], padded | rows)
  assert float(m1['loss']) == pytest.approx(float(m0['loss']), rel=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


def test_the_step_reads_the_rows_of_the_one_network_packed():
  """Only the predictor packed (the encoder's rows would not pay): the step runs it on the
  rows, so rows filled with one token change the loss, and the true rows give the padded
  loss."""
  packer = Packer(TINY, B, 2, 36, (32, 128), (16, 64))
  assert packer.encoder is None and packer.predictor is not None
  model = tiny_model()
  padded = batch_for(3)
  _, rows = packer(TINY(B, 0, 3), 0, 3)
  assert set(rows) == {'pred_pack', 'pred_seg', 'pred_unpack'}
  _, m0 = one_step(model, jax.devices()[:2], padded)
  _, m1 = one_step(model, jax.devices()[:2], padded | rows)
  _, m2 = one_step(model, jax.devices()[:2], padded | rows | {
      'pred_pack': np.zeros_like(rows['pred_pack'])})
  assert float(m1['loss']) == pytest.approx(float(m0['loss']), rel=1e-5)
  assert abs(float(m2['loss']) - float(m0['loss'])) > 1e-3 * float(m0['loss'])  # 100x the tolerance


def test_a_packed_run_counts_its_flops_from_the_rows():
  """The run's executed FLOPs with packing: the padded count less what the rows save, which
  lies between the padded count and the masks' useful work."""
  c = fashion_mnist_demo()
  c.masks.context_len = -1  # uncapped corrected contexts (7x7: up to 43 tokens)
  c.model.width, c.model.pred_width = 128, 96
  padded = resolve(c, 1)
  c.masks.pack = True
  packed = resolve(c, 1)
  assert packed.packer.encoder is not None and packed.packer.predictor is not None
  a, s = packed.arch, packed.sampler
  executed = a.step_flops(128, s, packed.packer)
  assert a.step_flops(128, s, None) == padded.arch.step_flops(128, s)
  assert executed < 0.9 * padded.arch.step_flops(128, s)
  useful = np.mean([a.useful_flops(m.ctx_len, m.tgt_len)
                    for m in (s(128, 0, i) for i in range(10))])
  assert executed > useful


def test_each_process_packs_its_own_groups_as_one_process_would():
  """Two processes of a batch of 16 over 4 devices (groups of 4): each process's rows are
  the single process's rows of the same groups, so the global batch does not depend on how
  many processes make it."""
  from ijepa_jax.data import ArraySource
  from ijepa_jax.input_pipeline import Batches, TransformConfig
  images = np.zeros((64, 24, 24, 3), np.uint8)
  packer = Packer(TINY, 16, 4, 36, (32, 128), (16, 64), min_saving=-1.0)
  make = lambda p, n: Batches(ArraySource(images), 16, 0, TINY, TransformConfig(24, 3), p, n,
                              workers=1, packer=packer)
  pipes = [make(0, 1), make(0, 2), make(1, 2)]
  whole, *halves = [pipe(5) for pipe in pipes]
  for pipe in pipes:
    pipe.close()
  for key in packer.shapes():
    assert whole[key].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key], key)
  check_rows(packer, TINY(16, 0, 5), {k: whole[k] for k in packer.shapes()}, 36)
