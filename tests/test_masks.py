import numpy as np
import pytest

from ijepa_jax.masks import CHUNK, MODES, MaskConfig, MaskSampler
from tests.reference.official_multiblock import official_masks


def rect_of(idx, w):
  r, c = np.divmod(idx, w)
  return r.min(), r.max(), c.min(), c.max()


def check_batch(s, mb, b):
  m, n = s.config.num_targets, s.num_patches
  assert mb.ctx_idx.shape == (b, s.context_len) and mb.ctx_idx.dtype == np.int32
  assert mb.tgt_idx.shape == (b, m, s.target_len) and mb.tgt_idx.dtype == np.int32
  assert mb.ctx_len.shape == (b,) and mb.tgt_len.shape == (b, m)
  assert (mb.ctx_len > s.config.min_keep).all() and (mb.tgt_len > s.config.min_keep).all()
  assert (mb.ctx_len <= s.context_len).all() and (mb.tgt_len <= s.target_len).all()
  for i in range(b):
    ctx = mb.ctx_idx[i, :mb.ctx_len[i]]
    assert ((ctx >= 0) & (ctx < n)).all() and (np.diff(ctx) > 0).all()  # raster order, unique
    assert (mb.ctx_idx[i, mb.ctx_len[i]:] == 0).all()  # padding
    for j in range(m):
      t = mb.tgt_idx[i, j, :mb.tgt_len[i, j]]
      assert (mb.tgt_idx[i, j, mb.tgt_len[i, j]:] == 0).all()
      assert ((t >= 0) & (t < n)).all() and (np.diff(t) > 0).all()
      r0, r1, c0, c1 = rect_of(t, s.width)
      assert (r1 - r0 + 1) * (c1 - c0 + 1) == len(t)  # a full rectangle
      assert not np.intersect1d(ctx, t).size  # context disjoint from every target


@pytest.mark.parametrize('mode', ['official', 'corrected'])
@pytest.mark.parametrize('grid', [(14, 14), (16, 16), (7, 9)])
def test_shapes_bounds_disjoint(mode, grid):
  min_keep = 10 if grid[0] >= 14 else 2
  s = MaskSampler(MaskConfig(grid=grid, mode=mode, min_keep=min_keep))
  for step in range(20):
    check_batch(s, s(16, seed=3, step=step), 16)


def test_deterministic():
  s = MaskSampler(MaskConfig(grid=(14, 14)))
  a, b = s(32, 1, 5, 0), s(32, 1, 5, 0)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.ctx_idx, s(32, 1, 6, 0).ctx_idx)   # another step
  assert not np.array_equal(a.ctx_idx, s(32, 1, 5, 1).ctx_idx)   # another process
  assert not np.array_equal(a.ctx_idx, s(32, 2, 5, 0).ctx_idx)   # another seed


def coverage(s, steps=60, b=64):
  ctx, tgt = np.zeros(s.num_patches, int), np.zeros(s.num_patches, int)
  for step in range(steps):
    mb = s(b, 0, step)
    for i in range(b):
      np.add.at(ctx, mb.ctx_idx[i, :mb.ctx_len[i]], 1)
      for j in range(s.config.num_targets):
        np.add.at(tgt, mb.tgt_idx[i, j, :mb.tgt_len[i, j]], 1)
  return ctx.reshape(s.height, s.width), tgt.reshape(s.height, s.width)


def test_official_defects_reproduced():
  s = MaskSampler(MaskConfig(grid=(14, 14), mode='official'))
  ctx, tgt = coverage(s)
  # defect 3: the last row and column are never in any block
  assert ctx[-1].sum() == 0 and ctx[:, -1].sum() == 0
  assert tgt[-1].sum() == 0 and tgt[:, -1].sum() == 0
  assert (tgt[:-1, :-1] > 0).all()
  # defect 2: one target size per batch; defect 1: size on the one-draw curve
  u = np.linspace(0, 1, 20001)
  curve = set(zip(*s._sizes(u, u, (0.15, 0.2), (0.75, 1.5))))
  for step in range(30):
    mb = s(32, 0, step)
    assert len(np.unique(mb.tgt_len)) == 1
    t = mb.tgt_idx[0, 0, :mb.tgt_len[0, 0]]
    r0, r1, c0, c1 = rect_of(t, 14)
    assert (r1 - r0 + 1, c1 - c0 + 1) in curve


def test_corrected_removes_defects():
  s = MaskSampler(MaskConfig(grid=(14, 14), mode='corrected'))
  ctx, tgt = coverage(s)
  assert (ctx > 0).all() and (tgt > 0).all()  # every patch is chosen sometimes
  mb = s(64, 0, 0)
  assert len(np.unique(mb.tgt_len)) > 2  # sizes drawn per image
  # scale and aspect independent: the same area occurs with several shapes
  shapes = {}
  for step in range(20):
    mb = s(64, 0, step)
    for i in range(64):
      r0, r1, c0, c1 = rect_of(mb.tgt_idx[i, 0, :mb.tgt_len[i, 0]], 14)
      shapes.setdefault((r1 - r0 + 1) * (c1 - c0 + 1), set()).add((r1 - r0 + 1, c1 - c0 + 1))
  assert max(len(v) for v in shapes.values()) >= 2
  # no truncation by default: Kc is the largest context there can be, the whole grid less
  # the smallest target block (here counted by brute force over the draws' formula), so no
  # drawn context is ever cut
  u = np.linspace(0, 1, 2001)
  keep = np.floor(196 * (0.15 + u[:, None] * 0.05))
  ar = 0.75 + u[None, :] * 0.75
  smallest = (np.clip(np.round(np.sqrt(keep * ar)), 1, 14)
              * np.clip(np.round(np.sqrt(keep / ar)), 1, 14)).min()
  assert smallest == 24 and s.context_len == 196 - 24
  rng = np.random.default_rng(3)
  raw = np.concatenate([s._untruncated(rng, 64)[1] for _ in range(50)])
  assert raw.max() <= s.context_len


@pytest.mark.parametrize('grid', [(16, 16), (14, 14)])
def test_official_lengths_match_reference(grid):
  """Mean context / target lengths within 5% of the official sampler's (batch 128)."""
  rng = np.random.default_rng(0)
  ref_ctx, ref_tgt = [], []
  for _ in range(40):
    enc, pred = official_masks(rng, 128, grid)
    ref_ctx.append(enc[0].shape[1])
    ref_tgt.append(pred[0].shape[1])
  s = MaskSampler(MaskConfig(grid=grid, mode='official', truncation_batch=128))
  ours = [s(128, 7, step) for step in range(40)]
  ctx = np.mean([m.ctx_len.mean() for m in ours])
  tgt = np.mean([m.tgt_len.mean() for m in ours])
  assert abs(ctx / np.mean(ref_ctx) - 1) < 0.05, (ctx, np.mean(ref_ctx))
  assert abs(tgt / np.mean(ref_tgt) - 1) < 0.05, (tgt, np.mean(ref_tgt))


def test_context_len_cap_random_subset():
  s = MaskSampler(MaskConfig(grid=(14, 14), mode='corrected', context_len=40))
  ctx, _ = coverage(s, steps=20)
  assert s.context_len == 40 and (ctx[-1] > 0).all()  # not a raster-order cut
  check_batch(s, s(16, 0, 0), 16)


@pytest.mark.parametrize('kwargs,match', [
    (dict(grid=(14, 14), mode='fancy'), 'masks.mode'),
    (dict(grid=(1, 14)), 'too small'),
    (dict(grid=(14, 14), target_scale=(0.2, 0.1)), 'target_scale'),
    (dict(grid=(14, 14), context_scale=(0.5, 1.5)), 'context_scale'),
    (dict(grid=(7, 7)), 'min_keep=10'),  # official min_keep on a 7x7 grid
    (dict(grid=(14, 14), context_len=500), 'context_len'),
    (dict(grid=(6, 6), num_targets=8, target_scale=(0.5, 0.5), min_keep=2), 'cannot be sampled'),
])
def test_infeasible_raises_at_build(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MaskSampler(MaskConfig(**kwargs))


def test_reference_port_sanity():
  """The reference itself shows the official observed figures (DESIGN.md, 16x16, batch 128)."""
  rng = np.random.default_rng(1)
  enc, pred = official_masks(rng, 128, (16, 16))
  assert 35 <= pred[0].shape[1] <= 54 and 40 <= enc[0].shape[1] <= 100


@pytest.mark.parametrize('mode', ['official', 'corrected'])
@pytest.mark.parametrize('kwargs', [
    dict(grid=(27, 27), target_scale=(0.1, 0.3), target_aspect=(0.5, 2.0)),
    dict(grid=(16, 16)), dict(grid=(20, 12), target_aspect=(0.3, 3.0))])
def test_target_len_is_the_exact_maximum(mode, kwargs):
  """Kt equals the largest area over a brute-force sweep of the draws (never too small)."""
  s = MaskSampler(MaskConfig(mode=mode, **kwargs))
  c = s.config
  if mode == 'official':
    u = np.linspace(0, 1, 2_000_001)
    h, w = s._sizes(u, u, c.target_scale, c.target_aspect)
  else:  # every reachable patch count, with a dense sweep of the aspect ratio
    n, (s0, s1), (a0, a1) = s.num_patches, c.target_scale, c.target_aspect
    keep = np.arange(np.floor(n * s0), np.floor(n * s1) + 1)[:, None]
    h, w = s._hw(keep, np.linspace(a0, a1, 200_001)[None])
  assert s.target_len == (h * w).max()


def test_official_sizes_shared_by_processes():
  """Official block sizes come from (seed, step): equal on every process, positions differ."""
  s = MaskSampler(MaskConfig(grid=(16, 16), mode='official'))
  a, b = s(8, 0, 3, offset=0), s(8, 0, 3, offset=8)
  assert a.tgt_len[0, 0] == b.tgt_len[0, 0]
  assert not np.array_equal(a.tgt_idx, b.tgt_idx)


@pytest.mark.parametrize('mode, strategy', [(m, 'multiblock') for m in MODES] + [
    ('corrected', s) for s in ('random', 'block', 'rasterized')])
def test_masks_do_not_depend_on_how_the_batch_is_split(mode, strategy):
  """A global batch of 3 RNG chunks read whole or by 2, 4 or 6 processes (offsets inside
  chunks) gives the same masks position by position, and again on a second call; another
  step or seed gives others. Every strategy."""
  s = MaskSampler(MaskConfig(grid=(14, 14), mode=mode, strategy=strategy))
  total = 3 * CHUNK
  whole = s(total, 5, 7)
  for field, again in zip(whole, s(total, 5, 7)):
    np.testing.assert_array_equal(field, again)
  for parts in (2, 4, 6):
    n = total // parts
    split = [s(n, 5, 7, offset=p * n) for p in range(parts)]
    for field, full in zip(whole, zip(*split)):
      np.testing.assert_array_equal(np.concatenate(full), field)
  assert not np.array_equal(s(total, 5, 8).ctx_idx, whole.ctx_idx)
  assert not np.array_equal(s(total, 6, 7).ctx_idx, whole.ctx_idx)


# -- the masking ablation's other strategies (random, block, rasterized) -----------------

def strategy(name, grid=(7, 7), **kw):
  return MaskSampler(MaskConfig(grid=grid, mode='corrected', strategy=name, **kw))


def real(mb, i):
  """Image i's context set and list of target sets, padding removed."""
  ctx = mb.ctx_idx[i, :mb.ctx_len[i]]
  return ctx, [mb.tgt_idx[i, j, :mb.tgt_len[i, j]] for j in range(mb.tgt_idx.shape[1])]


@pytest.mark.parametrize('grid', [(7, 7), (14, 14), (6, 9)])
def test_random_strategy(grid):
  """round(0.6 N) random target patches, the context every other patch: together they cover
  the grid exactly once, in fixed shapes, and over many images every patch is a target."""
  s = strategy('random', grid)
  n = grid[0] * grid[1]
  kt = int(round(0.6 * n))
  assert (s.num_targets, s.target_len, s.context_len) == (1, kt, n - kt)
  hits = np.zeros(n, int)
  for step in range(10):
    mb = s(16, seed=1, step=step)
    assert mb.ctx_idx.shape == (16, n - kt) and mb.tgt_idx.shape == (16, 1, kt)
    assert (mb.ctx_len == n - kt).all() and (mb.tgt_len == kt).all()
    for i in range(16):
      ctx, (tgt,) = real(mb, i)
      assert (np.diff(ctx) > 0).all() and (np.diff(tgt) > 0).all()
      np.testing.assert_array_equal(np.sort(np.concatenate([ctx, tgt])), np.arange(n))
      np.add.at(hits, tgt, 1)
  assert hits.min() > 0  # 160 draws of 60%: each patch is a target about 96 times
  assert abs(hits.mean() / 160 - kt / n) < 1e-9


def test_block_strategy():
  """One target rectangle of floor(0.6 N)-ish patches (aspect 0.75-1.5), the context its
  complement; Kt and Kc are the exact extremes of the block's area."""
  s = strategy('block', (14, 14))
  n, areas = 196, set()
  for step in range(10):
    mb = s(16, seed=2, step=step)
    assert mb.ctx_idx.shape == (16, s.context_len) and mb.tgt_idx.shape == (16, 1, s.target_len)
    for i in range(16):
      ctx, (tgt,) = real(mb, i)
      r0, r1, c0, c1 = rect_of(tgt, 14)
      assert (r1 - r0 + 1) * (c1 - c0 + 1) == len(tgt)  # a full rectangle
      # keep = floor(196 * 0.6) = 117: h = round(sqrt(117 ar)) in 9..13 and
      # w = round(sqrt(117 / ar)) in 9..12 for ar in [0.75, 1.5]
      assert 9 <= r1 - r0 + 1 <= 13 and 9 <= c1 - c0 + 1 <= 12
      np.testing.assert_array_equal(np.sort(np.concatenate([ctx, tgt])), np.arange(n))
      areas.add(len(tgt))
  assert min(areas) >= n - s.context_len and max(areas) <= s.target_len
  assert len(areas) > 3  # sizes are drawn per image


def test_rasterized_strategy():
  """Four quadrants (7 x 7: rows and columns cut at 4): the context is always exactly one of
  them, the three targets the other three; every quadrant is the context in some image."""
  s = strategy('rasterized')
  assert (s.num_targets, s.target_len, s.context_len) == (3, 16, 16)
  quads = [set(r * 7 + c for r in rows for c in cols)
           for rows in (range(0, 4), range(4, 7)) for cols in (range(0, 4), range(4, 7))]
  assert [len(q) for q in quads] == [16, 12, 12, 9]
  seen = set()
  for step in range(5):
    mb = s(32, seed=0, step=step)
    assert mb.ctx_idx.shape == (32, 16) and mb.tgt_idx.shape == (32, 3, 16)
    for i in range(32):
      ctx, tgts = real(mb, i)
      (q,) = [k for k, quad in enumerate(quads) if set(ctx.tolist()) == quad]
      seen.add(q)
      assert sorted(map(tuple, (sorted(t.tolist()) for t in tgts))) == \
          sorted(tuple(sorted(quads[k])) for k in range(4) if k != q)
  assert seen == {0, 1, 2, 3}
  # a context_len cap above the largest context (the demo's 32) is lowered to it
  assert strategy('rasterized', context_len=32).context_len == 16


@pytest.mark.parametrize('kwargs, match', [
    (dict(strategy='random', mode='official'), "needs masks.mode='corrected'"),
    (dict(strategy='stripes', mode='corrected'), 'choose one of'),
    (dict(strategy='random', mode='corrected', target_fraction=1.0), r'must be in \(0, 1\)'),
    (dict(strategy='random', mode='corrected', target_fraction=0.01), 'leaves at least one'),
])
def test_strategy_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MaskSampler(MaskConfig(grid=(7, 7), **kwargs))
