"""The analytic FLOP count every MFU figure rests on (ijepa_jax/flops.py), against three
independent references: a count written out by hand for one ViT-B/16 step, the published
cost of a ViT-B/16 forward pass, and XLA's own count of a compiled train step."""

import jax
import numpy as np
import pytest

from ijepa_jax import flops
from ijepa_jax import sharding
from ijepa_jax import state
from ijepa_jax.spec import resolve
from configs import demo, vitb16


def test_vitb16_step_equals_a_hand_count():
  c = vitb16.get_config()
  # The arguments of one step: Kc context tokens, M target blocks of Kt tokens each.
  kc, kt, m = 98, 40, 4
  b, n, d, depth, hidden, p, ch = 2048, 196, 768, 12, 3072, 16, 3  # ViT-B/16 at 224, RGB
  dp, lp, hp = 384, 12, 1536  # the predictor: width 384, 12 blocks, MLP 4 x 384
  # multiply-adds, one image
  patch = n * (p * p * ch) * d                            # the patch conv, whole image
  # qkv, proj, MLP; QK^T, PV
  block = lambda t, w, h: t * (3 * w * w + w * w + 2 * w * h) + 2 * t * t * w
  target_fwd = patch + depth * block(n, d, hidden)
  context_fwd = patch + depth * block(kc, d, hidden)
  predictor_fwd = kc * d * dp + m * lp * block(kc + kt, dp, hp) + m * kt * dp * d
  macs = target_fwd + 3 * (context_fwd + predictor_fwd)  # target: forward only; backward = 2x
  hand = 2 * b * macs
  assert hand == 331_025_913_741_312  # 162 GFLOP per image
  a = resolve(c, 8).arch  # the config's sizes, resolved as a run resolves them
  assert (a.width, a.depth, a.mlp_dim, a.patch_size, a.image_size, a.channels) == (
      d, depth, hidden, p, 224, ch)
  assert (a.pred_width, a.pred_depth, a.pred_out) == (dp, lp, d)
  assert flops.train_step_flops(
      batch_size=c.batch_size, image_size=a.image_size, patch_size=a.patch_size,
      channels=a.channels, width=a.width, depth=a.depth, mlp_dim=a.mlp_dim,
      pred_width=a.pred_width, pred_depth=a.pred_depth, pred_out=a.pred_out, context_len=kc,
      target_len=kt, num_targets=m) == hand


def test_vitb16_forward_matches_the_published_cost():
  # DeiT-B / ViT-B/16 at 224 is 17.6 G multiply-adds per image (Touvron et al. 2021, Table 1:
  # "17.6 FLOPs", counted as multiply-adds, over 197 tokens with the class token and head).
  # One target-encoder forward here has 196 tokens and neither, so it must come just under.
  a = resolve(vitb16.get_config(), 8).arch
  width, depth, hidden = a.width, a.depth, a.mlp_dim
  macs = (flops.transformer_flops(196, width, depth, hidden) + 2 * 196 * 16 * 16 * 3 * width) / 2
  assert 17.3e9 < macs < 17.6e9
  assert macs == pytest.approx(17.6e9, rel=0.015)


@pytest.mark.slow
@pytest.mark.parametrize('width', [256])
def test_step_count_matches_xla_cost_analysis(width):
  """XLA counts every op of the compiled step (elementwise ones and the optimizer too), so
  its figure is a little above the matmul-only analytic one, by less at larger widths."""
  c = demo.get_config()
  c.batch_size = 8
  c.model.width = width
  c.model.pred_width = width // 2
  run = resolve(c, 8)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  compiled, _ = state.compile_abstract_step(run, mesh)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = run.arch.step_flops(c.batch_size, run.sampler)
  assert 1.0 < cost['flops'] / analytic < 1.04


def test_peak_flops_lookup():
  assert flops.peak_flops('NVIDIA H200') == 989e12
  assert flops.peak_flops('TPU v5 lite') == 197e12
  assert flops.peak_flops('TPU v5p') == 459e12  # not the v5e entry, though both contain 'TPU v5'
  assert flops.peak_flops('cpu') is None


def test_useful_flops_count_each_images_real_lengths_by_hand():
  """Two ViT-B/16 images with different real lengths, written out by hand; at the padded
  lengths the useful count is the executed one."""
  a = resolve(vitb16.get_config(), 8).arch
  n, d, depth, hidden, p, ch = 196, 768, 12, 3072, 16, 3
  dp, lp, hp = 384, 12, 1536
  block = lambda t, w, h: t * (3 * w * w + w * w + 2 * w * h) + 2 * t * t * w
  patch = n * (p * p * ch) * d

  def image(kc, kts):  # multiply-adds of one image with context kc and target blocks kts
    pred = kc * d * dp + sum(lp * block(kc + kt, dp, hp) + kt * dp * d for kt in kts)
    return patch + depth * block(n, d, hidden) + 3 * (patch + depth * block(kc, d, hidden) + pred)

  ctx_len = np.array([49, 61], np.int32)
  tgt_len = np.array([[30, 30, 30, 30], [35, 28, 40, 33]], np.int32)
  hand = 2 * (image(49, [30] * 4) + image(61, [35, 28, 40, 33]))
  assert a.useful_flops(ctx_len, tgt_len) == hand
  padded = flops.train_step_flops(batch_size=2, context_len=61, target_len=40, num_targets=4,
                                  **a.flop_sizes())
  assert a.useful_flops(np.full(2, 61), np.full((2, 4), 40)) == padded
  assert padded > hand
