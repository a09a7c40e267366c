"""The k-NN probe: cosine similarity, the k nearest training features, votes weighted by
exp(similarity / temperature) (k = 20, T = 0.07, as DINO's)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ijepa_jax.probes.base import ProbeSettings, Split, register


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



@register('knn', needs='pooled')
def run(train: Split, test: Split, num_classes: int, s: ProbeSettings,
        shared: dict) -> dict[str, float]:
  """Weighted k-NN on the pooled features: knn_top1."""
  del shared
  pred = knn_predict(train.pooled, train.labels, test.pooled, num_classes, s.knn_k,
                     s.knn_temperature)
  return {'knn_top1': float(np.mean(pred == test.labels))}
