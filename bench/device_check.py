"""The one-shot GPU check (issue 25): the shipped recipes' step beside the official PyTorch step
with SDPA attention, where the step's time goes, and `main.py` end to end on realistic JPEGs,
on one device, within one call of at most 8 minutes; prints one table, writes a JSON.

  python -m bench.device_check [--out docs/device_check/h200.json] [--budget_s 420]   # one GPU
  python -m bench.device_check --smoke                                                  # CPU, tiny

Parts, in this order (the PyTorch runs first, in subprocesses, before JAX takes most of the
GPU's memory; the goals' figures before the parts that explain them); a part that would start
after `--budget_s` is listed as skipped, and the JSON is rewritten after every part, so a call
cut off at its limit keeps what it measured:

1. `torch`: the official step (bench/torch_step.py, bf16 autocast, attention through
   `F.scaled_dot_product_attention`) for ViT-L/16 and ViT-H/14 at batch 128 on the official
   masks, cut to the batch minimum as the official collator cuts them;
2. `attention`: each attention implementation of our `Attention` in bf16 against float32,
   and cuDNN against XLA (outputs and gradients, with and without key padding);
3. `step`: the shipped configs as they are (`configs/vitl16.py`, `vith14.py`: unrolled
   blocks on a GPU, no remat, cuDNN attention) at 128 images per device: images/s, MFU on
   executed and on useful FLOPs (flops.py), compile seconds, memory;
3b. `input` (with `--input_threads`): the host's decode + RandomResizedCrop on the same
   kind of JPEGs (bench/bench_input.py, the trainer's own `Batches`) at each thread count;
4. `e2e`: `main.py --config=configs/vitl16.py` itself on an image folder of realistic
   JPEGs (bench/jpegs.py: about 500x375, about 100 KB) for `--e2e_steps` steps: images/s
   from its own log, the fraction of the time it waited for input, and the ratio to the
   step's images/s of part 3;
5. `breakdown`: ViT-L/16's step in parts (`stepping.step_breakdown`: target forward, context
   forward + backward, predictor forward + backward, AdamW + EMA, remainder);
6. `packing`: ViT-L/16's step with corrected masks (contexts of every length), padded and
   then packed (`masks.pack`, ijepa_jax/packing.py);
7. `step` again: `vitg16.py` at 128 (does it compile and fit), ViT-L/16 and ViT-H/14 at 256;
8. `xla_flags`: ViT-L/16's step again under each of `--xla_flags` (a subprocess each, as
   XLA reads its flags once);
9. `grid` (only with `--grid` or `--attention`): the issue-13 grid, scan x remat x attention.

`--smoke` runs every part at tiny sizes on the CPU (a test runs it); its figures mean nothing.
"""

import atexit
import functools
import json
import math
import os
import subprocess
import sys
import time
import traceback

from absl import app, flags

from bench import ROOT, load_config
from bench.stepping import run_torch, step_breakdown, step_masks, time_step
from ijepa_jax import cli

# of the largest magnitude; bf16 keeps 8 mantissa bits (0.4% a rounding), several deep
BF16_RTOL = 5e-2


def tiny(config):
  """`config` at the smoke test's tiny sizes (a 2-block width-32 model, batch 4)."""
  config.model.width, config.model.depth, config.model.num_heads = 32, 2, 2
  config.model.pred_width, config.model.pred_depth = 16, 1
  config.batch_size = 4
  return config


def model_configs(smoke: bool) -> dict:
  """The shipped configs as they are, at 128 images per device (smoke: the demo, tiny)."""
  if smoke:
    return {'tiny (smoke)': tiny(load_config('demo'))}
  out = {}
  for label, name in (('ViT-L/16', 'vitl16'), ('ViT-H/14', 'vith14'), ('ViT-g/16', 'vitg16')):
    c = load_config(name)
    c.batch_size = 128
    out[label] = c
  return out


def torch_reference(configs: dict, steps: int, device: str, deadline: float) -> list[dict]:
  """Part 1: the official step with SDPA attention on our masks, cut as the official collator
  cuts them (ViT-L/16 and ViT-H/14; the smoke model)."""
  from ijepa_jax.spec import resolve_here
  rows = []
  for label, config in configs.items():
    if label == 'ViT-g/16':
      continue
    row = {'part': 'torch', 'model': label, 'batch': config.batch_size, 'attention': 'sdpa'}
    if time.time() > deadline:
      rows.append(dict(row, skipped='time budget'))
      continue
    try:
      run = resolve_here(config)
      row.update(run_torch(run, step_masks(run, steps + 1, config.batch_size), device,
                           attention='sdpa'))
    except Exception as e:  # noqa: BLE001  (a missing torch, an OOM: recorded, not fatal)
      row['error'] = f'{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}'
    rows.append(row)
  return rows


def _attention(heads: int, dtype, impl: str, params, x, kv_len, real, cot):
  """Our Attention's output (zero in the padded rows `real` leaves out) and its gradients
  (params, x) under the fixed cotangent `cot`, in `dtype` through `impl`."""
  import jax
  import jax.numpy as jnp

  from ijepa_jax.models import Attention

  def loss(p, x):
    out = Attention(heads, dtype, impl).apply({'params': p}, x, kv_len).astype(jnp.float32)
    return jnp.sum(jnp.where(real, out, 0.0) * cot), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return jnp.where(real, out, 0.0), grads


def _rel(a, b) -> float:
  """The largest |a - b| of a pair of leaves, relative to b's largest magnitude."""
  import jax
  import jax.numpy as jnp

  leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
  return max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-12)) for u, v in leaves)


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
      real = (jnp.arange(n)[None, :, None]
              < (kv_len if padded else jnp.full((b,), n))[:, None, None])
      run = functools.partial(_attention, h, params=params, x=x, kv_len=kv_len, real=real,
                              cot=cot)
      ref = run(jnp.float32, 'xla')
      impls = ['xla'] + (['cudnn'] if gpu and cudnn_flash_fits(hd, jnp.bfloat16) else [])
      got = {}
      for impl in impls:
        try:
          got[impl] = run(jnp.bfloat16, impl)
        except Exception as e:  # noqa: BLE001  (an implementation that fails: recorded)
          rows.append({'part': 'attention', 'shape': [b, n, h, hd], 'padded': padded,
                       'implementation': impl, 'error': f'{type(e).__name__}: {str(e)[:300]}'})
          continue
        rows.append({'part': 'attention', 'shape': [b, n, h, hd], 'padded': padded,
                     'implementation': f'{impl} bf16 vs float32',
                     'out_rel': _rel(got[impl][0], ref[0]), 'grad_rel': _rel(got[impl][1], ref[1])})
      if 'cudnn' in got and 'xla' in got:
        rows.append({'part': 'attention', 'shape': [b, n, h, hd], 'padded': padded,
                     'implementation': 'cudnn vs xla (both bf16)',
                     'out_rel': _rel(got['cudnn'][0], got['xla'][0]),
                     'grad_rel': _rel(got['cudnn'][1], got['xla'][1])})
  for r in rows:
    if 'out_rel' in r:
      r['ok'] = r['out_rel'] < BF16_RTOL and r['grad_rel'] < BF16_RTOL
  return rows


def step_grid(configs: dict, steps: int, deadline: float, smoke: bool,
              only: tuple[str, ...] = ()) -> list[dict]:
  """Part 9: our train step over scan x remat x attention, most informative settings first
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
        except Exception as e:  # noqa: BLE001  (an OOM halves the batch; the rest is recorded)
          text = f'{type(e).__name__}: {e}'
          if ('RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()) and batch > 8:
            batch //= 2  # the largest batch that fits
            continue
          rows.append(dict(row, batch=batch, error=text.strip().splitlines()[0][:300]))
          if smoke:
            traceback.print_exc()
          break
  return rows


def _error(e: Exception) -> str:
  return f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}'


def shipped_steps(configs: dict, steps: int, deadline: float, smoke: bool,
                  factors: tuple[int, ...] = (1, 2), skip=()) -> list[dict]:
  """Part 3: each config as shipped (its platform's defaults) at 128 and (`factors`) 256 images
  per device (ViT-g/16 at 128 only), most informative first, leaving out the (model, batch)
  pairs in `skip`; its images/s, MFU both ways."""

  order = [(label, f) for f in factors for label in configs
           if f == 1 or label != 'ViT-g/16']
  if smoke:  # the tiny config at each factor, so that part 7 is tried before a device run
    order = [(label, f) for f in factors for label in configs]
  order = [(label, f) for label, f in order
           if (label, configs[label].batch_size * f) not in set(skip)]
  rows = []
  for label, factor in order:
    config = configs[label].copy_and_resolve_references()
    config.batch_size *= factor
    rows.append(step_row({'part': 'step', 'model': label, 'batch': config.batch_size}, config,
                         steps, deadline, smoke))
  return rows


def step_row(row: dict, config, steps: int, deadline: float, smoke: bool) -> dict:
  """`row` with `config`'s step timed (`stepping.time_step`), or why it was not."""
  from ijepa_jax.spec import resolve_here

  if time.time() > deadline:
    return dict(row, skipped='time budget')
  try:
    run = resolve_here(config)
    r = time_step(run, steps)
    r.pop('masks')
    packed = {} if run.packer is None else {'packed': run.packer.describe()}
    return dict(row, scan_layers=run.arch.scan_layers, remat=run.arch.remat_policy,
                attention=run.arch.attention_backends['encoder'], **packed, **r)
  except Exception as e:  # noqa: BLE001  (an OOM at 256 is a finding, not a failure)
    if smoke:
      traceback.print_exc()
    return dict(row, error=_error(e))


def packing_part(configs: dict, steps: int, deadline: float, smoke: bool) -> list[dict]:
  """Part 6: the first config with corrected masks (contexts of every length), padded and
  then packed (`masks.pack`, ijepa_jax/packing.py), at its batch per device."""
  label, base = next(iter(configs.items()))
  rows = []
  for pack in (False, True):
    config = base.copy_and_resolve_references()
    config.masks.mode, config.masks.context_len, config.masks.pack = 'corrected', -1, pack
    rows.append(step_row({'part': 'packing', 'model': label, 'batch': config.batch_size},
                         config, steps, deadline, smoke))
  return rows


def breakdown_part(configs: dict, steps: int, deadline: float) -> list[dict]:
  """Part 5: the first config's step in parts (`stepping.step_breakdown`)."""
  from ijepa_jax.spec import resolve_here

  label, config = next(iter(configs.items()))
  if time.time() > deadline:
    return [{'part': 'breakdown', 'model': label, 'skipped': 'time budget'}]
  try:
    return [dict(r, model=label, batch=config.batch_size, **{'part': 'breakdown',
                                                              'piece': r['part']})
            for r in step_breakdown(resolve_here(config), steps)]
  except Exception as e:  # noqa: BLE001  (recorded in the table, not fatal)
    return [{'part': 'breakdown', 'model': label, 'error': _error(e)}]


_JPEGS: dict[int, tuple[str, dict]] = {}  # images -> (folder, its statistics)


def e2e_part(label: str, config_name: str, steps: int, images: int, deadline: float,
             smoke: bool, step_rows: list[dict], extra: tuple[str, ...] = (),
             keep: str = '') -> list[dict]:
  """Part 4: `main.py` on an image folder of realistic JPEGs; images/s and input wait from its
  own metrics.jsonl (the log rows after the first, which holds the compile; their mean and
  median, as a health check's or a feature map's first compile lands in one window), against
  the same config's step alone (part 3). `extra`: more overrides; `keep`: a folder that gets
  main.py's output and metrics.jsonl."""
  import shutil
  import statistics
  import tempfile

  from bench.jpegs import make_jpegs

  row = {'part': 'e2e', 'model': label, 'steps': steps, 'overrides': ' '.join(extra)}
  if time.time() > deadline:
    return [dict(row, skipped='time budget')]
  if images not in _JPEGS:  # written once, read by every variant
    t0 = time.time()
    folder = tempfile.mkdtemp(prefix='device_check_jpegs_')
    atexit.register(shutil.rmtree, folder, True)  # written for this run only
    stats = make_jpegs(os.path.join(folder, 'data'), images, size=(64, 48) if smoke else None)
    _JPEGS[images] = (folder, dict(stats, seconds=time.time() - t0))
  data_dir = os.path.join(_JPEGS[images][0], 'data')
  row['jpegs'] = _JPEGS[images][1]
  with tempfile.TemporaryDirectory() as tmp:
    log_every = max(1, steps // 6)
    args = [sys.executable, os.path.join(ROOT, 'main.py'),
            f'--config={os.path.join(ROOT, "configs", config_name + ".py")}',
            f'--workdir={os.path.join(tmp, "run")}', '--config.data.dataset=image_folder',
            '--config.data.dataset_size=-1',  # the folder's own size, not ImageNet's
            f'--config.data.data_dir={data_dir}',
            f'--config.batch_size={4 if smoke else 128}', f'--config.max_steps={steps}',
            f'--config.log_every={log_every}', '--config.monitor.progress=False',
            # no labelled evaluation split in the folder: the evaluations stay off
            '--config.evals.dataset=', '--config.evals.every=0', '--config.evals.at_end=False']
    if smoke:
      args += ['--config.data.image_size=64', '--config.model.patch_size=8',
               '--config.model.width=32', '--config.model.depth=2', '--config.model.num_heads=2',
               '--config.model.pred_width=16', '--config.model.pred_depth=1',
               '--config.masks.min_keep=4', '--config.monitor.pictures=False']
    args += list(extra)
    t0 = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                          timeout=max(60, deadline + 240 - time.time()))
    row['wall_s'] = time.time() - t0
    if keep:
      tag = f'e2e{len(os.listdir(keep)) // 2 if os.path.isdir(keep) else 0}'
      os.makedirs(keep, exist_ok=True)
      with open(os.path.join(keep, f'{tag}_main.log'), 'w') as f:
        f.write(' '.join(args) + '\n' + proc.stdout + proc.stderr)
      if os.path.exists(os.path.join(tmp, 'run', 'metrics.jsonl')):
        shutil.copy(os.path.join(tmp, 'run', 'metrics.jsonl'),
                    os.path.join(keep, f'{tag}_metrics.jsonl'))
    if proc.returncode != 0:
      return [dict(row, error=f'main.py exit {proc.returncode}: {proc.stderr.strip()[-600:]}')]
    metrics = [json.loads(line) for line in open(os.path.join(tmp, 'run', 'metrics.jsonl'))]
  logs = [m for m in metrics if 'images_per_sec' in m][1:]  # the first holds the compile
  if not logs:
    return [dict(row, error='too few log rows: raise --e2e_steps')]
  row['images_per_sec'] = sum(m['images_per_sec'] for m in logs) / len(logs)
  row['median_images_per_sec'] = statistics.median(m['images_per_sec'] for m in logs)
  row['input_wait'] = sum(m['input_wait'] for m in logs) / len(logs)
  for key in ('mfu', 'mfu_useful'):
    if key in logs[-1]:
      row[key] = sum(m[key] for m in logs) / len(logs)
  alone = [r for r in step_rows if r.get('model') == label and 'images_per_sec' in r
           and r.get('batch') == (4 if smoke else 128)]
  if alone:
    row['step_images_per_sec'] = alone[0]['images_per_sec']
    row['of_step'] = row['images_per_sec'] / alone[0]['images_per_sec']
  return [row]


def input_part(images: int, batch: int, threads: str, deadline: float) -> list[dict]:
  """The host's decode + RandomResizedCrop on realistic JPEGs (bench/bench_input.py, the
  trainer's own `Batches`) at each thread count: images/s in all and per thread."""
  row = {'part': 'input', 'model': 'host', 'threads': threads}
  if time.time() > deadline:
    return [dict(row, skipped='time budget')]
  proc = subprocess.run([sys.executable, '-m', 'bench.bench_input',
                         f'--images={images}', f'--batch={batch}', f'--threads={threads}',
                         '--repeats=1'], capture_output=True, text=True, cwd=ROOT)
  if proc.returncode != 0:
    return [dict(row, error=proc.stderr.strip()[-300:])]
  rows = []
  # 'original, reduced decode, threads 16: 5,120 img/s, 320 img/s per thread'
  for line in proc.stdout.splitlines():
    if 'decode, threads' in line and 'per thread' in line:
      head, figs = line.split(':', 1)
      rows.append(dict(row, setting=head.strip(), threads=int(head.rsplit(' ', 1)[1]),
                       images_per_sec=float(figs.split('img/s')[0].replace(',', ''))))
  return rows or [dict(row, error='no figures in: ' + proc.stdout[-300:])]


def xla_flags_part(config_name: str, variants: list[str], deadline: float,
                   smoke: bool) -> list[dict]:
  """Part 8: the config's step (bench/bench_step.py) under each XLA_FLAGS variant."""
  rows = []
  for variant in variants:
    row = {'part': 'xla_flags', 'model': config_name, 'flags': variant or '(none)'}
    if time.time() > deadline:
      rows.append(dict(row, skipped='time budget'))
      continue
    args = [sys.executable, '-m', 'bench.bench_step',
            f'--config={os.path.join(ROOT, "configs", config_name + ".py")}',
            f'--config.batch_size={4 if smoke else 128}', f'--steps={1 if smoke else 5}']
    if smoke:
      args += ['--config.model.depth=2', '--config.model.width=32', '--config.model.num_heads=2',
               '--config.model.pred_width=16', '--config.model.pred_depth=1']
    env = dict(os.environ,
               XLA_FLAGS=' '.join(filter(None, [os.environ.get('XLA_FLAGS', ''), variant])))
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
      rows.append(dict(row, error=proc.stderr.strip()[-300:]))
      continue
    for line in proc.stdout.splitlines():
      if line.startswith('step:'):  # 'step: 102.4 ms | 1,249.5 images/s | ...'
        parts = line.split('|')
        row['step_ms'] = float(parts[0].split()[1])
        row['images_per_sec'] = float(parts[1].split()[0].replace(',', ''))
    rows.append(row)
  return rows


def _pct(v) -> str:
  return '' if v is None else f'{100 * v:.1f}%'


def table(rows: list[dict]) -> str:
  """Every row of every part in one markdown table."""
  lines = ['| part | model / shape | setting | batch | ms/step | img/s | MFU (executed / useful) '
           '| compile s | memory | other |', '|' + '---|' * 10]
  for r in rows:
    part = r['part']
    if part == 'attention':
      pad = 'padded' if r['padded'] else 'full'
      figs = (f"out {r['out_rel']:.2e}, grad {r['grad_rel']:.2e} {'ok' if r['ok'] else 'FAIL'}"
              if 'out_rel' in r else r.get('error', ''))
      lines.append(f"| attention | {r['shape']} {pad} | {r['implementation']} | | | | | | | "
                   f"{figs} |")
      continue
    if part == 'torch':
      setting = (f"PyTorch {r.get('torch', '')}, {r.get('attention', '')} attention, "
                 f"{'bf16 autocast' if r.get('device') == 'cuda' else 'float32'}")
    elif part == 'breakdown':
      setting = r.get('piece', '')
    elif part == 'e2e':
      setting = f"main.py, {r['steps']} steps, JPEG folder"
    elif part == 'input':
      setting = r.get('setting', f"threads {r['threads']}")
    elif part == 'xla_flags':
      setting = f"XLA_FLAGS {r['flags']}"
    elif part == 'packing':
      setting = f"corrected masks, {'packed: ' + r['packed'] if 'packed' in r else 'padded'}"
    else:
      setting = (f"scan {'on' if r.get('scan_layers') else 'off'}, remat {r.get('remat')}, "
                 f"{r.get('attention')}")
    if 'skipped' in r or 'error' in r:
      lines.append(f"| {part} | {r['model']} | {setting} | {r.get('batch', '')} | | | | | | "
                   f"{r.get('skipped') or r.get('error')} |")
      continue
    if part == 'breakdown':
      lines.append(f"| breakdown | {r['model']} | {setting} | {r.get('batch', '')} | "
                   f"{r['ms']:,.2f} | | | | | {100 * r['time_share']:.1f}% of the time, "
                   f"{100 * r['flop_share']:.1f}% of the FLOPs |")
      continue
    other = ''
    if part == 'e2e':
      other = (f"median window {r['median_images_per_sec']:,.1f} img/s; " if
               'median_images_per_sec' in r else '') + (f"{r['overrides']}; " if r.get('overrides')
                                                       else '')
      other += (f"input wait {100 * r['input_wait']:.1f}%; {100 * r['of_step']:.1f}% of the "
               f"step alone ({r['step_images_per_sec']:,.1f} img/s); JPEGs "
               f"{r['jpegs']['mean_kb']:.0f} KB" if 'of_step' in r else
               f"input wait {100 * r['input_wait']:.1f}%")
    mem = r.get('memory', '')
    if part == 'torch' and not math.isnan(r.get('peak_memory_gib', math.nan)):
      mem = f"{r['peak_memory_gib']:.1f} GiB peak"
    mfu = (f"{_pct(r.get('mfu'))} / {_pct(r.get('mfu_useful'))}"
           if r.get('mfu') is not None else '')
    ms = f"{r['step_ms']:,.1f}" if 'step_ms' in r else ''
    comp = f"{r['compile_s']:.1f}" if 'compile_s' in r else ''
    lines.append(f"| {part} | {r['model']} | {setting} | {r.get('batch', '')} | {ms} | "
                 f"{r['images_per_sec']:,.1f} | {mfu} | {comp} | {mem} | {other} |")
  return '\n'.join(lines)


PARTS = ('torch', 'attention', 'step', 'input', 'e2e', 'breakdown', 'packing', 'more_steps',
         'xla_flags')
XLA_VARIANTS = ('', '--xla_gpu_enable_latency_hiding_scheduler=true',
                '--xla_gpu_enable_triton_gemm=false')

flags.DEFINE_bool('smoke', False, 'tiny sizes on the CPU (for the tests)')
flags.DEFINE_string('out', 'device_check.json', 'the JSON to write (after every part)')
flags.DEFINE_float('budget_s', 420.0, 'seconds after which no further part or setting is started')
flags.DEFINE_integer('steps', 0, 'timed steps per setting (0: 5; smoke 1)')
flags.DEFINE_integer('e2e_steps', 0, "main.py's steps (0: 300; smoke 6)")
flags.DEFINE_integer('e2e_images', 0, 'JPEGs written (0: 4096; smoke 24)')
flags.DEFINE_string('xla_flags', '|'.join(XLA_VARIANTS),
                    "'|'-separated XLA_FLAGS variants for part 8 ('' is the baseline)")
flags.DEFINE_bool('skip_torch', False, 'leave out the PyTorch reference')
flags.DEFINE_list('parts', list(PARTS), f"which parts, comma-separated (of {','.join(PARTS)})")
flags.DEFINE_string('e2e_args', '', "more main.py overrides for the e2e part; '|' separates "
                    "variants, each run in turn (e.g. '|--config.monitor.health_every=0')")
flags.DEFINE_string('keep', '', "a folder for main.py's output and metrics.jsonl")
flags.DEFINE_list('models', [], "only these models, e.g. 'ViT-L/16'")
flags.DEFINE_string('input_threads', '1,16', 'thread counts for the input part')
flags.DEFINE_bool('grid', False, 'also the scan x remat x attention grid')
flags.DEFINE_list('attention', [],
                  'the grid with only these attentions (e.g. cudnn; implies --grid)')
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  start = time.time()
  deadline = start + FLAGS.budget_s
  steps = FLAGS.steps or (1 if FLAGS.smoke else 5)
  configs = model_configs(FLAGS.smoke)
  if FLAGS.models:
    configs = {k: v for k, v in configs.items() if k in FLAGS.models}
    if not configs:
      cli.fail(f'--models: none of {",".join(FLAGS.models)!r} is among '
               f'{", ".join(model_configs(FLAGS.smoke))}')

  parts = set(FLAGS.parts)
  unknown = parts - set(PARTS)
  if unknown:
    cli.fail(f"--parts: no part {', '.join(sorted(unknown))}; the parts are {', '.join(PARTS)}")
  torch_rows = ([] if FLAGS.skip_torch or 'torch' not in parts else
                torch_reference(configs, steps, 'cpu' if FLAGS.smoke else 'cuda', deadline))
  import jax
  device = f'{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})'
  print(f'device: {device} | jax {jax.__version__}', flush=True)
  rows = torch_rows + (attention_parity(FLAGS.smoke) if 'attention' in parts else [])

  def save() -> None:  # after every part: a call cut off at its limit keeps what it measured
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump({'device': device, 'jax': jax.__version__, 'seconds': time.time() - start,
                 'smoke': FLAGS.smoke, 'rows': rows}, f, indent=1, default=str)
    print(table(rows), flush=True)

  # the figures the issue's goals name first (L/16 and H/14 at 128, then main.py end to end),
  # then the parts that explain them, then the larger batches and ViT-g/16
  first = next(iter(configs))
  main_configs = {k: v for k, v in configs.items() if k != 'ViT-g/16'}
  step_rows = (shipped_steps(main_configs, steps, deadline, FLAGS.smoke, factors=(1,))
               if 'step' in parts else [])
  rows += step_rows
  save()
  if 'input' in parts:
    rows += input_part(64 if FLAGS.smoke else 512, 16 if FLAGS.smoke else 128,
                       '1,2' if FLAGS.smoke else FLAGS.input_threads, deadline)
    save()
  if 'e2e' in parts:
    for variant in FLAGS.e2e_args.split('|'):
      rows += e2e_part(first, 'vitl16', FLAGS.e2e_steps or (6 if FLAGS.smoke else 300),
                       FLAGS.e2e_images or (24 if FLAGS.smoke else 4096), deadline, FLAGS.smoke,
                       step_rows, tuple(variant.split()), FLAGS.keep)
      save()
  if 'breakdown' in parts:
    rows += breakdown_part(configs, steps, deadline)
    save()
  if 'packing' in parts:
    rows += packing_part(configs, steps, deadline, FLAGS.smoke)
    save()
  if 'more_steps' in parts:
    rows += shipped_steps(configs, steps, deadline, FLAGS.smoke, factors=(1, 2),
                          skip=[(r['model'], r['batch']) for r in step_rows])
    save()
  if 'xla_flags' in parts:
    variants = FLAGS.xla_flags.split('|') if not FLAGS.smoke else ['']
    rows += xla_flags_part('demo' if FLAGS.smoke else 'vitl16', variants, deadline, FLAGS.smoke)
  if FLAGS.grid or FLAGS.attention:
    rows += step_grid({k: v for k, v in configs.items() if k != 'ViT-g/16'}, steps, deadline,
                      FLAGS.smoke, tuple(FLAGS.attention))
  print(f'\n# device check: {device}, jax {jax.__version__}, {time.time() - start:.0f} s\n')
  save()
  print(f'\nwritten: {FLAGS.out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
