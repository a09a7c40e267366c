"""Multi-block mask sampling on the host (numpy), with fixed output shapes.

Each image gets M target blocks (rectangles of patches) and one context block
made disjoint from every target block. Everything is vectorised over the
batch. The masks of the image at position p of global batch `step` are a
pure function of (seed, step, p // CHUNK): they do not depend on how many
processes share the batch, so a run gives the same masks on any mesh.

Fixed shapes. The device step compiles once, so the sampler always returns

  ctx_idx [B, Kc] int32, ctx_len [B] int32, tgt_idx [B, M, Kt] int32, tgt_len [B, M] int32

with indices in raster order (index = row * W + col). Only the first `len`
entries of a row are real; the rest are padding (index 0) that attention
ignores as keys and the loss ignores. Kt is the largest area a target block
can have under the config (computed exactly when the sampler is built), so
target blocks are never cut. Kc is set as follows:

* `official` mode reproduces the official sampler (facebookresearch/ijepa,
  src/masks/multiblock.py) including its defects: (1) one random number draws
  both a block's scale and aspect ratio; (2) block sizes are drawn once per
  batch; (3) top/left are drawn with an exclusive upper bound and sizes are
  clipped to <= H-1, so the last patch row and column are never used. The
  official code then cuts every context to the *batch minimum* length in
  raster order (defect 4), a length that varies from batch to batch. Fixed
  shapes cannot follow that, so here every context is cut in raster order to
  a fixed Kc: by default the mean batch-minimum length the official sampler
  gives for the same grid and a batch of `truncation_batch` images (measured
  once, when the sampler is built, by simulation). The mean context length
  thus matches the official one, but the cut is per image (an image whose
  context is shorter than Kc keeps all of it) instead of per batch.
* `corrected` mode removes defects 1-4: scale and aspect ratio are drawn
  independently, sizes are drawn per image, positions cover the whole grid
  (blocks up to H x W), and nothing is cut: by default Kc is the largest
  possible context (the largest context block less the smallest target block, which must
  lie outside it). If the config sets a smaller `context_len`, longer
  contexts are subsampled uniformly at random (not in raster order).

Strategies (`strategy`; the other strategies of the I-JEPA paper's masking ablation): the
multi-block sampler above is `multiblock`. The three others draw every size and position
per image (they need `corrected` mode) and fix their shapes from the grid alone:

* `random`: the targets are round(target_fraction * N) patches drawn uniformly at random
  (one target set, M = 1), the context is every other patch.
* `block`: one target block of area fraction target_fraction (aspect ratio from
  target_aspect, uniform position), the context is every patch outside it.
* `rasterized`: the grid is cut into four quadrants (rows and columns split at
  ceil(H / 2), ceil(W / 2)); one quadrant drawn uniformly is the context, the other three
  are the targets (M = 3), each its own set.

The paper's ablation gives random and block targets 0.6 of the image.

Both modes: the context never overlaps a target block (the official code drops
that constraint after 20 failed tries; we resample the image's target blocks
instead), every block keeps more than `min_keep` patches, and sampling is
bounded: an infeasible config raises ValueError when the sampler is built, and
a batch that cannot be completed after a bounded number of retries raises
RuntimeError instead of looping.
"""

import dataclasses
import math
from typing import NamedTuple

import numpy as np

MODES = ('official', 'corrected')
STRATEGIES = ('multiblock', 'random', 'block', 'rasterized')
_MASK_STREAM = 0x6D61736B  # separates the mask RNG stream from other host streams
_MAX_RETRIES = 64
_ENUM_POINTS = 1001  # grid over a uniform draw, to find exact size extremes
CHUNK = 64  # global batch positions that share one RNG stream (vectorised sampling)


class MaskBatch(NamedTuple):
  """Fixed-shape masks for a batch; see the module docstring."""
  ctx_idx: np.ndarray  # [B, Kc] int32
  ctx_len: np.ndarray  # [B] int32
  tgt_idx: np.ndarray  # [B, M, Kt] int32
  tgt_len: np.ndarray  # [B, M] int32


@dataclasses.dataclass(frozen=True)
class MaskConfig:
  """Mask settings; the defaults are the official I-JEPA configs'."""
  grid: tuple[int, int]
  mode: str = 'official'
  num_targets: int = 4
  target_scale: tuple[float, float] = (0.15, 0.2)
  target_aspect: tuple[float, float] = (0.75, 1.5)
  context_scale: tuple[float, float] = (0.85, 1.0)
  context_aspect: tuple[float, float] = (1.0, 1.0)
  min_keep: int = 10
  context_len: int | None = None  # Kc; None derives it (module docstring)
  truncation_batch: int = 128  # official mode: per-loader batch whose minimum sets Kc
  strategy: str = 'multiblock'  # or random, block, rasterized (module docstring)
  target_fraction: float = 0.6  # random and block: the targets' share of the grid


class MaskSampler:
  """Builds (and validates) a multi-block sampler; call it to get a MaskBatch.

  >>> sampler = MaskSampler(MaskConfig(grid=(14, 14)))
  >>> masks = sampler(batch_size=8, seed=0, step=3, offset=0)
  >>> masks.ctx_idx.shape == (8, sampler.context_len)
  True
  """

  def __init__(self, config: MaskConfig):
    self.config = c = config
    _validate(c)
    self.height, self.width = c.grid
    self.num_patches = self.height * self.width
    self._official = c.mode == 'official'
    self.strategy = c.strategy
    if c.strategy != 'multiblock':
      self._init_other()
      self.sample(np.random.default_rng(0), 8)
      return
    self.num_targets = c.num_targets
    lo_t, hi_t = self._area_range(c.target_scale, c.target_aspect)
    lo_c, hi_c = self._area_range(c.context_scale, c.context_aspect)
    if lo_t <= c.min_keep:
      raise ValueError(
          f'masks: the smallest target block is {lo_t} patches on a {self.height}x{self.width} '
          f'grid and must be more than min_keep={c.min_keep}; raise masks.target_scale, use larger '
          f'images or smaller patches, or lower masks.min_keep.')
    if lo_c <= c.min_keep:
      raise ValueError(
          f'masks: the smallest context block is {lo_c} patches and must be more than '
          f'min_keep={c.min_keep}; raise masks.context_scale or lower masks.min_keep.')
    self.target_len = hi_t
    # The largest context there can be: a context block's area, less the smallest target
    # block, which lies on the grid and outside the context. Exact (a full-grid context around
    # four coinciding smallest targets reaches it); a longer Kc would only be padding.
    largest = min(hi_c, self.num_patches - lo_t)
    self.context_len = largest if c.context_len is None else min(int(c.context_len), largest)
    # Sampling now (a few batches) makes a setting that can't be sampled fail here, not mid-run.
    try:
      if c.context_len is None and self._official:
        self.context_len = self._official_truncated_mean()
      self.sample(np.random.default_rng(0), 64)
    except RuntimeError as e:  # its message names the masks fields already
      why = str(e).removeprefix('masks: ')
      raise ValueError(f'masks: this setting cannot be sampled: {why}') from None

  def _init_other(self):
    """Shapes of the random, block and rasterized strategies: (M, Kt, Kc) from the grid."""
    c, n = self.config, self.num_patches
    if c.strategy == 'random':
      self.num_targets, self.target_len = 1, int(round(c.target_fraction * n))
      if not 1 <= self.target_len < n:
        raise ValueError(f'masks.target_fraction={c.target_fraction} gives {self.target_len} '
                         f'target patches of {n}; choose a fraction that leaves at least one '
                         'patch on each side')
      largest_context = n - self.target_len
    elif c.strategy == 'block':
      self.num_targets = 1
      f = (c.target_fraction, c.target_fraction)
      lo, self.target_len = self._area_range(f, c.target_aspect)
      if self.target_len >= n:
        raise ValueError(f'masks.target_fraction={c.target_fraction}: the target block can '
                         f'cover the whole {self.height}x{self.width} grid and leave no context; '
                         'lower it or masks.target_aspect')
      largest_context = n - lo
    else:  # rasterized
      self.num_targets = 3
      rows, cols = _halves(self.height), _halves(self.width)
      self.target_len = largest_context = max(rows) * max(cols)
    # a context_len above the largest context would only pad
    self.context_len = largest_context if c.context_len is None else min(int(c.context_len),
                                                                         largest_context)

  # -- sizes -----------------------------------------------------------------

  def _hw(self, keep, ar):
    """Block (h, w) for `keep` patches at aspect ratio `ar`, as the official code rounds and
    clips."""
    h = np.round(np.sqrt(keep * ar)).astype(np.int64)
    w = np.round(np.sqrt(keep / ar)).astype(np.int64)
    cut = 1 if self._official else 0  # official: `while h >= height: h -= 1`
    return np.clip(h, 1, self.height - cut), np.clip(w, 1, self.width - cut)

  def _sizes(self, u_scale, u_aspect, scale, aspect):
    """Official `_sample_block_size`, vectorised over uniform draws; integer (h, w) arrays."""
    keep = np.floor(self.num_patches * (scale[0] + u_scale * (scale[1] - scale[0])))
    return self._hw(keep, aspect[0] + u_aspect * (aspect[1] - aspect[0]))

  def _area_range(self, scale, aspect) -> tuple[int, int]:
    """Exact min and max block area over all draws.

    (h, w) is piecewise constant in the draws: it changes only where N * scale
    crosses an integer or sqrt(keep * ar), sqrt(keep / ar) cross a half-integer.
    Evaluating at every such breakpoint and between consecutive ones covers
    every value the sampler can produce.
    """
    n, (s0, s1), (a0, a1) = self.num_patches, scale, aspect
    keeps = np.arange(np.floor(n * s0), np.floor(n * s1) + 1)
    half = np.arange(max(self.height, self.width) + 2) + 0.5
    ar_breaks = np.concatenate([(half[None] ** 2 / keeps[:, None]).ravel(),
                                (keeps[:, None] / half[None] ** 2).ravel()])

    def fill(points):  # breakpoints within [0, 1], plus the midpoints between them
      u = np.unique(np.clip(np.concatenate([[0.0, 1.0], points]), 0.0, 1.0))
      return np.concatenate([u, (u[1:] + u[:-1]) / 2])

    u_keep = (keeps / n - s0) / (s1 - s0) if s1 > s0 else np.zeros(0)
    u_ar = (ar_breaks - a0) / (a1 - a0) if a1 > a0 else np.zeros(0)
    if self._official:  # one draw sets both scale and aspect ratio
      u = fill(np.concatenate([u_keep, u_ar]))
      h, w = self._sizes(u, u, scale, aspect)
    else:  # independent draws: every reachable keep with every aspect piece
      keep = np.unique(np.floor(n * (s0 + fill(u_keep) * (s1 - s0))))
      ar = a0 + fill(u_ar) * (a1 - a0)
      h, w = self._hw(keep[:, None], ar[None, :])
    area = h * w
    return int(area.min()), int(area.max())

  def _official_truncated_mean(self) -> int:
    """Mean of the official per-batch minimum context length (simulated)."""
    rng = np.random.default_rng([_MASK_STREAM, 1])
    mins = [self._untruncated(rng, self.config.truncation_batch)[1].min() for _ in range(32)]
    return int(math.ceil(float(np.mean(mins))))

  # -- sampling --------------------------------------------------------------

  def __call__(self, batch_size: int, seed: int, step: int, offset: int = 0) -> MaskBatch:
    """Masks for positions [offset, offset + batch_size) of global batch `step`.

    A process passes the offset of its part of the global batch. Positions are
    sampled in chunks of CHUNK, chunk c from (seed, step, c), so the result for a
    position does not depend on how the global batch is split. Official mode
    draws the block sizes from (seed, step) alone: every image of a step shares
    them, as every rank of the official collator (seeded by its step counter) does.
    """
    first, stop = offset // CHUNK, -(-(offset + batch_size) // CHUNK)
    parts = []
    for c in range(first, stop):
      rng = np.random.default_rng([_MASK_STREAM, seed, step, c])
      parts.append(self.sample(rng, CHUNK, np.random.default_rng([_MASK_STREAM, seed, step])))
    lo = offset - first * CHUNK
    return MaskBatch(*(np.concatenate(f)[lo:lo + batch_size] for f in zip(*parts)))

  def sample(self, rng: np.random.Generator, batch_size: int,
             size_rng: np.random.Generator | None = None) -> MaskBatch:
    """Masks for `batch_size` images drawn from `rng` (official sizes from `size_rng`)."""
    ctx_mask, ctx_len, tgt_idx, tgt_len = self._untruncated(rng, batch_size, size_rng)
    kc = self.context_len
    if self._official:
      order_key = np.where(ctx_mask, 0.0, 1.0)  # raster order: keep the first kc
    else:
      order_key = np.where(ctx_mask, rng.random(ctx_mask.shape), 2.0)  # a random kc
    keep = np.argsort(order_key, axis=1, kind='stable')[:, :kc]
    ctx_len = np.minimum(ctx_len, kc)
    valid = np.arange(kc)[None] < ctx_len[:, None]
    ctx_idx = np.where(valid, np.sort(np.where(valid, keep, self.num_patches), axis=1), 0)
    return MaskBatch(ctx_idx.astype(np.int32), ctx_len.astype(np.int32),
                     tgt_idx.astype(np.int32), tgt_len.astype(np.int32))

  def _target_sizes(self, rng, size_rng, b, m):
    c = self.config
    if self._official:  # one draw for scale and aspect, one size per batch
      u = size_rng.random()
      h, w = self._sizes(u, u, c.target_scale, c.target_aspect)
      return np.full((b, m), h), np.full((b, m), w)
    return self._sizes(rng.random((b, m)), rng.random((b, m)), c.target_scale, c.target_aspect)

  def _context_sizes(self, rng, size_rng, b):
    c = self.config
    if self._official:
      u = size_rng.random()
      h, w = self._sizes(u, u, c.context_scale, c.context_aspect)
      return np.full((b,), h), np.full((b,), w)
    return self._sizes(rng.random(b), rng.random(b), c.context_scale, c.context_aspect)

  def _untruncated(self, rng, b, size_rng=None):
    """-> ctx_mask [B, N] bool, ctx_len [B], tgt_idx [B, M, Kt], tgt_len [B, M]."""
    if self.strategy == 'random':
      return self._random(rng, b)
    if self.strategy == 'block':
      return self._block(rng, b)
    if self.strategy == 'rasterized':
      return self._rasterized(rng, b)
    m, hh, ww = self.config.num_targets, self.height, self.width
    size_rng = size_rng or rng
    th, tw = self._target_sizes(rng, size_rng, b, m)
    ch, cw = self._context_sizes(rng, size_rng, b)
    if (th * tw).max() > self.target_len:  # _area_range is exact; this guards against a bug
      raise AssertionError(f'target block of {(th * tw).max()} patches exceeds '
                           f'Kt={self.target_len}')
    top, left = np.zeros((b, m), np.int64), np.zeros((b, m), np.int64)
    ctop, cleft = np.zeros(b, np.int64), np.zeros(b, np.int64)
    todo = np.arange(b)
    for _ in range(_MAX_RETRIES):
      top[todo], left[todo] = self._positions(rng, th[todo], tw[todo])
      union = _union(top[todo], left[todo], th[todo], tw[todo], hh, ww)
      ok, ctop[todo], cleft[todo] = self._context_position(rng, union, ch[todo], cw[todo])
      todo = todo[~ok]
      if todo.size == 0:
        break
    else:
      raise RuntimeError(
          f'masks: no context block with more than min_keep={self.config.min_keep} patches '
          f'outside the target blocks after {_MAX_RETRIES} tries; lower masks.min_keep or '
          f'masks.target_scale, or raise masks.context_scale.')
    union = _union(top, left, th, tw, hh, ww)
    ctx_mask = (_rect(ctop[:, None], cleft[:, None], ch[:, None], cw[:, None], hh, ww)[:, 0]
                & ~union).reshape(b, -1)
    # Targets are whole rectangles: index i < h*w of a block is (top + i // w, left + i % w).
    i = np.arange(self.target_len)
    rows = top[..., None] + i // tw[..., None]
    cols = left[..., None] + i % tw[..., None]
    tgt_len = th * tw
    tgt_idx = np.where(i < tgt_len[..., None], rows * ww + cols, 0)
    return ctx_mask, ctx_mask.sum(1), tgt_idx, tgt_len

  def _random(self, rng, b):
    kt = self.target_len
    order = np.argsort(rng.random((b, self.num_patches)), axis=1)
    tgt = np.sort(order[:, :kt], axis=1)
    ctx_mask = np.ones((b, self.num_patches), bool)
    np.put_along_axis(ctx_mask, tgt, False, axis=1)
    return ctx_mask, ctx_mask.sum(1), tgt[:, None, :], np.full((b, 1), kt)

  def _block(self, rng, b):
    c, hh, ww = self.config, self.height, self.width
    f = (c.target_fraction, c.target_fraction)
    th, tw = self._sizes(rng.random(b), rng.random(b), f, c.target_aspect)
    top, left = self._positions(rng, th, tw)
    inside = _rect(top, left, th, tw, hh, ww).reshape(b, -1)
    tgt_len = th * tw
    order = np.argsort(~inside, axis=1, kind='stable')[:, :self.target_len]  # raster order
    tgt_idx = np.where(np.arange(self.target_len)[None] < tgt_len[:, None], order, 0)
    ctx_mask = ~inside
    return ctx_mask, ctx_mask.sum(1), tgt_idx[:, None, :], tgt_len[:, None]

  def _rasterized(self, rng, b):
    hh, ww, kt = self.height, self.width, self.target_len
    (r0, r1), (c0, c1) = _halves(hh), _halves(ww)
    quads = [(t, left, h, w) for t, h in ((0, r0), (r0, r1)) for left, w in ((0, c0), (c0, c1))]
    masks = np.stack([_rect(np.array(t), np.array(left), np.array(h), np.array(w), hh, ww).ravel()
                      for t, left, h, w in quads])  # [4, N]
    idx = np.stack([np.pad(np.flatnonzero(q), (0, kt - q.sum())) for q in masks])  # [4, Kt]
    lens = masks.sum(1)
    ctx = rng.integers(0, 4, b)
    others = np.stack([np.delete(np.arange(4), q) for q in range(4)])[ctx]  # [B, 3]
    return masks[ctx], lens[ctx], idx[others], lens[others]

  def _positions(self, rng, h, w):
    """Top-left corners; the official bound is exclusive (randint(0, H - h))."""
    extra = 0 if self._official else 1
    return (rng.integers(0, self.height - h + extra),
            rng.integers(0, self.width - w + extra))

  def _context_position(self, rng, union, h, w):
    """A uniformly chosen context corner among those keeping > min_keep free patches.

    The official rejection loop (uniform corner, redraw while too few patches
    survive) samples this same distribution. Returns (found [B], top, left).
    """
    b, hh, ww = union.shape
    integral = np.zeros((b, hh + 1, ww + 1), np.int32)
    integral[:, 1:, 1:] = union.cumsum(1).cumsum(2)
    extra = 0 if self._official else 1
    t = np.arange(hh)[None, :, None]
    left = np.arange(ww)[None, None, :]
    h3, w3 = h[:, None, None], w[:, None, None]
    inside = (t < hh - h3 + extra) & (left < ww - w3 + extra)
    bi = np.arange(b)[:, None, None]
    t2, l2 = np.minimum(t + h3, hh), np.minimum(left + w3, ww)
    covered = (integral[bi, t2, l2] - integral[bi, t, l2] - integral[bi, t2, left]
               + integral[bi, t, left])
    ok = inside & (h3 * w3 - covered > self.config.min_keep)
    score = np.where(ok, rng.random(ok.shape), -1.0).reshape(b, -1)
    pick = score.argmax(1)
    return ok.reshape(b, -1).any(1), pick // ww, pick % ww


def _rect(top, left, h, w, hh, ww):
  """Boolean masks [..., H, W] of rectangles."""
  r = np.arange(hh)
  c = np.arange(ww)
  in_r = (r >= top[..., None]) & (r < (top + h)[..., None])
  in_c = (c >= left[..., None]) & (c < (left + w)[..., None])
  return in_r[..., :, None] & in_c[..., None, :]


def _halves(n: int) -> tuple[int, int]:
  return -(-n // 2), n // 2


def _union(top, left, h, w, hh, ww):
  return _rect(top, left, h, w, hh, ww).any(axis=1)


def _validate(c: MaskConfig) -> None:
  def pair(name, lo, hi, low_ok, high_ok):
    v = getattr(c, name)
    if len(v) != 2 or not (low_ok(v[0]) and v[0] <= v[1] and high_ok(v[1])):
      raise ValueError(f'masks.{name}={tuple(v)} must be a pair (lo, hi) with {lo} and '
                       f'lo <= hi{hi}')

  if c.mode not in MODES:
    raise ValueError(f"masks.mode={c.mode!r}: choose one of {MODES}")
  if c.strategy not in STRATEGIES:
    raise ValueError(f'masks.strategy={c.strategy!r}: choose one of {STRATEGIES}')
  if c.strategy != 'multiblock' and c.mode != 'corrected':
    raise ValueError(f"masks.strategy={c.strategy!r} needs masks.mode='corrected' (the official "
                     'mode reproduces the multi-block sampler only)')
  if not 0 < c.target_fraction < 1:
    raise ValueError(f'masks.target_fraction={c.target_fraction} must be in (0, 1)')
  h, w = c.grid
  if h < 2 or w < 2:
    raise ValueError(f'masks: the patch grid {h}x{w} is too small; use a grid of at least 2x2 '
                     '(larger images or smaller patches)')
  if c.num_targets < 1:
    raise ValueError(f'masks.num_targets={c.num_targets} must be >= 1')
  if c.min_keep < 0:
    raise ValueError(f'masks.min_keep={c.min_keep} must be >= 0')
  pair('target_scale', '0 < lo', ' <= 1', lambda x: x > 0, lambda x: x <= 1)
  pair('context_scale', '0 < lo', ' <= 1', lambda x: x > 0, lambda x: x <= 1)
  pair('target_aspect', '0 < lo', '', lambda x: x > 0, lambda x: True)
  pair('context_aspect', '0 < lo', '', lambda x: x > 0, lambda x: True)
  if c.context_len is not None and not 0 < c.context_len <= h * w:
    raise ValueError(f'masks.context_len={c.context_len} must be in [1, {h * w}] (the grid size) '
                     'or -1 to derive it')
  if c.truncation_batch < 1:
    raise ValueError(f'masks.truncation_batch={c.truncation_batch} must be >= 1')
