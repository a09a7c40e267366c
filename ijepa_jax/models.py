"""The I-JEPA Vision Transformer encoder and predictor (Flax linen).

Parameter names follow the official PyTorch modules one to one so that their
checkpoints map onto ours: `patch_embed/proj`, `blocks/{norm1,attn/{qkv,proj},
norm2,mlp/{fc1,fc2}}`, `norm` for the encoder; `predictor_embed`, `mask_token`,
`predictor_blocks`, `predictor_norm`, `predictor_proj` for the predictor. The
blocks' parameters are stacked as `nn.scan` makes them, each with a leading `[depth]`
axis (the official `blocks.{i}` is slice i), whether the blocks then run under the
scan or unrolled (`scan_layers`). Position tables are fixed
constants, not parameters, as in the official code (`requires_grad=False`).

Compute runs in `dtype` (bf16 by default); parameters, LayerNorm, softmax and
the residual stream stay in float32.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ijepa_jax.pos_embed import sincos_2d

# width, depth, heads, MLP hidden, as in the official code (ViT-g's mlp_ratio is 48/11).
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    'tiny': (192, 12, 3, 768),
    'small': (384, 12, 6, 1536),
    'base': (768, 12, 12, 3072),
    'large': (1024, 24, 16, 4096),
    'huge': (1280, 32, 16, 5120),
    'giant': (1408, 40, 16, 6144),
}

LN_EPS = 1e-6
INIT_STD = 0.02
REMAT_POLICIES: dict[str, Callable | None] = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def cudnn_flash_fits(head_dim: int, dtype: Any) -> bool:
  """Whether cuDNN's flash-attention kernel takes these heads (bf16/fp16, a head size that
  is a multiple of 8 and <= 128)."""
  return (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
          and head_dim <= 128)


def attention_implementation(requested: str | None, head_dim: int, dtype: Any,
                             platform: str) -> str:
  """The `jax.nn.dot_product_attention` backend: `requested` if given, else cuDNN's flash
  kernel on a GPU where it applies (bf16/fp16, head size a multiple of 8 and <= 128),
  XLA elsewhere. (JAX's own default, None, always means XLA today.)"""
  if requested is not None:
    return requested
  return 'cudnn' if platform in ('gpu', 'cuda') and cudnn_flash_fits(head_dim, dtype) else 'xla'


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
                          implementation: str, kv_len: jax.Array | None) -> jax.Array:
  """`jax.nn.dot_product_attention` over [B, N, H, hd]. `kv_len` [B]: keys at positions
  >= kv_len[b] ignored; or segment ids [B, N] (packed sequences, ijepa_jax/packing.py):
  each token attends to the tokens of its own segment only (a block-diagonal mask).

  cuDNN's kernel refuses an odd sequence length when training with a mask (JAX raises
  NotImplementedError; the context and predictor lengths of the official masks are often
  odd), so for it an odd sequence gets one padding token, masked as a key, and its output
  row is dropped: the same result."""
  n = q.shape[1]
  pad = implementation == 'cudnn' and n % 2 == 1
  segments = kv_len is not None and kv_len.ndim == 2
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0))) for x in (q, k, v))
    if segments:  # the padding token is a segment of its own
      kv_len = jnp.pad(kv_len, ((0, 0), (0, 1)), constant_values=-2)
    else:
      kv_len = jnp.full((q.shape[0],), n, jnp.int32) if kv_len is None else kv_len
  if segments:
    mask = (kv_len[:, :, None] == kv_len[:, None, :])[:, None]  # [B, 1, N, N]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                       implementation=implementation)
  else:
    out = jax.nn.dot_product_attention(
        q, k, v, scale=scale, implementation=implementation,
        key_value_seq_lengths=None if kv_len is None else kv_len.astype(jnp.int32))
  return out[:, :n] if pad else out


def _dense(features: int, axes: tuple[str | None, str | None], dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def _layer_norm(name: str, axis_name: str = 'embed') -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)))


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, N, D], idx [B, K] int -> [B, K, D]."""
  return jnp.take_along_axis(x, idx[..., None].astype(jnp.int32), axis=1)


def packed_rows(source: jax.Array, pack: jax.Array) -> jax.Array:
  """Group-local tokens into packed rows: source [G, S, D], pack [G, R, W] (indices into S)
  -> [G * R, W, D]. The gather runs per group, so a group's rows stay on its device."""
  g, r, w = pack.shape
  return jnp.take_along_axis(source, pack.reshape(g, r * w, 1), axis=1).reshape(
      g * r, w, source.shape[-1])


def unpacked(rows: jax.Array, unpack: jax.Array) -> jax.Array:
  """Packed rows [G * R, W, D] back to per-sequence tokens: unpack [G, ...] (slot indices
  into R * W) -> [G * prod(...), D]."""
  g = unpack.shape[0]
  flat = rows.reshape(g, -1, rows.shape[-1])
  idx = unpack.reshape(g, -1, 1)
  return jnp.take_along_axis(flat, idx, axis=1).reshape(-1, rows.shape[-1])


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2)), as torch's nn.GELU() (the official
  MLP's). `jax.nn.gelu(approximate=False)` computes the same through erfc, which XLA:CPU
  evaluates 2-3x slower than erf."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (2 ** -0.5)))


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.bfloat16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    x = _dense(self.hidden, ('embed', 'mlp'), self.dtype, 'fc1')(x)
    x = gelu(x)
    return _dense(d, ('mlp', 'embed'), self.dtype, 'fc2')(x)


class Attention(nn.Module):
  """Multi-head self-attention; `kv_len` [B] marks the real tokens (a prefix) of each row,
  or [B, N] holds the segment ids of packed rows (`dot_product_attention`).

  Padding is always a suffix, so it is passed as key/value sequence lengths,
  which both XLA and the cuDNN flash kernel take (`implementation`: 'xla',
  'cudnn', or None for `attention_implementation`'s choice).
  """
  num_heads: int
  dtype: Any = jnp.bfloat16
  implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, kv_len: jax.Array | None) -> jax.Array:
    b, n, d = x.shape
    hd = d // self.num_heads
    # Packed as [q all heads | k all heads | v all heads], as the official qkv Linear.
    qkv = _dense(3 * d, ('embed', 'qkv'), self.dtype, 'qkv')(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, hd), 2, 0)
    impl = attention_implementation(self.implementation, hd, self.dtype, jax.default_backend())
    out = dot_product_attention(q, k, v, hd ** -0.5, impl, kv_len)  # [B, N, H, hd]
    return _dense(d, ('heads', 'embed'), self.dtype, 'proj')(out.reshape(b, n, d))


class Block(nn.Module):
  """Pre-norm transformer block; the residual stream stays float32. Returns (output, output
  again with `emit`, else None): under `nn.scan` the second is stacked over the layers."""
  num_heads: int
  mlp_hidden: int
  dtype: Any = jnp.bfloat16
  attention: str | None = None
  emit: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, kv_len: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    x = nn.with_logical_constraint(x, ('batch', 'length', 'act_embed'))
    attn = Attention(self.num_heads, self.dtype, self.attention, name='attn')
    x = x + attn(_layer_norm('norm1')(x), kv_len)
    x = x + Mlp(self.mlp_hidden, self.dtype, name='mlp')(_layer_norm('norm2')(x))
    x = x.astype(jnp.float32)
    return x, (x if self.emit else None)


class BlockStack(nn.Module):
  """`depth` Blocks with nn.remat under `remat_policy`, stacked under `nn.scan` (`scan`:
  compile time flat in depth) or unrolled.

  The parameter tree is the same either way: every block parameter sits under `layers`
  with a leading [depth] axis (init always builds it with the scan). Unrolled, layer i
  runs on slice i of those stacks, taken with `lax.split`, whose gradient is a
  concatenation. The scan instead saves every layer's activations into stacked buffers
  with dynamic-update-slices: about a quarter of a ViT's forward + backward time on
  XLA:CPU, and unrolled steps are 1.2-1.3x faster on an H200 too (docs/PERFORMANCE.md).
  """
  depth: int
  num_heads: int
  mlp_hidden: int
  dtype: Any = jnp.bfloat16
  remat_policy: str = 'none'
  attention: str | None = None
  scan: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, kv_len: jax.Array | None,
               blocks: Sequence[int] = ()) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
    """The last block's output; with `blocks` (indices into [0, depth), negative from the
    end), also those blocks' outputs, in that order: (output, [output of block i, ...])."""
    policy = REMAT_POLICIES[self.remat_policy]
    args = (self.num_heads, self.mlp_hidden, self.dtype, self.attention)
    wanted = [block_index(i, self.depth) for i in blocks]
    if self.scan or self.is_initializing():
      block = Block
      if self.remat_policy != 'none':
        block = nn.remat(Block, policy=policy, prevent_cse=False)
      stack = nn.scan(
          block, variable_axes={'params': 0}, split_rngs={'params': True},
          in_axes=(nn.broadcast,), length=self.depth,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      # every layer's output stacked [depth, ...] only when some are asked for, as
      # big_vision's scanned ViT returns them
      x, each = stack(*args, emit=bool(wanted), name='layers')(x, kv_len)
      return (x, [each[i] for i in wanted]) if blocks else x
    leaves, tree = jax.tree.flatten(nn.unbox(self.variables['params']['layers']))
    slices = [jax.lax.split(a, [1] * self.depth) for a in leaves]  # [leaf][layer] [1, ...]

    def layer(params, x):
      return Block(*args).apply({'params': params}, x, kv_len)[0]

    if self.remat_policy != 'none':
      layer = jax.checkpoint(layer, policy=policy)
    outs = []
    for i in range(self.depth):
      x = layer(tree.unflatten([s[i][0] for s in slices]), x)
      outs.append(x)
    return (x, [outs[i] for i in wanted]) if blocks else x


def block_index(i: int, depth: int) -> int:
  """Block `i` of `depth` as an index in [0, depth) (negative counts from the end)."""
  if not -depth <= i < depth:
    raise ValueError(f'block {i}: the encoder has {depth} blocks (indices {-depth} to {depth - 1})')
  return i % depth


PATCH_INITS = ('official', 'lecun')


def patch_kernel_init(kind: str) -> Callable:
  """The patch-embedding conv's kernel init: 'official' N(0, 0.02) whatever the patch, or
  'lecun' N(0, 1/fan_in) truncated at 2 std (Flax's and big_vision's default), which keeps
  the embedded patches at unit scale when a patch holds few pixels (4x4 grey: 16 inputs, where
  0.02 gives tokens ~10x smaller than the position table's)."""
  if kind == 'official':
    return nn.initializers.normal(INIT_STD)
  if kind == 'lecun':
    return nn.initializers.lecun_normal()
  raise ValueError(f'patch init {kind!r}: choose one of {PATCH_INITS}')


class PatchEmbed(nn.Module):
  patch_size: int
  width: int
  dtype: Any = jnp.bfloat16
  init: str = 'official'

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(
        self.width, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
        param_dtype=jnp.float32, name='proj',
        kernel_init=nn.with_logical_partitioning(
            patch_kernel_init(self.init), (None, None, None, 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(images)
    b, h, w, d = x.shape
    return x.reshape(b, h * w, d)  # raster order: index = row * W + col


class VisionTransformer(nn.Module):
  """I-JEPA ViT encoder: patches -> + sin-cos positions -> keep tokens -> blocks -> LayerNorm.

  No class token, pooling or head. Call with images [B, H, W, C] (channels
  last) and optionally `keep_idx` [B, K] (patch indices in raster order) with
  `keep_len` [B] (only the first keep_len[b] of row b are real; the rest is
  padding, ignored as attention keys). Returns tokens [B, K or N, width] float32.
  With `packing` (ctx_pack, ctx_seg, ctx_unpack: ijepa_jax/packing.py) the kept tokens
  run packed into rows and come back in the same [B, K, width] layout.
  """
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None  # None: 4 x width
  dtype: Any = jnp.bfloat16
  remat_policy: str = 'none'
  attention: str | None = None
  scan_layers: bool = True  # nn.scan over the blocks (False: unrolled; the same parameters)
  patch_init: str = 'official'  # the patch conv's kernel init (PATCH_INITS)

  @nn.compact
  def __call__(self, images: jax.Array, keep_idx: jax.Array | None = None,
               keep_len: jax.Array | None = None, blocks: Sequence[int] = (),
               normed: bool = True, packing: Sequence[jax.Array] | None = None
               ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
    """Tokens [B, K or N, width]; with `blocks` (block indices, negative from the end) also
    those blocks' output tokens, each through the final LayerNorm (`normed`) or raw, as
    (tokens, [block tokens, ...]): the intermediates an evaluation pools, under the scan and
    unrolled alike."""
    h, w = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
    x = PatchEmbed(self.patch_size, self.width, self.dtype, self.patch_init,
                   name='patch_embed')(images)
    x = x.astype(jnp.float32) + jnp.asarray(sincos_2d(self.width, (h, w)))[None]
    stack = BlockStack(self.depth, self.num_heads, self.mlp_dim or 4 * self.width, self.dtype,
                       self.remat_policy, self.attention, self.scan_layers, name='blocks')
    norm = _layer_norm('norm')
    if packing is not None:
      if blocks or keep_idx is None:
        raise ValueError('packing runs the context encoder alone: keep_idx, no blocks')
      pack, seg, unpack = packing
      rows = packed_rows(x.reshape(pack.shape[0], -1, self.width), pack)
      out = unpacked(norm(stack(rows, seg.reshape(rows.shape[:2]))), unpack)
      return out.reshape(keep_idx.shape + (self.width,))
    if keep_idx is not None:
      x = gather_tokens(x, keep_idx)  # after adding positions, as the official code
    else:
      keep_len = None  # every token is real
    if not blocks:
      return norm(stack(x, keep_len))
    x, outs = stack(x, keep_len, blocks)
    return norm(x), [norm(o) if normed else o for o in outs]


class Predictor(nn.Module):
  """I-JEPA predictor: narrow ViT over context tokens + one mask token per target patch.

  ctx [B, Kc, D] (context-encoder output), ctx_idx [B, Kc], ctx_len [B],
  tgt_idx [B, M, Kt], tgt_len [B, M] -> predictions [B, M, Kt, D] float32 (D = out_dim
  where that is set: the pixel-target ablation's p * p * C values of each patch).
  Each of the M target blocks is its own sequence [real context | its real
  mask tokens | padding], so target blocks never attend to each other and
  padding (index >= length) is a suffix that attention ignores; outputs at
  padded target slots are meaningless. The official predictor's MLP ratio is 4.
  With `packing` (pred_pack, pred_seg, pred_unpack: ijepa_jax/packing.py) the same
  sequences run packed into rows, segment ids keeping each to itself.
  """
  grid: tuple[int, int] = (14, 14)
  embed_dim: int = 768
  width: int = 384
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None  # None: 4 x width (the official predictor's ratio)
  dtype: Any = jnp.bfloat16
  remat_policy: str = 'none'
  attention: str | None = None
  scan_layers: bool = True  # nn.scan over the blocks (False: unrolled; the same parameters)
  out_dim: int | None = None  # predictor_proj's outputs; None: embed_dim (pixel targets: p*p*C)

  @nn.compact
  def __call__(self, ctx: jax.Array, ctx_idx: jax.Array, ctx_len: jax.Array,
               tgt_idx: jax.Array, tgt_len: jax.Array,
               packing: Sequence[jax.Array] | None = None) -> jax.Array:
    b, kc, _ = ctx.shape
    m, kt = tgt_idx.shape[1], tgt_idx.shape[2]
    pos = jnp.asarray(sincos_2d(self.width, self.grid))  # [N, Dp]
    x = _dense(self.width, ('embed', 'pred_embed'), self.dtype, 'predictor_embed')(ctx)
    x = x.astype(jnp.float32) + pos[ctx_idx]  # [B, Kc, Dp]
    mask_token = self.param(
        'mask_token',
        nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), (None, None, 'pred_embed')),
        (1, 1, self.width), jnp.float32)
    tgt = mask_token[None] + pos[tgt_idx]  # [B, M, Kt, Dp]
    blocks = BlockStack(self.depth, self.num_heads, self.mlp_dim or 4 * self.width, self.dtype,
                        self.remat_policy, self.attention, self.scan_layers,
                        name='predictor_blocks')
    norm = _layer_norm('predictor_norm', 'pred_embed')
    out = self.embed_dim if self.out_dim is None else self.out_dim
    axes = ('pred_embed', 'embed') if self.out_dim is None else ('pred_embed', None)
    proj = _dense(out, axes, self.dtype, 'predictor_proj')
    if packing is not None:
      pack, seg, unpack = packing
      g = pack.shape[0]
      source = jnp.concatenate([x.reshape(g, -1, self.width), tgt.reshape(g, -1, self.width)], 1)
      rows = packed_rows(source, pack)
      x = unpacked(norm(blocks(rows, seg.reshape(rows.shape[:2]))), unpack)
      return proj(x).astype(jnp.float32).reshape(b, m, kt, out)
    x = jnp.broadcast_to(x[:, None], (b, m, kc, self.width))
    x = jnp.concatenate([x, tgt], axis=2).reshape(b * m, kc + kt, self.width)
    # Move the real mask tokens right after the real context: slot p holds context p
    # (p < cl), then target p - cl (p < cl + tl), then padding.
    cl = jnp.repeat(ctx_len, m)[:, None]  # [B*M, 1]
    tl = tgt_len.reshape(b * m, 1)
    p = jnp.arange(kc + kt)[None]
    src = jnp.where(p < cl, p, jnp.where(p < cl + tl, kc + p - cl, p))
    x = gather_tokens(x, src)
    x = norm(blocks(x, (cl + tl)[:, 0]))
    x = gather_tokens(x, jnp.minimum(cl + jnp.arange(kt)[None], kc + kt - 1))  # target slots
    x = proj(x)
    return x.astype(jnp.float32).reshape(b, m, kt, out)
