"""Test-only reference port of the official I-JEPA multi-block mask collator.

This is a line-by-line numpy port of ``MaskCollator`` from
facebookresearch/ijepa, ``src/masks/multiblock.py``
(https://github.com/facebookresearch/ijepa/blob/main/src/masks/multiblock.py),
kept without torch so tests can compare the JAX sampler's statistics with the
original behaviour. It is not used by the library itself.

Quirks kept on purpose, as in the official code:

* ``_sample_block_size`` uses ONE uniform draw for both scale and aspect ratio;
  sizes are ``int(round(sqrt(...)))`` then clipped with ``while h >= height``.
* Block corners are drawn with an exclusive upper bound,
  ``randint(0, height - h)``, so a block never touches the last row/column.
* The context block is constrained to the complement of the target blocks;
  after every 20 failed tries one more constraint is dropped (``tries``).
* A block is valid only if it keeps strictly more than ``min_keep`` patches.
* Per batch: pred size first, then enc size with aspect (1, 1); per image the
  targets are sampled before the context.
* Every mask list is truncated to the batch minimum length (raster order).

RNG mapping: the official code draws the two block sizes from a
``torch.Generator`` seeded with the collator step counter, and the block
positions from torch's *global* (unseeded) RNG. Here ``rng`` replaces the
seeded generator and ``pos_rng`` the global one; ``pos_rng`` defaults to
``rng`` itself (sizes are then drawn first, positions after, from one stream).
``rng.random()`` stands for ``torch.rand(1)`` and ``integers(lo, hi)`` (``hi``
exclusive) for ``torch.randint(lo, hi, (1,))``.
"""

import math

import numpy as np


def _sample_block_size(rng, height, width, scale, aspect_ratio_scale):
    _rand = rng.random()
    # -- block scale
    min_s, max_s = scale
    mask_scale = min_s + _rand * (max_s - min_s)
    max_keep = int(height * width * mask_scale)
    # -- block aspect ratio (same uniform draw)
    min_ar, max_ar = aspect_ratio_scale
    aspect_ratio = min_ar + _rand * (max_ar - min_ar)
    # -- block height and width
    h = int(round(math.sqrt(max_keep * aspect_ratio)))
    w = int(round(math.sqrt(max_keep / aspect_ratio)))
    while h >= height:
        h -= 1
    while w >= width:
        w -= 1
    return (h, w)


def _sample_block_mask(pos_rng, height, width, b_size, min_keep, acceptable_regions=None):
    h, w = b_size

    def constrain_mask(mask, tries=0):
        """Restrict mask to the acceptable regions, dropping the last `tries`."""
        n = max(int(len(acceptable_regions) - tries), 0)
        for k in range(n):
            mask *= acceptable_regions[k]

    tries = 0
    timeout = og_timeout = 20
    valid_mask = False
    while not valid_mask:
        # -- block top-left corner (exclusive upper bound, as torch.randint)
        top = int(pos_rng.integers(0, height - h))
        left = int(pos_rng.integers(0, width - w))
        mask = np.zeros((height, width), dtype=np.int32)
        mask[top:top + h, left:left + w] = 1
        if acceptable_regions is not None:
            constrain_mask(mask, tries)
        mask = np.nonzero(mask.flatten())[0]  # raster-order patch indices
        # -- if the mask is too small, try again
        valid_mask = len(mask) > min_keep
        if not valid_mask:
            timeout -= 1
            if timeout == 0:
                tries += 1
                timeout = og_timeout
    mask = mask.astype(np.int64)
    mask_complement = np.ones((height, width), dtype=np.int32)
    mask_complement[top:top + h, left:left + w] = 0
    return mask, mask_complement


def official_masks_untruncated(rng, batch_size, grid, *, pred_scale=(0.15, 0.2),
                               enc_scale=(0.85, 1.0), aspect=(0.75, 1.5), npred=4,
                               nenc=1, min_keep=10, allow_overlap=False, pos_rng=None):
    """Masks of one batch before truncation.

    Returns ``(masks_enc, masks_pred)``: per-image lists (length ``batch_size``)
    of per-block lists (length ``nenc`` / ``npred``) of 1-D int64 arrays of
    patch indices in raster order, with their own (untruncated) lengths.
    """
    height, width = grid
    pos_rng = rng if pos_rng is None else pos_rng
    p_size = _sample_block_size(rng, height, width, pred_scale, aspect)
    e_size = _sample_block_size(rng, height, width, enc_scale, (1., 1.))

    masks_pred, masks_enc = [], []
    for _ in range(batch_size):
        masks_p, masks_c = [], []
        for _ in range(npred):
            mask, mask_c = _sample_block_mask(pos_rng, height, width, p_size, min_keep)
            masks_p.append(mask)
            masks_c.append(mask_c)
        masks_pred.append(masks_p)

        acceptable_regions = None if allow_overlap else masks_c
        masks_e = []
        for _ in range(nenc):
            mask, _ = _sample_block_mask(pos_rng, height, width, e_size, min_keep,
                                         acceptable_regions=acceptable_regions)
            masks_e.append(mask)
        masks_enc.append(masks_e)
    return masks_enc, masks_pred


def _truncate_and_collate(per_image):
    """cm[:min_len] for every mask, then default_collate: list over blocks of [B, K]."""
    min_len = min(len(m) for masks in per_image for m in masks)
    n_blocks = len(per_image[0])
    return [np.stack([masks[k][:min_len] for masks in per_image]) for k in range(n_blocks)]


def official_masks(rng, batch_size, grid, *, pred_scale=(0.15, 0.2), enc_scale=(0.85, 1.0),
                   aspect=(0.75, 1.5), npred=4, nenc=1, min_keep=10, allow_overlap=False,
                   pos_rng=None):
    """Official collator output: ``(masks_enc, masks_pred)``.

    ``masks_enc`` is a list of ``nenc`` int64 arrays ``[B, K_enc]`` and
    ``masks_pred`` a list of ``npred`` int64 arrays ``[B, K_pred]``, every mask
    truncated to the batch minimum length as in the official code.
    """
    masks_enc, masks_pred = official_masks_untruncated(
        rng, batch_size, grid, pred_scale=pred_scale, enc_scale=enc_scale, aspect=aspect,
        npred=npred, nenc=nenc, min_keep=min_keep, allow_overlap=allow_overlap,
        pos_rng=pos_rng)
    return _truncate_and_collate(masks_enc), _truncate_and_collate(masks_pred)
