"""Per-device memory and compile time of the train step on a simulated CPU mesh.

  python -m bench.bench_memory --devices=64 --configs=vitl16,vith14,vitg16 \
      --meshes=64x1,8x8,1x64 --remat=none,full --per_device_batch=128 [--accum=1,4]

Nothing is allocated: the step is compiled from shapes alone (`compile_abstract_step`)
for `devices` simulated CPU devices, and XLA's memory analysis of the compiled step
gives the bytes one device needs (state + batch + temporaries, less what is donated).
The CPU backend lays memory out like an accelerator's for this purpose, but its fusion
and rematerialisation decisions differ, so treat the figures as estimates (TPU and GPU
compilers usually need less for temporaries).
"""

import os

from absl import app, flags

from bench import load_config
from ijepa_jax import cli

flags.DEFINE_integer('devices', 8, 'Simulated CPU devices.')
flags.DEFINE_list('configs', ['vitl16', 'vith14', 'vitg16'], 'configs/<name>.py to compile.')
flags.DEFINE_list('meshes', ['8x1', '1x8'], 'data x fsdp meshes.')
flags.DEFINE_list('remat', ['none', 'full'], 'model.remat_policy values.')
flags.DEFINE_integer('per_device_batch', 128, 'Images per device (official: 2048 / 16 GPUs).')
flags.DEFINE_list('accum', ['1'], 'optim.accum_steps values (gradient accumulation: the same '
                  'batch in that many micro-batches).')
flags.DEFINE_bool('scan', True, 'Blocks under nn.scan (the tables of PERFORMANCE.md); --noscan '
                  'unrolls them, as the shipped configs run on GPUs.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={FLAGS.devices}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax

  from ijepa_jax import sharding
  from ijepa_jax.spec import resolve_here
  from ijepa_jax.state import compile_abstract_step

  print(f'{jax.device_count()} simulated {jax.devices()[0].platform} devices, '
        f'{FLAGS.per_device_batch} images per device, blocks '
        f'{"scanned" if FLAGS.scan else "unrolled"}, jax {jax.__version__}')
  print('| config | mesh data x fsdp | remat | accum_steps | state+batch GiB/device '
        '| temporaries GiB/device | total GiB/device | compile s |')
  print('|---|---|---|---|---|---|---|---|')
  for name in FLAGS.configs:
    for mesh_spec in FLAGS.meshes:
      data, fsdp = (int(v) for v in mesh_spec.split('x'))
      for remat in FLAGS.remat:
        for accum in FLAGS.accum:
          c = load_config(name)
          c.batch_size = FLAGS.per_device_batch * jax.device_count()
          c.model.remat_policy = remat
          c.model.scan_layers = FLAGS.scan
          c.optim.accum_steps = int(accum)
          compiled, seconds = compile_abstract_step(resolve_here(c),
                                                    sharding.make_mesh(data, fsdp))
          m = compiled.memory_analysis()
          total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes) / 2**30
          print(f'| {name} | {data} x {fsdp} | {remat} | {accum} '
                f'| {m.argument_size_in_bytes / 2**30:.2f} | {m.temp_size_in_bytes / 2**30:.2f} '
                f'| {total:.2f} | {seconds:.0f} |', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
