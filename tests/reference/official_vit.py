"""Test-only reference port of the official I-JEPA vision transformers.

A plain numpy (float64) forward-pass port of ``VisionTransformer.forward`` and
``VisionTransformerPredictor.forward`` from facebookresearch/ijepa,
``src/models/vision_transformer.py``
(https://github.com/facebookresearch/ijepa/blob/main/src/models/vision_transformer.py),
together with what they use: ``PatchEmbed``, ``Block``, ``Attention``, ``MLP``,
``get_2d_sincos_pos_embed`` and its helpers, ``apply_masks``
(``src/masks/utils.py``) and ``repeat_interleave_batch``
(``src/utils/tensors.py``). It is kept without torch so tests can compare the
JAX models against the original computation; the library never imports it.

Conventions follow the official code (inference mode: dropout and drop-path are
identities):

* images are NCHW ``[B, C, H, W]``; masks are lists of int index arrays
  ``[B, K]`` (a bare array is wrapped in a list, as in the official code);
* weights are a flat ``state_dict`` with the official key names and torch
  layouts (``nn.Linear.weight`` is ``(out, in)``, ``Conv2d.weight`` is
  ``(out, in, kh, kw)``); depth and MLP width are read from the keys;
* LayerNorm eps is 1e-6 (``partial(nn.LayerNorm, eps=1e-6)``), GELU is the
  exact erf form (``nn.GELU()``), attention scale is ``head_dim ** -0.5``;
* ``pos_embed`` / ``predictor_pos_embed`` are taken from ``sd`` when present,
  otherwise rebuilt with ``get_2d_sincos_pos_embed`` and rounded to float32,
  as the official ``.float()`` copy into the parameter does.

``interpolate_pos_encoding`` is only the identity here: the official
bicubic resize branch is not ported, so the token count must match the table.
"""

import math

import numpy as np

LN_EPS = 1e-6

_erf = np.vectorize(math.erf, otypes=[np.float64])


# -- sin-cos positional embeddings (verbatim numpy in the official file) ------

def _sincos_1d_from_grid(embed_dim, pos):
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=float)
    omega /= embed_dim / 2.
    omega = 1. / 10000**omega  # (D/2,)
    pos = pos.reshape(-1)  # (M,)
    out = np.einsum('m,d->md', pos, omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def _sincos_2d_from_grid(embed_dim, grid):
    assert embed_dim % 2 == 0
    emb_h = _sincos_1d_from_grid(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = _sincos_1d_from_grid(embed_dim // 2, grid[1])  # (H*W, D/2)
    return np.concatenate([emb_h, emb_w], axis=1)  # (H*W, D)


def sincos_pos_embed_2d(embed_dim, grid_size):
    """Official ``get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False)``.

    Returns float64 ``[grid_size * grid_size, embed_dim]``. Note the official
    quirk: ``np.meshgrid(grid_w, grid_h)`` puts w first, so the first half of
    the channels (called ``emb_h``) encodes the column index.
    """
    grid_h = np.arange(grid_size, dtype=float)
    grid_w = np.arange(grid_size, dtype=float)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    grid = grid.reshape([2, 1, grid_size, grid_size])
    return _sincos_2d_from_grid(embed_dim, grid)


def _pos_table(sd, key, num_patches, dim):
    """``sd[key]`` as ``[1, N, D]`` if present, else the official float32 table."""
    if key in sd:
        return np.asarray(sd[key], np.float64).reshape(1, num_patches, dim)
    table = sincos_pos_embed_2d(dim, int(num_patches**.5))
    return table.astype(np.float32).astype(np.float64)[None]


# -- masking helpers ---------------------------------------------------------

def _as_list(masks):
    return masks if isinstance(masks, (list, tuple)) else [masks]


def apply_masks(x, masks):
    """Official ``apply_masks``: gather kept tokens per mask, concat on batch."""
    rows = np.arange(x.shape[0])[:, None]
    return np.concatenate([x[rows, np.asarray(m)] for m in masks], axis=0)


def repeat_interleave_batch(x, B, repeat):
    """Official ``repeat_interleave_batch``: repeat each B-sized chunk in place."""
    N = len(x) // B
    return np.concatenate([
        np.concatenate([x[i * B:(i + 1) * B] for _ in range(repeat)], axis=0)
        for i in range(N)
    ], axis=0)


# -- layers ------------------------------------------------------------------

def _get(sd, key):
    return np.asarray(sd[key], np.float64)


def _linear(sd, prefix, x):
    """torch ``nn.Linear``: ``x @ W.T + b`` with ``W`` stored ``(out, in)``."""
    y = x @ _get(sd, prefix + '.weight').T
    if prefix + '.bias' in sd:
        y = y + _get(sd, prefix + '.bias')
    return y


def _layer_norm(sd, prefix, x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased, as torch
    x = (x - mean) / np.sqrt(var + LN_EPS)
    return x * _get(sd, prefix + '.weight') + _get(sd, prefix + '.bias')


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _attention(sd, prefix, x, num_heads):
    B, N, C = x.shape
    hd = C // num_heads
    scale = hd ** -0.5
    qkv = _linear(sd, prefix + '.qkv', x)
    qkv = qkv.reshape(B, N, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, hd]
    attn = _softmax((q @ k.swapaxes(-2, -1)) * scale)
    x = (attn @ v).transpose(0, 2, 1, 3).reshape(B, N, C)
    return _linear(sd, prefix + '.proj', x)


def _mlp(sd, prefix, x):
    return _linear(sd, prefix + '.fc2', _gelu(_linear(sd, prefix + '.fc1', x)))


def _block(sd, prefix, x, num_heads):
    x = x + _attention(sd, prefix + '.attn', _layer_norm(sd, prefix + '.norm1', x), num_heads)
    x = x + _mlp(sd, prefix + '.mlp', _layer_norm(sd, prefix + '.norm2', x))
    return x


def _depth(sd, prefix):
    ids = {int(k[len(prefix):].split('.')[0]) for k in sd if k.startswith(prefix)}
    assert ids == set(range(len(ids))), f'non-contiguous {prefix}* keys: {sorted(ids)}'
    return len(ids)


def _patch_embed(sd, x, patch_size):
    """``Conv2d(k=p, stride=p)`` then ``flatten(2).transpose(1, 2)`` (raster order)."""
    w = _get(sd, 'patch_embed.proj.weight')  # [D, C, p, p]
    p = patch_size
    assert w.shape[-2:] == (p, p), (w.shape, p)
    B, C, H, W = x.shape
    gh, gw = H // p, W // p
    x = x[:, :, :gh * p, :gw * p].reshape(B, C, gh, p, gw, p)
    y = np.einsum('bchiwj,dcij->bhwd', x, w)
    if 'patch_embed.proj.bias' in sd:
        y = y + _get(sd, 'patch_embed.proj.bias')
    return y.reshape(B, gh * gw, -1)


# -- models ------------------------------------------------------------------

def vit_forward(sd, x, *, patch_size, num_heads, masks=None):
    """Official ``VisionTransformer.forward(x, masks)``.

    x: ``[B, C, H, W]``; masks: None or list of ``[B, K]`` index arrays.
    Returns ``[B, N, D]`` or ``[len(masks) * B, K, D]`` (mask-major), float64.
    """
    if masks is not None:
        masks = _as_list(masks)
    # -- patchify x
    x = _patch_embed(sd, np.asarray(x, np.float64), patch_size)
    B, N, D = x.shape
    # -- add positional embedding to x (interpolate_pos_encoding is identity)
    x = x + _pos_table(sd, 'pos_embed', N, D)
    # -- mask x
    if masks is not None:
        x = apply_masks(x, masks)
    # -- fwd prop
    for i in range(_depth(sd, 'blocks.')):
        x = _block(sd, f'blocks.{i}', x, num_heads)
    return _layer_norm(sd, 'norm', x)


def predictor_forward(sd, x, masks_x, masks, *, num_heads, num_patches=None):
    """Official ``VisionTransformerPredictor.forward(x, masks_x, masks)``.

    x: encoder output ``[len(masks_x) * B, N_ctxt, D]``; masks_x / masks: lists
    of ``[B, K]`` index arrays (context / target). ``num_patches`` (the
    official constructor argument) is only needed when ``sd`` holds neither
    ``predictor_pos_embed`` nor ``pos_embed``. Returns
    ``[len(masks) * len(masks_x) * B, K_tgt, D]``, float64, ordered
    (target mask, context mask, image).
    """
    assert (masks is not None) and (masks_x is not None), \
        'Cannot run predictor without mask indices'
    masks_x, masks = _as_list(masks_x), _as_list(masks)
    x = np.asarray(x, np.float64)
    # -- Batch Size
    B = len(x) // len(masks_x)
    # -- map from encoder-dim to predictor-dim
    x = _linear(sd, 'predictor_embed', x)
    Dp = x.shape[-1]
    if 'predictor_pos_embed' in sd:
        num_patches = np.shape(sd['predictor_pos_embed'])[1]
    elif num_patches is None:  # official: (img_size // patch_size) ** 2
        assert 'pos_embed' in sd, 'pass num_patches or predictor_pos_embed'
        num_patches = np.shape(sd['pos_embed'])[1]
    pos = _pos_table(sd, 'predictor_pos_embed', num_patches, Dp)
    # -- add positional embedding to x tokens
    x_pos_embed = np.repeat(pos, B, axis=0)
    x = x + apply_masks(x_pos_embed, masks_x)
    _, N_ctxt, _ = x.shape
    # -- concat mask tokens to x
    pos_embs = apply_masks(np.repeat(pos, B, axis=0), masks)
    pos_embs = repeat_interleave_batch(pos_embs, B, repeat=len(masks_x))
    pred_tokens = np.broadcast_to(_get(sd, 'mask_token').reshape(1, 1, Dp), pos_embs.shape)
    pred_tokens = pred_tokens + pos_embs
    x = np.tile(x, (len(masks), 1, 1))  # torch x.repeat(len(masks), 1, 1)
    x = np.concatenate([x, pred_tokens], axis=1)
    # -- fwd prop
    for i in range(_depth(sd, 'predictor_blocks.')):
        x = _block(sd, f'predictor_blocks.{i}', x, num_heads)
    x = _layer_norm(sd, 'predictor_norm', x)
    # -- return preds for mask tokens
    return _linear(sd, 'predictor_proj', x[:, N_ctxt:])
