"""Weights in and out: our torch/safetensors readers and writers, the official, timm and
HuggingFace layouts, checked against PyTorch itself (torch, transformers' IJepaModel, timm's
VisionTransformer) running in their own Python 3.11 environment (.venv-torch, made by
`IJEPA_TORCH_REF=1 bash launch/setup.sh`; these tests skip without it)."""

import collections
import json
import os
import pickle
import re
import subprocess
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ijepa_jax import formats, layouts
from ijepa_jax.spec import resolve
from ijepa_jax.features import encode
from ijepa_jax.models import Predictor, VisionTransformer
from tests.reference.trees import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = os.environ.get('IJEPA_TORCH_PYTHON', os.path.join(ROOT, '.venv-torch', 'bin', 'python'))
needs_torch = pytest.mark.skipif(
    not os.path.exists(TORCH_PY),
    reason='no PyTorch reference environment: run IJEPA_TORCH_REF=1 bash launch/setup.sh')

SIZE, PATCH, WIDTH, DEPTH, HEADS = 32, 8, 32, 2, 4
GRID = (SIZE // PATCH,) * 2


def torch_job(tmp_path, *tasks):
  job = tmp_path / 'job.json'
  job.write_text(json.dumps({'tasks': list(tasks)}))
  r = subprocess.run([TORCH_PY, os.path.join(ROOT, 'tests', 'reference', 'torch_ref.py'), str(job)],
                     capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1'))
  assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope='module')
def small():
  """A random encoder and predictor, images, and our encoder's output tokens."""
  enc = VisionTransformer(PATCH, WIDTH, DEPTH, HEADS, dtype=jnp.float32)
  x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  ep = randomize(nn.unbox(enc.init(jax.random.key(0), x))['params'], 1)
  pred = Predictor(GRID, WIDTH, 16, 2, HEADS, dtype=jnp.float32)
  z = jnp.zeros((2, 5, WIDTH))
  idx = jnp.zeros((2, 5), jnp.int32)
  pp = randomize(nn.unbox(pred.init(jax.random.key(1), z, idx, jnp.full((2,), 5),
                                    jnp.zeros((2, 2, 3), jnp.int32),
                                    jnp.full((2, 2), 3)))['params'], 2)
  tokens = np.asarray(enc.apply({'params': ep}, x))
  return dict(enc=enc, ep=ep, pp=pp, tp=randomize(ep, 3), x=x, tokens=tokens)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


# -- formats, without torch ----------------------------------------------------------------

def test_torch_format_round_trip(tmp_path):
  obj = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': [1, 2.5, None, True, 'x'],
         'c': (np.int64(2 ** 40), -3), 'd': collections.OrderedDict(w=np.ones((0, 4), np.int64)),
         'e': np.asarray([1.5, -2], jnp.bfloat16), 'f': np.float32(7)[()], 'g': {}}
  formats.write_torch(str(tmp_path / 'x.pt'), obj)
  back = formats.read_torch(str(tmp_path / 'x.pt'))
  assert back['b'] == [1, 2.5, None, True, 'x'] and back['c'] == (2 ** 40, -3)
  assert isinstance(back['d'], collections.OrderedDict) and back['d']['w'].shape == (0, 4)
  np.testing.assert_array_equal(back['a'], obj['a'])
  assert back['e'].dtype == jnp.bfloat16 and list(back['e'].astype(float)) == [1.5, -2.0]
  assert back['g'] == {}


def test_safetensors_round_trip(tmp_path):
  t = {'x': np.arange(5, dtype=np.float16), 'y.z': np.ones((2, 3), np.float32),
       'b': np.asarray([3, 4], jnp.bfloat16)}
  formats.write_safetensors(str(tmp_path / 'a.safetensors'), t, {'format': 'pt'})
  back, meta = formats.read_safetensors(str(tmp_path / 'a.safetensors'))
  assert meta == {'format': 'pt'} and sorted(back) == sorted(t)
  for k in t:
    assert back[k].dtype == t[k].dtype
    np.testing.assert_array_equal(back[k], t[k])
  with open(tmp_path / 'a.safetensors', 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
  assert (8 + n) % 8 == 0  # data aligned, as the format recommends
  mask = os.umask(0)
  os.umask(mask)
  assert os.stat(tmp_path / 'a.safetensors').st_mode & 0o777 == 0o666 & ~mask  # as any new file
  data = (tmp_path / 'a.safetensors').read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(data[:-4])  # a truncated download
  with pytest.raises(formats.InteropError, match='not a readable safetensors file'):
    formats.read_safetensors(str(tmp_path / 'cut.safetensors'))
  with pytest.raises(formats.InteropError, match='does not exist'):
    formats.read_safetensors(str(tmp_path / 'none.safetensors'))


def test_official_layout_round_trip(small, tmp_path):
  path = str(tmp_path / 'ck.pth.tar')
  formats.write_torch(path, layouts.official_checkpoint(small['ep'], small['tp'], small['pp'],
                                                        GRID, epoch=4))
  back = layouts.load_official(path)
  assert back['grid'] == GRID and back['epoch'] == 4
  assert back['architecture'] == dict(width=WIDTH, channels=3, patch_size=PATCH, depth=DEPTH,
                                      mlp_dim=4 * WIDTH, pred_width=16, pred_depth=2)
  assert_trees_equal(back['encoder'], jax.tree.map(np.asarray, small['ep']))
  assert_trees_equal(back['target_encoder'], jax.tree.map(np.asarray, small['tp']))
  assert_trees_equal(back['predictor'], jax.tree.map(np.asarray, small['pp']))
  # our model on the imported weights gives the same tokens as before the export
  out = small['enc'].apply({'params': back['encoder']}, small['x'])
  np.testing.assert_array_equal(out, small['tokens'])


# -- bad files ------------------------------------------------------------------------------

def test_bad_files_give_clear_errors(small, tmp_path):
  with pytest.raises(formats.InteropError, match='does not exist'):
    formats.read_torch(str(tmp_path / 'nope.pth.tar'))
  junk = tmp_path / 'junk.pth.tar'
  junk.write_bytes(b'hello, not a checkpoint')
  with pytest.raises(formats.InteropError, match='not a PyTorch zip checkpoint'):
    formats.read_torch(str(junk))
  legacy = tmp_path / 'legacy.pth'
  legacy.write_bytes(pickle.dumps({'a': 1}, protocol=2))
  with pytest.raises(formats.InteropError, match='legacy'):
    formats.read_torch(str(legacy))

  good = str(tmp_path / 'good.pth.tar')
  formats.write_torch(good, layouts.official_checkpoint(small['ep'], small['tp'], small['pp'],
                                                        GRID))
  data = open(good, 'rb').read()
  cut = tmp_path / 'cut.pth.tar'
  cut.write_bytes(data[:len(data) // 2])  # a truncated download
  with pytest.raises(formats.InteropError, match='not a PyTorch zip checkpoint|damaged'):
    layouts.load_official(str(cut))
  # a tensor's bytes lost inside an otherwise valid zip
  with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / 'hole.pth.tar', 'w') as zout:
    for item in zin.namelist():
      if item != 'archive/data/3':
        zout.writestr(item, zin.read(item))
  with pytest.raises(formats.InteropError, match='damaged: tensor data 3 is missing'):
    layouts.load_official(str(tmp_path / 'hole.pth.tar'))


def test_pickled_code_is_refused_not_run(tmp_path):
  marker = tmp_path / 'ran'

  class Evil:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  with zipfile.ZipFile(tmp_path / 'evil.pth.tar', 'w') as zf:
    zf.writestr('archive/data.pkl', pickle.dumps({'encoder': Evil()}, protocol=2))
  with pytest.raises(formats.InteropError, match=r'pickled (posix|os)\.system'):
    formats.read_torch(str(tmp_path / 'evil.pth.tar'))
  assert not marker.exists()


def test_mismatched_checkpoints_give_clear_errors(small, tmp_path):
  ck = layouts.official_checkpoint(small['ep'], small['tp'], small['pp'], GRID)

  def write(c):
    path = str(tmp_path / 'c.pth.tar')
    formats.write_torch(path, c)
    return path

  bad = dict(ck)
  del bad['target_encoder']
  with pytest.raises(formats.InteropError, match=r"lacks \['target_encoder'\]"):
    layouts.load_official(write(bad))
  bad = dict(ck, encoder=collections.OrderedDict(ck['encoder']))
  del bad['encoder']['module.blocks.1.mlp.fc2.bias']
  with pytest.raises(formats.InteropError,
                     match=r"encoder: missing keys \['blocks.1.mlp.fc2.bias'\]"):
    layouts.load_official(write(bad))
  bad = dict(ck, predictor=collections.OrderedDict(ck['predictor'],
                                                  **{'module.extra.w': np.ones(2)}))
  with pytest.raises(formats.InteropError, match=r"predictor: unexpected keys \['extra.w'\]"):
    layouts.load_official(write(bad))
  bad = dict(ck, target_encoder=collections.OrderedDict(ck['target_encoder']))
  bad['target_encoder']['module.blocks.0.attn.proj.weight'] = np.ones((WIDTH, WIDTH + 1),
                                                                      np.float32)
  with pytest.raises(formats.InteropError, match=r'shape mismatch at blocks.0.attn.proj.weight: '
                     r'\(32, 33\) \(expected \(32, 32\)\)'):
    layouts.load_official(write(bad))
  bad = dict(ck, encoder=collections.OrderedDict(ck['encoder']))
  bad['encoder']['module.pos_embed'] = np.zeros_like(bad['encoder']['module.pos_embed'])
  with pytest.raises(formats.InteropError, match='not the fixed 2-D sin-cos table'):
    layouts.load_official(write(bad))
  with pytest.raises(formats.InteropError, match='not an I-JEPA ViT encoder'):
    layouts.official_to_encoder({'fc.weight': np.ones((2, 2))})


# -- encode ---------------------------------------------------------------------------------

def test_encode_outputs(small):
  ep, x = small['ep'], small['x']
  np.testing.assert_allclose(encode(ep, x, output='tokens', num_heads=HEADS), small['tokens'],
                             rtol=1e-6, atol=1e-6)
  mean = jax.jit(lambda p, i: encode(p, i, num_heads=HEADS))(ep, x)
  np.testing.assert_allclose(mean, small['tokens'].mean(1), rtol=1e-5, atol=1e-5)
  # last4 of a depth-4 encoder: the mean over k = 1..4 of the token-averaged output of the
  # same weights truncated to k blocks (each through the final norm)
  enc4 = VisionTransformer(PATCH, WIDTH, 4, HEADS, dtype=jnp.float32)
  p4 = randomize(nn.unbox(enc4.init(jax.random.key(5), x))['params'], 6)
  want = []
  for k in range(1, 5):
    pk = dict(p4, blocks={'layers': jax.tree.map(lambda a, k=k: a[:k], p4['blocks']['layers'])})
    want.append(VisionTransformer(PATCH, WIDTH, k, HEADS, dtype=jnp.float32).apply(
        {'params': pk}, x).mean(1))
  np.testing.assert_allclose(encode(p4, x, output='last4', num_heads=HEADS),
                             np.mean(want, axis=0), rtol=1e-5, atol=1e-5)
  # uint8 images are normalised with the given statistics
  u8 = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), np.uint8)
  f = (u8 / 255.0 - np.asarray([0.5, 0.4, 0.3])) / np.asarray([0.2, 0.25, 0.3])
  np.testing.assert_allclose(encode(ep, u8, num_heads=HEADS, mean=(0.5, 0.4, 0.3),
                                    std=(0.2, 0.25, 0.3)),
                             encode(ep, f.astype(np.float32), num_heads=HEADS), rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match='pass num_heads'):
    encode(ep, x)  # width 32 is no standard variant's
  with pytest.raises(ValueError, match='multiples of the patch size 8'):
    encode(ep, x[:, :30], num_heads=HEADS)


# -- against PyTorch --------------------------------------------------------------------------

@needs_torch
def test_export_matches_hf_and_timm_and_torch_load(small, tmp_path):
  """Our exports, loaded by transformers' IJepaModel, timm's VisionTransformer and
  torch.load(weights_only=True), give our encoder's tokens (max abs diff <= 1e-4, fp32)."""
  ep, x = small['ep'], small['x']
  np.save(tmp_path / 'x.npy', x)
  layouts.write_hf(str(tmp_path / 'hf'), ep, GRID, HEADS)
  formats.write_safetensors(str(tmp_path / 'timm.safetensors'),
                            layouts.encoder_to_official(ep, GRID), {'format': 'pt'})
  formats.write_torch(str(tmp_path / 'ck.pth.tar'),
                      layouts.official_checkpoint(small['tp'], ep, small['pp'], GRID, epoch=2))
  kw = dict(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)
  img = str(tmp_path / 'x.npy')
  torch_job(tmp_path,
            dict(kind='hf', dir=str(tmp_path / 'hf'), images=img, out=str(tmp_path / 'hf.npy')),
            dict(kind='timm', weights=str(tmp_path / 'timm.safetensors'), kwargs=kw, images=img,
                 out=str(tmp_path / 'timm.npy')),
            dict(kind='timm', weights=str(tmp_path / 'ck.pth.tar'), part='target_encoder',
                 kwargs=kw, images=img, out=str(tmp_path / 'timm_ck.npy')),
            dict(kind='load', path=str(tmp_path / 'ck.pth.tar'), out=str(tmp_path / 'ck.npz')))
  for name in ('hf', 'timm', 'timm_ck'):
    theirs = np.load(tmp_path / f'{name}.npy')
    assert theirs.shape == small['tokens'].shape
    assert np.abs(theirs - small['tokens']).max() <= 1e-4, name
  loaded = np.load(tmp_path / 'ck.npz')
  sd = layouts.encoder_to_official(small['tp'], GRID)
  for k, v in sd.items():
    np.testing.assert_array_equal(loaded[f'encoder/module.{k}'], v)
  meta = json.loads((tmp_path / 'ck.npz.json').read_text())
  assert meta['scalars']['epoch'] == 2 and meta['types']['encoder'] == 'OrderedDict'
  # and back: HF's and timm's files import to the same weights
  again, grid = layouts.load_encoder_weights(str(tmp_path / 'timm.safetensors'))
  assert grid == GRID
  assert_trees_equal(again, jax.tree.map(np.asarray, ep))


@needs_torch
def test_reads_what_torch_saves(small, tmp_path):
  """A checkpoint torch.save writes (nn.Parameters, a real AdamW state, module. prefixes,
  a bf16 and a non-contiguous tensor) imports to exactly the weights it was made from."""
  arrays = {}
  for part, tree in (('encoder', small['ep']), ('target_encoder', small['tp'])):
    for k, v in layouts.encoder_to_official(tree, GRID).items():
      arrays[f'{part}/{k}'] = v
  for k, v in layouts.predictor_to_official(small['pp'], GRID).items():
    arrays[f'predictor/{k}'] = v
  np.savez(tmp_path / 'sd.npz', **arrays)
  path = str(tmp_path / 'torch.pth.tar')
  torch_job(tmp_path, dict(kind='save', npz=str(tmp_path / 'sd.npz'), path=path))
  back = layouts.load_official(path)
  assert back['epoch'] == 7 and back['grid'] == GRID
  assert_trees_equal(back['encoder'], jax.tree.map(np.asarray, small['ep']))
  assert_trees_equal(back['target_encoder'], jax.tree.map(np.asarray, small['tp']))
  assert_trees_equal(back['predictor'], jax.tree.map(np.asarray, small['pp']))
  raw = formats.read_torch(path)
  np.testing.assert_array_equal(raw['extra_view'], np.arange(12.0).reshape(3, 4).T)
  assert raw['extra_bf16'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(raw['extra_bf16'].astype(np.float32), np.arange(6).reshape(2, 3))
  assert raw['opt']['param_groups'][0]['lr'] == 1e-3 and raw['loss'] == 0.25


@needs_torch
@pytest.mark.parametrize('config_name', ['vith14', 'vith16_448', 'vitg16'])
def test_released_model_layouts_match_hf_and_timm(config_name, tmp_path):
  """For every released model, our export's names and shapes are exactly those of
  IJepaModel and timm's VisionTransformer at that size (built on torch's meta device)."""
  from configs import vith14, vith16_448, vitg16  # pylint: disable=import-outside-toplevel
  config = {'vith14': vith14, 'vith16_448': vith16_448, 'vitg16': vitg16}[config_name].get_config()
  model = resolve(config, 1).model
  size, patch = config.data.image_size, config.model.patch_size
  grid = (size // patch,) * 2
  shapes = jax.eval_shape(lambda: nn.unbox(model.encoder.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)))['params']))
  stand_in = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)  # no memory
  hf_config, hf_sd = layouts.encoder_to_hf(stand_in, grid, model.encoder.num_heads)
  official = layouts.encoder_to_official(stand_in, grid)
  (tmp_path / 'config.json').write_text(json.dumps(hf_config))
  torch_job(tmp_path, dict(kind='shapes', hf_config=str(tmp_path / 'config.json'),
                           timm_kwargs=dict(img_size=size, patch_size=patch,
                                            embed_dim=model.encoder.width,
                                            depth=model.encoder.depth,
                                            num_heads=model.encoder.num_heads,
                                            mlp_ratio=model.encoder.mlp_dim / model.encoder.width),
                           out=str(tmp_path / 'shapes.json')))
  theirs = json.loads((tmp_path / 'shapes.json').read_text())
  assert theirs['timm'] == {k: list(v.shape) for k, v in official.items()}
  # we write the published checkpoints' (transformers 4.x) names; 5.x renames them on load
  # with these replacements (its conversion_mapping.py, "ViTModel"), as the small-model test
  # above exercises through from_pretrained
  renames = [(r'encoder\.layer\.', 'layers.'), ('attention.query', 'q_proj'),
             ('attention.key', 'k_proj'), ('attention.value', 'v_proj'),
             ('attention.output.dense', 'attention.o_proj'), ('intermediate.dense', 'mlp.fc1'),
             ('output.dense', 'mlp.fc2')]

  def v5(name):
    for a, b in renames:
      name = re.sub(a, b, name)
    return name.replace('attention.attention.', 'attention.')

  assert theirs['hf'] == {v5(k): list(v.shape) for k, v in hf_sd.items()}
