import math

import numpy as np
import pytest

from ijepa_jax.pos_embed import sincos_2d


def direct(dim, h, w):
  """DESIGN.md's formula, evaluated one entry at a time."""
  table = np.zeros((h * w, dim))
  q = dim // 4
  for r in range(h):
    for c in range(w):
      for k in range(q):
        omega = 1.0 / 10000 ** (k / q)
        table[r * w + c, k] = math.sin(c * omega)
        table[r * w + c, q + k] = math.cos(c * omega)
        table[r * w + c, 2 * q + k] = math.sin(r * omega)
        table[r * w + c, 3 * q + k] = math.cos(r * omega)
  return table


@pytest.mark.parametrize('dim,h,w', [(16, 4, 4), (64, 7, 7), (32, 3, 5)])
def test_matches_formula(dim, h, w):
  np.testing.assert_allclose(sincos_2d(dim, (h, w)), direct(dim, h, w), atol=1e-6)


def test_official_reference_port():
  from tests.reference.official_vit import sincos_pos_embed_2d
  np.testing.assert_allclose(sincos_2d(384, (14, 14)), sincos_pos_embed_2d(384, 14), atol=1e-6)


def test_rejects_bad_width():
  with pytest.raises(ValueError, match='divisible by 4'):
    sincos_2d(18, (4, 4))
