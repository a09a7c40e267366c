import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ijepa_jax.objective import (AntiCollapse, context_embeddings, covariance_loss, epps_pulley,
                                 jepa_loss, normalize_targets, sigreg_directions, sigreg_loss,
                                 variance_loss)


def test_smooth_l1_hand_case():
  # differences: 0.5 -> 0.125 ; -2 -> 1.5 ; 1 -> 0.5 ; 0 -> 0   (beta = 1)
  pred = np.array([0.5, -2.0, 1.0, 0.0], np.float32).reshape(1, 1, 2, 2)
  tgt = np.zeros_like(pred)
  loss = jepa_loss(pred, tgt, np.array([[2]]), 'smooth_l1')
  assert float(loss) == pytest.approx((0.125 + 1.5 + 0.5 + 0.0) / 4)
  assert float(jepa_loss(pred, tgt, np.array([[2]]), 'l2')) == pytest.approx((0.25 + 4 + 1) / 4)


def test_padding_is_excluded():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
  tgt = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
  lens = np.array([[5, 3, 1], [2, 5, 4]])
  d = pred - tgt
  per = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)
  total = sum(per[b, m, :lens[b, m]].sum() for b in range(2) for m in range(3))
  expect = total / (lens.sum() * 4)
  assert float(jepa_loss(pred, tgt, lens)) == pytest.approx(expect, rel=1e-6)
  pred2 = pred.copy()
  pred2[0, 1, 3:] = 1e6  # garbage in padding changes nothing
  assert float(jepa_loss(pred2, tgt, lens)) == pytest.approx(expect, rel=1e-6)


def test_full_length_is_plain_mean():
  rng = np.random.default_rng(1)
  pred, tgt = rng.normal(size=(2, 4, 6, 8)), rng.normal(size=(2, 4, 6, 8))
  d = pred - tgt
  expect = np.mean(np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5))
  assert float(jepa_loss(pred, tgt, np.full((2, 4), 6))) == pytest.approx(expect, rel=1e-5)


def test_normalize_targets_is_affine_free_layer_norm():
  x = np.random.default_rng(2).normal(3.0, 2.0, size=(3, 5, 16))
  ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(normalize_targets(x), ref, rtol=1e-5, atol=1e-5)


def test_unknown_loss():
  with pytest.raises(ValueError, match='smooth_l1'):
    jepa_loss(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)), np.ones((1, 1)), 'huber')


# --- anti-collapse terms ------------------------------------------------------------------


def test_variance_and_covariance_equal_numpy():
  rng = np.random.default_rng(0)
  z = (rng.normal(size=(40, 6)) * [0.1, 0.5, 1.0, 2.0, 0.01, 1.2]).astype(np.float32)
  z[:, 1] += 0.7 * z[:, 2]  # a correlated pair
  w = np.ones(40, np.float32)
  std = np.sqrt(z.var(0, ddof=1) + 1e-4)
  assert float(variance_loss(z, w)) == pytest.approx(np.maximum(0, 1 - std).mean(), rel=1e-5)
  assert float(variance_loss(z, w, target_std=0.5)) == pytest.approx(
      np.maximum(0, 0.5 - std).mean(), rel=1e-5)
  c = np.cov(z, rowvar=False)
  off = (c ** 2).sum() - (np.diag(c) ** 2).sum()
  assert float(covariance_loss(z, w)) == pytest.approx(off / 6, rel=1e-4)
  # rows of weight 0 (padding) do not count, whatever they hold
  zp = np.concatenate([z, np.full((5, 6), 1e3, np.float32)])
  wp = np.concatenate([w, np.zeros(5, np.float32)])
  assert float(variance_loss(zp, wp)) == pytest.approx(float(variance_loss(z, w)), rel=1e-5)
  assert float(covariance_loss(zp, wp)) == pytest.approx(float(covariance_loss(z, w)), rel=1e-4)


def epps_pulley_closed_form(x):
  """N * integral over the real line of exp(-t^2/2) |phi_N(t) - exp(-t^2/2)|^2 dt, integrated
  by hand: sqrt(2 pi)/N^2 sum_jk exp(-(x_j - x_k)^2/2) - 2 sqrt(pi)/N sum_j exp(-x_j^2/4)
  + sqrt(2 pi / 3), times N."""
  x = np.asarray(x, np.float64)
  n = len(x)
  d = x[:, None] - x[None]
  return n * (np.sqrt(2 * np.pi) * np.exp(-d ** 2 / 2).sum() / n ** 2
              - 2 * np.sqrt(np.pi) * np.exp(-x ** 2 / 4).sum() / n + np.sqrt(2 * np.pi / 3))


@pytest.mark.parametrize('kind', ['gaussian', 'shifted', 'narrow'])
def test_epps_pulley_equals_its_closed_form(kind):
  rng = np.random.default_rng(1)
  x = {'gaussian': rng.normal(size=300), 'shifted': rng.normal(size=300) + 1.5,
       'narrow': 0.1 * rng.normal(size=300)}[kind].astype(np.float32)
  got = float(epps_pulley(x[:, None], np.ones(300, np.float32), t_max=8.0, points=161)[0])
  assert got == pytest.approx(epps_pulley_closed_form(x), rel=2e-3)
  # the default grid (17 points on [0, 3]) is a close quadrature of the same integral
  coarse = float(epps_pulley(x[:, None], np.ones(300, np.float32))[0])
  assert coarse == pytest.approx(epps_pulley_closed_form(x), rel=0.05)


def test_epps_pulley_equals_a_direct_complex_quadrature():
  """The same trapezoid rule written with complex numbers over the symmetric grid [-3, 3]."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(50, 3)).astype(np.float32)
  w = np.ones(50)
  w[45:] = 0  # padding rows
  t = np.linspace(-3, 3, 33)
  xs = x[:45].astype(np.float64)
  phi = np.exp(1j * t[None, None] * xs[:, :, None]).mean(0)  # [3, T]
  g = np.exp(-t ** 2 / 2)
  expect = 45 * np.trapezoid(g * np.abs(phi - g) ** 2, t, axis=-1)
  np.testing.assert_allclose(epps_pulley(x, w.astype(np.float32)), expect, rtol=1e-4)


def test_sigreg_small_on_gaussian_large_on_collapse():
  rng = np.random.default_rng(3)
  key = jax.random.key(0)
  w = np.ones(1024, np.float32)
  gauss = rng.normal(size=(1024, 32)).astype(np.float32)
  rank1 = np.outer(rng.normal(size=1024), np.ones(32) / np.sqrt(32)).astype(np.float32)
  shrunk = 0.1 * gauss
  g = float(sigreg_loss(gauss, w, key))
  # for a true N(0, 1), E N|phi_N(t) - phi(t)|^2 = 1 - exp(-t^2): the statistic's mean is
  # integral of exp(-t^2/2)(1 - exp(-t^2)) = sqrt(2 pi) - sqrt(2 pi / 3) = 1.06 (less the tails)
  assert 0.5 < g < 1.6
  assert float(sigreg_loss(rank1, w, key)) > 50 * g
  assert float(sigreg_loss(shrunk, w, key)) > 100 * g
  u = sigreg_directions(key, 32, 256)
  np.testing.assert_allclose(np.linalg.norm(u, axis=0), 1.0, rtol=1e-5)


def test_context_embeddings_pool_real_tokens_only():
  z = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
  lens = np.array([2, 4])
  pooled, w = context_embeddings(z, lens, 'pooled')
  np.testing.assert_allclose(pooled, [z[0, :2].mean(0), z[1].mean(0)])
  np.testing.assert_array_equal(w, [1, 1])
  rows, w = context_embeddings(z, lens, 'patch')
  assert rows.shape == (8, 3)
  np.testing.assert_array_equal(w, [1, 1, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize('embeddings', ['pooled', 'patch'])
def test_terms_are_global_batch_statistics(embeddings):
  """The same value on 1 and on 8 devices: the statistics run over the global batch."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  ac = AntiCollapse(var_weight=1.0, cov_weight=0.1, sigreg_weight=0.5, sigreg_directions=64,
                    embeddings=embeddings, seed=3)
  rng = np.random.default_rng(4)
  z = rng.normal(size=(16, 10, 8)).astype(np.float32) * np.linspace(0.1, 2, 8)
  lens = rng.integers(3, 11, size=16).astype(np.int32)
  one = ac.terms(jnp.asarray(z), jnp.asarray(lens), jnp.int32(7))
  # as the trainer's
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  zs = jax.device_put(z, NamedSharding(mesh, P('data')))
  ls = jax.device_put(lens, NamedSharding(mesh, P('data')))
  eight = jax.jit(lambda a, b: ac.terms(a, b, jnp.int32(7)))(zs, ls)
  assert set(one) == {'var_loss', 'cov_loss', 'sigreg'}
  for k in one:
    assert float(eight[k]) == pytest.approx(float(one[k]), rel=1e-5), k
  # SIGReg's directions depend on (seed, step): another step draws others
  other = ac.terms(jnp.asarray(z), jnp.asarray(lens), jnp.int32(8))['sigreg']
  assert float(other) != pytest.approx(float(one['sigreg']), rel=1e-6)
  assert float(ac.total(one)) == pytest.approx(
      float(one['var_loss'] + 0.1 * one['cov_loss'] + 0.5 * one['sigreg']), rel=1e-6)
