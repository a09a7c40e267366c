import numpy as np
import pytest

from ijepa_jax.objective import jepa_loss, normalize_targets


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
