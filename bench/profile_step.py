"""Where the train step's time goes: a jax.profiler trace of a few steps, summed by XLA op.

  python -m bench.profile_step --config=configs/demo.py [--config.*=...] [--steps=3] [--top=25]

Prints the step's wall time, then the time of its compiled ops (thunks) grouped three ways:
by kind (matmuls and reductions, elementwise fusions, copies, dynamic slices, broadcasts),
by model part and pass (forward / backward, from each op's JAX name), and the single most
expensive ops with their shapes. On a CPU, XLA runs independent ops on both cores at once,
so the sums can exceed the wall time. This is how the scan's stacked activation buffers and
the erfc GELU were found (docs/PERFORMANCE.md).
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

from absl import app, flags
from ml_collections import config_flags

from ijepa_jax import cli

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 3, 'Profiled steps (after one warm-up step).')
flags.DEFINE_integer('top', 25, 'Rows of each table.')
FLAGS = flags.FLAGS


def op_kind(name: str) -> str:
  if 'dynamic' in name:
    return 'dynamic slice / update'
  if name.startswith(('ynn', 'xnn', 'dot', 'onednn', 'custom', 'cublas', 'cudnn', 'gemm')):
    return 'matmul / reduction library call'
  if 'copy' in name or 'transpose' in name:
    return 'copy / transpose'
  if 'broadcast' in name and name.startswith('wrapped'):
    return 'broadcast (buffer fill)'
  if 'gather' in name or 'scatter' in name:
    return 'gather / scatter'
  return 'elementwise / other fusion'


def module_of(op_name: str) -> str:
  """'jit(step)/transpose(jvp(Predictor))/predictor_blocks/Block_3/mlp/fc1/dot_general' ->
  'bwd Predictor/predictor_blocks/mlp/fc1'."""
  direction = 'bwd' if 'transpose(' in op_name else 'fwd'
  parts = [p for p in re.split(r'[/()]', op_name)
           if p and p not in ('jvp', 'transpose', 'jit', 'step', 'checkpoint', 'remat')
           and not re.fullmatch(r'(Block|layers)_\d+|\d+', p)]
  parts = [p for p in parts if not p.startswith('jit')]
  return f'{direction} {"/".join(parts[:-1][:4]) or "(step)"}'


def main(argv):
  del argv
  import jax

  from bench.stepping import compiled_step
  from ijepa_jax.spec import resolve_here

  step, state, batches, _ = compiled_step(resolve_here(FLAGS.config), FLAGS.steps + 1)
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    for b in batches[1:]:
      state, m = step(state, b)
    jax.block_until_ready(m)
    jax.profiler.stop_trace()
    trace = glob.glob(os.path.join(tmp, 'plugins', 'profile', '*', 'perfetto_trace.json.gz'))[0]
    with gzip.open(trace) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  hlo = step.as_text()
  shapes = dict(re.findall(r'%([\w.\-]+) = (\S+) ', hlo))
  names = dict(re.findall(r'%([\w.\-]+) = [^\n]*?op_name="([^"]+)"', hlo))
  n = FLAGS.steps
  wall = sum(e['dur'] for e in events if e.get('ph') == 'X'
             and e['name'] == 'ThunkExecutor::Execute (wait for completion)') / n / 1000
  by_kind, by_module, by_op = collections.Counter(), collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or e['name'] not in shapes:
      continue
    ms = e['dur'] / n / 1000
    by_kind[op_kind(e['name'])] += ms
    by_module[module_of(names.get(e['name'], ''))] += ms
    by_op[(e['name'].split('.')[0], shapes[e['name']], names.get(e['name'], '')[-70:])] += ms
  print(f'step (wall, in XLA): {wall:.1f} ms over {n} steps; ops below in ms per step')
  for title, table in (('by kind', by_kind), ('by model part and pass', by_module)):
    print(f'\n{title}:')
    for key, ms in table.most_common(FLAGS.top):
      print(f'  {ms:9.1f}  {key}')
  print('\nmost expensive ops (kind, shape, JAX name):')
  for (kind, shape, name), ms in by_op.most_common(FLAGS.top):
    print(f'  {ms:9.1f}  {kind:28s} {shape:26s} {name}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
