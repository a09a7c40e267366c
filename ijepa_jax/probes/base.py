"""The probes' one interface: what a probe is given (`Split`), what it returns (metrics), and
the registry that names it (`register`, `get`, `names`).

A probe is a function `run(train, test, num_classes, settings, shared) -> {metric: value}`
registered under a name with the features it needs:

- `'pooled'`: one vector per image, `Split.pooled` [N, D] (the config's evals.pool);
- `'tokens'`: the per-token features, `Split.tokens` [N, T, D] (a `Tokens`: in memory, or
  recomputed batch by batch where a split's tokens do not fit).

Its metrics are named `<name>_<what>`; `<name>_top1` is its headline figure (the one
the curves draw). `shared` is one dict per evaluation of one set of features, for results a
probe reuses from another (the low-shot probes take the linear probe's chosen grid point).
A new probe is one module of this package that calls `register`, and its name in
evals.final_probes / evals.periodic_probes: the evaluation, reports, tables and curves need
no change.
"""

import dataclasses
import time
from typing import Any, Callable, Iterator, Protocol

import numpy as np

SUBSET_STREAM = 0x6576616C  # the evaluation subsets do not depend on the run's seed
NEEDS = ('pooled', 'tokens')


class ProbeInputError(ValueError):
  """A probe was asked to run on features it cannot read."""


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
  """The probes' hyper-parameters: the config's evals.* fields of the same names (their
  defaults and meaning: `recipes.base_config`)."""
  knn_k: int
  knn_temperature: float
  probe_lrs: tuple[float, ...]
  probe_l2s: tuple[float, ...]
  holdout: float
  probe_steps: int
  probe_batch: int
  lowshot_per_class: tuple[int, ...]
  lowshot_fraction: float
  attentive_epochs: int
  attentive_lrs: tuple[float, ...]
  attentive_wd: float
  attentive_batch: int
  attentive_heads: int  # 0: the encoder's (the evaluation fills it in)
  attentive_queries: int
  attentive_mlp_ratio: float
  attentive_cache_gib: float


class Tokens(Protocol):
  """Per-token features of a split's N images, [N, T, D] float32, handed out in batches."""
  shape: tuple[int, int, int]

  def batches(self, subset: np.ndarray, batch: int,
              rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions [b], tokens [b, T, D]) over the positions `subset` (sorted), `batch` at a
    time (the last one shorter): in order, or shuffled with `rng`."""


@dataclasses.dataclass(frozen=True)
class TokenArray:
  """Tokens held in memory: shuffled across the whole split."""
  array: np.ndarray  # [N, T, D]

  @property
  def shape(self) -> tuple[int, int, int]:
    return self.array.shape

  def batches(self, subset, batch, rng=None):
    order = rng.permutation(subset) if rng is not None else np.asarray(subset)
    for start in range(0, len(order), batch):
      idx = order[start:start + batch]
      yield idx, self.array[idx]


@dataclasses.dataclass(frozen=True)
class StreamedTokens:
  """Tokens recomputed for each batch from images decoded chunk by chunk (`chunks()` yields
  uint8 image arrays in the split's order; `tokens(images) -> [b, T, D]`): shuffled within
  each chunk, so that no more than one chunk of images is held. With one chunk, the same
  order as `TokenArray`'s for the same generator."""
  chunks: Callable[[], Iterator[np.ndarray]]
  tokens: Callable[[np.ndarray], np.ndarray]
  shape: tuple[int, int, int]

  def batches(self, subset, batch, rng=None):
    subset = np.asarray(subset)
    offset = 0
    for images in self.chunks():
      lo, hi = np.searchsorted(subset, [offset, offset + len(images)])
      mine = subset[lo:hi]
      order = rng.permutation(mine) if rng is not None else mine
      for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        yield idx, self.tokens(images[idx - offset])
      offset += len(images)


@dataclasses.dataclass
class Split:
  """One split's features as the probes see them: labels [N] int32 and the pooled [N, D]
  and / or per-token features of the same N images (None where not computed)."""
  labels: np.ndarray
  pooled: np.ndarray | None = None
  tokens: Tokens | None = None


ProbeFn = Callable[[Split, Split, int, ProbeSettings, dict], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Probe:
  name: str
  needs: str
  run: ProbeFn


_REGISTRY: dict[str, Probe] = {}


def register(name: str, needs: str) -> Callable[[ProbeFn], ProbeFn]:
  """Decorator: `fn` is the probe `name`, run on the features `needs` ('pooled' or 'tokens')."""
  if needs not in NEEDS:
    raise ValueError(f'needs={needs!r}: choose one of {NEEDS}')

  def add(fn: ProbeFn) -> ProbeFn:
    if name in _REGISTRY and _REGISTRY[name].run is not fn:
      raise ValueError(f'a probe named {name!r} is registered already')
    _REGISTRY[name] = Probe(name, needs, fn)
    return fn
  return add


def names() -> tuple[str, ...]:
  """The registered probes' names, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Probe:
  if name not in _REGISTRY:
    raise ProbeInputError(f'unknown probe {name!r}: choose from {", ".join(names())}')
  return _REGISTRY[name]


def needs_of(probes: Any) -> set[str]:
  """The kinds of features ('pooled', 'tokens') the named probes need together."""
  return {get(p).needs for p in probes}


def holdout_split(n: int, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(held-out, fitting) positions of range(n), each in a fixed random order: a fixed
  `holdout` fraction (at least one) held out to choose a probe's hyper-parameters."""
  if not 0.0 < holdout < 1.0:
    raise ValueError(f'holdout={holdout}: the held-out fraction must be in (0, 1)')
  perm = np.random.default_rng([SUBSET_STREAM, seed]).permutation(n)
  n_val = max(1, int(round(holdout * n)))
  return perm[:n_val], perm[n_val:]


def run_probes(train: Split, test: Split, num_classes: int, settings: ProbeSettings,
               probes: Any) -> dict[str, float]:
  """The probes named in `probes`, in that order, on one set of features: their metrics and
  `<name>_seconds` each. Checks first that every probe exists and has its features."""
  chosen = [get(p) for p in probes]
  for p in chosen:
    for split in (train, test):
      if getattr(split, p.needs) is None:
        have = [k for k in NEEDS if getattr(split, k) is not None]
        raise ProbeInputError(f'probe {p.name!r} needs {p.needs} features; these are '
                              f'{" and ".join(have) or "none"} only')
  out: dict[str, float] = {}
  shared: dict = {}
  for p in chosen:
    t0 = time.time()
    out.update(p.run(train, test, num_classes, settings, shared))
    out[f'{p.name}_seconds'] = time.time() - t0
  return out
