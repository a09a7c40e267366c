"""Where the train step's time goes: its parts compiled and timed one by one.

  python bench/breakdown.py --config=configs/vitl16.py [--config.batch_size=128] [--steps=5]

The parts, each jitted on its own on the step's own shapes, state and masks: the target
encoder's forward pass (whole images, no gradient); the context encoder's forward and
backward (its context tokens, a fixed cotangent); the predictor's forward and backward; the
optimizer (AdamW) and the EMA of the target encoder. The whole step is timed beside them;
what the parts do not account for (the loss, gathers, normalisation, and whatever XLA
overlaps or fuses across parts when it compiles them together) is the remainder, which may
be negative. Each part's analytic FLOPs and its share of the step's are printed with it.
`bench/device_check.py` runs this on the GPU; the figures are in docs/PERFORMANCE.md.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from bench.stepping import compiled_step, run_steps
  from ijepa_jax import flops as flops_lib
  from ijepa_jax import sharding
  from ijepa_jax.train_step import ema_update

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

  def context_fwd_bwd(p, images, ctx_idx, ctx_len):
    def f(p):
      z = model.encoder.apply({'params': p}, images, ctx_idx, ctx_len)
      return jnp.sum(z * 1e-3)
    return jax.grad(f)(p)

  def predictor_fwd_bwd(p, z, ctx_idx, ctx_len, tgt_idx, tgt_len):
    def f(p, z):
      out = model.predictor.apply({'params': p}, z, ctx_idx, ctx_len, tgt_idx, tgt_len)
      return jnp.sum(out * 1e-3)
    return jax.grad(f, argnums=(0, 1))(p, z)

  def optimizer_and_ema(params, opt_state, target_params, grads, count):
    updates, opt_state = model.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, ema_update(target_params, params['encoder'],
                                         model.schedules.momentum(count))

  fwd = flops_lib.forward_parts(context_len=kc, target_lens=[kt] * nt, **a.flop_sizes())
  total = a.step_flops(b, run.sampler())
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    z = jnp.zeros((b, kc, a.width), jnp.float32)
    grads = jax.tree.map(lambda x: x * 1e-3, state.params)
    parts = [
        ('target encoder forward', jax.jit(target_fwd), (state.target_params, images),
         b * fwd['target']),
        ('context encoder forward + backward', jax.jit(context_fwd_bwd),
         (state.params['encoder'], images, batch['ctx_idx'], batch['ctx_len']),
         3 * b * fwd['context']),
        ('predictor forward + backward', jax.jit(predictor_fwd_bwd),
         (state.params['predictor'], z, batch['ctx_idx'], batch['ctx_len'], batch['tgt_idx'],
          batch['tgt_len']), 3 * b * float(fwd['predictor'])),
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


def table(rows: list[dict]) -> str:
  lines = ['| part | ms | share of the time | GFLOP | share of the FLOPs |', '|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['part']} | {r['ms']:,.2f} | {100 * r['time_share']:.1f}% | "
                 f"{r['gflop']:,.1f} | {100 * r['flop_share']:.1f}% |")
  return '\n'.join(lines)


def main(argv):
  del argv
  from ijepa_jax.spec import resolve_here
  print(table(step_breakdown(resolve_here(FLAGS.config), FLAGS.steps)))


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags

  from ijepa_jax import cli
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_integer('steps', 5, 'Timed calls per part (after one warm-up call).')
  FLAGS = flags.FLAGS
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
