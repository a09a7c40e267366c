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

import jax
import jax.numpy as jnp

from ijepa_jax.models import VARIANTS, VisionTransformer
from ijepa_jax.pixels import IMAGENET_MEAN, IMAGENET_STD, normalize

OUTPUTS = ('mean', 'last4', 'tokens')
ENCODERS = ('target', 'context')  # a run's encoder to evaluate: the EMA or the trained one
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
                     "{'patch_embed': {'proj': ...}, 'blocks': {'layers': ...}, "
                     "'norm': ...}") from None
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
                   attention: str | None = None, scan_layers: bool = True) -> VisionTransformer:
  """The `VisionTransformer` whose parameters `params` are."""
  d = encoder_dims(params, num_heads)
  return VisionTransformer(d['patch_size'], d['width'], d['depth'], d['num_heads'],
                           d['mlp_dim'], dtype=dtype, attention=attention, scan_layers=scan_layers)


LAST_BLOCKS = 4  # 'last4': the blocks averaged


def encode(params: Any, images: jax.Array, *, output: str = 'mean',
           num_heads: int | None = None, dtype: Any = jnp.float32,
           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
           attention: str | None = None, scan_layers: bool = True) -> jax.Array:
  """Features of `images` [B, H, W, C] under the encoder `params` (pure; jit it as you like).

  `images`: uint8 (normalised here with `mean`/`std`, ImageNet's by default) or
  float, already normalised. H and W must be multiples of the patch size; any
  such size works (the position table is built for it). `output`: 'mean'
  [B, D], 'last4' [B, D] or 'tokens' [B, N, D] (see the module docstring).
  `scan_layers`: run the blocks under `nn.scan` or unrolled (the same numbers).
  """
  if output not in OUTPUTS:
    raise ValueError(f'output={output!r}: choose one of {OUTPUTS}')
  d = encoder_dims(params, num_heads)
  p = d['patch_size']
  if (images.ndim != 4 or images.shape[1] % p or images.shape[2] % p
      or images.shape[3] != d['channels']):
    raise ValueError(f'images must be [B, H, W, {d["channels"]}] with H and W multiples of '
                     f'the patch size {p}; got {images.shape}')
  if output == 'last4' and d['depth'] < LAST_BLOCKS:
    raise ValueError(f'the encoder has {d["depth"]} blocks, fewer than {LAST_BLOCKS}')
  if images.dtype == jnp.uint8:
    images = normalize(images, mean[:d['channels']] if d['channels'] == 1 else mean,
                       std[:d['channels']] if d['channels'] == 1 else std)
  enc = encoder_module(params, num_heads, dtype, attention, scan_layers)
  if output == 'last4':  # each of the last blocks through the final norm, token-averaged
    _, outs = enc.apply({'params': params}, images, blocks=range(-LAST_BLOCKS, 0))
    return jnp.mean(jnp.stack([o.mean(axis=1) for o in outs]), axis=0)
  tokens = enc.apply({'params': params}, images)
  return tokens if output == 'tokens' else tokens.mean(axis=1)
