"""Weight layouts: our Flax trees <-> the official I-JEPA, timm and HuggingFace names.

`params` are our Flax trees, `sd` flat name -> numpy array dicts (the files themselves are
read and written by `formats.py`).

- official: `encoder` / `target_encoder` / `predictor` state dicts, keys
  prefixed `module.` (DistributedDataParallel), Linear weights (out, in), the
  patch conv OIHW, fixed sin-cos `pos_embed` / `predictor_pos_embed` included.
  The encoder part is also timm's `VisionTransformer(class_token=False,
  global_pool='avg', fc_norm=False, num_classes=0)` layout.
- HuggingFace `IJepaModel` (`encoder_to_hf`): the layout of the published
  `facebook/ijepa_*` checkpoints (`encoder.layer.{i}.attention.attention.query`
  ...), which transformers 4.x loads as is and 5.x renames on load.
"""

import collections
import json
import os
import re
from typing import Any

import numpy as np

from ijepa_jax.formats import InteropError, read_safetensors, read_torch, write_safetensors
from ijepa_jax.models import LN_EPS
from ijepa_jax.pos_embed import sincos_2d

PARTS = ('encoder', 'target_encoder', 'predictor')


# -- our trees <-> the official layout -----------------------------------------------------

_BLOCK_LINEARS = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')
_BLOCK_NORMS = ('norm1', 'norm2')


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float32)


def _blocks_out(layers: Any, prefix: str, sd: dict) -> None:
  depth = np.shape(layers['norm1']['scale'])[0]
  for i in range(depth):
    for n in _BLOCK_NORMS:
      sd[f'{prefix}.{i}.{n}.weight'] = _np(layers[n]['scale'][i])
      sd[f'{prefix}.{i}.{n}.bias'] = _np(layers[n]['bias'][i])
    for n in _BLOCK_LINEARS:
      a, b = n.split('.')
      sd[f'{prefix}.{i}.{n}.weight'] = _np(layers[a][b]['kernel'][i]).T
      sd[f'{prefix}.{i}.{n}.bias'] = _np(layers[a][b]['bias'][i])


def _blocks_in(sd: dict, prefix: str, depth: int) -> dict:
  def stack(name, t=False):
    return np.stack([sd[f'{prefix}.{i}.{name}'].T if t else sd[f'{prefix}.{i}.{name}']
                     for i in range(depth)])
  layers: dict[str, Any] = {n: {'scale': stack(f'{n}.weight'), 'bias': stack(f'{n}.bias')}
                            for n in _BLOCK_NORMS}
  for n in _BLOCK_LINEARS:
    a, b = n.split('.')
    layers.setdefault(a, {})[b] = {'kernel': stack(f'{n}.weight', True), 'bias': stack(f'{n}.bias')}
  return {'layers': layers}


def _depth(sd: dict, prefix: str) -> int:
  idx = {int(m.group(1)) for k in sd if (m := re.match(rf'{re.escape(prefix)}\.(\d+)\.', k))}
  return max(idx) + 1 if idx else 0


def encoder_to_official(params: Any, grid: tuple[int, int]) -> dict[str, np.ndarray]:
  """Our encoder tree -> the official (= timm) state dict, with the sin-cos `pos_embed`."""
  kernel = _np(params['patch_embed']['proj']['kernel'])  # [p, p, C, D]
  sd = {'pos_embed': sincos_2d(kernel.shape[-1], grid)[None],
        'patch_embed.proj.weight': kernel.transpose(3, 2, 0, 1),
        'patch_embed.proj.bias': _np(params['patch_embed']['proj']['bias'])}
  _blocks_out(params['blocks']['layers'], 'blocks', sd)
  sd['norm.weight'] = _np(params['norm']['scale'])
  sd['norm.bias'] = _np(params['norm']['bias'])
  return sd


def predictor_to_official(params: Any, grid: tuple[int, int]) -> dict[str, np.ndarray]:
  """Our predictor tree -> the official predictor state dict (with `predictor_pos_embed`)."""
  width = np.shape(params['mask_token'])[-1]
  sd = {'mask_token': _np(params['mask_token']),
        'predictor_pos_embed': sincos_2d(width, grid)[None],
        'predictor_embed.weight': _np(params['predictor_embed']['kernel']).T,
        'predictor_embed.bias': _np(params['predictor_embed']['bias'])}
  _blocks_out(params['predictor_blocks']['layers'], 'predictor_blocks', sd)
  sd['predictor_norm.weight'] = _np(params['predictor_norm']['scale'])
  sd['predictor_norm.bias'] = _np(params['predictor_norm']['bias'])
  sd['predictor_proj.weight'] = _np(params['predictor_proj']['kernel']).T
  sd['predictor_proj.bias'] = _np(params['predictor_proj']['bias'])
  return sd


def strip_prefix(sd: dict, prefix: str = 'module.') -> dict:
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _grid_of(n: int, what: str) -> tuple[int, int]:
  side = int(round(n ** 0.5))
  if side * side != n:
    raise InteropError(f'{what} has {n} positions, not a square grid')
  return side, side


def _check_keys(sd: dict, expected: dict, what: str) -> None:
  missing = sorted(set(expected) - set(sd))
  extra = sorted(set(sd) - set(expected))
  if missing or extra:
    raise InteropError(f'{what}: ' + '; '.join(
        p for p in (f'missing keys {missing[:6]}' + (' ...' if len(missing) > 6 else '')
                    if missing else '',
                    f'unexpected keys {extra[:6]}' + (' ...' if len(extra) > 6 else '')
                    if extra else '') if p))
  bad = [f'{k}: {tuple(np.shape(sd[k]))} (expected {tuple(np.shape(v))})'
         for k, v in expected.items() if np.shape(sd[k]) != np.shape(v)]
  if bad:
    raise InteropError(f'{what}: shape mismatch at ' + '; '.join(bad[:6]))


def _check_pos(table: np.ndarray, what: str) -> tuple[int, int]:
  n, width = table.shape[-2:]
  grid = _grid_of(n, what)
  if not np.allclose(table.reshape(n, width), sincos_2d(width, grid), atol=1e-4):
    raise InteropError(f'{what} is not the fixed 2-D sin-cos table of a {grid[0]}x{grid[1]} grid; '
                       'ijepa_jax builds that table itself, so such weights would not match')
  return grid


def official_to_encoder(sd: dict, what: str = 'encoder') -> tuple[dict, tuple[int, int]]:
  """An official (or timm) encoder state dict -> (our encoder tree, its patch grid)."""
  sd = strip_prefix(sd)
  if 'patch_embed.proj.weight' not in sd or 'pos_embed' not in sd:
    raise InteropError(f'{what}: not an I-JEPA ViT encoder state dict (keys: {sorted(sd)[:6]} ...)')
  grid = _check_pos(np.asarray(sd['pos_embed']), f'{what}.pos_embed')
  depth = _depth(sd, 'blocks')
  if not depth:
    raise InteropError(f'{what}: no transformer blocks (blocks.0. ...) in the state dict')
  _check_keys(sd, encoder_to_official(_stub_encoder(sd, depth), grid), what)
  params = {'patch_embed': {'proj': {'kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
                                     'bias': sd['patch_embed.proj.bias']}},
            'blocks': _blocks_in(sd, 'blocks', depth),
            'norm': {'scale': sd['norm.weight'], 'bias': sd['norm.bias']}}
  return _f32(params), grid


def official_to_predictor(sd: dict, what: str = 'predictor') -> tuple[dict, tuple[int, int]]:
  """An official predictor state dict -> (our predictor tree, its patch grid)."""
  sd = strip_prefix(sd)
  if 'predictor_embed.weight' not in sd or 'predictor_pos_embed' not in sd:
    raise InteropError(f'{what}: not an I-JEPA predictor state dict (keys: {sorted(sd)[:6]} ...)')
  grid = _check_pos(np.asarray(sd['predictor_pos_embed']), f'{what}.predictor_pos_embed')
  depth = _depth(sd, 'predictor_blocks')
  if not depth:
    raise InteropError(f'{what}: no transformer blocks (predictor_blocks.0. ...) in the state dict')
  _check_keys(sd, predictor_to_official(_stub_predictor(sd, depth), grid), what)
  params = {'predictor_embed': {'kernel': sd['predictor_embed.weight'].T,
                                'bias': sd['predictor_embed.bias']},
            'mask_token': sd['mask_token'],
            'predictor_blocks': _blocks_in(sd, 'predictor_blocks', depth),
            'predictor_norm': {'scale': sd['predictor_norm.weight'],
                               'bias': sd['predictor_norm.bias']},
            'predictor_proj': {'kernel': sd['predictor_proj.weight'].T,
                               'bias': sd['predictor_proj.bias']}}
  return _f32(params), grid


def _f32(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _f32(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def _zeros(shape) -> np.ndarray:
  return np.broadcast_to(np.float32(0), shape)  # no memory: only shapes are compared


def _stub_blocks(width: int, mlp: int, depth: int) -> dict:
  lin = lambda i, o: {'kernel': _zeros((depth, i, o)), 'bias': _zeros((depth, o))}
  norm = {'scale': _zeros((depth, width)), 'bias': _zeros((depth, width))}
  return {'layers': {'norm1': norm, 'norm2': norm,
                     'attn': {'qkv': lin(width, 3 * width), 'proj': lin(width, width)},
                     'mlp': {'fc1': lin(width, mlp), 'fc2': lin(mlp, width)}}}


def _stub_encoder(sd: dict, depth: int) -> dict:
  """The tree (of zero-size stand-ins) the official architecture with sd's sizes would have."""
  w = np.shape(sd['patch_embed.proj.weight'])  # [D, C, p, p]
  mlp = np.shape(sd.get('blocks.0.mlp.fc1.weight', (4 * w[0], w[0])))[0]
  return {'patch_embed': {'proj': {'kernel': _zeros((w[2], w[3], w[1], w[0])),
                                   'bias': _zeros((w[0],))}},
          'blocks': _stub_blocks(w[0], mlp, depth),
          'norm': {'scale': _zeros((w[0],)), 'bias': _zeros((w[0],))}}


def _stub_predictor(sd: dict, depth: int) -> dict:
  dp, d = np.shape(sd['predictor_embed.weight'])
  mlp = np.shape(sd.get('predictor_blocks.0.mlp.fc1.weight', (4 * dp, dp)))[0]
  return {'predictor_embed': {'kernel': _zeros((d, dp)), 'bias': _zeros((dp,))},
          'mask_token': _zeros((1, 1, dp)),
          'predictor_blocks': _stub_blocks(dp, mlp, depth),
          'predictor_norm': {'scale': _zeros((dp,)), 'bias': _zeros((dp,))},
          'predictor_proj': {'kernel': _zeros((dp, d)), 'bias': _zeros((d,))}}


def architecture(encoder: Any, predictor: Any | None = None) -> dict[str, int]:
  """Sizes of imported trees: width, depth, patch_size, mlp_dim, channels (+ pred_*)."""
  k = np.shape(encoder['patch_embed']['proj']['kernel'])
  out = {'width': k[3], 'channels': k[2], 'patch_size': k[0],
         'depth': np.shape(encoder['blocks']['layers']['norm1']['scale'])[0],
         'mlp_dim': np.shape(encoder['blocks']['layers']['mlp']['fc1']['kernel'])[-1]}
  if predictor is not None:
    out.update(pred_width=np.shape(predictor['mask_token'])[-1],
               pred_depth=np.shape(predictor['predictor_blocks']['layers']['norm1']['scale'])[0])
  return {k: int(v) for k, v in out.items()}


def load_official(path: str) -> dict[str, Any]:
  """An official I-JEPA checkpoint -> {'encoder', 'target_encoder', 'predictor': our trees,
  'grid': (h, w), 'architecture': sizes, 'epoch': int or None}."""
  ckpt = read_torch(path)
  if not isinstance(ckpt, dict):
    raise InteropError(f'{path} holds a {type(ckpt).__name__}, not an I-JEPA checkpoint dict')
  missing = [p for p in PARTS if p not in ckpt]
  if missing:
    raise InteropError(f'{path} lacks {missing} (it has {sorted(ckpt)}): an official I-JEPA '
                       f'checkpoint has {list(PARTS)}; for a bare encoder state dict use '
                       'load_encoder_weights')
  out: dict[str, Any] = {'epoch': ckpt.get('epoch')}
  grids = {}
  for part in ('encoder', 'target_encoder'):
    out[part], grids[part] = official_to_encoder(ckpt[part], f'{path}: {part}')
  out['predictor'], grids['predictor'] = official_to_predictor(ckpt['predictor'],
                                                               f'{path}: predictor')
  if len(set(grids.values())) != 1:
    raise InteropError(f'{path}: the parts disagree on the patch grid: {grids}')
  a, t = architecture(out['encoder']), architecture(out['target_encoder'])
  if a != t:
    raise InteropError(f'{path}: encoder {a} and target_encoder {t} differ in shape')
  out['grid'] = grids['encoder']
  out['architecture'] = architecture(out['target_encoder'], out['predictor'])
  if out['architecture']['width'] != np.shape(out['predictor']['predictor_proj']['kernel'])[-1]:
    raise InteropError(f'{path}: the predictor projects to a different width than the encoder')
  return out


def load_encoder_weights(path: str, which: str = 'target_encoder') -> tuple[dict, tuple[int, int]]:
  """An encoder from an official checkpoint (its `which` part), a bare official/timm encoder
  state dict (torch or safetensors), or our own safetensors export -> (tree, grid)."""
  if path.endswith('.safetensors'):
    sd, _ = read_safetensors(path)
    return official_to_encoder(sd, path)
  obj = read_torch(path)
  if isinstance(obj, dict) and which in obj and isinstance(obj[which], dict):
    return official_to_encoder(obj[which], f'{path}: {which}')
  if isinstance(obj, dict) and any(p in obj for p in PARTS):
    raise InteropError(f'{path} has no {which!r} part (it has {sorted(obj)})')
  if isinstance(obj, dict) and 'state_dict' in obj:
    obj = obj['state_dict']
  return official_to_encoder(obj, path)


def official_checkpoint(encoder: Any, target_encoder: Any, predictor: Any,
                        grid: tuple[int, int], epoch: int = 0, **extra) -> dict:
  """The dict the official training code saves (`module.`-prefixed state dicts)."""
  def prefixed(sd):
    return collections.OrderedDict((f'module.{k}', v) for k, v in sd.items())
  return {'encoder': prefixed(encoder_to_official(encoder, grid)),
          'predictor': prefixed(predictor_to_official(predictor, grid)),
          'target_encoder': prefixed(encoder_to_official(target_encoder, grid)),
          'epoch': int(epoch), **extra}


# -- HuggingFace IJepaModel ----------------------------------------------------------------

def encoder_to_hf(params: Any, grid: tuple[int, int], num_heads: int
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json contents, state dict) of a HuggingFace `IJepaModel` equal to our encoder."""
  sd = encoder_to_official(params, grid)
  kernel = np.shape(params['patch_embed']['proj']['kernel'])
  width, patch, channels = kernel[3], kernel[0], kernel[2]
  depth = _depth(sd, 'blocks')
  if grid[0] != grid[1]:
    raise InteropError(f'HuggingFace IJepaModel takes square images; the grid is {grid}')
  out = {'embeddings.position_embeddings': sd['pos_embed'],
         'embeddings.patch_embeddings.projection.weight': sd['patch_embed.proj.weight'],
         'embeddings.patch_embeddings.projection.bias': sd['patch_embed.proj.bias'],
         'layernorm.weight': sd['norm.weight'], 'layernorm.bias': sd['norm.bias']}
  for i in range(depth):
    b, h = f'blocks.{i}', f'encoder.layer.{i}'
    for j, name in enumerate(('query', 'key', 'value')):  # qkv packs [q; k; v] on its rows
      rows = slice(j * width, (j + 1) * width)
      out[f'{h}.attention.attention.{name}.weight'] = sd[f'{b}.attn.qkv.weight'][rows]
      out[f'{h}.attention.attention.{name}.bias'] = sd[f'{b}.attn.qkv.bias'][rows]
    for ours, theirs in (('attn.proj', 'attention.output.dense'), ('mlp.fc1', 'intermediate.dense'),
                         ('mlp.fc2', 'output.dense'), ('norm1', 'layernorm_before'),
                         ('norm2', 'layernorm_after')):
      out[f'{h}.{theirs}.weight'] = sd[f'{b}.{ours}.weight']
      out[f'{h}.{theirs}.bias'] = sd[f'{b}.{ours}.bias']
  config = {
      'architectures': ['IJepaModel'], 'model_type': 'ijepa', 'hidden_size': int(width),
      'num_hidden_layers': int(depth), 'num_attention_heads': int(num_heads),
      'intermediate_size': int(np.shape(sd['blocks.0.mlp.fc1.weight'])[0]),
      'hidden_act': 'gelu', 'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0,
      'layer_norm_eps': LN_EPS, 'image_size': int(grid[0] * patch), 'patch_size': int(patch),
      'num_channels': int(channels), 'qkv_bias': True, 'initializer_range': 0.02,
      'pooler_output_size': int(width), 'pooler_act': 'tanh', 'torch_dtype': 'float32'}
  return config, out


def write_hf(directory: str, params: Any, grid: tuple[int, int], num_heads: int) -> None:
  """A folder that `transformers.IJepaModel.from_pretrained(directory)` loads."""
  config, sd = encoder_to_hf(params, grid, num_heads)
  os.makedirs(directory, exist_ok=True)
  write_safetensors(os.path.join(directory, 'model.safetensors'), sd, {'format': 'pt'})
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2)
