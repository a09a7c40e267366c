import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ijepa_jax import sharding
from ijepa_jax.schedules import Schedules
from ijepa_jax.train_step import (decay_mask, ema_update, make_optimizer, train_step)
from ijepa_jax.state import global_batch, init_state, make_step_fn
from helpers import B, MEAN, STD, batch_for, float_batch, shapes_of, tiny_model


def run(model, devices, steps, fixed_batch=False, strategy='multiblock'):
  mesh = sharding.make_mesh(-1, 1, devices)
  batch_for_step = functools.partial(batch_for, strategy=strategy)
  batch0 = batch_for_step(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state, sh = init_state(model, mesh, shapes_of(batch0), seed=0)
    step_fn = make_step_fn(model, sh, mesh, MEAN, STD)
    losses = []
    for i in range(steps):
      state, m = step_fn(state, global_batch(batch0 if fixed_batch else batch_for_step(i), mesh))
      losses.append(float(m['loss']))
  return state, losses, step_fn


def test_ema_update_exact():
  t = {'a': jnp.array([1.0, 2.0]), 'b': {'c': jnp.array(4.0)}}
  o = {'a': jnp.array([3.0, 0.0]), 'b': {'c': jnp.array(0.0)}}
  out = ema_update(t, o, jnp.float32(0.75))
  np.testing.assert_allclose(out['a'], [1.5, 1.5])
  np.testing.assert_allclose(out['b']['c'], 3.0)


def test_decay_mask_names():
  p = {'blocks': {'layers': {'attn': {'qkv': {'kernel': 0, 'bias': 0}},
                             'norm1': {'scale': 0, 'bias': 0}}},
       'mask_token': 0, 'norm': {'scale': 0, 'bias': 0}}
  m = decay_mask(p)
  assert m['blocks']['layers']['attn']['qkv'] == {'kernel': True, 'bias': False}
  assert m['blocks']['layers']['norm1'] == {'scale': False, 'bias': False}
  assert m['mask_token'] is True and m['norm'] == {'scale': False, 'bias': False}


def test_adamw_first_step_matches_torch_formula():
  sched = Schedules.from_epochs(steps_per_epoch=10, num_epochs=10, warmup_epochs=1)
  tx = make_optimizer(sched)
  p = {'kernel': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'bias': jnp.array([0.1, -0.1])}
  g = {'kernel': jnp.array([[0.1, 0.2], [-0.3, 0.0]]), 'bias': jnp.array([1.0, -1.0])}
  upd, _ = tx.update(g, tx.init(p), p)
  new = optax.apply_updates(p, upd)
  lr, wd = float(sched.learning_rate(0)), float(sched.weight_decay_at(0))
  # torch.optim.AdamW step 1: p *= 1 - lr*wd; m_hat = g; v_hat = g^2; p -= lr * g / (|g| + eps)
  for name, decay in (('kernel', wd), ('bias', 0.0)):
    gp, pp = np.asarray(g[name]), np.asarray(p[name])
    expect = pp * (1 - lr * decay) - lr * gp / (np.abs(gp) + 1e-8)
    np.testing.assert_allclose(new[name], expect, rtol=1e-6, atol=1e-9)


def test_compiles_once_and_lowers_loss_on_fixed_batch():
  model = tiny_model()
  _, losses, step_fn = run(model, jax.devices()[:1], 25, fixed_batch=True)
  assert step_fn._cache_size() == 1
  assert losses[-1] < 0.7 * losses[0], losses


def test_compiles_once_across_mask_draws():
  _, _, step_fn = run(tiny_model(), jax.devices()[:1], 4)
  assert step_fn._cache_size() == 1


@pytest.mark.slow
@pytest.mark.parametrize('strategy', ['random', 'block', 'rasterized'])
def test_each_mask_strategy_trains(strategy):
  """The masking ablation's strategies (M = 1, 1, 3 target sets) feed the same step (one
  compile) and the loss falls on a fixed batch; their shapes do not change between draws
  (test_masks)."""
  _, losses, step_fn = run(tiny_model(), jax.devices()[:1], 25, fixed_batch=True,
                           strategy=strategy)
  assert step_fn._cache_size() == 1
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_state_and_metrics():
  model = tiny_model()
  state, losses, _ = run(model, jax.devices()[:1], 2)
  assert int(state.step) == 2
  # the EMA target moved (momentum < 1) but much less than the online encoder
  init, _, _ = run(model, jax.devices()[:1], 0)
  d_online = optax.tree.norm(jax.tree.map(lambda a, b: a - b, state.params['encoder'],
                                            init.params['encoder']))
  d_target = optax.tree.norm(jax.tree.map(lambda a, b: a - b, state.target_params,
                                            init.target_params))
  assert 0 < float(d_target) < 0.05 * float(d_online)
  mesh = sharding.make_mesh(-1, 1, jax.devices()[:1])
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    _, m = jax.jit(lambda s, b: train_step(model, s, b))(state, float_batch(5))
  for k in ('loss', 'lr', 'weight_decay', 'momentum', 'grad_norm', 'context_len', 'target_len'):
    assert np.isfinite(float(m[k])), k
  assert float(m['lr']) == pytest.approx(float(model.schedules.learning_rate(2)))
  assert float(m['context_len']) == pytest.approx(batch_for(5)['ctx_len'].mean())


def test_usable_inside_user_jit():
  """The pure API composes with a plain jax.jit, no mesh or trainer involved."""
  from ijepa_jax import create_train_state
  model = tiny_model(grad_clip=1.0)
  batch = float_batch(0)
  state = jax.jit(lambda r: nn.unbox(create_train_state(model, r, batch)))(jax.random.key(0))
  state, m = jax.jit(lambda s, b: train_step(model, s, b))(state, batch)
  assert np.isfinite(float(m['loss'])) and int(state.step) == 1


@pytest.mark.slow
def test_guarded_step_leaves_the_state_alone_on_nan():
  from ijepa_jax import create_train_state
  from ijepa_jax.train_step import guarded_train_step
  model = tiny_model()
  batch = float_batch(0)
  state = jax.jit(lambda r: nn.unbox(create_train_state(model, r, batch)))(jax.random.key(0))
  step = jax.jit(lambda s, b: guarded_train_step(model, s, b))
  bad = dict(batch, images=np.where(np.arange(24)[None, :, None, None] == 3, np.nan,
                                    batch['images']).astype(np.float32))
  after_bad, m = step(state, bad)
  assert float(m['finite']) == 0.0 and not np.isfinite(float(m['loss']))
  assert int(after_bad.step) == 1  # the data moves on ...
  for a, b in zip(jax.tree.leaves(after_bad.replace(step=state.step)), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)  # ... but weights, EMA and Adam moments do not
  good, m = step(state, batch)
  assert float(m['finite']) == 1.0
  ref, _ = jax.jit(lambda s, b: train_step(model, s, b))(state, batch)
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # a finite step is train_step's


@pytest.mark.slow
def test_fsdp_mesh_equals_one_device_and_shards_params():
  """Only the mesh changes for FSDP: a 4x2 data x fsdp mesh gives the 1-device result."""
  model = tiny_model()
  s1, l1, _ = run(model, jax.devices()[:1], 2)
  mesh = sharding.make_mesh(4, 2)
  batch0 = batch_for(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state, sh = init_state(model, mesh, shapes_of(batch0), seed=0)
    step_fn = make_step_fn(model, sh, mesh, MEAN, STD)
    losses = []
    for i in range(2):
      state, m = step_fn(state, global_batch(batch_for(i), mesh))
      losses.append(float(m['loss']))
  np.testing.assert_allclose(l1, losses, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  qkv = state.params['encoder']['blocks']['layers']['attn']['qkv']['kernel']  # [depth, D, 3D]
  assert qkv.sharding.spec[1] == 'fsdp'
  assert qkv.addressable_shards[0].data.shape == (2, 16, 96)  # D split in two
  ema = state.target_params['blocks']['layers']['attn']['qkv']['kernel']
  assert ema.sharding == qkv.sharding
  mu = state.opt_state[0].mu['encoder']['blocks']['layers']['attn']['qkv']['kernel']
  assert mu.sharding == qkv.sharding


@pytest.mark.slow
def test_program_size_flat_in_depth():
  """Under nn.scan the step's program does not grow with depth: ViT-L/16 (24 blocks) lowers
  to exactly as many ops as ViT-B/16 (12 blocks), which is what keeps its compile time flat
  (timed by bench/bench_memory.py, docs/PERFORMANCE.md); unrolled, it grows with the blocks."""
  from configs.vitb16 import get_config as vitb16
  from configs.vitl16 import get_config as vitl16
  from ijepa_jax.spec import resolve
  from ijepa_jax.state import lower_abstract_step
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])

  def ops(get, scan):
    c = get()
    c.batch_size = 8
    c.model.scan_layers = scan
    text = lower_abstract_step(resolve(c, 1), mesh)[0].as_text()
    return text.count('\n'), text.count('stablehlo.dot_general')

  base, large = ops(vitb16, True), ops(vitl16, True)
  assert large == base
  # unrolled, each of the 12 extra encoder blocks adds 24 matmuls: 6 forward (qkv, q.k, p.v,
  # proj, fc1, fc2) in the target encoder, 6 in the context encoder and 12 in its backward
  # (two per forward matmul)
  unrolled_base, unrolled_large = ops(vitb16, False), ops(vitl16, False)
  assert unrolled_large[1] - unrolled_base[1] == 12 * 24
  assert unrolled_large[0] > unrolled_base[0] > base[0]


def test_objective_is_the_official_one_without_anti_collapse_terms():
  """compute_loss = jepa_loss on the predictions and targets, nothing added (the default)."""
  from ijepa_jax import create_train_state, compute_loss, jepa_loss
  from ijepa_jax.train_step import loss_terms, predictions_and_targets
  model = tiny_model()
  batch = float_batch(0)
  state = jax.jit(lambda r: nn.unbox(create_train_state(model, r, batch)))(jax.random.key(0))
  pred, tgt, _ = predictions_and_targets(model, state.params, state.target_params, batch)
  official = float(jepa_loss(pred, tgt, batch['tgt_len']))
  assert float(compute_loss(model, state.params, state.target_params, batch)) == official
  assert set(loss_terms(model, state.params, state.target_params, batch)) == {'loss', 'jepa_loss'}
  _, m = jax.jit(lambda s, b: train_step(model, s, b))(state, batch)
  assert 'sigreg' not in m and 'var_loss' not in m
  assert float(m['loss']) == pytest.approx(official, rel=1e-5)


def test_pixel_targets_match_a_hand_computation():
  """target_space='pixels': the loss is the smooth-L1 between the predictor's outputs
  (p*p*C values per target patch) and each target patch's pixels, cut from the normalised
  image and normalised per patch, computed here in numpy from the images and the indices."""
  import dataclasses
  from ijepa_jax import create_train_state
  from ijepa_jax.train_step import loss_terms, predictions_and_targets
  base = tiny_model()
  model = dataclasses.replace(base, target_space='pixels',
                              predictor=dataclasses.replace(base.predictor, out_dim=4 * 4 * 3))
  batch = float_batch(0)
  state = jax.jit(lambda r: nn.unbox(create_train_state(model, r, batch)))(jax.random.key(0))
  assert state.params['predictor']['predictor_proj']['kernel'].shape == (16, 48)
  pred, tgt, _ = predictions_and_targets(model, state.params, state.target_params, batch)
  pred = np.asarray(pred)
  images = np.asarray(batch['images'], np.float64)  # [16, 24, 24, 3]: a 6 x 6 grid of 4-px patches
  loss, count = 0.0, 0
  for i in range(B):
    for j in range(batch['tgt_idx'].shape[1]):
      for k in range(batch['tgt_len'][i, j]):
        r, c = divmod(int(batch['tgt_idx'][i, j, k]), 6)
        x = images[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4, :].reshape(-1)  # rows, cols, channels
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-6)
        np.testing.assert_allclose(np.asarray(tgt)[i, j, k], x, rtol=1e-4, atol=1e-4)
        d = np.abs(pred[i, j, k] - x)
        loss += np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
        count += x.size
  terms = loss_terms(model, state.params, state.target_params, batch)
  assert float(terms['jepa_loss']) == pytest.approx(loss / count, rel=1e-4)
  # it trains: the loss falls on a fixed batch
  step = jax.jit(lambda s, b: train_step(model, s, b))
  losses = []
  for _ in range(20):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
  # (slowly: the first 20 steps are inside the warmup; 0.464 -> 0.458 here)
  assert losses[-1] < 0.995 * losses[0] and all(np.diff(losses) < 0), losses


@pytest.mark.slow
def test_anti_collapse_terms_enter_the_loss_and_its_gradient():
  import dataclasses
  from ijepa_jax import create_train_state
  from ijepa_jax.objective import AntiCollapse
  base = tiny_model()
  model = dataclasses.replace(base, anti_collapse=AntiCollapse(
      var_weight=2.0, cov_weight=0.5, sigreg_weight=0.1, sigreg_directions=32))
  batch = float_batch(0)
  state = jax.jit(lambda r: nn.unbox(create_train_state(model, r, batch)))(jax.random.key(0))
  _, m = jax.jit(lambda s, b: train_step(model, s, b))(state, batch)
  _, m0 = jax.jit(lambda s, b: train_step(base, s, b))(state, batch)
  assert float(m['jepa_loss']) == pytest.approx(float(m0['loss']), rel=1e-5)
  expect = m['jepa_loss'] + 2.0 * m['var_loss'] + 0.5 * m['cov_loss'] + 0.1 * m['sigreg']
  assert float(m['loss']) == pytest.approx(float(expect), rel=1e-5)
  assert float(m['var_loss']) > 0.5  # tiny init features: every std far below 1
  assert float(m['grad_norm']) > 1.5 * float(m0['grad_norm'])


@pytest.mark.parametrize('devices', [1, pytest.param(8, marks=pytest.mark.slow)])
def test_gradient_accumulation_equals_the_one_batch_update(devices):
  """The same global batch in 1, 2 or 4 micro-batches gives the same loss, gradient norm
  and updated state (within float tolerance), on one device and split over eight."""
  import dataclasses
  from ijepa_jax.train_step import micro_batches
  batch = batch_for(3)  # B images with their masks and crops
  out = {}
  for k in (1, 2, 4):
    if B % (k * devices):
      continue
    model = dataclasses.replace(tiny_model(), accum_steps=k)
    state, losses, _ = run(model, jax.devices()[:devices], 1, fixed_batch=True)
    out[k] = (state, losses[0])
  assert len(out) >= 2, out.keys()
  ref_state, ref_loss = out[1]
  for k, (state, loss) in out.items():
    assert loss == pytest.approx(ref_loss, rel=1e-5), k
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6, err_msg=f'accum_steps={k}')
    for a, b in zip(jax.tree.leaves(state.target_params), jax.tree.leaves(ref_state.target_params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
  # micro-batch j holds images j, j + k, ...: every image once, with its own masks
  parts = micro_batches({k: jnp.asarray(v) for k, v in batch.items()}, 2)
  np.testing.assert_array_equal(parts['images'][1], batch['images'][1::2])
  np.testing.assert_array_equal(parts['tgt_len'][0], batch['tgt_len'][0::2])
