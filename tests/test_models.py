import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ijepa_jax import models
from ijepa_jax.models import VARIANTS, Mlp, Predictor, VisionTransformer, gelu

F32 = jnp.float32


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(tree)))


def encoder_params(variant, patch, image):
  w, d, h, hidden = VARIANTS[variant]
  m = VisionTransformer(patch, w, d, h, hidden)
  return jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, image, image, 3)))['params']


# The official vit_* constructors: mlp_ratio 4, except vit_giant's 48/11.
OFFICIAL_MLP_RATIO = {'giant': 48 / 11}


def official_encoder_count(width, depth, patch, mlp_ratio=4.0):
  """Trainable parameters of the official VisionTransformer (pos_embed is frozen)."""
  hidden = int(width * mlp_ratio)
  block = (3 * width * width + 3 * width + width * width + width  # qkv, proj
           + 2 * width * hidden + hidden + width + 4 * width)  # fc1, fc2, two LayerNorms
  return depth * block + 3 * patch * patch * width + width + 2 * width


# timm's published totals (class token, 197/257-token pos embed and 1000-class head included),
# minus those parts, which I-JEPA does not have or does not train.
TIMM = {
    ('base', 16): 86_567_656 - (768 * 1000 + 1000) - 768 - 197 * 768,
    ('large', 16): 304_326_632 - (1024 * 1000 + 1000) - 1024 - 197 * 1024,
}


@pytest.mark.parametrize('variant,patch', [('base', 16), ('large', 16)])
def test_param_counts_match_timm(variant, patch):
  assert count(encoder_params(variant, patch, 224)) == TIMM[(variant, patch)]


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_param_counts_every_variant(variant):
  w, d, _, _ = VARIANTS[variant]
  ratio = OFFICIAL_MLP_RATIO.get(variant, 4.0)
  assert count(encoder_params(variant, 16, 224)) == official_encoder_count(w, d, 16, ratio)


def test_giant_mlp_is_6144():
  p = encoder_params('giant', 16, 224)
  assert nn.unbox(p)['blocks']['layers']['mlp']['fc1']['kernel'].shape == (40, 1408, 6144)


def test_headline_counts():
  assert count(encoder_params('large', 16, 224)) == 303_098_880   # "about 303M"
  assert count(encoder_params('huge', 14, 224)) == 630_434_560    # "about 630M"


def test_predictor_count_vith14():
  p = Predictor((16, 16), 1280, 384, 12, 16)
  ctx = jnp.zeros((1, 10, 1280))
  v = jax.eval_shape(p.init, jax.random.key(0), ctx, jnp.zeros((1, 10), jnp.int32),
                     jnp.ones((1,), jnp.int32), jnp.zeros((1, 4, 5), jnp.int32),
                     jnp.ones((1, 4), jnp.int32))['params']
  d, dp = 1280, 384
  block = 12 * dp * dp + 13 * dp
  assert count(v) == (d * dp + dp) + dp + 12 * block + 2 * dp + (dp * d + d)


def test_exact_gelu():
  m = Mlp(8, F32)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)), F32)
  p = nn.unbox(m.init(jax.random.key(0), x)['params'])
  p = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(1).normal(size=a.shape), F32), p)
  h = np.asarray(x) @ np.asarray(p['fc1']['kernel']) + np.asarray(p['fc1']['bias'])
  erf = np.vectorize(math.erf)
  exact = 0.5 * h * (1 + erf(h / math.sqrt(2)))
  tanh = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
  y_exact = exact @ np.asarray(p['fc2']['kernel']) + np.asarray(p['fc2']['bias'])
  y_tanh = tanh @ np.asarray(p['fc2']['kernel']) + np.asarray(p['fc2']['bias'])
  y = np.asarray(m.apply({'params': p}, x))
  np.testing.assert_allclose(y, y_exact, rtol=1e-5, atol=1e-5)
  assert np.abs(y - y_tanh).max() > 1e-3  # the tanh form would be caught


@pytest.fixture(scope='module')
def small():
  enc = VisionTransformer(4, 32, 2, 4, dtype=F32)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), F32)
  params = nn.unbox(enc.init(jax.random.key(0), x))['params']
  return enc, params, x


def test_padding_is_invisible(small):
  enc, params, x = small
  idx = jnp.array([[0, 3, 5, 9, 0, 0], [1, 2, 3, 4, 5, 6]])
  lens = jnp.array([4, 6])
  out = enc.apply({'params': params}, x, idx, lens)
  alone = enc.apply({'params': params}, x[:1], idx[:1, :4])
  np.testing.assert_allclose(out[0, :4], alone[0], atol=1e-5)
  full = enc.apply({'params': params}, x[1:], idx[1:], None)
  np.testing.assert_allclose(out[1], full[0], atol=1e-5)


def test_gather_after_positions(small):
  """A kept token differs from the same patch at another position (positions came first)."""
  enc, params, x = small
  same = jnp.broadcast_to(x[:1, :4, :4], (1, 4, 4, 3))
  tiled = jnp.tile(same, (1, 4, 4, 1))  # every patch identical
  a = enc.apply({'params': params}, tiled, jnp.array([[0]]))
  b = enc.apply({'params': params}, tiled, jnp.array([[5]]))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_predictor_blocks_are_independent(small):
  enc, params, x = small
  pred = Predictor((4, 4), 32, 16, 2, 4, dtype=F32)
  ctx_idx = jnp.array([[0, 1, 2, 3, 4, 0], [5, 6, 7, 8, 9, 10]])
  ctx_len = jnp.array([5, 6])
  z = enc.apply({'params': params}, x, ctx_idx, ctx_len)
  tgt = jnp.array([[[12, 13, 0], [14, 15, 11]], [[0, 1, 2], [3, 4, 0]]])
  tlen = jnp.array([[2, 3], [3, 2]])
  pp = nn.unbox(pred.init(jax.random.key(1), z, ctx_idx, ctx_len, tgt, tlen))['params']
  out = pred.apply({'params': pp}, z, ctx_idx, ctx_len, tgt, tlen)
  assert out.shape == (2, 2, 3, 32)
  tgt2 = tgt.at[:, 1].set(jnp.array([[7, 8, 9], [11, 12, 13]]))
  out2 = pred.apply({'params': pp}, z, ctx_idx, ctx_len, tgt2, tlen.at[:, 1].set(3))
  np.testing.assert_allclose(out[:, 0], out2[:, 0], atol=1e-5)  # block 0 untouched
  z2 = z.at[0, 5].set(100.0)  # context padding content is ignored
  out3 = pred.apply({'params': pp}, z2, ctx_idx, ctx_len, tgt, tlen)
  np.testing.assert_allclose(out[0, :, :2], out3[0, :, :2], atol=1e-5)


def test_predictor_padding_equals_trimmed(small):
  """A padded row gives the same predictions as the same row with no padding at all."""
  enc, params, x = small
  pred = Predictor((4, 4), 32, 16, 2, 4, dtype=F32)
  ctx_idx = jnp.array([[0, 1, 2, 3, 4, 0, 0]])
  tgt = jnp.array([[[12, 13, 0, 0], [9, 10, 14, 15]]])
  z = enc.apply({'params': params}, x[:1], ctx_idx, jnp.array([5]))
  pp = nn.unbox(pred.init(jax.random.key(2), z, ctx_idx, jnp.array([5]), tgt,
                          jnp.array([[2, 4]])))['params']
  padded = pred.apply({'params': pp}, z, ctx_idx, jnp.array([5]), tgt, jnp.array([[2, 4]]))
  for m, tl in ((0, 2), (1, 4)):
    trimmed = pred.apply({'params': pp}, z[:, :5], ctx_idx[:, :5], jnp.array([5]),
                         tgt[:, m:m + 1, :tl], jnp.array([[tl]]))
    np.testing.assert_allclose(padded[0, m, :tl], trimmed[0, 0], atol=1e-5)


def test_gelu_gradient_is_the_exact_derivative():
  """d/dx x Phi(x) = Phi(x) + x phi(x), by hand, at points where erf and erfc forms differ most."""
  x = np.linspace(-6, 6, 49)
  phi = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
  cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
  g = jax.vmap(jax.grad(gelu))(jnp.asarray(x, F32))
  np.testing.assert_allclose(np.asarray(g), cdf + x * phi, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gelu(jnp.asarray(x, F32))), x * cdf, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('remat', ['none', 'dots_saveable'])
def test_scan_layers_same_tree_outputs_and_gradients(remat):
  """Unrolled blocks (scan_layers=False) take the scan's parameter tree unchanged and give its
  outputs and gradients, encoder and predictor."""
  kw = dict(dtype=F32, remat_policy=remat)
  enc_s, enc_u = (VisionTransformer(4, 32, 3, 4, scan_layers=s, **kw) for s in (True, False))
  pred_s, pred_u = (Predictor((4, 4), 32, 16, 2, 2, scan_layers=s, **kw) for s in (True, False))
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), F32)
  ctx_idx, ctx_len = jnp.array([[0, 1, 2, 3, 4, 0], [5, 6, 7, 8, 9, 10]]), jnp.array([5, 6])
  tgt = jnp.array([[[12, 13, 0], [14, 15, 11]], [[0, 1, 2], [3, 4, 0]]])
  tlen = jnp.array([[2, 3], [3, 2]])
  pe = nn.unbox(enc_s.init(jax.random.key(0), x, ctx_idx, ctx_len))['params']
  pe_u = nn.unbox(enc_u.init(jax.random.key(0), x, ctx_idx, ctx_len))['params']
  assert jax.tree.structure(pe) == jax.tree.structure(pe_u)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(pe), jax.tree.leaves(pe_u)))
  assert pe['blocks']['layers']['attn']['qkv']['kernel'].shape == (3, 32, 96)
  z = enc_s.apply({'params': pe}, x, ctx_idx, ctx_len)
  pp = nn.unbox(pred_s.init(jax.random.key(1), z, ctx_idx, ctx_len, tgt, tlen))['params']

  def loss(enc, pred, params):
    z = enc.apply({'params': params['e']}, x, ctx_idx, ctx_len)
    out = pred.apply({'params': params['p']}, z, ctx_idx, ctx_len, tgt, tlen)
    valid = jnp.arange(3)[None, None, :, None] < tlen[..., None, None]
    return jnp.sum(jnp.where(valid, out, 0.0) ** 2), out

  params = {'e': pe, 'p': pp}
  (l_s, out_s), g_s = jax.value_and_grad(lambda p: loss(enc_s, pred_s, p), has_aux=True)(params)
  (l_u, out_u), g_u = jax.value_and_grad(lambda p: loss(enc_u, pred_u, p), has_aux=True)(params)
  np.testing.assert_allclose(out_u, out_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(l_u, l_s, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_u), jax.tree.leaves(g_s)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # the full-image (target-encoder) path too
  np.testing.assert_allclose(enc_u.apply({'params': pe}, x), enc_s.apply({'params': pe}, x),
                             rtol=1e-5, atol=1e-6)


def test_intermediate_blocks_under_the_scan_and_unrolled():
  """The encoder's block outputs are those of the same weights cut to fewer blocks (each
  through the final norm, or raw), the same under the scan and unrolled; `encode`'s last4
  pooling is equal under both settings."""
  from ijepa_jax.features import encode
  depth = 5
  enc = {s: VisionTransformer(4, 32, depth, 4, dtype=F32, scan_layers=s) for s in (True, False)}
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 16, 3)), F32)
  params = nn.unbox(enc[True].init(jax.random.key(2), x))['params']
  want = []  # an independent reference: block k's output is the output of the first k blocks
  for k in range(1, depth + 1):
    layers = jax.tree.map(lambda a, k=k: a[:k], params['blocks']['layers'])
    cut = dict(params, blocks={'layers': layers})
    want.append(VisionTransformer(4, 32, k, 4, dtype=F32).apply({'params': cut}, x))
  for scan, e in enc.items():
    out, blocks = e.apply({'params': params}, x, blocks=(0, 2, -1))
    np.testing.assert_allclose(out, want[-1], rtol=1e-5, atol=1e-6)
    for got, k in zip(blocks, (0, 2, 4)):
      np.testing.assert_allclose(got, want[k], rtol=1e-5, atol=1e-5, err_msg=f'scan={scan}')
    _, (raw,) = e.apply({'params': params}, x, blocks=(-1,), normed=False)
    assert not np.allclose(raw, want[-1], atol=1e-3)  # not through the final norm
    np.testing.assert_allclose(nn.LayerNorm(epsilon=1e-6).apply({'params': params['norm']}, raw),
                               want[-1], rtol=1e-5, atol=1e-5)
  last4 = {s: encode(params, x, output='last4', num_heads=4, scan_layers=s) for s in (True, False)}
  np.testing.assert_allclose(last4[False], last4[True], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(last4[True], np.mean([w.mean(1) for w in want[-4:]], axis=0),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='the encoder has 5 blocks'):
    enc[False].apply({'params': params}, x, blocks=(5,))


def test_odd_length_padding_for_cudnn(monkeypatch):
  """cuDNN gets an odd sequence padded by one masked key; the result is the unpadded one.

  cuDNN is not on a CPU, so XLA's kernel stands in for it: what is tested is our padding."""
  real = jax.nn.dot_product_attention
  calls = []

  def stand_in(q, k, v, *, implementation=None, **kw):
    calls.append((implementation, q.shape[1]))
    return real(q, k, v, implementation='xla', **kw)

  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 49, 4, 16)), F32) for _ in range(3))
  real_rows = jnp.arange(49)[None, :, None, None] < jnp.array([30, 49])[:, None, None, None]
  for kv_len in (None, jnp.array([30, 49])):
    def f(impl, kv_len=kv_len):
      return jax.value_and_grad(lambda q, k, v: jnp.sum(jnp.where(
          real_rows if kv_len is not None else True,
          models.dot_product_attention(q, k, v, 0.25, impl, kv_len), 0.0) ** 2),
          argnums=(0, 1, 2))(q, k, v)
    monkeypatch.setattr(jax.nn, 'dot_product_attention', stand_in)
    (l_c, g_c), (l_x, g_x) = f('cudnn'), f('xla')
    monkeypatch.undo()
    assert calls[-2:] == [('cudnn', 50), ('xla', 49)]
    np.testing.assert_allclose(l_c, l_x, rtol=1e-6)
    for a, b in zip(g_c, g_x):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
