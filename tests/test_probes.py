"""The probes' registry and the attentive probe: its head against a literal reading of
V-JEPA's modules, its training on planted tokens, streamed tokens equal to kept ones, and the
errors for a probe that does not exist or cannot read the features."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from ijepa_jax import probes
from ijepa_jax.evaluation import pixel_tokens
from ijepa_jax.pos_embed import sincos_2d
from ijepa_jax.probes import attentive
from ijepa_jax.probes.base import _REGISTRY
from ijepa_jax.recipes import base_config
from ijepa_jax.spec import eval_spec


def settings(**kw) -> probes.ProbeSettings:
  return dataclasses.replace(eval_spec(base_config()).probe, **kw)


def _ln(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def reference_logits(p, x, heads):
  """V-JEPA's AttentiveClassifier forward, read literally (numpy, float64): keys and values
  projected for every token, softmax(q kᵀ / sqrt(d_head)) v per head, no output projection,
  q = query + that, q = q + fc2(gelu(fc1(LN2(q)))), the linear head on the (one) query."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  b, t, d = x.shape
  e = d // heads
  xn = _ln(x, p['norm1']['scale'], p['norm1']['bias'])
  kv = xn @ p['kv_kernel'] + p['kv_bias']                      # [B, T, 2D]
  k, v = kv[..., :d], kv[..., d:]
  q = p['query'] @ p['q_kernel'] + p['q_bias']                 # [Q, D]
  out = np.zeros((b, q.shape[0], d))
  for h in range(heads):
    sl = slice(h * e, (h + 1) * e)
    s = np.einsum('qe,bte->bqt', q[:, sl], k[..., sl]) / math.sqrt(e)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    out[..., sl] = np.einsum('bqt,bte->bqe', a, v[..., sl])
  qq = p['query'][None] + out
  m = _ln(qq, p['norm2']['scale'], p['norm2']['bias']) @ p['fc1']['kernel'] + p['fc1']['bias']
  m = 0.5 * m * (1 + np.vectorize(math.erf)(m / math.sqrt(2)))  # exact GELU
  qq = qq + m @ p['fc2']['kernel'] + p['fc2']['bias']
  return qq.mean(1) @ p['head']['kernel'] + p['head']['bias']


@pytest.mark.parametrize('queries', [1, 3])
def test_attentive_head_equals_the_literal_form(queries):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 13, 32)).astype(np.float32) * 2 + 0.5
  model = attentive.AttentiveClassifier(7, num_heads=4, num_queries=queries)
  p = model.init(jax.random.key(1), x)['params']
  # every bias and norm away from its initial value: the shortcut must not depend on them
  p = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), p)
  got = np.asarray(model.apply({'params': p}, x), np.float64)
  np.testing.assert_allclose(got, reference_logits(p, x, 4), rtol=2e-5, atol=2e-5)


def test_attentive_initialisation_is_vjepas():
  model = attentive.AttentiveClassifier(10, num_heads=4)
  p = model.init(jax.random.key(0), np.zeros((1, 49, 256), np.float32))['params']
  for name in ('q_kernel', 'kv_kernel', 'query'):  # truncated normal, std 0.02
    a = np.asarray(p[name])
    assert abs(a.std() - 0.02 * 0.88) < 0.003 and np.abs(a).max() <= 0.04 + 1e-6, name
  assert abs(np.asarray(p['fc2']['kernel']).std() - 0.02 * 0.88 / math.sqrt(2)) < 0.002
  assert not np.asarray(p['kv_bias']).any() and not np.asarray(p['fc1']['bias']).any()
  assert (np.asarray(p['norm1']['scale']) == 1).all()
  w = np.asarray(p['head']['kernel'])  # PyTorch's nn.Linear default, U(±1/sqrt(256))
  assert np.abs(w).max() <= 1 / 16 and np.abs(w).max() > 0.9 / 16


def test_cosine_schedules():
  assert attentive.cosine(0, 100, 1e-3, 0.0) == 1e-3
  assert attentive.cosine(50, 100, 1e-3, 0.0) == pytest.approx(5e-4)
  assert attentive.cosine(100, 100, 1e-3, 1e-6) == pytest.approx(1e-6)


def planted_tokens(n, seed, signal, t=16, d=16, classes=4):
  """The class is written into one token at a random place in each image: a mean over
  tokens dilutes it 16-fold, a head that learns where to look reads it."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  x = rng.normal(size=(n, t, d)).astype(np.float32)
  where = rng.integers(0, t, n)
  x[np.arange(n), where, d - 1] += 8.0 * (signal > 0)  # a marker: here is the label
  x[np.arange(n), where, :classes] += signal * np.eye(classes, dtype=np.float32)[y]
  return x, y


def test_attentive_probe_reads_a_planted_token_and_nothing_else():
  s = settings(attentive_epochs=20, attentive_lrs=(3e-3, 1e-2), attentive_batch=128,
               attentive_heads=2)
  xtr, ytr = planted_tokens(2000, 0, 5.0)
  xte, yte = planted_tokens(500, 1, 5.0)
  train = probes.Split(ytr, xtr.mean(1), probes.TokenArray(xtr))
  test = probes.Split(yte, xte.mean(1), probes.TokenArray(xte))
  res = probes.run_probes(train, test, 4, s, ('attentive', 'linear'))
  assert res['attentive_top1'] > 0.95, res
  assert res['linear_top1'] < res['attentive_top1'] - 0.1, res  # the mean loses the place
  assert res["attentive_lr"] in (3e-3, 1e-2) and res['attentive_heads'] == 2
  # no label in the tokens: chance (0.25 +- 4 standard errors of 500)
  xr, _ = planted_tokens(2000, 2, 0.0)
  xrt, _ = planted_tokens(500, 3, 0.0)
  res = probes.run_probes(probes.Split(ytr, None, probes.TokenArray(xr)),
                          probes.Split(yte, None, probes.TokenArray(xrt)), 4, s, ('attentive',))
  assert abs(res['attentive_top1'] - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 500)


def test_streamed_tokens_train_the_same_head_as_kept_ones():
  x, y = planted_tokens(600, 4, 3.0)
  images = np.arange(600)[:, None]  # stand-in images: the token function looks them up
  streamed = probes.StreamedTokens(lambda: iter([images]), lambda im: x[im[:, 0]], x.shape)
  kept = probes.TokenArray(x)
  subset = np.sort(np.random.default_rng(0).permutation(600)[:500])
  for rng_seed in (None, 3):
    rng = lambda seed=rng_seed: None if seed is None else np.random.default_rng(seed)
    a = list(kept.batches(subset, 64, rng()))
    b = list(streamed.batches(subset, 64, rng()))
    assert len(a) == len(b) == 8
    for (ia, xa), (ib, xb) in zip(a, b):
      np.testing.assert_array_equal(ia, ib)
      np.testing.assert_array_equal(xa, xb)
  s = settings(attentive_epochs=2, attentive_batch=64, attentive_heads=2)
  res = [probes.run_probes(probes.Split(y, None, tok), probes.Split(y[:100], None,
                                                                    probes.TokenArray(x[:100])),
                           4, s, ('attentive',)) for tok in (kept, streamed)]
  for r in res:  # the times differ; everything else must not
    r.pop('attentive_fit_seconds'), r.pop('attentive_seconds')
  assert res[0] == res[1]
  # several chunks: every position of the subset once per epoch, each batch from one chunk
  chunks = [images[:250], images[250:520], images[520:]]
  streamed = probes.StreamedTokens(lambda: iter(chunks), lambda im: x[im[:, 0]], x.shape)
  got = list(streamed.batches(subset, 64, np.random.default_rng(0)))
  np.testing.assert_array_equal(np.sort(np.concatenate([i for i, _ in got])), subset)
  for i, tok in got:
    np.testing.assert_array_equal(tok, x[i])
    assert len({int(np.searchsorted([250, 520], j, side='right')) for j in i}) == 1


def test_pixel_tokens_hand_computed():
  img = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
  tok = pixel_tokens(img, (0.0,), (1 / 255,), 4)  # normalised: the values themselves
  assert tok.shape == (2, 4, 16)
  pos = sincos_2d(16, (2, 2))
  # the second square of the first row: rows 0-3, columns 4-7, raster order inside it
  np.testing.assert_allclose(tok[1, 1] - pos[1], img[1, :4, 4:, 0].reshape(-1), atol=1e-4)
  np.testing.assert_allclose(tok[0, 2] - pos[2], img[0, 4:, :4, 0].reshape(-1), atol=1e-4)
  # 9 values: 8 carry the position
  odd = pixel_tokens(np.zeros((1, 6, 6, 1), np.uint8), (0.0,), (1.0,), 3)
  np.testing.assert_allclose(odd[0, :, :8], sincos_2d(8, (2, 2)))
  assert not odd[0, :, 8].any()


def test_a_probe_that_does_not_exist_or_cannot_read_the_features():
  s = settings()
  split = probes.Split(np.zeros(4, np.int32), np.zeros((4, 3), np.float32))
  with pytest.raises(probes.ProbeInputError, match=r"unknown probe 'attentve': choose from "
                     r'linear, knn, lowshot, attentive'):
    probes.run_probes(split, split, 2, s, ('linear', 'attentve'))
  with pytest.raises(probes.ProbeInputError, match="probe 'attentive' needs tokens features; "
                     'these are pooled only') as e:
    probes.run_probes(split, split, 2, s, ('knn', 'attentive'))
  assert '\n' not in str(e.value)


def test_a_new_probe_is_one_registration():
  """A probe registered from outside the package runs by name, its metrics and time beside
  the others', with no other change."""
  @probes.register('nearest_mean', needs='pooled')
  def run(train, test, num_classes, s, shared):
    """Nearest class mean."""
    means = np.stack([train.pooled[train.labels == c].mean(0) for c in range(num_classes)])
    pred = np.argmin(((test.pooled[:, None] - means[None]) ** 2).sum(-1), 1)
    return {'nearest_mean_top1': float((pred == test.labels).mean())}
  try:
    assert probes.names()[-1] == 'nearest_mean'
    x, y = planted_tokens(400, 5, 6.0)
    feats = x.max(1)  # the planted value survives a max
    split = probes.Split(y, feats)
    res = probes.run_probes(split, split, 4, settings(), ('nearest_mean', 'knn'))
    assert res['nearest_mean_top1'] > 0.9 and set(res) == {
        'nearest_mean_top1', 'nearest_mean_seconds', 'knn_top1', 'knn_seconds'}
    with pytest.raises(ValueError, match='registered already'):
      probes.register('nearest_mean', needs='pooled')(lambda *a: {})
  finally:
    del _REGISTRY['nearest_mean']
