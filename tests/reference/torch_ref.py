"""The PyTorch side of the interop tests, run in its own Python (3.11) with torch CPU,
transformers and timm: `python torch_ref.py job.json`.

job.json: {"tasks": [{"kind": ..., ...}, ...]}; every task writes its result files.

- hf:   IJepaModel.from_pretrained(dir) on images.npy (NHWC) -> out.npy tokens
- timm: timm VisionTransformer (no class token, avg pool) with a state dict from a
        safetensors file or a torch checkpoint's part -> out.npy tokens
- load: torch.load(path, weights_only=True) -> npz of every tensor (flattened names) + json
- shapes: names and shapes of IJepaModel / timm VisionTransformer of given sizes (meta device)
- save: torch.save an official-layout checkpoint made in torch from an npz of state dicts
        (nn.Parameters, a real AdamW state, module. prefixes) -> path
"""

import collections
import importlib.abc
import importlib.machinery
import json
import sys
import types

import numpy as np
import torch


def _stub_torchvision() -> None:
  """timm imports torchvision at import time (for data transforms and FrozenBatchNorm2d) but
  its VisionTransformer never uses it; there is no CPU build of torchvision on this machine
  kind, so stand-in modules answer those imports. Import transformers before this."""
  class AnyMeta(type):
    def __getattr__(cls, name):
      if name.startswith('__'):
        raise AttributeError(name)
      return AnyMeta(name, (), {})

  class Stub(types.ModuleType):
    def __getattr__(self, name):
      if name.startswith('__'):
        raise AttributeError(name)
      return AnyMeta(name, (), {})

  class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
      if fullname == 'torchvision' or fullname.startswith('torchvision.'):
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
      return None

    def create_module(self, spec):
      return Stub(spec.name)

    def exec_module(self, module):
      module.__path__ = []

  try:
    import torchvision  # noqa: F401  (a real one, if it works here)
  except Exception:  # noqa: BLE001  (a torchvision that fails to import in any way: the stand-in)
    sys.modules.pop('torchvision', None)
    sys.meta_path.insert(0, Finder())


def _images(path: str) -> torch.Tensor:
  return torch.from_numpy(np.load(path)).permute(0, 3, 1, 2).contiguous()


def hf(task: dict) -> None:
  from transformers import IJepaModel
  model = IJepaModel.from_pretrained(task['dir']).eval()
  with torch.no_grad():
    out = model(pixel_values=_images(task['images'])).last_hidden_state
  np.save(task['out'], out.numpy())


def timm_vit(task: dict) -> None:
  import transformers  # noqa: F401  (before the torchvision stand-in)
  _stub_torchvision()
  from timm.models.vision_transformer import VisionTransformer
  model = VisionTransformer(class_token=False, global_pool='avg', fc_norm=False, num_classes=0,
                            **task['kwargs']).eval()
  if task['weights'].endswith('.safetensors'):
    from safetensors.torch import load_file
    sd = load_file(task['weights'])
  else:
    sd = torch.load(task['weights'], weights_only=True)[task['part']]
    sd = {k.removeprefix('module.'): v for k, v in sd.items()}
  model.load_state_dict(sd, strict=True)
  with torch.no_grad():
    out = model.forward_features(_images(task['images']))
  np.save(task['out'], out.numpy())


def _flatten(obj, prefix, arrays, scalars):
  if isinstance(obj, torch.Tensor):
    arrays[prefix] = obj.float().numpy() if obj.dtype == torch.bfloat16 else obj.numpy()
  elif isinstance(obj, dict):
    for k, v in obj.items():
      _flatten(v, f'{prefix}/{k}' if prefix else str(k), arrays, scalars)
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _flatten(v, f'{prefix}/{i}', arrays, scalars)
  else:
    scalars[prefix] = obj


def load(task: dict) -> None:
  obj = torch.load(task['path'], weights_only=True)
  arrays, scalars = {}, {}
  _flatten(obj, '', arrays, scalars)
  np.savez(task['out'], **arrays)
  with open(task['out'] + '.json', 'w') as f:
    json.dump({'scalars': scalars, 'types': {k: type(v).__name__ for k, v in obj.items()}}, f)


def save(task: dict) -> None:
  data = np.load(task['npz'])
  parts = collections.defaultdict(collections.OrderedDict)
  for key in data.files:
    part, name = key.split('/', 1)
    fixed = name.endswith('pos_embed')  # the official sin-cos tables: requires_grad=False
    parts[part][name] = torch.nn.Parameter(torch.from_numpy(data[key].copy()),
                                           requires_grad=not fixed)
  # a real optimizer state over (copies of) the trainable encoder and predictor parameters
  params = [torch.nn.Parameter(p.detach().clone()) for part in ('encoder', 'predictor')
            for p in parts[part].values() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-3)
  for p in params:
    p.grad = torch.ones_like(p)
  opt.step()
  ckpt = {
      'encoder': {f'module.{k}': v.detach() for k, v in parts['encoder'].items()},
      'predictor': collections.OrderedDict(
          (f'module.{k}', v) for k, v in parts['predictor'].items()),  # Parameters, as saved
      'target_encoder': {f'module.{k}': v.detach() for k, v in parts['target_encoder'].items()},
      'opt': opt.state_dict(), 'scaler': None, 'epoch': 7, 'loss': 0.25, 'batch_size': 2048,
      'world_size': 16, 'lr': 1e-3,
      'extra_bf16': torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
      'extra_view': torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous: strides matter
  }
  torch.save(ckpt, task['path'])


def shapes(task: dict) -> None:
  """Parameter names and shapes of IJepaModel (its current layout) and of timm's
  VisionTransformer at the given sizes, built on the meta device (no memory)."""
  from transformers import IJepaConfig, IJepaModel
  with open(task['hf_config']) as f:
    cfg = json.load(f)
  with torch.device('meta'):
    hf_model = IJepaModel(IJepaConfig(**{k: v for k, v in cfg.items() if k != 'architectures'}))
  _stub_torchvision()
  from timm.models.vision_transformer import VisionTransformer
  with torch.device('meta'):
    timm_model = VisionTransformer(class_token=False, global_pool='avg', fc_norm=False,
                                   num_classes=0, **task['timm_kwargs'])
  out = {name: {k: list(v.shape) for k, v in m.state_dict().items()}
         for name, m in (('hf', hf_model), ('timm', timm_model))}
  with open(task['out'], 'w') as f:
    json.dump(out, f)


def main(path: str) -> None:
  with open(path) as f:
    job = json.load(f)
  kinds = {'hf': hf, 'timm': timm_vit, 'load': load, 'save': save, 'shapes': shapes}
  for task in job['tasks']:
    kinds[task['kind']](task)


if __name__ == '__main__':
  main(sys.argv[1])
