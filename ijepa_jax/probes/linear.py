"""The linear probe: a softmax classifier on standardised pooled features, trained with SGD +
Nesterov momentum 0.9 (cosine-decayed learning rate, minibatches drawn with replacement;
Adam's per-coordinate steps moved noise dimensions as much as informative ones on small
sets) for every (learning rate, L2) pair of a small grid at once (vmapped); the pair with
the best top-1 on a held-out part of the training features is chosen and its top-1 on the
test features reported. The chosen classifier is the one trained without the held-out part
(no refit). The paper's protocol for I-JEPA's frozen features, with mean pooling.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ijepa_jax.probes.base import ProbeSettings, Split, holdout_split, register


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """Features minus the training mean, over the training std (per dimension)."""
  mean, std = train.mean(0), train.std(0) + 1e-6
  return [(x - mean) / std for x in (train, *others)]


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
  val, fit = holdout_split(len(train_x), holdout, seed)
  xf, xv, xt = standardize(train_x[fit], train_x[val], test_x)
  grid = [(lr, l2) for lr in lrs for l2 in l2s]
  w, b = fit_linear(xf, train_y[fit], num_classes, [g[0] for g in grid], [g[1] for g in grid],
                    steps, batch, seed)
  val_acc = _top1(w, b, xv, train_y[val])
  best = int(np.argmax(val_acc))
  test_acc = _top1(w[best:best + 1], b[best:best + 1], xt, test_y)[0]
  return {'top1': float(test_acc), 'val_top1': float(val_acc[best]), 'lr': grid[best][0],
          'l2': grid[best][1]}


def chosen(train: Split, test: Split, num_classes: int, s: ProbeSettings,
           shared: dict) -> dict[str, float]:
  """The linear probe's result on these features, computed once per evaluation (`shared`):
  top1, val_top1 and the chosen lr and l2 (the low-shot probes reuse them)."""
  if 'linear' not in shared:
    shared['linear'] = linear_probe(train.pooled, train.labels, test.pooled, test.labels,
                                    num_classes, lrs=s.probe_lrs, l2s=s.probe_l2s,
                                    holdout=s.holdout, steps=s.probe_steps, batch=s.probe_batch)
  return shared['linear']


@register('linear', needs='pooled')
def run(train: Split, test: Split, num_classes: int, s: ProbeSettings,
        shared: dict) -> dict[str, float]:
  """Linear probe on the pooled features (grid chosen on held-out data): linear_top1, ..."""
  return {f'linear_{k}': v for k, v in chosen(train, test, num_classes, s, shared).items()}
