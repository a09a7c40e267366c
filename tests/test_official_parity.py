"""Our Flax encoder and predictor against a numpy port of the official PyTorch forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ijepa_jax.masks import MaskConfig, MaskSampler
from ijepa_jax.models import Predictor, VisionTransformer
from ijepa_jax import layouts
from tests.reference.official_vit import predictor_forward, sincos_pos_embed_2d, vit_forward
from tests.reference.trees import randomize

F32 = jnp.float32


def test_encoder_and_predictor_match_official():
  b, size, patch, width, heads = 2, 32, 8, 32, 4
  grid = (size // patch,) * 2
  enc = VisionTransformer(patch, width, 2, heads, dtype=F32)
  pred = Predictor(grid, width, 16, 2, heads, dtype=F32)
  x = np.random.default_rng(0).normal(size=(b, size, size, 3)).astype(np.float32)
  masks = MaskSampler(MaskConfig(grid=grid, mode='official', min_keep=1, num_targets=2,
                                 target_scale=(0.2, 0.3)))
  mb = masks(b, seed=0, step=0)
  # The official code needs equal lengths in a batch: give both images the same context length.
  k = int(mb.ctx_len.min())
  ctx_idx, ctx_len = mb.ctx_idx[:, :k], np.full((b,), k, np.int32)
  kt = int(mb.tgt_len[0, 0])
  tgt_idx, tgt_len = mb.tgt_idx[:, :, :kt], mb.tgt_len

  ep = randomize(nn.unbox(enc.init(jax.random.key(0), x))['params'], 1)
  z = enc.apply({'params': ep}, x, ctx_idx, ctx_len)
  full = enc.apply({'params': ep}, x)
  sd = layouts.encoder_to_official(ep, grid)
  # the reference builds its own position table: take ours out after checking it equals theirs
  np.testing.assert_allclose(sd.pop('pos_embed')[0], sincos_pos_embed_2d(width, grid[0]), atol=1e-6)
  x_nchw = x.transpose(0, 3, 1, 2)
  ref_full = vit_forward(sd, x_nchw, patch_size=patch, num_heads=heads)
  ref_ctx = vit_forward(sd, x_nchw, patch_size=patch, num_heads=heads, masks=[ctx_idx])
  np.testing.assert_allclose(full, ref_full, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(z, ref_ctx, atol=1e-4, rtol=1e-4)

  pp = randomize(nn.unbox(pred.init(jax.random.key(1), z, ctx_idx, ctx_len, tgt_idx,
                                    tgt_len))['params'], 2)
  out = pred.apply({'params': pp}, z, ctx_idx, ctx_len, tgt_idx, tgt_len)  # [B, M, Kt, D]
  psd = layouts.predictor_to_official(pp, grid)
  np.testing.assert_allclose(psd.pop('predictor_pos_embed')[0], sincos_pos_embed_2d(16, grid[0]),
                             atol=1e-6)
  ref = predictor_forward(psd, np.asarray(z, np.float64), [ctx_idx],
                          [tgt_idx[:, m] for m in range(tgt_idx.shape[1])],
                          num_heads=heads, num_patches=grid[0] * grid[1])
  # official rows: (target mask m, image b)
  ref = ref.reshape(tgt_idx.shape[1], b, kt, width).transpose(1, 0, 2, 3)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
