"""The train step's measurement, as functions (no flags): compile a config's step on synthetic
images with the config's real masks, time it, and run the official PyTorch step
(bench/torch_step.py) on the same masks. Used by bench_step.py, bench_vs_torch.py,
profile_step.py and device_check.py; `random_state` (a full train state of random numbers)
by bench_checkpoint.py and bench_stop.py; `step_breakdown` (the step in parts) by
bench_step.py and device_check.py; `padding_rows` (executed against useful FLOPs) by
padding.py.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_masks(run, num_steps: int, batch_size: int) -> dict:
  """The run's masks for steps 0 .. num_steps - 1 (host numpy; seed 0), stacked:
  ctx_idx [steps, B, Kc], ctx_len [steps, B], tgt_idx [steps, B, M, Kt], tgt_len [steps, B, M].
  `run`: a `spec.Run` (`spec.resolve_here(config)`), as for every function here."""
  import numpy as np

  from ijepa_jax.packing import batch_masks

  steps = [batch_masks(run.sampler, run.packer, batch_size, 0, s) for s in range(num_steps)]
  return {k: np.stack([m[k] for m in steps]) for k in steps[0]}


def compiled_step(run, num_batches: int) -> tuple[Any, Any, list[dict], dict]:
  """The run's compiled train step, its initial state, `num_batches` device batches
  (synthetic uint8 images, the run's masks) and facts: compile seconds, memory, the masks'
  fixed lengths and host copies."""
  import jax
  import numpy as np

  from ijepa_jax import sharding
  from ijepa_jax.state import StepOnMesh, device_memory, global_batch

  local = run.batch_size // jax.process_count()
  size, ch = run.arch.image_size, run.arch.channels
  images = np.random.default_rng(0).integers(0, 256, size=(local, size, size, ch), dtype=np.uint8)
  masks = step_masks(run, num_batches, local)
  per_step = [{k: v[s] for k, v in masks.items()} for s in range(num_batches)]
  on_mesh = StepOnMesh.build(run, sharding.make_mesh(*run.mesh))  # the trainer's shapes
  mesh = on_mesh.mesh
  state = on_mesh.init(0)
  step, compile_s = on_mesh.compile(state)
  with on_mesh.scope():
    batches = [global_batch({'images': images, **m}, mesh) for m in per_step]
  facts = {'compile_s': compile_s, 'memory': device_memory(step),
           'context_len': masks['ctx_idx'].shape[-1], 'target_len': masks['tgt_idx'].shape[-1],
           'num_targets': masks['tgt_idx'].shape[2],  # [steps, B, M, Kt]
           'masks': masks}
  return step, state, batches, facts


def run_steps(step, state, batches: list) -> tuple[Any, dict, float]:
  """Run the compiled `step` on each batch: (state, last metrics, seconds per step after the
  first, a warm-up)."""
  import jax

  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for b in batches[1:]:
    state, m = step(state, b)
  jax.block_until_ready(m)
  return state, m, (time.perf_counter() - t0) / (len(batches) - 1)


def time_step(run, steps: int) -> dict:
  """Compile the run's train step and time `steps` steps after one warm-up step.

  Returns the figures and the masks of every step (`masks`: a dict of [steps + 1, ...]
  arrays), so that another implementation can be timed on the same ones."""
  import jax

  from ijepa_jax.flops import peak_flops

  step, state, device_batches, facts = compiled_step(run, steps + 1)
  state, m, step_s = run_steps(step, state, device_batches)
  flops = run.arch.step_flops(run.batch_size, run.sampler, run.packer)
  masks = facts['masks']  # the timed steps' real lengths: the work without padding
  useful = sum(run.arch.useful_flops(masks['ctx_len'][s], masks['tgt_len'][s])
               for s in range(1, steps + 1)) / steps * jax.process_count()
  dev = jax.devices()[0]
  peak = peak_flops(dev.device_kind)
  per_dev = flops / step_s / jax.device_count()
  useful_per_dev = useful / step_s / jax.device_count()
  return {
      'device': f'{jax.device_count()} x {dev.device_kind} ({dev.platform})',
      'compile_s': facts['compile_s'], 'memory': facts['memory'], 'step_ms': 1000 * step_s,
      'images_per_sec': run.batch_size / step_s,
      'images_per_sec_per_device': run.batch_size / step_s / jax.device_count(),
      'gflop_per_step': flops / 1e9, 'gflops_per_device': per_dev / 1e9,
      'mfu': per_dev / peak if peak else None, 'loss': float(m['loss']),
      'useful_gflop_per_step': useful / 1e9,
      'mfu_useful': useful_per_dev / peak if peak else None,
      'context_len': facts['context_len'], 'target_len': facts['target_len'],
      'masks': facts['masks'],
  }


def torch_job(run, masks: dict, path: str) -> None:
  """Write the PyTorch step's job: model sizes and every step's masks (`step_masks`)."""
  import numpy as np

  a = run.arch
  np.savez(path, image=a.image_size, patch=a.patch_size, channels=a.channels, width=a.width,
           depth=a.depth, heads=a.num_heads, hidden=a.mlp_dim, pred_width=a.pred_width,
           pred_depth=a.pred_depth, pred_heads=a.pred_heads, **masks)


def torch_cut(run) -> str:
  """How the PyTorch step cuts our masks (bench/torch_step.py): as the official collator for
  the official sampler; not at all (the same padded work as ours) for the corrected one."""
  return 'batch_min' if run.masks.mode == 'official' else 'none'


def torch_python(device: str, override: str = '') -> str:
  """The Python to run the PyTorch step with: `override`, else .venv-torch's on a CPU (this
  machine's torch) when it exists, else this Python (the GPU image has torch in it)."""
  venv = os.path.join(ROOT, '.venv-torch', 'bin', 'python')
  return override or (venv if device == 'cpu' and os.path.exists(venv) else sys.executable)


def run_torch(run, masks: dict, device: str, python: str = '', attention: str = 'official') -> dict:
  """bench/torch_step.py on `run`'s sizes and `masks` (`attention`: 'official', written out,
  or 'sdpa'); its result dict (raises with its stderr). On a CPU it uses every core, as XLA
  does."""
  with tempfile.TemporaryDirectory() as tmp:
    job, out = os.path.join(tmp, 'job.npz'), os.path.join(tmp, 'torch.json')
    torch_job(run, masks, job)
    threads = 0 if device == 'cuda' else os.cpu_count() or 1
    cmd = [torch_python(device, python), os.path.join(ROOT, 'bench', 'torch_step.py'),
           '--job', job, '--out', out, '--device', device, '--threads', str(threads),
           '--cut', torch_cut(run), '--attention', attention]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f'the PyTorch step failed ({" ".join(cmd)}):\n{proc.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)


def random_state(run):
  """The full train state of `run` on the devices, filled with random numbers (constant
  arrays would compress to nothing and flatter the write)."""
  import jax

  from ijepa_jax import sharding
  from ijepa_jax.state import StepOnMesh

  on_mesh = StepOnMesh.build(run, sharding.make_mesh(*run.mesh))
  abstract, sh = on_mesh.abstract, on_mesh.shardings
  with on_mesh.scope():
    def fill(rng):
      leaves, tree = jax.tree.flatten(abstract)
      keys = jax.random.split(rng, len(leaves))
      return jax.tree.unflatten(tree, [jax.random.normal(k, a.shape).astype(a.dtype)
                                       for k, a in zip(keys, leaves)])
    state = jax.jit(fill, out_shardings=sh)(jax.random.key(0))
    return jax.block_until_ready(state)


def _time(fn, args, steps: int) -> tuple[float, float]:
  """(compile seconds, seconds per call) of jitted `fn` on `args`, after one warm-up call."""
  import jax

  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  for _ in range(steps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t0) / steps


def step_breakdown(run, steps: int) -> list[dict]:
  """Rows {part, ms, share of the step's time, gflop, share of the step's FLOPs, compile_s}
  for `run`'s step on this process's devices (one device is what it is meant for)."""
  import jax
  import jax.numpy as jnp
  import optax

  from ijepa_jax import flops as flops_lib
  from ijepa_jax import sharding
  from ijepa_jax.train_step import ema_update, packing_of

  step, state, batches, facts = compiled_step(run, steps + 1)
  model, a = run.model, run.arch
  state, _, whole = run_steps(step, state, batches)
  batch = batches[-1]
  images = batch['images'].astype(jnp.float32) / 255.0  # the scale is all the parts need
  kc, kt, nt = facts['context_len'], facts['target_len'], facts['num_targets']
  b = run.batch_size
  mesh = sharding.make_mesh(*run.mesh)

  def target_fwd(tp, images):
    return model.encoder.apply({'params': tp}, images)

  ctx_rows, pred_rows = packing_of(batch, 'ctx'), packing_of(batch, 'pred')  # masks.pack

  def context_fwd_bwd(p, images, ctx_idx, ctx_len, rows):
    def f(p):
      z = model.encoder.apply({'params': p}, images, ctx_idx, ctx_len, packing=rows)
      return jnp.sum(z * 1e-3)
    return jax.grad(f)(p)

  def predictor_fwd_bwd(p, z, ctx_idx, ctx_len, tgt_idx, tgt_len, rows):
    def f(p, z):
      out = model.predictor.apply({'params': p}, z, ctx_idx, ctx_len, tgt_idx, tgt_len,
                                  packing=rows)
      return jnp.sum(out * 1e-3)
    return jax.grad(f, argnums=(0, 1))(p, z)

  def optimizer_and_ema(params, opt_state, target_params, grads, count):
    updates, opt_state = model.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, ema_update(target_params, params['encoder'],
                                         model.schedules.momentum(count))

  fwd = flops_lib.forward_parts(context_len=kc, target_lens=[kt] * nt, **a.flop_sizes())
  fwd = {k: b * float(v) for k, v in fwd.items()}  # the batch's
  if run.packer is not None:
    for k, v in run.packer.flop_change(a.depth, a.pred_depth).items():
      fwd[k] += v
  total = a.step_flops(b, run.sampler, run.packer)
  with sharding.scope(mesh):
    z = jnp.zeros((b, kc, a.width), jnp.float32)
    grads = jax.tree.map(lambda x: x * 1e-3, state.params)
    parts = [
        ('target encoder forward', jax.jit(target_fwd), (state.target_params, images),
         fwd['target']),
        ('context encoder forward + backward', jax.jit(context_fwd_bwd),
         (state.params['encoder'], images, batch['ctx_idx'], batch['ctx_len'], ctx_rows),
         3 * fwd['context']),
        ('predictor forward + backward', jax.jit(predictor_fwd_bwd),
         (state.params['predictor'], z, batch['ctx_idx'], batch['ctx_len'], batch['tgt_idx'],
          batch['tgt_len'], pred_rows), 3 * fwd['predictor']),
        ('optimizer (AdamW) + EMA', jax.jit(optimizer_and_ema),
         (state.params, state.opt_state, state.target_params, grads, state.step), 0),
    ]
    rows = []
    for name, fn, args, fl in parts:
      compile_s, sec = _time(fn, args, steps)
      rows.append({'part': name, 'ms': 1000 * sec, 'time_share': sec / whole,
                   'gflop': fl / 1e9, 'flop_share': fl / total, 'compile_s': compile_s})
  rest = whole - sum(r['ms'] for r in rows) / 1000
  rows.append({'part': 'remainder (loss, gathers, normalisation; minus overlap)',
               'ms': 1000 * rest, 'time_share': rest / whole,
               'gflop': (total - sum(r['gflop'] * 1e9 for r in rows)) / 1e9,
               'flop_share': 1 - sum(r['flop_share'] for r in rows), 'compile_s': 0.0})
  rows.append({'part': 'whole step', 'ms': 1000 * whole, 'time_share': 1.0,
               'gflop': total / 1e9, 'flop_share': 1.0, 'compile_s': facts['compile_s']})
  return rows


def breakdown_table(rows: list[dict]) -> str:
  """The rows of `step_breakdown` as a markdown table."""
  lines = ['| part | ms | share of the time | GFLOP | share of the FLOPs |',
           '|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['part']} | {r['ms']:,.2f} | {100 * r['time_share']:.1f}% | "
                 f"{r['gflop']:,.1f} | {100 * r['flop_share']:.1f}% |")
  return '\n'.join(lines)


def padding_rows(config, steps: int, batch: int) -> dict:
  """Executed and useful GFLOP per image of `config`'s step, and the parts' excess; and the
  executed GFLOP per image with `masks.pack` at `batch` images per device."""
  import numpy as np

  from ijepa_jax import flops
  from ijepa_jax.spec import resolve

  run = resolve(config, 1)
  a, sampler = run.arch, run.sampler
  packing = config.copy_and_resolve_references()
  packing.masks.pack, packing.batch_size = True, batch
  packer = resolve(packing, 1).packer  # one device's `batch` images packed
  packed = a.step_flops(batch, sampler, packer) / batch
  masks = [sampler(batch, run.seed, s) for s in range(steps)]
  ctx = np.concatenate([m.ctx_len for m in masks])
  tgt = np.concatenate([m.tgt_len for m in masks])
  kc, kt, m = sampler.context_len, sampler.target_len, sampler.num_targets
  executed = a.step_flops(1, sampler)
  useful = a.useful_flops(ctx, tgt) / len(ctx)
  fixed = flops.forward_parts(context_len=kc, target_lens=[kt] * m, **a.flop_sizes())
  real = flops.forward_parts(context_len=ctx, target_lens=tgt, **a.flop_sizes())
  return {
      'mode': config.masks.mode, 'grid': a.grid[0], 'Kc': kc, 'Kt': kt, 'M': m,
      'ctx_mean': float(ctx.mean()), 'tgt_mean': float(tgt.mean()),
      'executed_gflop': executed / 1e9, 'useful_gflop': useful / 1e9,
      'excess': executed / useful - 1,
      'packed_gflop': packed / 1e9, 'packed_excess': packed / useful - 1,
      'packed': packer.describe(),
      'context_excess': fixed['context'] / real['context'].mean() - 1,
      'predictor_excess': fixed['predictor'] / real['predictor'].mean() - 1,
  }
