"""Our Flax encoder and predictor against a numpy port of the official PyTorch forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ijepa_jax.masks import MaskConfig, MaskSampler
from ijepa_jax.models import Predictor, VisionTransformer
from tests.reference.official_vit import predictor_forward, vit_forward

F32 = jnp.float32


def torch_layout(params, prefix_blocks):
  """Our param tree -> official state-dict names and layouts (Linear (out, in), Conv OIHW)."""
  sd = {}

  def linear(name, p):
    sd[f'{name}.weight'] = np.asarray(p['kernel']).T
    sd[f'{name}.bias'] = np.asarray(p['bias'])

  def norm(name, p):
    sd[f'{name}.weight'] = np.asarray(p['scale'])
    sd[f'{name}.bias'] = np.asarray(p['bias'])

  layers = params[prefix_blocks]['layers']
  depth = layers['norm1']['scale'].shape[0]
  for i in range(depth):
    li = jax.tree.map(lambda a: a[i], layers)
    b = f'{prefix_blocks}.{i}'
    norm(f'{b}.norm1', li['norm1'])
    norm(f'{b}.norm2', li['norm2'])
    linear(f'{b}.attn.qkv', li['attn']['qkv'])
    linear(f'{b}.attn.proj', li['attn']['proj'])
    linear(f'{b}.mlp.fc1', li['mlp']['fc1'])
    linear(f'{b}.mlp.fc2', li['mlp']['fc2'])
  if 'patch_embed' in params:
    sd['patch_embed.proj.weight'] = np.asarray(params['patch_embed']['proj']['kernel']).transpose(3, 2, 0, 1)
    sd['patch_embed.proj.bias'] = np.asarray(params['patch_embed']['proj']['bias'])
    norm('norm', params['norm'])
  else:
    linear('predictor_embed', params['predictor_embed'])
    linear('predictor_proj', params['predictor_proj'])
    norm('predictor_norm', params['predictor_norm'])
    sd['mask_token'] = np.asarray(params['mask_token'])
  return sd


def randomize(params, seed):
  """Init-scale weights hide bugs; use O(1) random values everywhere."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [jnp.asarray(rng.normal(0, 0.3, x.shape), F32) for x in leaves])


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
  sd = torch_layout(ep, 'blocks')
  x_nchw = x.transpose(0, 3, 1, 2)
  ref_full = vit_forward(sd, x_nchw, patch_size=patch, num_heads=heads)
  ref_ctx = vit_forward(sd, x_nchw, patch_size=patch, num_heads=heads, masks=[ctx_idx])
  np.testing.assert_allclose(full, ref_full, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(z, ref_ctx, atol=1e-4, rtol=1e-4)

  pp = randomize(nn.unbox(pred.init(jax.random.key(1), z, ctx_idx, ctx_len, tgt_idx,
                                    tgt_len))['params'], 2)
  out = pred.apply({'params': pp}, z, ctx_idx, ctx_len, tgt_idx, tgt_len)  # [B, M, Kt, D]
  psd = torch_layout(pp, 'predictor_blocks')
  ref = predictor_forward(psd, np.asarray(z, np.float64), [ctx_idx],
                          [tgt_idx[:, m] for m in range(tgt_idx.shape[1])],
                          num_heads=heads, num_patches=grid[0] * grid[1])
  # official rows: (target mask m, image b)
  ref = ref.reshape(tgt_idx.shape[1], b, kt, width).transpose(1, 0, 2, 3)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
