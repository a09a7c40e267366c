"""The attentive probe: V-JEPA's evaluation of frozen features (facebookresearch/jepa:
`AttentivePooler` + `AttentiveClassifier`, trained as in `evals/image_classification_frozen`).

The head, on the encoder's output tokens x [B, T, D]:
- learnable query token(s) [Q, D] (Q = 1 in V-JEPA's classifier);
- one cross-attention block: y = attention(queries -> LayerNorm(x)) with `num_heads` heads
  and biases on the q / kv projections, q = queries + y (V-JEPA's cross-attention applies no
  output projection: it defines one and leaves it out of its forward pass; so does this),
  then q = q + MLP(LayerNorm(q)) (D -> 4D -> D, exact GELU);
- a linear classifier on the query (the mean of the queries where Q > 1).
Initialisation: truncated normal, std 0.02 (the MLP's second layer divided by sqrt 2),
zero biases, LayerNorms at identity; the classifier as PyTorch's `nn.Linear` default.

Training: AdamW (betas 0.9 / 0.999, eps 1e-8) with the learning rate cosine-decayed from
its value to 0 and weight decay from `attentive_wd` to 1e-6 over the run, no warmup,
decay on matrices and the queries only, cross-entropy, batches of `attentive_batch`
shuffled each epoch (V-JEPA: lr 1e-3, wd 1e-3, 20 epochs, batch 16 x 64 GPUs). V-JEPA trains
on augmented images through the frozen encoder; this trains on the features of the
evaluation transform's images, computed once (kept in memory up to
`attentive_cache_gib` per split, else recomputed batch by batch). Each learning rate of
`attentive_lrs` trains its own head at once (vmapped) and the one with the best top-1 on the
held-out part of the training features (`holdout`) is reported on the test features.

Exact shortcut: with one query per head the keys need not be computed for every token. The
score of token t, q·(W_k x_t + b_k), equals (W_kᵀ q)·x_t plus a constant that the softmax
removes, and the output Σ_t a_t (W_v x_t + b_v) equals W_v (Σ_t a_t x_t) + b_v, since the
weights a_t sum to one. So the head costs O(T·D·H) per query instead of O(T·D²): the same
function (to float rounding; a test checks it against the literal form), about D/H times
fewer operations on the tokens.
"""

import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ijepa_jax.probes.base import (SUBSET_STREAM, ProbeSettings, Split, Tokens, holdout_split,
                                   register)

INIT_STD = 0.02
LN_EPS = 1e-5  # PyTorch's LayerNorm default, as V-JEPA's
FINAL_WD = 1e-6
ADAM = dict(b1=0.9, b2=0.999, eps=1e-8)


def _torch_linear_init(fan_in: int):
  """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weights and bias."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class AttentiveClassifier(nn.Module):
  """Attentive pooling (queries cross-attending to the tokens) and a linear classifier:
  logits [B, num_classes] of tokens [B, T, D]."""
  num_classes: int
  num_heads: int
  num_queries: int = 1
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, _, d = x.shape
    h = self.num_heads
    if d % h:
      raise ValueError(f'{h} heads do not divide the token width {d}')
    e = d // h
    init = nn.initializers.truncated_normal(INIT_STD)
    zeros = nn.initializers.zeros
    queries = self.param('query', init, (self.num_queries, d))
    xn = nn.LayerNorm(epsilon=LN_EPS, name='norm1')(x)
    q = (queries @ self.param('q_kernel', init, (d, d)) + self.param('q_bias', zeros, (d,)))
    wkv = self.param('kv_kernel', init, (d, 2 * d))
    bv = self.param('kv_bias', zeros, (2 * d,))[d:].reshape(h, e)  # the keys' half: a constant
    wk, wv = wkv[:, :d].reshape(d, h, e), wkv[:, d:].reshape(d, h, e)
    u = jnp.einsum('dhe,qhe->qhd', wk, q.reshape(-1, h, e)) / math.sqrt(e)
    att = jax.nn.softmax(jnp.einsum('btd,qhd->bqht', xn, u), axis=-1)
    y = jnp.einsum('bqhd,dhe->bqhe', jnp.einsum('bqht,btd->bqhd', att, xn), wv) + bv
    q = queries[None] + y.reshape(b, -1, d)
    m = nn.LayerNorm(epsilon=LN_EPS, name='norm2')(q)
    m = nn.gelu(nn.Dense(int(d * self.mlp_ratio), kernel_init=init, name='fc1')(m),
                approximate=False)
    q = q + nn.Dense(d, kernel_init=nn.initializers.truncated_normal(INIT_STD / math.sqrt(2)),
                     name='fc2')(m)
    return nn.Dense(self.num_classes, kernel_init=_torch_linear_init(d),
                    bias_init=_torch_linear_init(d), name='head')(q.mean(axis=1))


def cosine(step: int, total: int, start: float, end: float) -> float:
  """end + (start - end) (1 + cos(pi step / total)) / 2: V-JEPA's cosine schedules (no warmup)."""
  return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _step_fn(model: AttentiveClassifier):
  adam = optax.scale_by_adam(**ADAM)

  def loss_fn(p, x, y, w):
    ce = optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x), y)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

  def one(p, s, x, y, w, lr, wd):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y, w)
    u, s = adam.update(g, s)
    # AdamW, decoupled: p <- p - lr (adam + wd p), decay on matrices (and the queries) only
    u = jax.tree.map(lambda u, p: -lr * (u + (wd * p if p.ndim > 1 else 0.0)), u, p)
    return optax.apply_updates(p, u), s, loss

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None, 0, None))), adam


def _pad(x: np.ndarray, n: int) -> np.ndarray:
  return x if len(x) == n else np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])


def fit_attentive(tokens: Tokens, labels: np.ndarray, fit: np.ndarray, num_classes: int, *,
                  lrs, wd: float, epochs: int, batch: int, num_heads: int, num_queries: int = 1,
                  mlp_ratio: float = 4.0, seed: int = 0):
  """Heads [G] (one per learning rate of `lrs`) trained on tokens[fit] (sorted positions):
  (model, params with a leading grid axis)."""
  model = AttentiveClassifier(num_classes, num_heads, num_queries, mlp_ratio)
  _, t, d = tokens.shape
  batch = min(batch, len(fit))
  one = model.init(jax.random.key(seed), jnp.zeros((1, t, d), jnp.float32))['params']
  g = len(lrs)
  params = jax.tree.map(lambda a: jnp.broadcast_to(a, (g,) + a.shape), one)  # the same start
  step, adam = _step_fn(model)
  state = jax.vmap(adam.init)(params)
  total = epochs * math.ceil(len(fit) / batch)
  rng = np.random.default_rng([SUBSET_STREAM, seed, 2])
  lrs, k = np.asarray(lrs, np.float32), 0
  for _ in range(epochs):
    for idx, x in tokens.batches(fit, batch, rng):
      w = _pad(np.ones(len(idx), np.float32), batch)
      params, state, _ = step(params, state, _pad(np.asarray(x, np.float32), batch),
                              _pad(labels[idx].astype(np.int32), batch), w,
                              jnp.asarray(lrs * cosine(k, total, 1.0, 0.0)),
                              cosine(k, total, wd, min(wd, FINAL_WD)))
      k += 1
  return model, params


def predict(model: AttentiveClassifier, params, tokens: Tokens, subset: np.ndarray,
            batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(positions [n], predicted labels [G, n]) of every head on tokens[subset], in order."""
  fn = jax.jit(jax.vmap(lambda p, x: jnp.argmax(model.apply({'params': p}, x), -1),
                        in_axes=(0, None)))
  pos, pred = [], []
  for idx, x in tokens.batches(np.sort(subset), batch):
    pos.append(idx)
    pred.append(np.asarray(fn(params, _pad(np.asarray(x, np.float32), batch)))[:, :len(idx)])
  return np.concatenate(pos), np.concatenate(pred, axis=1)


def heads_for(width: int, heads: int) -> int:
  """`heads` where it divides the token width, else their greatest common divisor (raw-pixel
  tokens of 16 values take 4 of 16 heads)."""
  return heads if width % heads == 0 else math.gcd(width, heads)


@register('attentive', needs='tokens')
def run(train: Split, test: Split, num_classes: int, s: ProbeSettings,
        shared: dict) -> dict[str, float]:
  """V-JEPA's attentive probe on the tokens (lr chosen on held-out data): attentive_top1, ..."""
  del shared
  t0 = time.time()
  n, _, d = train.tokens.shape
  heads = heads_for(d, s.attentive_heads or 1)
  val, fit = (np.sort(a) for a in holdout_split(n, s.holdout))
  model, params = fit_attentive(
      train.tokens, train.labels, fit, num_classes, lrs=s.attentive_lrs, wd=s.attentive_wd,
      epochs=s.attentive_epochs, batch=s.attentive_batch, num_heads=heads,
      num_queries=s.attentive_queries, mlp_ratio=s.attentive_mlp_ratio)
  fit_seconds = time.time() - t0
  batch = min(s.attentive_batch, n)
  pos, pred = predict(model, params, train.tokens, val, batch)
  val_acc = (pred == train.labels[pos][None]).mean(1)
  best = int(np.argmax(val_acc))
  pos, pred = predict(model, jax.tree.map(lambda a: a[best:best + 1], params), test.tokens,
                      np.arange(test.tokens.shape[0]), min(batch, test.tokens.shape[0]))
  return {'attentive_top1': float((pred[0] == test.labels[pos]).mean()),
          'attentive_val_top1': float(val_acc[best]), 'attentive_lr': float(s.attentive_lrs[best]),
          'attentive_heads': float(heads), 'attentive_fit_seconds': fit_seconds}
