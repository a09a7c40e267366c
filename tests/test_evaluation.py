"""The probes on hand-made and planted features, the evaluation data path, and the tools."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ijepa_jax import evaluation, fashion_mnist, probes, sharding
from ijepa_jax.recipes import base_config
from ijepa_jax.spec import resolve
from helpers import brightness_folder, folder_config, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_knn_hand_computed():
  # unit vectors; the query (1, 0) has cosine similarity 1, 0, 0.6, -1 with them
  train = np.asarray([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], np.float32)
  labels = np.asarray([0, 1, 1, 0])
  q = np.asarray([[2.0, 0.0]], np.float32)  # length does not matter (cosine)
  # k=3 keeps sims 1 (class 0), 0.6 and 0 (class 1). T=0.5: e^2 = 7.39 vs e^1.2 + e^0 = 4.32
  assert probes.knn_predict(train, labels, q, 2, k=3, temperature=0.5)[0] == 0
  # T=2: e^0.5 = 1.65 vs e^0.3 + e^0 = 2.35, so the two class-1 neighbours win
  assert probes.knn_predict(train, labels, q, 2, k=3, temperature=2.0)[0] == 1
  assert math.exp(0.5) < math.exp(0.3) + 1 and math.exp(2) > math.exp(1.2) + 1
  # k=1: the nearest alone; k larger than the training set is clipped
  assert probes.knn_predict(train, labels, q, 2, k=1, temperature=2.0)[0] == 0
  assert probes.knn_predict(train, labels, q, 2, k=50, temperature=0.01)[0] == 0


def planted(n, d, classes, seed, signal):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  x = rng.normal(size=(n, d)).astype(np.float32)
  x[:, :classes] += signal * np.eye(classes, dtype=np.float32)[y]
  return x, y


def test_linear_probe_planted_and_random():
  xtr, ytr = planted(3000, 48, 10, 0, 6.0)
  xte, yte = planted(1000, 48, 10, 1, 6.0)
  res = probes.linear_probe(xtr, ytr, xte, yte, 10, lrs=(0.01, 0.1), l2s=(0.0, 1e-4),
                                steps=300)
  # signal 6 against unit noise: the Bayes error is ~1e-4, so the probe should be ~100%
  assert res["top1"] > 0.99 and res["val_top1"] > 0.99
  # features that carry no label: chance (0.1 +- 4 standard errors of 1000 test examples)
  xr, _ = planted(3000, 48, 10, 2, 0.0)
  yr = np.random.default_rng(3).integers(0, 10, 3000)
  xrt, _ = planted(1000, 48, 10, 4, 0.0)
  yrt = np.random.default_rng(5).integers(0, 10, 1000)
  res = probes.linear_probe(xr, yr, xrt, yrt, 10, steps=300)
  assert abs(res['top1'] - 0.1) < 4 * math.sqrt(0.09 / 1000)
  knn = probes.knn_predict(xr, yr, xrt, 10)
  assert abs(np.mean(knn == yrt) - 0.1) < 4 * math.sqrt(0.09 / 1000)


def test_linear_probe_picks_the_grid_point_on_held_out_data():
  xtr, ytr = planted(2000, 32, 10, 0, 1.5)
  xte, yte = planted(500, 32, 10, 1, 1.5)
  res = probes.linear_probe(xtr, ytr, xte, yte, 10, lrs=(1e-9, 0.1), l2s=(0.0,), steps=200)
  assert res["lr"] == 0.1  # 1e-9 never leaves the zero init: chance on the held-out part
  with pytest.raises(ValueError, match='held-out fraction'):
    probes.linear_probe(xtr, ytr, xte, yte, 10, holdout=0.0)


def test_lowshot_indices():
  labels = np.repeat(np.arange(4), [100, 200, 300, 400])
  idx = probes.lowshot_indices(labels, per_class=5)
  assert np.bincount(labels[idx]).tolist() == [5, 5, 5, 5]
  assert len(set(idx.tolist())) == 20
  idx = probes.lowshot_indices(labels, fraction=0.01)
  assert np.bincount(labels[idx]).tolist() == [1, 2, 3, 4]
  np.testing.assert_array_equal(idx, probes.lowshot_indices(labels, fraction=0.01))
  # low-shot probe on planted features: 10 per class is plenty when the signal is strong
  xtr, ytr = planted(2000, 32, 10, 0, 5.0)
  xte, yte = planted(500, 32, 10, 1, 5.0)
  acc = probes.lowshot_probe(xtr, ytr, xte, yte, 10,
                                 probes.lowshot_indices(ytr, per_class=10),
                                 lr=0.1, l2=1e-4, steps=200)
  assert acc > 0.9


@pytest.mark.slow
def test_evaluator_on_an_image_folder(tmp_path, monkeypatch):
  """Class folders with a planted signal (bright vs dark images) and one corrupt file: the
  labels follow the folders, the corrupt image is left out and named, the probes see it."""
  brightness_folder(str(tmp_path))
  (tmp_path / 'train' / 'dark' / 'broken.jpg').write_bytes(b'not an image')
  config = folder_config(tmp_path)
  config.evals.lowshot_per_class = (2,)
  mesh = sharding.make_mesh(-1, 1)
  from ijepa_jax.state import StepOnMesh
  with sharding.scope(mesh):
    run = resolve(config, 8)
    state = StepOnMesh.build(run, mesh).init(0)
    ev = evaluation.Evaluator(run, mesh, -1, -1, ('linear', 'knn', 'lowshot'))
    res = ev(state.target_params)
    assert ev.num_classes == 2
    assert len(ev.skipped) == 1 and 'broken.jpg' in ev.skipped[0] and res['skipped_images'] == 1
    feats, skipped = ev.split_features(state.target_params, ev.train)
    # broken.jpg out
    assert np.bincount(feats.labels).tolist() == [40, 40] and skipped == ev.skipped
    assert feats.tokens is None and feats.pooled.shape == (80, 32)  # no probe reads tokens
    assert res['knn_top1'] == 1.0 and res['linear_top1'] == 1.0  # brightness is easy
    assert res['lowshot_2shot_top1'] == 1.0  # two images of each class are enough here too
    # the attentive probe: one pass gives the tokens and their mean, the same mean (bit for
    # bit) as an evaluation without a token probe, so k-NN does not move with the probe list
    both = evaluation.Evaluator(run, mesh, -1, -1, ('knn', 'attentive'))
    kept, _ = both.split_features(state.target_params, both.train)
    assert kept.tokens.shape == (80, 64, 32)
    np.testing.assert_array_equal(kept.pooled, feats.pooled)
    np.testing.assert_allclose(kept.tokens.array.mean(1), feats.pooled, rtol=1e-5, atol=1e-6)
    res_kept = both(state.target_params)
    assert res_kept['attentive_top1'] == 1.0 and res_kept['knn_top1'] == 1.0
    assert res_kept['attentive_heads'] == run.arch.num_heads  # 0 in the config: the encoder's
    # tokens over the memory budget: recomputed from the images batch by batch, same head
    monkeypatch.setattr(both, 'settings', dataclasses.replace(both.settings,
                                                              attentive_cache_gib=0.0))
    streamed, _ = both.split_features(state.target_params, both.train)
    assert isinstance(streamed.tokens, probes.StreamedTokens)
    res_streamed = both(state.target_params)
    for k in ('attentive_top1', 'attentive_val_top1', 'attentive_lr', 'knn_top1'):
      assert res_streamed[k] == res_kept[k], k
    # and the pixels through the same probes: 4 x 4 squares of 3 channels (48 values) as tokens
    pix = both.pixels()
    assert pix["knn_top1"] == 1.0 and pix["attentive_heads"] == 4
    assert pix["attentive_top1"] > 0.7  # 20 steps at 1e-3 on 48-value tokens: above chance (0.5)
    # features: batches over 8 devices, padded tail, same as one unpadded call
    f = ev.extract(state.target_params, next(iter(ev.test.chunks())).images[:11])
    g = ev.extract(state.target_params, next(iter(ev.test.chunks())).images[:16])[:11]
    np.testing.assert_allclose(f, g, rtol=1e-5, atol=1e-5)
    # evals.pool=tokens: every output token, flattened in raster order, over 8 devices
    from ijepa_jax.features import encode
    config.evals.pool = 'tokens'
    ev_tokens = evaluation.Evaluator(resolve(config, 8), mesh, -1, -1, ('knn',))
    t = ev_tokens.split_features(state.target_params, ev_tokens.test)[0].pooled
    images = np.concatenate([c.images for c in ev_tokens.test.chunks()])
    ref = np.asarray(encode(state.target_params, images, output='tokens', num_heads=4,
                            mean=config.data.mean, std=config.data.std))
    assert ref.shape == (40, 64, 32) and t.shape == (40, 64 * 32)
    np.testing.assert_allclose(t, ref.reshape(40, -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.reshape(40, 64, 32)[:11].mean(1), f, rtol=1e-4, atol=1e-5)
  # decoded images are kept between calls only while a split fits in CACHE_BYTES
  # (train: 81 images of 32 x 32 x 3 = 248,832 bytes; val: 40 = 122,880)
  for limit, kept in ((10**6, (True, True)), (200_000, (False, True)), (100_000, (False, False))):
    monkeypatch.setattr(evaluation, 'CACHE_BYTES', limit)
    train, val, _ = evaluation.eval_splits(run.evals, run.data, -1, -1, cache=True)
    assert (train.cache, val.cache) == kept, limit


def test_eval_config_errors():
  from ijepa_jax.config import ConfigError, validate
  from ijepa_jax.spec import resolve
  for field, value, msg in (('periodic_probes', ('linear', 'svm'), r"unknown \['svm'\]"),
                            ('pool', 'cls', 'choose mean, last4 or tokens'),
                            ('encoder', 'online', 'choose one of'),
                            ('holdout', 1.0, 'must be in'),
                            ('train_examples', 0, 'positive or -1')):
    c = base_config()
    c.evals[field] = value
    with pytest.raises(ConfigError, match=msg):
      validate(c)  # field by field
    with pytest.raises(ConfigError, match=msg):
      resolve(c, 8)  # which validates first


def run_tool(module, *args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(fashion_mnist.missing_files(None), reason='dataset-fashion-mnist not installed')
def test_tools_on_a_demo_run(tmp_path):
  """main.py with periodic and final evaluation, then evaluate / convert / embed on its
  checkpoint: the exported weights re-imported give the same evaluation, bit for bit."""
  run = tmp_path / 'run'
  small = ['--config.evals.train_examples=500', '--config.evals.test_examples=200',
           '--config.evals.final_train_examples=1000', '--config.evals.final_test_examples=300',
           '--config.evals.probe_steps=100', '--config.evals.attentive_epochs=3']
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, 'main.py', '--config=configs/demo.py',
                         f'--workdir={run}', '--config.max_steps=6', '--config.log_every=3',
                         '--config.seed=3',
                         '--config.batch_size=64', '--config.evals.every=3', *small,
                         "--config.evals.periodic_probes=('linear','knn','attentive')"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert 'step      3/6' in out and 'img/s' in out and 'ETA' in out
  # the periodic probes in the config's order, each with its headline figure
  assert 'eval at step 3: linear_top1' in out and ' | knn_top1 ' in out
  assert ' | attentive_top1 ' in out
  assert 'baseline (random init' in out
  assert 'pixels (784 values per image, no encoder)' in out
  rows = [json.loads(line) for line in open(run / 'metrics.jsonl')]
  train_rows = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in train_rows] == [3, 6]
  for key in ('loss', 'lr', 'weight_decay', 'momentum', 'grad_norm', 'context_len',
              'target_len', 'images_per_sec'):
    assert key in train_rows[-1]
  # useful work: steps 4-6 at their masks' real lengths, counted again here from the sampler,
  # against the executed fixed-shape work of the same three steps
  run_spec = resolve(load('demo'), 1)
  sampler = run_spec.sampler
  useful = sum(run_spec.arch.useful_flops(mb.ctx_len, mb.tgt_len)
               for mb in (sampler(64, 3, s) for s in range(3, 6)))
  executed = 3 * run_spec.arch.step_flops(64, sampler)
  last = train_rows[-1]
  assert last['useful_flops_per_sec'] / last['flops_per_sec'] == pytest.approx(useful / executed,
                                                                                rel=1e-6)
  assert useful / executed < 0.9  # the demo's corrected masks pad (PERFORMANCE.md)
  assert 0 <= last['input_wait'] < 1
  assert [r['step'] for r in rows if 'eval_knn_top1' in r] == [3]  # step 6: the final one
  periodic = next(r for r in rows if 'eval_knn_top1' in r)  # any registered probe runs there
  top1 = periodic['eval_attentive_top1']
  assert top1 * 200 == pytest.approx(round(top1 * 200))
  final = json.load(open(run / 'final.json'))
  for key in ('final_linear_top1', 'final_knn_top1', 'final_lowshot_1shot_top1',
              'final_lowshot_1pct_top1', 'baseline_linear_top1', 'baseline_knn_top1',
              'final_attentive_top1', 'baseline_attentive_top1', 'pixels_attentive_top1'):
    hits = final[key] * 300  # a top-1 over the 300 test images: a whole number of them
    assert abs(hits - round(hits)) < 1e-3 and hits >= 15, (key, hits)  # float32 means
  assert final['periodic_eval_seconds'] > 0
  host = final['host']  # what a bitwise repeat needs: one CPU device, these versions
  assert (host['devices'], host['processes'], host['platform']) == (1, 1, 'cpu')
  assert host['jax'] == jax.__version__ and host['cpu_count'] == os.cpu_count()
  # the final k-NN again, in numpy, on the embeddings of the same subsets (embed --limit
  # takes the evaluation's fixed subset): cosine, the 20 nearest, votes exp(sim / 0.07)
  feats = {}
  for split, n in (('train', 1000), ('test', 300)):
    proc = run_tool('ijepa_jax.tools.embed', '--config=configs/demo.py', f'--workdir={run}',
                    f'--split={split}', f'--limit={n}', f'--out={tmp_path / split}.npz')
    assert proc.returncode == 0, proc.stderr[-3000:]
    e = np.load(tmp_path / f'{split}.npz')
    x = e['embeddings'].astype(np.float64)
    feats[split] = (x / np.linalg.norm(x, axis=1, keepdims=True), e['labels'])
  (xtr, ytr), (xte, yte) = feats['train'], feats['test']
  sim = xte @ xtr.T
  near = np.argsort(-sim, axis=1)[:, :20]
  votes = np.zeros((300, 10))
  for i in range(300):
    np.add.at(votes[i], ytr[near[i]], np.exp(sim[i, near[i]] / 0.07))
  assert np.mean(votes.argmax(1) == yte) == pytest.approx(final['final_knn_top1'], abs=1.01 / 300)

  proc = run_tool('ijepa_jax.tools.evaluate', '--config=configs/demo.py', f'--workdir={run}',
                  *small, "--config.evals.final_probes=('knn','linear')", '--baseline')
  assert proc.returncode == 0, proc.stderr[-3000:]
  ours = json.load(open(run / 'eval_6.json'))
  assert ours['eval_knn_top1'] == final['final_knn_top1']
  assert ours['eval_linear_top1'] == final['final_linear_top1']
  # the baseline is drawn with the run's seed (3, from the checkpoint) + 1, as the trainer's
  assert ours['baseline_knn_top1'] == final['baseline_knn_top1']
  assert ours['pixels_knn_top1'] == final['pixels_knn_top1'] > 0.5  # 1k/300 images: ~70%

  ck = tmp_path / 'demo.pth.tar'
  for fmt, out in (('official', ck), ('timm', tmp_path / 't.safetensors'), ('hf', tmp_path / 'hf')):
    proc = run_tool('ijepa_jax.tools.convert', '--mode=export', '--config=configs/demo.py',
                    f'--workdir={run}', f'--format={fmt}', f'--out={out}')
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / 'hf' / 'config.json').exists()
  assert (tmp_path / 'hf' / 'model.safetensors').exists()
  proc = run_tool('ijepa_jax.tools.convert', '--mode=import', '--config=configs/demo.py',
                  f'--weights={ck}', f'--workdir={tmp_path / "imported"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  for i, how in enumerate((f'--workdir={tmp_path / "imported"}', f'--weights={ck}',
                           f'--weights={tmp_path / "t.safetensors"}')):
    out = tmp_path / f'e{i}.json'  # (an existing --output is not replaced unasked)
    proc = run_tool('ijepa_jax.tools.evaluate', '--config=configs/demo.py', how, *small,
                    "--config.evals.final_probes=('knn',)", f'--output={out}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(out))['eval_knn_top1'] == final['final_knn_top1'], how
  proc = run_tool('ijepa_jax.tools.embed', '--config=configs/demo.py', f'--workdir={run}',
                  '--split=test', '--limit=50', f'--out={tmp_path / "e.npz"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  e = np.load(tmp_path / 'e.npz')
  assert e['embeddings'].shape == (50, 64) and e['labels'].shape == (50,)
  # errors: wrong model for the weights, no such run, both sources
  proc = run_tool('ijepa_jax.tools.evaluate', '--config=configs/vith14.py', f'--weights={ck}')
  assert proc.returncode == 2 and 'width 64 in the weights vs 1280 in the config' in proc.stderr
  proc = run_tool('ijepa_jax.tools.evaluate', '--config=configs/demo.py',
                  f'--workdir={tmp_path / "no"}')
  assert proc.returncode == 2 and 'does not exist' in proc.stderr
  proc = run_tool('ijepa_jax.tools.embed', '--config=configs/demo.py', f'--weights={ck}',
                  f'--workdir={run}', '--split=test', f'--out={tmp_path / "x.npz"}')
  assert proc.returncode == 2 and 'exactly one' in proc.stderr


def test_pixel_features_normalise_and_pool_like_a_hand_computation():
  from ijepa_jax.evaluation import PIXEL_VALUES, pixel_features
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
  f = pixel_features(small, (0.25,), (0.5,), 4)
  assert f.shape == (3, 784)  # under PIXEL_VALUES: every pixel
  np.testing.assert_allclose(f[1, 28 * 5 + 7], (small[1, 5, 7, 0] / 255 - 0.25) / 0.5, rtol=1e-6)
  big = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
  assert 64 * 64 * 3 > PIXEL_VALUES
  g = pixel_features(big, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 16)
  assert g.shape == (2, 4 * 4 * 3)  # one mean per patch and channel, raster order
  block = (big[1, 16:32, 32:48, 2] / 255 - 0.3) / 0.2
  np.testing.assert_allclose(g[1, (1 * 4 + 2) * 3 + 2], block.mean(), rtol=1e-5)
