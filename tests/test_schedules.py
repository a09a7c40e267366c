import math

import numpy as np
import pytest

from ijepa_jax.schedules import Schedules

IPE, EPOCHS, WARM = 625, 300, 40


def official_lr(itr):
  """Hand-written official WarmupCosineSchedule, stepped itr+1 times."""
  s = itr + 1
  warm, t_max = int(WARM * IPE), int(1.0 * EPOCHS * IPE) - int(WARM * IPE)
  if s < warm:
    return 2e-4 + s / warm * (1e-3 - 2e-4)
  p = (s - warm) / t_max
  return max(1e-6, 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * p)))


def official_wd(itr):
  s = itr + 1
  p = s / (EPOCHS * IPE)
  # final_wd > ref_wd: the official clamps with min()
  return min(0.4, 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * p)))


@pytest.fixture
def sched():
  return Schedules.from_epochs(steps_per_epoch=IPE, num_epochs=EPOCHS, warmup_epochs=WARM)


def test_constants(sched):
  assert sched.warmup_steps == 25000 and sched.total_steps == 187500


@pytest.mark.parametrize('step', [0, 1, 999, 24998, 24999, 25000, 100000, 187499])
def test_learning_rate(sched, step):
  assert float(sched.learning_rate(step)) == pytest.approx(official_lr(step), rel=1e-5, abs=1e-9)


def test_hand_values(sched):
  # warmup: step 0 uses counter 1 -> 2e-4 + 1/25000 * 8e-4
  assert float(sched.learning_rate(0)) == pytest.approx(2e-4 + 8e-4 / 25000, rel=1e-6)
  # first post-warmup update (counter 25000): peak
  assert float(sched.learning_rate(24999)) == pytest.approx(1e-3, rel=1e-6)
  # halfway through the cosine: (peak + final) / 2
  assert float(sched.learning_rate(25000 + 81250 - 1)) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-5)
  # weight decay halfway: (0.04 + 0.4) / 2 ; momentum halfway: 0.998
  assert float(sched.weight_decay_at(93750 - 1)) == pytest.approx(0.22, rel=1e-5)
  assert float(sched.momentum(93750)) == pytest.approx(0.998, rel=1e-7)
  assert float(sched.momentum(0)) == pytest.approx(0.996, rel=1e-7)


@pytest.mark.parametrize('step', [0, 5000, 93749, 187499])
def test_weight_decay(sched, step):
  assert float(sched.weight_decay_at(step)) == pytest.approx(official_wd(step), rel=1e-5)


def test_ipe_scale_stretches():
  s = Schedules.from_epochs(steps_per_epoch=100, num_epochs=10, warmup_epochs=1, ipe_scale=1.25)
  assert s.total_steps == 1250 and s.ema_steps == pytest.approx(1250.0)
  # at the end of training (step 999) momentum has not reached 1: 0.996 + 999 * 0.004 / 1250
  assert float(s.momentum(999)) == pytest.approx(0.996 + 999 * 0.004 / 1250, rel=1e-7)


def test_jittable(sched):
  import jax
  vals = jax.jit(jax.vmap(sched.learning_rate))(np.arange(0, 187500, 7500))
  ref = [official_lr(i) for i in range(0, 187500, 7500)]
  np.testing.assert_allclose(np.asarray(vals), ref, rtol=1e-5)
