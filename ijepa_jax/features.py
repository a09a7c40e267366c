"""Frozen-encoder features as pure functions of an encoder's parameter tree.

`encode(params, images)` runs the I-JEPA encoder (our `VisionTransformer`)
whose parameters are `params` (a `{'patch_embed', 'blocks', 'norm'}` tree:
ours, or one imported from the official checkpoints by `ijepa_jax.layouts`)
and returns pooled features or tokens. It is pure and jittable; everything
about the architecture but the number of heads is read off the parameter
shapes, and the heads default to the variant of that width (all the released
I-JEPA models have 16).

Outputs (`output=`):
- `'mean'`: the average over tokens of the encoder's output (after its final
  LayerNorm) [B, D]: the standard frozen-feature evaluation of I-JEPA.
- `'last4'`: the mean over the last four blocks of each block's token-average,
  each passed through the final LayerNorm [B, D].
- `'tokens'`: the encoder's output tokens [B, N, D] (raster order).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ijepa_jax.models import LN_EPS, VARIANTS, Block, PatchEmbed, VisionTransformer
from ijepa_jax.pixels import IMAGENET_MEAN, IMAGENET_STD, normalize
from ijepa_jax.pos_embed import sincos_2d

OUTPUTS = ('mean', 'last4', 'tokens')
ENCODERS = ('target', 'context')  # which of a run's encoders to evaluate: the EMA or the trained one
_HEADS_BY_WIDTH = {width: heads for width, _, heads, _ in VARIANTS.values()}


def encoder_dims(params: Any, num_heads: int | None = None) -> dict[str, int]:
  """patch_size, channels, width, depth, mlp_dim and num_heads of an encoder param tree."""
  try:
    kernel = params['patch_embed']['proj']['kernel']  # [p, p, C, D]
    layers = params['blocks']['layers']
    depth = layers['norm1']['scale'].shape[0]
    mlp = layers['mlp']['fc1']['kernel'].shape[-1]
    params['norm']['scale']
  except (KeyError, TypeError) as e:
    raise ValueError(f'not an I-JEPA encoder parameter tree (missing {e}): expected '
                     "{'patch_embed': {'proj': ...}, 'blocks': {'layers': ...}, 'norm': ...}") from None
  width = kernel.shape[-1]
  if num_heads is None:
    num_heads = _HEADS_BY_WIDTH.get(width)
    if num_heads is None:
      raise ValueError(f'width {width} is not one of the standard variants '
                       f'({sorted(_HEADS_BY_WIDTH)}): pass num_heads=')
  if width % num_heads:
    raise ValueError(f'num_heads={num_heads} does not divide the width {width}')
  return dict(patch_size=kernel.shape[0], channels=kernel.shape[2], width=width, depth=depth,
              mlp_dim=mlp, num_heads=num_heads)


def encoder_module(params: Any, num_heads: int | None = None, dtype: Any = jnp.float32,
                   attention: str | None = None) -> VisionTransformer:
  """The `VisionTransformer` whose parameters `params` are."""
  d = encoder_dims(params, num_heads)
  return VisionTransformer(d['patch_size'], d['width'], d['depth'], d['num_heads'],
                           d['mlp_dim'], dtype=dtype, attention=attention)


def encode(params: Any, images: jax.Array, *, output: str = 'mean',
           num_heads: int | None = None, dtype: Any = jnp.float32,
           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
           attention: str | None = None) -> jax.Array:
  """Features of `images` [B, H, W, C] under the encoder `params` (pure; jit it as you like).

  `images`: uint8 (normalised here with `mean`/`std`, ImageNet's by default) or
  float, already normalised. H and W must be multiples of the patch size; any
  such size works (the position table is built for it). `output`: 'mean'
  [B, D], 'last4' [B, D] or 'tokens' [B, N, D] (see the module docstring).
  """
  if output not in OUTPUTS:
    raise ValueError(f'output={output!r}: choose one of {OUTPUTS}')
  d = encoder_dims(params, num_heads)
  p = d['patch_size']
  if images.ndim != 4 or images.shape[1] % p or images.shape[2] % p or images.shape[3] != d['channels']:
    raise ValueError(f'images must be [B, H, W, {d["channels"]}] with H and W multiples of '
                     f'the patch size {p}; got {images.shape}')
  if images.dtype == jnp.uint8:
    images = normalize(images, mean[:d['channels']] if d['channels'] == 1 else mean,
                       std[:d['channels']] if d['channels'] == 1 else std)
  if output != 'last4':
    enc = encoder_module(params, num_heads, dtype, attention)
    tokens = enc.apply({'params': params}, images)
    return tokens if output == 'tokens' else tokens.mean(axis=1)
  return _last_blocks_mean(params, images, d, dtype, attention, 4)


def _last_blocks_mean(params: Any, images: jax.Array, d: dict, dtype: Any,
                      attention: str | None, last: int) -> jax.Array:
  """Mean over the last `last` blocks of LayerNorm(block output) averaged over tokens."""
  if last > d['depth']:
    raise ValueError(f'the encoder has {d["depth"]} blocks, fewer than {last}')
  x = PatchEmbed(d['patch_size'], d['width'], dtype).apply(
      {'params': params['patch_embed']}, images).astype(jnp.float32)
  h, w = images.shape[1] // d['patch_size'], images.shape[2] // d['patch_size']
  x = x + jnp.asarray(sincos_2d(d['width'], (h, w)))[None]
  block = Block(d['num_heads'], d['mlp_dim'], dtype, attention)
  norm = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32)  # the encoder's final norm

  def body(x, layer):  # the same Block the encoder scans, one layer's slice at a time
    x, _ = block.apply({'params': layer}, x, None)
    return x, norm.apply({'params': params['norm']}, x).mean(axis=1)

  _, pooled = jax.lax.scan(body, x, params['blocks']['layers'])  # [depth, B, D]
  return pooled[-last:].mean(axis=0)
