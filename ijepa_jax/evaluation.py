"""Evaluation of a frozen encoder: the plumbing around the probes (`probes.py`).

Features are extracted once per evaluation (`FeatureExtractor`, sharded over
the run's mesh) from a fixed, labelled subset of a train and a test split
(`eval_splits`, any source of the input pipeline, the evaluation
transform): pooled features for the probes that read one vector per image, the tokens for
those that read tokens (kept in memory where they fit, else recomputed batch by batch);
then `probes.run_probes` runs the chosen probes (`probes.names()`) on them. `Evaluator`
does both and reports; `with_baseline` adds the randomly initialised encoder and the raw
pixels (pooled: `pixel_features`; tokens: `pixel_tokens`) beside the pretrained one, every
probe on the same footing.
"""

import concurrent.futures
import dataclasses
import functools
import math
import time
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ijepa_jax import probes as probe_lib, sharding
from ijepa_jax.data import CorruptImageError, DataMissingError, Source, Sources, eval_transform
from ijepa_jax.features import OUTPUTS, encode
from ijepa_jax.pos_embed import sincos_2d
from ijepa_jax.probes import SUBSET_STREAM, run_probes
from ijepa_jax.spec import DataSpec, EvalSpec, Run

# -- labelled images and features -----------------------------------------------------------

CHUNK = 4096  # images decoded at a time when they are not kept


class Chunk(NamedTuple):
  """Decoded images of a split and what goes with them, in the split's order."""
  images: np.ndarray   # uint8 [n, size, size, channels]: the images that decoded
  labels: np.ndarray   # int32 [n] (-1 for a source without labels)
  indices: np.ndarray  # [n] their indices in the source
  skipped: list[str]   # the ones that did not decode, as '<name>: <reason>'


@dataclasses.dataclass
class LabelledSplit:
  """A fixed subset of one split, decoded on demand in `Chunk`s of images with their labels
  (and kept in memory when `cache`: the periodic evaluation's small subsets). `labelled=False`
  (a source without labels, or none wanted): every label is -1 and the source is not asked."""
  source: Source
  indices: np.ndarray
  size: int
  channels: int
  crop_fraction: float
  workers: int
  cache: bool
  name: str
  labelled: bool = True
  _chunks: list[Chunk] | None = None

  def chunks(self) -> Iterator[Chunk]:
    if self._chunks is not None:
      yield from self._chunks
      return
    kept, decoded, bad = [], 0, []
    with concurrent.futures.ThreadPoolExecutor(max(1, self.workers), 'ijepa-eval') as pool:
      for start in range(0, len(self.indices), CHUNK):
        chunk = self._decode(pool, self.indices[start:start + CHUNK])
        decoded += len(chunk.indices)
        bad += chunk.skipped[:1]
        if self.cache:
          kept.append(chunk)
        yield chunk
    if not decoded:
      raise CorruptImageError(f'none of the {len(self.indices)} {self.name} evaluation images '
                              f'could be decoded (first: {bad[0] if bad else "-"})')
    if self.cache:
      self._chunks = kept

  def _decode(self, pool, indices: np.ndarray) -> Chunk:
    def one(i):
      try:
        image = eval_transform(self.source.load(int(i)), self.size, self.channels,
                               self.crop_fraction)
      except CorruptImageError as e:
        return None, str(e)
      return image, self.source.label(int(i)) if self.labelled else -1

    results = list(pool.map(one, indices))
    ok = [r[0] is not None for r in results]
    images = (np.stack([r[0] for r, good in zip(results, ok) if good]) if any(ok)
              else np.zeros((0, self.size, self.size, self.channels), np.uint8))
    return Chunk(images, np.asarray([r[1] for r, good in zip(results, ok) if good], np.int32),
                 np.asarray(indices)[np.asarray(ok, bool)],
                 [r[1] for r, good in zip(results, ok) if not good])


CACHE_BYTES = 4 * 2**30  # decoded images kept between evaluations, per split, at most


def subset_indices(n: int, count: int) -> np.ndarray:
  """A fixed subset (the same for every run and seed) of `count` of range(n); -1: all."""
  if count < 0 or count >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng([SUBSET_STREAM, n]).permutation(n)[:count])


def eval_splits(evals: EvalSpec, data: DataSpec, train_examples: int, test_examples: int,
                cache: bool, sources: Sources | None = None
                ) -> tuple[LabelledSplit, LabelledSplit, int]:
  """The labelled train / test subsets of the evaluation data, and the number of classes.
  Nothing is decoded yet; `sources` hands out splits the run has opened already."""
  sources = sources or Sources()
  splits, num_classes = [], 0
  for split, count in ((evals.train_split, train_examples), (evals.test_split, test_examples)):
    try:
      source = sources(evals.dataset, split, evals.data_dir)
    except DataMissingError as e:
      raise DataMissingError(f'evaluation data (evals.dataset={evals.configured_dataset!r}, '
                             f'evals.data_dir={evals.configured_data_dir!r}; empty means '
                             f'data.*): {e}') from None
    if getattr(source, 'num_classes', None) is None:
      raise DataMissingError(f'{evals.dataset}/{split} has no class labels: evaluation needs a '
                             'labelled dataset (set evals.dataset / evals.data_dir)')
    indices = subset_indices(len(source), count)
    # kept only while it is small: a whole ImageNet split would be ~190 GB of pixels
    keep = cache and len(indices) * data.image_size ** 2 * data.channels <= CACHE_BYTES
    splits.append(LabelledSplit(source, indices, data.image_size, data.channels,
                                evals.crop_fraction, data.workers, keep,
                                f'{evals.dataset}/{split}'))
    num_classes = max(num_classes, source.num_classes)
  return splits[0], splits[1], num_classes


class FeatureExtractor:
  """`extractor(encoder_params, images uint8 [N, ...]) -> float32 [N, D]`, batches split over
  the mesh's batch axes and the encoder's parameters as they are sharded ('tokens':
  [N, T, D]). `extractor.both(params, images, tokens=True)` also returns the tokens of the
  same pass: 'mean' is the mean of exactly the tokens it hands out (one program for the
  tokens, one for their mean), so a split's pooled features do not depend on whether its
  tokens were asked for too."""

  def __init__(self, mesh: jax.sharding.Mesh, *, num_heads: int, output: str = 'mean',
               batch_size: int = 256, mean: Sequence[float], std: Sequence[float],
               dtype: Any = jnp.float32, attention: str | None = None,
               scan_layers: bool = True):
    if output not in OUTPUTS:
      raise ValueError(f'output={output!r}: choose one of {OUTPUTS}')
    n = mesh.shape['data'] * mesh.shape['fsdp']
    self.output = output
    self.batch = max(n, int(math.ceil(batch_size / n)) * n)
    self._in = sharding.batch_sharding(mesh)
    enc = functools.partial(encode, num_heads=num_heads, dtype=dtype, mean=tuple(mean),
                            std=tuple(std), attention=attention, scan_layers=scan_layers)
    rep = sharding.replicated(mesh)
    if output == 'last4':
      self._last4 = jax.jit(functools.partial(enc, output='last4'), out_shardings=rep)
    # the tokens stay split over the devices until they are pooled or fetched
    self._tokens = jax.jit(functools.partial(enc, output='tokens'), out_shardings=self._in)
    self._mean = jax.jit(lambda t: t.mean(axis=1), out_shardings=rep)
    self._fetch = jax.jit(lambda t: t, out_shardings=rep)

  @classmethod
  def for_run(cls, run: Run, mesh: jax.sharding.Mesh, output: str) -> 'FeatureExtractor':
    """The run's encoder (heads, compute dtype, attention backend), data statistics and
    evals.batch_size."""
    return cls(mesh, num_heads=run.arch.num_heads, output=output,
               batch_size=run.evals.batch_size, mean=run.data.mean, std=run.data.std,
               dtype=run.arch.compute_dtype, attention=run.arch.attention_backends['encoder'],
               scan_layers=run.arch.scan_layers)

  def both(self, params: Any, images: np.ndarray, tokens: bool = False
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """(the `output` features, the tokens [N, T, D] of the same pass or None)."""
    feats, toks = [], []
    for start in range(0, len(images), self.batch):
      chunk = images[start:start + self.batch]
      n = len(chunk)
      if n < self.batch:  # pad the tail: one compiled shape
        chunk = np.concatenate([chunk, np.zeros((self.batch - n,) + chunk.shape[1:], chunk.dtype)])
      # every process holds the whole chunk and hands each device its slice
      x = jax.make_array_from_callback(chunk.shape, self._in, lambda idx, c=chunk: c[idx])
      t = self._tokens(params, x) if self.output != 'last4' or tokens else None
      if self.output == 'last4':
        feats.append(np.asarray(self._last4(params, x))[:n])
      elif self.output == 'mean':
        feats.append(np.asarray(self._mean(t))[:n])
      if tokens or self.output == 'tokens':
        toks.append(np.asarray(self._fetch(t))[:n])
    if self.output == 'tokens':
      feats = toks
    cat = lambda a: np.concatenate(a) if a else np.zeros((0, 0), np.float32)
    return cat(feats), (cat(toks) if tokens else None)

  def __call__(self, params: Any, images: np.ndarray) -> np.ndarray:
    return self.both(params, images)[0]


PIXEL_VALUES = 4096  # raw pixels up to this many values per image; above it, patch means


def _normalised(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 images as the encoder sees them: (x / 255 - mean) / std, float32."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return (images.astype(np.float32) / 255.0 - mean) / std


def pixel_features(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   patch: int) -> np.ndarray:
  """The pixel baseline's features: uint8 images [n, H, W, C] normalised as the encoder sees
  them, flattened [n, H*W*C]; where that is more than PIXEL_VALUES, first averaged over each
  patch x patch square (ImageNet at 224/16: 768 values instead of 150,528)."""
  x = _normalised(images, mean, std)
  n, h, w, c = x.shape
  if h * w * c > PIXEL_VALUES:
    x = x[:, :h - h % patch, :w - w % patch].reshape(
        n, h // patch, patch, w // patch, patch, c).mean((2, 4))
  return x.reshape(n, -1)


def pixel_tokens(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 patch: int) -> np.ndarray:
  """The pixel baseline's tokens: each patch x patch square of the normalised images flattened
  (raster order of squares, then of pixels, then channels) plus the fixed 2-D sin-cos position
  of that square, as the encoder's patch embedding gets it: float32 [n, T, patch²·C]."""
  x = _normalised(images, mean, std)
  n, h, w, c = x.shape
  gh, gw = h // patch, w // patch
  x = x[:, :gh * patch, :gw * patch].reshape(n, gh, patch, gw, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, patch * patch * c)
  dim = patch * patch * c
  pos = np.zeros((gh * gw, dim), np.float32)  # the sin-cos table needs a width divisible by 4
  pos[:, :dim - dim % 4] = sincos_2d(dim - dim % 4, (gh, gw))
  return x + pos[None]


GIB = 2**30


class Evaluator:
  """Features of a fixed labelled subset, then the probes: `evaluator(encoder_params)`.

  `cache` keeps the decoded images between calls (the periodic evaluation's
  small subsets; the final one's when a baseline follows) if a split's pixels fit in
  `CACHE_BYTES`; otherwise they are decoded chunk by chunk at every call and only the
  features are kept (a whole ImageNet split fits that way). `sources`: the run's opened
  data (`data.Sources`), so that no split is opened twice.
  """

  def __init__(self, run: Run, mesh: jax.sharding.Mesh, train_examples: int,
               test_examples: int, probes: Sequence[str], cache: bool = True,
               sources: Sources | None = None):
    self.run, self.evals, self.probes = run, run.evals, tuple(probes)
    self.needs = probe_lib.needs_of(self.probes)  # checks the names first
    settings = run.evals.probe
    if not settings.attentive_heads:  # 0: the encoder's own number of heads
      settings = dataclasses.replace(settings, attentive_heads=run.arch.num_heads)
    self.settings = settings
    self.train, self.test, self.num_classes = eval_splits(
        run.evals, run.data, train_examples, test_examples, cache, sources)
    self.extract = FeatureExtractor.for_run(run, mesh, run.evals.pool)
    self.skipped: list[str] = []  # the images the last call could not decode

  def _features(self, split: LabelledSplit, fn, token_shape: tuple[int, int]
                ) -> tuple[probe_lib.Split, list[str]]:
    """One split's features for the probes (`probes.Split`) and the images that did not
    decode (left out). `fn(images, tokens: bool) -> (pooled [n, D'], tokens [n, T, D] or
    None)`; the tokens are kept in memory where the split's fit in
    evals.attentive_cache_gib, else recomputed for each batch the probes ask for."""
    want_tokens = 'tokens' in self.needs
    n = len(split.indices)
    keep = want_tokens and n * math.prod(token_shape) * 4 <= self.settings.attentive_cache_gib * GIB
    pooled, tokens, labels, skipped = [], [], [], []
    for chunk in split.chunks():
      labels.append(chunk.labels)
      skipped += chunk.skipped
      p, t = fn(chunk.images, keep)
      pooled.append(p)
      if keep:
        tokens.append(t)
    labels = np.concatenate(labels)
    out = probe_lib.Split(labels, np.concatenate(pooled).reshape(len(labels), -1))
    if keep:
      out.tokens = probe_lib.TokenArray(np.concatenate(tokens))
    elif want_tokens:
      out.tokens = probe_lib.StreamedTokens(lambda: (c.images for c in split.chunks()),
                                            lambda im: fn(im, True)[1],
                                            (len(labels),) + tuple(token_shape))
    return out, skipped

  def split_features(self, params: Any, split: LabelledSplit) -> tuple[probe_lib.Split, list[str]]:
    """The encoder's features of a split for the probes (evals.pool=tokens: pooled is
    [N, T·D], raster order) and the images that did not decode (left out)."""
    return self._features(split, lambda im, tokens: self.extract.both(params, im, tokens),
                          (math.prod(self.run.arch.grid), self.run.arch.width))

  def __call__(self, params: Any) -> dict[str, float]:
    t0 = time.time()
    (ftr, bad_tr), (fte, bad_te) = (self.split_features(params, s)
                                    for s in (self.train, self.test))
    self.skipped = bad_tr + bad_te
    t1 = time.time()
    out = run_probes(ftr, fte, self.num_classes, self.settings, self.probes)
    out['extract_seconds'] = t1 - t0
    out['eval_seconds'] = time.time() - t0
    if self.skipped:
      out['skipped_images'] = len(self.skipped)  # corrupt ones, left out
    return out

  def pixels(self) -> dict[str, float]:
    """The same probes on the pixels themselves (`pixel_features` for the pooled probes,
    `pixel_tokens` for the token probes): what the encoder's features must beat to have
    learned anything a linear map, a neighbour search or an attentive head could not find in
    its input."""
    t0 = time.time()
    d, p = self.run.data, self.run.arch.patch_size
    shape = (math.prod(self.run.arch.grid), p * p * d.channels)
    (ftr, _), (fte, _) = (
        self._features(s, lambda im, tokens: (pixel_features(im, d.mean, d.std, p),
                                              pixel_tokens(im, d.mean, d.std, p) if tokens
                                              else None), shape)
        for s in (self.train, self.test))
    out = run_probes(ftr, fte, self.num_classes, self.settings, self.probes)
    out['eval_seconds'] = time.time() - t0
    out['pixel_values'] = ftr.pooled.shape[1]
    return out

  def describe(self) -> str:
    ev = self.evals
    return (f'{len(self.train.indices):,} {self.train.name} / {len(self.test.indices):,} '
            f'{self.test.name} images, {self.num_classes} classes, {ev.encoder} encoder, '
            f'{ev.pool} pooling, probes {", ".join(self.probes)}')


def summary(res: dict[str, float]) -> str:
  """'knn_top1 64.54% | linear_top1 70.51% | ...' of an evaluation's results."""
  return ' | '.join(f'{k} {100 * v:.2f}%' for k, v in res.items() if k.endswith('top1'))


def with_baseline(evaluator: 'Evaluator', name: str, params: Any, baseline: Any | None,
                  log) -> dict[str, float]:
  """Evaluate `params` (results `<name>_*`) and, if given, the same network at random
  initialisation `baseline` (`baseline_*`) and the raw pixels (`pixels_*`), logging one line
  each: pretrained vs random vs pixels."""
  results = {}
  runs = [(name, 'pretrained', params)] + ([('baseline', 'random init', baseline)]
                                           if baseline is not None else [])
  for prefix, what, p in runs:
    res = evaluator(p)
    results.update({f'{prefix}_{k}': v for k, v in res.items()})
    log(f'{prefix} ({what} {evaluator.evals.encoder} encoder): {summary(res)} '
        f'[{res["eval_seconds"]:.0f}s]')
  if baseline is not None:
    res = evaluator.pixels()
    results.update({f'pixels_{k}': v for k, v in res.items()})
    log(f'pixels ({res["pixel_values"]} values per image, no encoder): {summary(res)} '
        f'[{res["eval_seconds"]:.0f}s]')
  return results
