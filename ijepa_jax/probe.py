"""Linear probe on frozen, average-pooled encoder features."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ijepa_jax.models import VisionTransformer


def extract_features(encoder: VisionTransformer, params: Any, images: np.ndarray,
                     batch_size: int = 500) -> np.ndarray:
  """Average-pooled encoder output [N, D] float32 for images [N, H, W, C]."""
  pooled = _pooled_fn(encoder)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:  # pad the tail so the function compiles once
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(pooled(params, chunk))[:n])
  return np.concatenate(out)


@functools.cache
def _pooled_fn(encoder: VisionTransformer):
  """One jitted feature function per encoder; weights are arguments, never baked-in constants."""
  return jax.jit(lambda params, x: encoder.apply({'params': params}, x).mean(axis=1))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, num_classes: int, *, steps: int = 500,
                 learning_rate: float = 0.05, l2: float = 1e-4) -> float:
  """Top-1 accuracy on (test_x, test_y) of a softmax classifier trained on (train_x, train_y).

  Features are standardised with the training statistics; the classifier is
  trained full-batch with Adam and an L2 penalty on its weights.
  """
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  xtr = jnp.asarray((train_x - mean) / std)
  xte = jnp.asarray((test_x - mean) / std)
  ytr = jnp.asarray(train_y)
  params = {'w': jnp.zeros((xtr.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adam(learning_rate)

  def loss(p, x, y):
    logits = x @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + l2 * jnp.sum(p['w'] ** 2)

  @jax.jit
  def fit(p, x, y):
    def body(carry, _):
      p, s = carry
      g = jax.grad(loss)(p, x, y)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
    return p

  params = fit(params, xtr, ytr)
  pred = np.asarray(jnp.argmax(xte @ params['w'] + params['b'], axis=1))
  return float(np.mean(pred == np.asarray(test_y)))
