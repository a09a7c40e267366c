"""The one-shot GPU check: attention parity, our train step over its options, and the PyTorch
reference step, on one device; prints one table and writes a JSON.

  python bench/device_check.py [--out device_check.json] [--budget_s 450]   # on one GPU
  python bench/device_check.py --smoke                                        # tiny, on the CPU

Parts, in this order (the PyTorch runs go first, in subprocesses, so that JAX, which takes
most of the GPU's memory when it starts, is not yet holding it):

1. the PyTorch reference step (bench/torch_step.py: the official modules' semantics, bf16
   autocast) for ViT-L/16 and ViT-H/14 at batch 128, official masks;
2. attention parity in our `Attention`: each implementation in bf16 (cuDNN and XLA on a GPU,
   XLA on a CPU) against the same module in float32, outputs and gradients (input and
   parameters), with and without key padding, and cuDNN against XLA directly;
3. our train step for ViT-L/16 and ViT-H/14 at batch 128 (halved until it fits), bf16, over
   remat (none, dots_saveable) x attention (cudnn, xla) x scan_layers (on, off): images/s,
   ms/step, MFU, compile seconds, compiled memory. The most informative settings go first;
   what the time budget (`--budget_s`, default 450 s: the whole check must end within
   8 minutes) does not reach is listed as skipped.

`--smoke` runs every part at tiny sizes on the CPU (a test runs it); its figures mean nothing.
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.stepping import run_torch, step_masks, time_step  # noqa: E402

BF16_RTOL = 5e-2  # of the largest magnitude; bf16 keeps 8 mantissa bits (0.4% a rounding), several deep


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def model_configs(smoke: bool) -> dict:
  """The step configs: ViT-L/16 and ViT-H/14 at batch 128, bf16, official masks (smoke: tiny)."""
  out = {}
  if smoke:
    c = load_config('demo')
    c.model.width, c.model.depth, c.model.num_heads = 32, 2, 2
    c.model.pred_width, c.model.pred_depth = 16, 1
    c.batch_size = 4
    out['tiny (smoke)'] = c
    return out
  for label, name in (('ViT-L/16', 'vitl16'), ('ViT-H/14', 'vith14')):
    c = load_config(name)
    c.batch_size = 128
    c.model.dtype = 'bfloat16'
    c.masks.mode = 'official'
    out[label] = c
  return out


def torch_reference(configs: dict, steps: int, device: str) -> list[dict]:
  """Part 1: the PyTorch step on our masks, cut as the official collator cuts them."""
  from ijepa_jax.spec import resolve_here
  rows = []
  for label, config in configs.items():
    row = {'part': 'torch', 'model': label, 'batch': config.batch_size}
    try:
      run = resolve_here(config)
      row.update(run_torch(run, step_masks(run, steps + 1, config.batch_size), device))
    except Exception as e:  # noqa: BLE001  (a missing torch, an OOM: recorded, not fatal)
      row['error'] = f'{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}'
    rows.append(row)
  return rows


def attention_parity(smoke: bool) -> list[dict]:
  """Part 2: each bf16 implementation of our Attention against float32, and cuDNN vs XLA."""
  import jax
  import jax.numpy as jnp

  from ijepa_jax.models import Attention, cudnn_flash_fits

  gpu = jax.default_backend() in ('gpu', 'cuda')
  shapes = [(2, 17, 2, 16)] if smoke else [(8, 197, 16, 64), (8, 256, 16, 80), (32, 120, 16, 24)]
  rows = []
  for b, n, h, hd in shapes:
    d = h * hd
    kx, kp, kc, kl = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (b, n, d), jnp.float32)
    cot = jax.random.normal(kc, (b, n, d), jnp.float32)
    params = Attention(h, jnp.float32, 'xla').init(kp, x, None)['params']
    for padded in (False, True):
      kv_len = jax.random.randint(kl, (b,), n // 2, n + 1) if padded else None
      real = (jnp.arange(n)[None, :, None] < (kv_len if padded else jnp.full((b,), n))[:, None, None])

      def run(dtype, impl):
        def loss(p, x):
          out = Attention(h, dtype, impl).apply({'params': p}, x, kv_len).astype(jnp.float32)
          return jnp.sum(jnp.where(real, out, 0.0) * cot), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
        return jnp.where(real, out, 0.0), grads

      def rel(a, b):
        leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
        return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-12)) for u, v in leaves)

      ref = run(jnp.float32, 'xla')
      impls = ['xla'] + (['cudnn'] if gpu and cudnn_flash_fits(hd, jnp.bfloat16) else [])
      got = {}
      for impl in impls:
        try:
          got[impl] = run(jnp.bfloat16, impl)
        except Exception as e:  # noqa: BLE001
          rows.append({'part': 'attention', 'shape': [b, n, h, hd], 'padded': padded,
                       'implementation': impl, 'error': f'{type(e).__name__}: {str(e)[:300]}'})
          continue
        rows.append({'part': 'attention', 'shape': [b, n, h, hd], 'padded': padded,
                     'implementation': f'{impl} bf16 vs float32',
                     'out_rel': rel(got[impl][0], ref[0]), 'grad_rel': rel(got[impl][1], ref[1])})
      if 'cudnn' in got and 'xla' in got:
        rows.append({'part': 'attention', 'shape': [b, n, h, hd], 'padded': padded,
                     'implementation': 'cudnn vs xla (both bf16)',
                     'out_rel': rel(got['cudnn'][0], got['xla'][0]),
                     'grad_rel': rel(got['cudnn'][1], got['xla'][1])})
  for r in rows:
    if 'out_rel' in r:
      r['ok'] = r['out_rel'] < BF16_RTOL and r['grad_rel'] < BF16_RTOL
  return rows


def step_grid(configs: dict, steps: int, deadline: float, smoke: bool,
              only: tuple[str, ...] = ()) -> list[dict]:
  """Part 3: our train step over scan x remat x attention, most informative settings first
  (`only`: just these attention implementations)."""
  import jax

  from ijepa_jax.spec import resolve_here

  gpu = jax.default_backend() in ('gpu', 'cuda')
  attentions = tuple(a for a in (('cudnn', 'xla') if gpu else ('xla',)) if not only or a in only)
  if not attentions:  # e.g. --attention cudnn on a CPU
    return [{'part': 'step', 'model': label, 'scan_layers': scan, 'remat': remat,
             'attention': a, 'skipped': f'{a} attention needs a GPU'}
            for a in only for label in configs for scan in (True, False)
            for remat in ('none', 'dots_saveable')]
  order = [(True, 'none', attentions[0]), (True, 'dots_saveable', attentions[0]),
           (True, 'none', attentions[-1]), (False, 'none', attentions[0]),
           (True, 'dots_saveable', attentions[-1]), (False, 'dots_saveable', attentions[0]),
           (False, 'none', attentions[-1]), (False, 'dots_saveable', attentions[-1])]
  seen, settings = set(), []
  for s in order:
    if s not in seen:
      seen.add(s)
      settings.append(s)
  rows = []
  for scan, remat, attention in settings:
    for label, base in configs.items():
      row = {'part': 'step', 'model': label, 'scan_layers': scan, 'remat': remat,
             'attention': attention}
      if time.time() > deadline:
        rows.append(dict(row, skipped='time budget'))
        continue
      batch = base.batch_size
      while True:
        config = base.copy_and_resolve_references()
        config.batch_size = batch
        config.model.scan_layers, config.model.remat_policy = scan, remat
        config.model.attention = attention
        try:
          r = time_step(resolve_here(config), steps)
          r.pop('masks')
          rows.append(dict(row, batch=batch, **r))
          break
        except Exception as e:  # noqa: BLE001
          text = f'{type(e).__name__}: {e}'
          if ('RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()) and batch > 8:
            batch //= 2  # the largest batch that fits
            continue
          rows.append(dict(row, batch=batch, error=text.strip().splitlines()[0][:300]))
          if smoke:
            traceback.print_exc()
          break
  return rows


def table(rows: list[dict]) -> str:
  lines = ['| part | model / shape | setting | batch | ms/step | img/s | MFU | compile s | memory '
           '| parity (out, grad rel.) |', '|' + '---|' * 10]
  for r in rows:
    if r['part'] == 'attention':
      pad = 'padded' if r['padded'] else 'full'
      figs = (f"{r['out_rel']:.2e}, {r['grad_rel']:.2e} {'ok' if r['ok'] else 'FAIL'}"
              if 'out_rel' in r else r.get('error', ''))
      lines.append(f"| attention | {r['shape']} {pad} | {r['implementation']} | | | | | | | {figs} |")
      continue
    if r['part'] == 'torch':
      setting = (f"PyTorch {r.get('torch', '')} "
                 f"{'bf16 autocast' if r.get('device') == 'cuda' else 'float32'}")
    else:
      setting = (f"scan {'on' if r['scan_layers'] else 'off'}, remat {r['remat']}, "
                 f"{r['attention']}")
    if 'skipped' in r or 'error' in r:
      lines.append(f"| {r['part']} | {r['model']} | {setting} | {r.get('batch', '')} | "
                   f"{r.get('skipped') or r.get('error')} | | | | | |")
      continue
    mfu = r.get('mfu')
    mem = r.get('memory', '')
    if r['part'] == 'torch' and not math.isnan(r.get('peak_memory_gib', math.nan)):
      mem = f"{r['peak_memory_gib']:.1f} GiB peak"
    lines.append(
        f"| {r['part']} | {r['model']} | {setting} | {r.get('batch', '')} | {r['step_ms']:,.1f} | "
        f"{r['images_per_sec']:,.1f} | {'' if mfu is None else f'{100 * mfu:.1f}%'} | "
        f"{r.get('compile_s', float('nan')):.1f} | {mem} | |")
  return '\n'.join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU (for the tests)')
  ap.add_argument('--out', default='device_check.json')
  ap.add_argument('--budget_s', type=float, default=450.0,
                  help='seconds after which no further step setting is started')
  ap.add_argument('--steps', type=int, default=0, help='timed steps per setting (0: 5; smoke 1)')
  ap.add_argument('--attention', default='', help='only these step attentions (e.g. cudnn)')
  ap.add_argument('--skip_torch', action='store_true', help='leave out the PyTorch reference')
  args = ap.parse_args()
  start = time.time()
  steps = args.steps or (1 if args.smoke else 5)
  configs = model_configs(args.smoke)

  torch_rows = ([] if args.skip_torch else
                torch_reference(configs, steps, 'cpu' if args.smoke else 'cuda'))
  import jax
  device = f'{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})'
  print(f'device: {device} | jax {jax.__version__}', flush=True)
  parity = attention_parity(args.smoke)
  print(table(parity), flush=True)
  grid = step_grid(configs, steps, start + args.budget_s, args.smoke,
                   tuple(a for a in args.attention.split(',') if a))
  rows = torch_rows + parity + grid
  text = table(rows)
  print(f'\n# device check: {device}, jax {jax.__version__}, {time.time() - start:.0f} s\n')
  print(text)
  with open(args.out, 'w') as f:
    json.dump({'device': device, 'jax': jax.__version__, 'seconds': time.time() - start,
               'smoke': args.smoke, 'rows': rows}, f, indent=1, default=str)
  print(f'\nwritten: {args.out}')


if __name__ == '__main__':
  main()
