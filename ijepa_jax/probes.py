"""Probes on frozen features (numpy arrays in, accuracies out; pure and jitted):
linear probe, k-NN and low-shot probes.

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

Where the features come from (images, encoders, splits) is `evaluation.py`'s job.
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

PROBES = ('linear', 'knn', 'lowshot')
SUBSET_STREAM = 0x6576616C  # the evaluation subsets do not depend on the run's seed


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

  def fit(lr, l2):
    # SGD + Nesterov momentum (steps scale with the gradient), cosine decay to 0
    opt = optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9, nesterov=True)

    def loss(p, xb, yb):
      ce = optax.softmax_cross_entropy_with_integer_labels(xb @ p['w'] + p['b'], yb).mean()
      return ce + l2 * jnp.sum(p['w'] ** 2)

    def body(carry, t):
      p, s = carry
      idx = jax.random.randint(jax.random.fold_in(key, t), (batch,), 0, n)
      g = jax.grad(loss)(p, x[idx], y[idx])
      u, s = opt.update(g, s)
      return (optax.apply_updates(p, u), s), None

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
  perm = np.random.default_rng([SUBSET_STREAM, seed]).permutation(len(train_x))
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


def run_probes(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
               num_classes: int, ev: ProbeSettings,
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
