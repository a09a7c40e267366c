"""Evaluation of a frozen encoder: linear probe, k-NN and low-shot probes.

Features are extracted once per evaluation (`FeatureExtractor`, sharded over
the run's mesh) from a fixed, labelled subset of a train and a test split
(`load_eval_data`, any source of the input pipeline, the evaluation
transform), then the probes run on them in JAX:

- `linear_probe`: a softmax classifier on standardised features, trained with
  SGD + Nesterov momentum 0.9 (cosine-decayed learning rate, minibatches drawn
  with replacement; Adam's per-coordinate steps moved noise dimensions as much
  as informative ones on small sets) for every (learning rate,
  L2) pair of a small grid at once (vmapped); the pair with the best top-1 on
  a held-out part of the training features is chosen and its top-1 on the
  test features reported. The chosen classifier is the one trained without
  the held-out part (no refit).
- `knn_predict`: cosine similarity, the k nearest training features, votes
  weighted by exp(similarity / temperature) (k = 20, T = 0.07, as DINO's).
- low-shot: the linear probe trained on N labelled examples per class (and
  on a fraction of each class, 1% by default) with the grid point the full
  probe chose.
"""

import concurrent.futures
import dataclasses
import functools
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ijepa_jax import sharding
from ijepa_jax.data import (CorruptImageError, DataMissingError, Source, eval_transform,
                            open_source)
from ijepa_jax.features import OUTPUTS, encode

PROBES = ('linear', 'knn', 'lowshot')
ENCODERS = ('target', 'context')
_SUBSET_STREAM = 0x6576616C  # the evaluation subsets do not depend on the run's seed


# -- probes on features --------------------------------------------------------------------

def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """Features minus the training mean, over the training std (per dimension)."""
  mean, std = train.mean(0), train.std(0) + 1e-6
  return [(x - mean) / std for x in (train, *others)]


@functools.partial(jax.jit, static_argnames=('num_classes', 'k', 'batch'))
def _knn(train_x, train_y, test_x, num_classes: int, k: int, temperature, batch: int):
  train_x = train_x / jnp.linalg.norm(train_x, axis=1, keepdims=True).clip(1e-12)
  test_x = test_x / jnp.linalg.norm(test_x, axis=1, keepdims=True).clip(1e-12)
  m = test_x.shape[0]
  pad = -m % batch
  test_x = jnp.pad(test_x, ((0, pad), (0, 0))).reshape(-1, batch, test_x.shape[1])

  def one(q):
    sim, idx = jax.lax.top_k(q @ train_x.T, k)  # [batch, k]
    votes = jax.nn.one_hot(train_y[idx], num_classes) * jnp.exp(sim / temperature)[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=1)

  return jax.lax.map(one, test_x).reshape(-1)[:m]


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
                k: int = 20, temperature: float = 0.07, batch: int = 256) -> np.ndarray:
  """Weighted k-NN labels of `test_x` [M, D] from `train_x` [N, D] (cosine similarity)."""
  k = min(k, len(train_x))
  return np.asarray(_knn(jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
                         jnp.asarray(test_x, jnp.float32), num_classes, k, temperature,
                         min(batch, len(test_x))))


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps', 'batch'))
def _fit_grid(x, y, lrs, l2s, key, num_classes: int, steps: int, batch: int):
  """Softmax classifiers [G] trained on (x, y), one per (lr, l2) pair; returns (w, b)."""
  n, d = x.shape
  opt = optax.trace(decay=0.9, nesterov=True)  # SGD + momentum: steps scale with the gradient

  def fit(lr, l2):
    def loss(p, xb, yb):
      ce = optax.softmax_cross_entropy_with_integer_labels(xb @ p['w'] + p['b'], yb).mean()
      return ce + l2 * jnp.sum(p['w'] ** 2)

    def body(carry, t):
      p, s = carry
      idx = jax.random.randint(jax.random.fold_in(key, t), (batch,), 0, n)
      g = jax.grad(loss)(p, x[idx], y[idx])
      u, s = opt.update(g, s)
      rate = lr * 0.5 * (1 + jnp.cos(jnp.pi * t / steps))  # cosine decay to 0
      return (jax.tree.map(lambda a, b: a - rate * b, p, u), s), None

    p = {'w': jnp.zeros((d, num_classes)), 'b': jnp.zeros((num_classes,))}
    (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), jnp.arange(steps))
    return p['w'], p['b']

  return jax.vmap(fit)(lrs, l2s)


def _top1(w: jax.Array, b: jax.Array, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Top-1 of each of the G classifiers (w [G, D, C], b [G, C]) on (x, y)."""
  logits = jnp.einsum('nd,gdc->gnc', jnp.asarray(x, jnp.float32), w) + b[:, None]
  return np.asarray((jnp.argmax(logits, -1) == jnp.asarray(y)[None]).mean(-1))


def fit_linear(x: np.ndarray, y: np.ndarray, num_classes: int, lrs: Sequence[float],
               l2s: Sequence[float], steps: int = 1000, batch: int = 1024,
               seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """Train one classifier per (lrs[g], l2s[g]) on standardised x; (w [G, D, C], b [G, C])."""
  return _fit_grid(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                   jnp.asarray(lrs, jnp.float32), jnp.asarray(l2s, jnp.float32),
                   jax.random.key(seed), num_classes, steps, min(batch, len(x)))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, num_classes: int, *, lrs: Sequence[float] = (0.01, 0.1),
                 l2s: Sequence[float] = (0.0, 1e-4), holdout: float = 0.1, steps: int = 1000,
                 batch: int = 1024, seed: int = 0) -> dict[str, float]:
  """Top-1 on the test features of the grid point best on a held-out part of the training ones.

  The grid is every (lr, l2) in lrs x l2s. Returns top1, val_top1, lr, l2.
  """
  if not 0.0 < holdout < 1.0:
    raise ValueError(f'holdout={holdout}: the held-out fraction must be in (0, 1)')
  perm = np.random.default_rng([_SUBSET_STREAM, seed]).permutation(len(train_x))
  n_val = max(1, int(round(holdout * len(train_x))))
  val, fit = perm[:n_val], perm[n_val:]
  xf, xv, xt = standardize(train_x[fit], train_x[val], test_x)
  grid = [(lr, l2) for lr in lrs for l2 in l2s]
  w, b = fit_linear(xf, train_y[fit], num_classes, [g[0] for g in grid], [g[1] for g in grid],
                    steps, batch, seed)
  val_acc = _top1(w, b, xv, train_y[val])
  best = int(np.argmax(val_acc))
  test_acc = _top1(w[best:best + 1], b[best:best + 1], xt, test_y)[0]
  return {'top1': float(test_acc), 'val_top1': float(val_acc[best]), 'lr': grid[best][0],
          'l2': grid[best][1]}


def lowshot_indices(labels: np.ndarray, per_class: int | None = None,
                    fraction: float | None = None, seed: int = 0) -> np.ndarray:
  """`per_class` examples of each class, or round(fraction x its count) (at least 1), drawn
  without replacement from a fixed permutation; sorted indices into `labels`."""
  rng = np.random.default_rng([_SUBSET_STREAM, seed, 1])
  picked = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n = per_class if per_class is not None else max(1, int(round(fraction * len(idx))))
    picked.append(idx[:n])
  return np.sort(np.concatenate(picked))


def lowshot_probe(train_x, train_y, test_x, test_y, num_classes: int, indices: np.ndarray, *,
                  lr: float, l2: float, steps: int = 1000, batch: int = 1024,
                  seed: int = 0) -> float:
  """Top-1 on the test features of a linear probe trained on train_x[indices] only."""
  xs, xt = standardize(train_x[indices], test_x)
  w, b = fit_linear(xs, train_y[indices], num_classes, [lr], [l2], steps, batch, seed)
  return float(_top1(w, b, xt, test_y)[0])


def run_probes(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
               num_classes: int, ev: ml_collections.ConfigDict,
               probes: Sequence[str]) -> dict[str, float]:
  """The probes named in `probes` on extracted features, as metrics (`<probe>_top1`, ...)."""
  out: dict[str, float] = {}
  kw = dict(steps=ev.probe_steps, batch=ev.probe_batch)
  if 'knn' in probes:
    pred = knn_predict(train_x, train_y, test_x, num_classes, ev.knn_k, ev.knn_temperature)
    out['knn_top1'] = float(np.mean(pred == test_y))
  if 'linear' in probes or 'lowshot' in probes:
    lin = linear_probe(train_x, train_y, test_x, test_y, num_classes, lrs=ev.probe_lrs,
                       l2s=ev.probe_l2s, holdout=ev.holdout, **kw)
    if 'linear' in probes:
      out.update({f'linear_{k}': v for k, v in lin.items()})
    if 'lowshot' in probes:
      shots = [(f'{n}shot', lowshot_indices(train_y, per_class=n)) for n in ev.lowshot_per_class]
      if ev.lowshot_fraction > 0:
        shots.append((f'{ev.lowshot_fraction * 100:g}pct',
                      lowshot_indices(train_y, fraction=ev.lowshot_fraction)))
      for name, idx in shots:
        out[f'lowshot_{name}_top1'] = lowshot_probe(
            train_x, train_y, test_x, test_y, num_classes, idx, lr=lin['lr'], l2=lin['l2'], **kw)
  return out


# -- labelled images and features -----------------------------------------------------------

CHUNK = 4096  # images decoded at a time when they are not kept


@dataclasses.dataclass
class LabelledSplit:
  """A fixed labelled subset of one split: decoded on demand in chunks (and kept in memory
  when `cache`: the periodic evaluation's small subsets)."""
  source: Source
  indices: np.ndarray
  size: int
  channels: int
  crop_fraction: float
  workers: int
  cache: bool
  name: str
  _images: list | None = None
  labels: np.ndarray | None = None  # of the images decoded so far (corrupt ones left out)
  skipped: list[str] = dataclasses.field(default_factory=list)

  def chunks(self):
    """Yields uint8 image chunks [n, size, size, channels]; fills `labels` and `skipped`."""
    if self._images is not None:
      yield from self._images
      return
    kept, labels, skipped = [], [], []
    with concurrent.futures.ThreadPoolExecutor(max(1, self.workers), 'ijepa-eval') as pool:
      for start in range(0, len(self.indices), CHUNK):
        images, y, bad = _decode(pool, self.source, self.indices[start:start + CHUNK],
                                 self.size, self.channels, self.crop_fraction)
        labels.append(y)
        skipped += bad
        if self.cache:
          kept.append(images)
        yield images
    self.labels = np.concatenate(labels)
    self.skipped = skipped
    if not len(self.labels):
      raise CorruptImageError(f'none of the {len(self.indices)} {self.name} evaluation images '
                              f'could be decoded (first: {skipped[0] if skipped else "-"})')
    if self.cache:
      self._images = kept


def _decode(pool, source: Source, indices: np.ndarray, size: int, channels: int,
            crop_fraction: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
  def one(i):
    try:
      return eval_transform(source.load(int(i)), size, channels, crop_fraction), source.label(int(i))
    except CorruptImageError as e:
      return None, str(e)

  results = list(pool.map(one, indices))
  kept = [r for r in results if r[0] is not None]
  images = (np.stack([r[0] for r in kept]) if kept
            else np.zeros((0, size, size, channels), np.uint8))
  return (images, np.asarray([r[1] for r in kept], np.int32),
          [r[1] for r in results if r[0] is None])


CACHE_BYTES = 4 * 2**30  # decoded images kept between evaluations, per split, at most


def subset_indices(n: int, count: int) -> np.ndarray:
  """A fixed subset (the same for every run and seed) of `count` of range(n); -1: all."""
  if count < 0 or count >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng([_SUBSET_STREAM, n]).permutation(n)[:count])


def eval_splits(config: ml_collections.ConfigDict, train_examples: int, test_examples: int,
                cache: bool) -> tuple[LabelledSplit, LabelledSplit, int]:
  """The labelled train / test subsets `config.evals` names (its dataset, else the run's), and
  the number of classes. Nothing is decoded yet."""
  ev, d = config.evals, config.data
  dataset, data_dir = ev.dataset or d.dataset, ev.data_dir or d.data_dir
  workers = (os.cpu_count() or 1) if d.workers == -1 else d.workers
  splits, num_classes = [], 0
  for split, count in ((ev.train_split, train_examples), (ev.test_split, test_examples)):
    try:
      source = open_source(dataset, split, data_dir)
    except DataMissingError as e:
      raise DataMissingError(f'evaluation data (evals.dataset={ev.dataset!r}, evals.data_dir='
                             f'{ev.data_dir!r}; empty means data.*): {e}') from None
    if getattr(source, 'num_classes', None) is None:
      raise DataMissingError(f'{dataset}/{split} has no class labels: evaluation needs a '
                             'labelled dataset (set evals.dataset / evals.data_dir)')
    indices = subset_indices(len(source), count)
    # kept only while it is small: a whole ImageNet split would be ~190 GB of pixels
    keep = cache and len(indices) * d.image_size ** 2 * d.channels <= CACHE_BYTES
    splits.append(LabelledSplit(source, indices, d.image_size, d.channels, ev.crop_fraction,
                                workers, keep, f'{dataset}/{split}'))
    num_classes = max(num_classes, source.num_classes)
  return splits[0], splits[1], num_classes


class FeatureExtractor:
  """`extractor(encoder_params, images uint8 [N, ...]) -> float32 [N, D]`, batches split over
  the mesh's batch axes and the encoder's parameters as they are sharded ('tokens':
  [N, T, D])."""

  def __init__(self, mesh: jax.sharding.Mesh, *, num_heads: int, output: str = 'mean',
               batch_size: int = 256, mean: Sequence[float], std: Sequence[float],
               dtype: Any = jnp.float32, attention: str | None = None):
    if output not in OUTPUTS:
      raise ValueError(f'output={output!r}: choose one of {OUTPUTS}')
    n = mesh.shape['data'] * mesh.shape['fsdp']
    self.batch = max(n, int(math.ceil(batch_size / n)) * n)
    self._in = sharding.batch_sharding(mesh)
    self._fn = jax.jit(functools.partial(
        encode, output=output, num_heads=num_heads, dtype=dtype, mean=tuple(mean),
        std=tuple(std), attention=attention), out_shardings=sharding.replicated(mesh))

  @classmethod
  def for_config(cls, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 output: str) -> 'FeatureExtractor':
    """The run's encoder (heads, compute dtype, attention backend), data statistics and
    evals.batch_size."""
    from ijepa_jax import config as cfg_lib  # config imports this module's names
    _, _, heads, _ = cfg_lib.encoder_dims(config)
    return cls(mesh, num_heads=heads, output=output, batch_size=config.evals.batch_size,
               mean=config.data.mean, std=config.data.std,
               dtype=cfg_lib.DTYPES[config.model.dtype],
               attention=cfg_lib.attention_backends(config, jax.default_backend())['encoder'])

  def __call__(self, params: Any, images: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(images), self.batch):
      chunk = images[start:start + self.batch]
      n = len(chunk)
      if n < self.batch:  # pad the tail: one compiled shape
        chunk = np.concatenate([chunk, np.zeros((self.batch - n,) + chunk.shape[1:], chunk.dtype)])
      # every process holds the whole chunk and hands each device its slice
      x = jax.make_array_from_callback(chunk.shape, self._in, lambda idx, c=chunk: c[idx])
      out.append(np.asarray(self._fn(params, x))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


PIXEL_VALUES = 4096  # raw pixels up to this many values per image; above it, patch means


def pixel_features(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   patch: int) -> np.ndarray:
  """The pixel baseline's features: uint8 images [n, H, W, C] normalised as the encoder sees
  them, flattened [n, H*W*C]; where that is more than PIXEL_VALUES, first averaged over each
  patch x patch square (ImageNet at 224/16: 768 values instead of 150,528)."""
  x = (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  n, h, w, c = x.shape
  if h * w * c > PIXEL_VALUES:
    x = x[:, :h - h % patch, :w - w % patch].reshape(
        n, h // patch, patch, w // patch, patch, c).mean((2, 4))
  return x.reshape(n, -1)


class Evaluator:
  """Features of a fixed labelled subset, then the probes: `evaluator(encoder_params)`.

  `cache` keeps the decoded images between calls (the periodic evaluation's
  small subsets; the final one's when a baseline follows) if a split's pixels fit in
  `CACHE_BYTES`; otherwise they are decoded chunk by chunk at every call and only the
  features are kept (a whole ImageNet split fits that way).
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               train_examples: int, test_examples: int, probes: Sequence[str],
               cache: bool = True):
    ev = config.evals
    self.config, self.probes = config, tuple(probes)
    self.train, self.test, self.num_classes = eval_splits(config, train_examples, test_examples,
                                                          cache)
    self.extract = FeatureExtractor.for_config(config, mesh, ev.pool)

  def split_features(self, params: Any, split: LabelledSplit) -> np.ndarray:
    """[N, D] features of a split for the probes (evals.pool=tokens: [N, T·D], raster order)."""
    feats = np.concatenate([self.extract(params, images) for images in split.chunks()])
    return feats.reshape(len(feats), -1)

  def features(self, params: Any) -> tuple[np.ndarray, np.ndarray]:
    return self.split_features(params, self.train), self.split_features(params, self.test)

  def __call__(self, params: Any) -> dict[str, float]:
    t0 = time.time()
    ftr, fte = self.features(params)
    t1 = time.time()
    out = run_probes(ftr, self.train.labels, fte, self.test.labels, self.num_classes,
                     self.config.evals, self.probes)
    out['extract_seconds'] = t1 - t0
    out['eval_seconds'] = time.time() - t0
    if self.skipped():
      out['skipped_images'] = len(self.skipped())  # corrupt ones, left out
    return out

  def pixels(self) -> dict[str, float]:
    """The same probes on the pixels themselves (`pixel_features`): what the encoder's
    features must beat to have learned anything a linear map or a neighbour search could not
    find in its input."""
    t0 = time.time()
    d, m = self.config.data, self.config.model
    ftr, fte = (np.concatenate([pixel_features(images, d.mean, d.std, m.patch_size)
                                for images in split.chunks()]) for split in (self.train, self.test))
    out = run_probes(ftr, self.train.labels, fte, self.test.labels, self.num_classes,
                     self.config.evals, self.probes)
    out['eval_seconds'] = time.time() - t0
    out['pixel_values'] = ftr.shape[1]
    return out

  def describe(self) -> str:
    ev = self.config.evals
    return (f'{len(self.train.indices):,} {self.train.name} / {len(self.test.indices):,} '
            f'{self.test.name} images, {self.num_classes} classes, {ev.encoder} encoder, '
            f'{ev.pool} pooling, probes {", ".join(self.probes)}')

  def skipped(self) -> list[str]:
    return self.train.skipped + self.test.skipped


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
    log(f'{prefix} ({what} {evaluator.config.evals.encoder} encoder): {summary(res)} '
        f'[{res["eval_seconds"]:.0f}s]')
  if baseline is not None:
    res = evaluator.pixels()
    results.update({f'pixels_{k}': v for k, v in res.items()})
    log(f'pixels ({res["pixel_values"]} values per image, no encoder): {summary(res)} '
        f'[{res["eval_seconds"]:.0f}s]')
  return results


def encoder_params(state: Any, which: str) -> Any:
  """The target (EMA) or context encoder's parameters of a TrainState."""
  if which not in ENCODERS:
    raise ValueError(f'evals.encoder={which!r}: choose one of {ENCODERS}')
  return state.target_params if which == 'target' else state.params['encoder']

