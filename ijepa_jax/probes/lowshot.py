"""The low-shot probes: the linear probe trained on N labelled examples per class (and on a
fraction of each class, 1% by default) with the grid point the full linear probe chose."""

import numpy as np

from ijepa_jax.probes import linear
from ijepa_jax.probes.base import SUBSET_STREAM, ProbeSettings, Split, register
from ijepa_jax.probes.linear import _top1, fit_linear, standardize


def lowshot_indices(labels: np.ndarray, per_class: int | None = None,
                    fraction: float | None = None, seed: int = 0) -> np.ndarray:
  """`per_class` examples of each class, or round(fraction x its count) (at least 1), drawn
  without replacement from a fixed permutation; sorted indices into `labels`."""
  rng = np.random.default_rng([SUBSET_STREAM, seed, 1])
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


@register('lowshot', needs='pooled')
def run(train: Split, test: Split, num_classes: int, s: ProbeSettings,
        shared: dict) -> dict[str, float]:
  """Linear probes on a few labels per class: lowshot_<n>shot_top1, lowshot_<p>pct_top1."""
  lin = linear.chosen(train, test, num_classes, s, shared)
  shots = [(f'{n}shot', lowshot_indices(train.labels, per_class=n)) for n in s.lowshot_per_class]
  if s.lowshot_fraction > 0:
    shots.append((f'{s.lowshot_fraction * 100:g}pct',
                  lowshot_indices(train.labels, fraction=s.lowshot_fraction)))
  return {f'lowshot_{name}_top1': lowshot_probe(
      train.pooled, train.labels, test.pooled, test.labels, num_classes, idx, lr=lin['lr'],
      l2=lin['l2'], steps=s.probe_steps, batch=s.probe_batch) for name, idx in shots}
