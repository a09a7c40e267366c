"""Representation health and the collapse alarm, against hand-computed cases and on the
real model: constant features (a collapsed encoder) raise the alarm, healthy ones do not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ijepa_jax.spec import mask_config
from ijepa_jax import sharding
from ijepa_jax.pixels import normalize
from ijepa_jax.health import (CollapseAlarm, effective_rank, feature_std, health_metrics,
                              masked_cosine)
from ijepa_jax.masks import MaskSampler
from ijepa_jax.spec import resolve
from ijepa_jax.state import StepOnMesh
from ijepa_jax.train_step import predictions_and_targets
from helpers import load

ALARM = CollapseAlarm(std_floor=1e-3, rank_floor=2.0)  # the defaults (recipes.py)


def test_effective_rank_hand_cases():
  # +-e_i for i < k: centred already, k equal singular values -> exactly k
  for k in (1, 3, 7):
    e = np.eye(16)[:k]
    x = np.concatenate([e, -e])
    assert float(effective_rank(jnp.asarray(x))) == pytest.approx(k, rel=1e-4)
  # a constant (every image the same features): 1
  assert float(effective_rank(jnp.ones((32, 8)) * 3.0)) == pytest.approx(1.0, abs=1e-3)
  # singular values (2, 1) on two axes: p = (2/3, 1/3), exp(entropy) = 1.8899
  x = np.array([[2, 0], [-2, 0], [0, 1], [0, -1]], np.float32)
  want = np.exp(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)))
  assert float(effective_rank(jnp.asarray(x))) == pytest.approx(want, rel=1e-4)


def test_feature_std_and_cosine():
  x = np.random.default_rng(0).normal(size=(64, 5)) * np.arange(1, 6)
  mean, low = feature_std(jnp.asarray(x))
  np.testing.assert_allclose([mean, low], [x.std(0).mean(), x.std(0).min()], rtol=1e-5)
  pred = np.zeros((1, 2, 3, 2), np.float32)
  tgt = np.zeros((1, 2, 3, 2), np.float32)
  pred[0, 0, 0], tgt[0, 0, 0] = (1, 0), (1, 0)     # cos 1
  pred[0, 0, 1], tgt[0, 0, 1] = (1, 0), (0, 1)     # cos 0
  pred[0, 1, 0], tgt[0, 1, 0] = (1, 1), (-1, -1)   # cos -1
  pred[0, 1, 1], tgt[0, 1, 1] = (5, 5), (5, 5)     # padding (tgt_len 1): not counted
  got = masked_cosine(jnp.asarray(pred), jnp.asarray(tgt), jnp.array([[2, 1]]))
  assert float(got) == pytest.approx(0.0, abs=1e-6)  # (1 + 0 - 1) / 3


def test_alarm_on_constant_features_not_on_healthy_ones():
  rng = np.random.default_rng(0)
  healthy = jnp.asarray(rng.normal(size=(128, 64)), jnp.float32)
  collapsed = jnp.broadcast_to(jnp.asarray(rng.normal(size=64), jnp.float32), (128, 64))
  def stats(f):
    m, lo = feature_std(f)
    return {'feature_std_mean': float(m), 'feature_std_min': float(lo),
            'effective_rank': float(effective_rank(f))}
  assert ALARM.check(stats(healthy)) is None
  msg = ALARM.check(stats(collapsed))
  assert 'collapsing' in msg and 'monitor.collapse_std_floor' in msg and 'effective rank 1' in msg
  # a dimensional collapse onto one direction: std stays up, the rank floor catches it
  line = jnp.asarray(rng.normal(size=(128, 1)) * rng.normal(size=(1, 64)), jnp.float32)
  msg = ALARM.check(stats(line))
  assert 'effective rank' in msg and 'std' not in msg.split('(')[1].split(')')[0]


def test_health_of_the_model_at_init_and_collapsed():
  config = load('demo')
  run = resolve(config, 1)
  model = run.model
  on_mesh = StepOnMesh.build(run, sharding.make_mesh(1, 1, jax.devices()[:1]))
  masks = MaskSampler(mask_config(config))(16, seed=0, step=1)._asdict()
  images = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1), minval=0, maxval=255)
  batch = {'images': normalize(images.astype(jnp.uint8), (0.286,), (0.353,)),
           **{k: jnp.asarray(v) for k, v in masks.items()}}
  with on_mesh.scope():
    state = on_mesh.init(0)
    fn = jax.jit(lambda p, t, b: health_metrics(model, p, t, b))
    healthy = {k: float(v) for k, v in fn(state.params, state.target_params, batch).items()}
    pred, tgt, _ = jax.jit(lambda p, t, b: predictions_and_targets(model, p, t, b))(
        state.params, state.target_params, batch)
    # the final LayerNorm's scale at 0: every token is its bias, every image the same
    target = dict(state.target_params,
                  norm={'scale': jnp.zeros(64), 'bias': state.target_params['norm']['bias']})
    collapsed = {k: float(v) for k, v in fn(state.params, target, batch).items()}
  assert healthy['feature_std_mean'] > 1e-2 and healthy['effective_rank'] > 3
  # the prediction-target cosine, in numpy over the real (unpadded) target positions
  pred, tgt = np.asarray(pred, np.float64), np.asarray(tgt, np.float64)
  cos = (pred * tgt).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(tgt, axis=-1))
  real = np.arange(pred.shape[2])[None, None] < np.asarray(batch['tgt_len'])[..., None]
  assert healthy['pred_cosine'] == pytest.approx(cos[real].mean(), abs=1e-5)
  assert ALARM.check(healthy) is None
  assert collapsed['feature_std_mean'] < 1e-6
  assert collapsed['effective_rank'] == pytest.approx(1, abs=1e-3)
  assert ALARM.check(collapsed) is not None
