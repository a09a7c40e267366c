"""Sequence packing: the context encoder's and the predictor's variable-length sequences laid
end to end in fixed-shape rows, so that the step computes (almost) no padding.

Without packing every context is padded to Kc tokens and every predictor sequence (one
image's context + one target block) to Kc + Kt. Corrected masks vary per image (on 14x14,
contexts of about 50 to 172 patches, mean 90), so that padding is over half of the step's
FLOPs (docs/PERFORMANCE.md, "Padded work"). Packed, each device's share of the batch (a
*group* of B / devices images) puts its sequences into `rows` rows of `width` slots,
first-fit decreasing, and attention keeps every token within its own sequence by segment
ids (a block-diagonal mask, which XLA and cuDNN both take through
`jax.nn.dot_product_attention`'s `mask`). Nothing about the method changes: each sequence
sees exactly the tokens it sees unpacked, so the outputs are the same up to float rounding
(tests/test_packing.py checks the encoder, the predictor and the step's gradients).

Shapes stay fixed. `Packer` sizes the rows once, when the run is built, from the sampler's
own length distribution (256 simulated groups): rows that hold the group's mean total plus
6 standard deviations plus the worst first-fit waste seen, each row a multiple of the
unpacked length, the multiple whose FLOPs (`flops.transformer_flops`: the dense layers plus
attention, which grows with the row) are least. A network whose rows would not save 5% of
its FLOPs stays unpacked (the official masks: every context has about Kc tokens). A group
that still does not fit (under a normal approximation, about once in 1e9 groups) has its
longest contexts subsampled uniformly at random to the largest length that fits, as
`masks.context_len` subsamples them; `Packer.cuts` counts such groups.

Per group g (leading axis G = the number of devices, sharded like the batch), int32:
  ctx_pack [G, Re, We]     the group's patch token (image j's patch p: j * N + p) in each slot
  ctx_seg [G, Re, We]      the slot's sequence (image j), -1 for an empty slot
  ctx_unpack [G, b, Kc]    the slot of image j's k-th context token (k >= ctx_len: its first)
  pred_pack [G, Rp, Wp]    the source of each predictor slot: context token (j, k) is
                           j * Kc + k, mask token (j, m, t) is b * Kc + (j * M + m) * Kt + t
  pred_seg [G, Rp, Wp]     the slot's sequence (j * M + m), -1 for an empty slot
  pred_unpack [G, b, M, Kt]  the slot of target token (j, m, t) (t >= tgt_len: the sequence's first)
"""

import dataclasses
import math

import numpy as np

from ijepa_jax.flops import transformer_flops
from ijepa_jax.masks import MaskBatch, MaskSampler

_CUT_STREAM = 0x9ac4  # the RNG stream of the (rare) cut contexts
_SIGMAS = 6.0
_SIMULATED = 256  # groups simulated to size the rows
_WASTE_SAMPLES = 16  # of them, packed to see the first-fit waste
_SIMULATION_SEED = 0x5eed
_MIN_SAVING = 0.05  # a network is packed only where that saves this share of its FLOPs


def first_fit(lengths: np.ndarray, rows: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
  """(row, offset) of each sequence placed first-fit decreasing into `rows` rows of `width`
  slots (ties in input order), or None where they do not all fit."""
  free = np.full(rows, width, np.int64)
  row = np.zeros(len(lengths), np.int64)
  offset = np.zeros(len(lengths), np.int64)
  for i in np.argsort(-np.asarray(lengths), kind='stable'):
    r = int(np.argmax(free >= lengths[i]))
    if free[r] < lengths[i]:
      return None
    row[i], offset[i] = r, width - free[r]
    free[r] -= lengths[i]
  return row, offset


def rows_needed(lengths: np.ndarray, width: int) -> int:
  """How many rows of `width` first-fit decreasing fills with these sequences."""
  placed = first_fit(lengths, len(lengths), width)
  assert placed is not None, 'every sequence must fit a row on its own'
  return int(placed[0].max()) + 1


def lay_out(lengths: np.ndarray, tokens: np.ndarray, rows: int,
            width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """`tokens` (every sequence's, one after another: sum(lengths)) in rows: (slot contents
  [rows, width], segment ids [rows, width] (-1: empty), each sequence's first slot [n]), or
  None where they do not fit."""
  placed = first_fit(lengths, rows, width)
  if placed is None:
    return None
  first = placed[0] * width + placed[1]
  seq = np.repeat(np.arange(len(lengths)), lengths)
  starts = np.cumsum(lengths) - lengths
  slot = first[seq] + np.arange(len(seq)) - starts[seq]
  src = np.zeros(rows * width, np.int32)
  seg = np.full(rows * width, -1, np.int32)
  src[slot], seg[slot] = tokens, seq
  return src.reshape(rows, width), seg.reshape(rows, width), first


@dataclasses.dataclass(frozen=True)
class Shape:
  """One packed network's rows per group and slots per row, and what they save: the
  network's forward FLOPs per group packed and padded (`flops.transformer_flops`)."""
  rows: int
  width: int
  flops: float
  padded_flops: float


def plan(lengths: list[np.ndarray], padded: int, width: int, hidden: int) -> Shape:
  """The cheapest rows for these simulated groups' sequence lengths (each a [n] array; every
  length <= `padded`, the unpacked sequence length) in a network `width` wide with an MLP
  `hidden` wide: rows of a multiple of `padded` slots (rounded up to 8), as many as hold the
  groups' mean total plus 6 standard deviations plus the worst first-fit waste seen (at
  most one row per sequence), the multiple whose FLOPs are least."""
  totals = np.array([ls.sum() for ls in lengths], np.float64)
  n = len(lengths[0])
  base = -(-padded // 8) * 8
  best = None
  for k in (1, 2, 3, 4, 6, 8):
    slots = base * k
    waste = max(rows_needed(ls, slots) - math.ceil(ls.sum() / slots)
                for ls in lengths[:_WASTE_SAMPLES])
    rows = min(n, math.ceil((totals.mean() + _SIGMAS * totals.std()) / slots) + waste)
    cost = rows * transformer_flops(slots, width, 1, hidden)
    if best is None or cost < best.flops:
      best = Shape(rows, slots, float(cost), float(n * transformer_flops(padded, width, 1, hidden)))
    if rows == 1:
      break
  return best


class Packer:
  """Packs a sampler's masks for a global batch split into `groups` groups (one per device),
  each split again into `accum_steps` micro-batch groups under gradient accumulation.

  Micro-batch j of a batch holds its images j, j + k, j + 2k, ... (`train_step.micro_batches`,
  k = accum_steps), so a device's micro-group j is the images j, j + k, ... of the device's
  share; the leading axis of the packed arrays runs over devices, then micro-batches
  (index device * k + j), which `micro_batches` splits the same way as the images.

  Built once per run (it simulates the sampler to size the rows); call it on a host's mask
  batch to get the packed arrays of that host's groups. A network whose packed rows would
  not save at least `_MIN_SAVING` of its FLOPs (the official masks' contexts, which all
  have about Kc tokens) stays unpacked: `encoder` / `predictor` is then None and its
  arrays are left out."""

  def __init__(self, sampler: MaskSampler, batch_size: int, groups: int, num_patches: int,
               encoder: tuple[int, int], predictor: tuple[int, int],
               min_saving: float | None = None, accum_steps: int = 1):
    """`encoder`, `predictor`: each network's (width, MLP width); a network is packed where
    that saves `min_saving` of its FLOPs (None: `_MIN_SAVING`; a negative value packs both
    whatever it costs)."""
    min_saving = _MIN_SAVING if min_saving is None else min_saving
    if batch_size % (groups * accum_steps):
      raise ValueError(f'a batch of {batch_size} does not split into {groups} x {accum_steps} '
                       'groups')
    self.sampler, self.accum = sampler, accum_steps
    self.groups = groups * accum_steps  # the packed groups of a global batch
    self.group = batch_size // self.groups  # images in each
    self.num_patches = num_patches
    b, kc, kt = self.group, sampler.context_len, sampler.target_len
    sims = [sampler(b, _SIMULATION_SEED, s) for s in range(_SIMULATED)]
    ctx = [s.ctx_len.astype(np.int64) for s in sims]
    seq = [(s.ctx_len[:, None] + s.tgt_len).reshape(-1).astype(np.int64) for s in sims]
    worth = lambda shape: shape if shape.flops <= (1 - min_saving) * shape.padded_flops else None
    self.encoder = worth(plan(ctx, kc, *encoder))
    self.predictor = worth(plan(seq, kc + kt, *predictor))
    self.cuts = 0  # groups whose contexts had to be cut to fit (should stay 0)

  @property
  def active(self) -> bool:
    """Whether either network is packed."""
    return self.encoder is not None or self.predictor is not None

  def shapes(self) -> dict[str, tuple[int, ...]]:
    """The packed arrays' global shapes (all int32), for the networks that are packed."""
    g, b, s = self.groups, self.group, self.sampler
    out = {}
    if (e := self.encoder) is not None:
      out |= {'ctx_pack': (g, e.rows, e.width), 'ctx_seg': (g, e.rows, e.width),
              'ctx_unpack': (g, b, s.context_len)}
    if (p := self.predictor) is not None:
      out |= {'pred_pack': (g, p.rows, p.width), 'pred_seg': (g, p.rows, p.width),
              'pred_unpack': (g, b, s.num_targets, s.target_len)}
    return out

  def filled(self, masks: MaskBatch) -> dict[str, float]:
    """The share of the packed slots these masks' sequences fill, per packed network."""
    groups = len(masks.ctx_len) // self.group
    tokens = {'encoder': float(masks.ctx_len.sum()),
              'predictor': float((masks.ctx_len[:, None] + masks.tgt_len).sum())}
    return {name: tokens[name] / (groups * shape.rows * shape.width)
            for name, shape in (('encoder', self.encoder), ('predictor', self.predictor))
            if shape is not None}

  def flop_change(self, encoder_depth: int, predictor_depth: int) -> dict[str, float]:
    """Forward FLOPs the packed rows add to the whole batch's context encoder and predictor
    against the padded sequences (negative: what packing saves), {'context', 'predictor'}."""
    change = lambda s, depth: 0.0 if s is None else self.groups * depth * (s.flops - s.padded_flops)
    return {'context': change(self.encoder, encoder_depth),
            'predictor': change(self.predictor, predictor_depth)}

  def describe(self) -> str:
    """'encoder 40 x 352 slots per device (64% of the padded FLOPs), predictor ...'."""
    parts = []
    each = 'per device' + (' and micro-batch' if self.accum > 1 else '')
    for name, shape in (('encoder', self.encoder), ('predictor', self.predictor)):
      parts.append(f'{name} unpacked' if shape is None else
                   f'{name} {shape.rows} rows x {shape.width} slots {each} '
                   f'({shape.flops / shape.padded_flops:.0%} of its padded FLOPs)')
    return ', '.join(parts)

  def __call__(self, masks: MaskBatch, seed: int, step: int,
               first_group: int = 0) -> tuple[MaskBatch, dict[str, np.ndarray]]:
    """(masks, packed arrays) of a host's images, whole devices' shares (`group` x
    `accum_steps` images each), the first of its groups global group `first_group`. The
    masks come back as given unless a group had to have contexts cut to fit."""
    b, k = self.group, self.accum
    n = len(masks.ctx_len)
    if n % (b * k):
      raise ValueError(f'{n} images are not whole groups of {b} x {k} micro-batches')
    masks = MaskBatch(*(a.copy() for a in masks))
    out = []
    for g in range(n // b):  # device g // k, its micro-batch g % k
      idx = (g // k) * b * k + g % k + k * np.arange(b)
      one = MaskBatch(*(a[idx] for a in masks))
      packed = self._pack(one)
      if packed is None:
        one, packed = self._cut(one, seed, step, first_group + g)
        for a, cut in zip(masks, one):
          a[idx] = cut
      out.append(packed)
    return masks, {key: np.stack([o[key] for o in out]) for key in out[0]}

  def _pack(self, masks: MaskBatch) -> dict[str, np.ndarray] | None:
    b, m = self.group, self.sampler.num_targets
    kc, kt = masks.ctx_idx.shape[1], masks.tgt_idx.shape[2]
    cl = masks.ctx_len.astype(np.int64)
    out = {}
    if self.encoder is not None:
      real = np.arange(kc)[None] < cl[:, None]  # [b, Kc]
      tokens = (np.arange(b)[:, None] * self.num_patches + masks.ctx_idx)[real]
      e = lay_out(cl, tokens, self.encoder.rows, self.encoder.width)
      if e is None:
        return None
      unpack = e[2][:, None] + np.where(real, np.arange(kc)[None], 0)
      out |= {'ctx_pack': e[0], 'ctx_seg': e[1], 'ctx_unpack': unpack.astype(np.int32)}
    if self.predictor is not None:
      tl = masks.tgt_len.reshape(b * m).astype(np.int64)
      cl_seq = np.repeat(cl, m)
      ctx_src = np.repeat(np.arange(b) * kc, m)[:, None] + np.arange(kc)[None]  # [b*M, Kc]
      tgt_src = b * kc + (np.arange(b * m) * kt)[:, None] + np.arange(kt)[None]  # [b*M, Kt]
      keep = np.concatenate([np.arange(kc)[None] < cl_seq[:, None],
                             np.arange(kt)[None] < tl[:, None]], 1)
      p = lay_out(cl_seq + tl, np.concatenate([ctx_src, tgt_src], 1)[keep],
                  self.predictor.rows, self.predictor.width)
      if p is None:
        return None
      t = np.arange(kt)[None]
      unpack = p[2][:, None] + np.where(t < tl[:, None], cl_seq[:, None] + t, 0)
      out |= {'pred_pack': p[0], 'pred_seg': p[1],
              'pred_unpack': unpack.reshape(b, m, kt).astype(np.int32)}
    return out

  def _cut(self, masks: MaskBatch, seed: int, step: int,
           group: int) -> tuple[MaskBatch, dict[str, np.ndarray]]:
    """The group's contexts longer than the largest length that fits, subsampled to it
    uniformly at random (in raster order, as `masks.context_len` subsamples)."""
    rng = np.random.default_rng([_CUT_STREAM, seed, step, group])
    lo, hi = 1, int(masks.ctx_len.max())  # find the largest cap that packs
    best = None
    while lo <= hi:
      cap = (lo + hi) // 2
      cut = cap_contexts(masks, cap, np.random.default_rng(rng.integers(2**63)))
      packed = self._pack(cut)
      if packed is None:
        hi = cap - 1
      else:
        best, lo = (cut, packed), cap + 1
    if best is None:
      raise RuntimeError(f'masks.pack: the target blocks of group {group} at step {step} do '
                         'not fit the packed rows even with one-token contexts; turn '
                         'masks.pack off')
    self.cuts += 1
    return best


def cap_contexts(masks: MaskBatch, cap: int, rng: np.random.Generator) -> MaskBatch:
  """Masks whose contexts longer than `cap` keep `cap` of their tokens, drawn uniformly
  (kept in raster order); the rest unchanged."""
  ctx_idx, ctx_len = masks.ctx_idx.copy(), masks.ctx_len.copy()
  for j in np.flatnonzero(ctx_len > cap):
    keep = np.sort(rng.choice(int(ctx_len[j]), cap, replace=False))
    row = ctx_idx[j, keep].copy()
    ctx_idx[j] = 0
    ctx_idx[j, :cap] = row
    ctx_len[j] = cap
  return masks._replace(ctx_idx=ctx_idx, ctx_len=ctx_len)


def batch_masks(sampler: MaskSampler, packer: Packer | None, batch_size: int, seed: int,
                step: int, offset: int = 0) -> dict[str, np.ndarray]:
  """The masks of `batch_size` images of global batch `step` from position `offset` (the
  sampler's arrays), with their packed rows' arrays where there is a packer: what a step
  takes for them."""
  masks = sampler(batch_size, seed, step, offset)
  if packer is None:
    return masks._asdict()
  masks, packed = packer(masks, seed, step, offset // packer.group)
  return masks._asdict() | packed
