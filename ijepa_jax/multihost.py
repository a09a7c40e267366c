"""Joining a multi-process run: `jax.distributed.initialize` and nothing home-made.

`initialize(mode, ...)` decides whether this process is one of many and, if so,
calls `jax.distributed.initialize`, which auto-detects Cloud TPU pods, SLURM and
Open MPI for every value not given explicitly. It must run before anything
touches a JAX device (main.py calls it first).
"""

import os
import sys
from typing import Sequence

import jax

MODES = ('auto', 'on', 'off')


def cluster_detected(environ: dict[str, str] | None = None) -> str | None:
  """The multi-process launcher this process runs under ('slurm', 'openmpi'), if any.

  A one-task SLURM allocation (an interactive `salloc` shell) is not a cluster run.
  Cloud TPU pods are not detected here: their launcher passes --distributed=on.
  """
  env = os.environ if environ is None else environ
  if 'SLURM_JOB_ID' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
    return 'slurm'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'openmpi'
  return None


def initialize(mode: str = 'auto', coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None) -> bool:
  """Join the run's processes when `mode` says so; returns whether it did.

  auto: when a coordinator address is given or a SLURM / Open MPI job with
  several tasks is detected; on: always (JAX detects the rest); off: never.
  """
  if mode not in MODES:
    raise ValueError(f'--distributed={mode!r}: choose one of {MODES}')
  explicit = (coordinator_address, num_processes, process_id)
  if mode == 'off':
    if any(v is not None for v in explicit):
      raise ValueError('--distributed=off but --coordinator_address/--num_processes/--process_id '
                       'were given; drop them or use --distributed=auto')
    return False
  if mode == 'auto' and coordinator_address is None and cluster_detected() is None:
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError('--coordinator_address needs --num_processes and --process_id too '
                     '(or none of them, to let JAX detect a TPU pod, SLURM or Open MPI job)')
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise ValueError(f'--process_id={process_id} must be in [0, --num_processes={num_processes})')
  # Collectives between CPU devices of different processes (launch/local.sh, the tests) need
  # gloo; accelerators use their own (ICI/DCN, NCCL), so this changes nothing for them.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=list(local_device_ids) if local_device_ids else None)
  return True


def define_flags(flags) -> None:
  """The --distributed / --coordinator_address / ... flags of main.py and the tools."""
  flags.DEFINE_enum('distributed', 'auto', list(MODES),
                    'Join a multi-process run with jax.distributed.initialize: auto (when '
                    '--coordinator_address is given or a multi-task SLURM / Open MPI job is '
                    'detected), on (always; JAX detects Cloud TPU pods, SLURM and Open MPI), off.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (explicit setups).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (explicit setups).')
  flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, num_processes).')
  flags.DEFINE_list('local_device_ids', None, 'Devices this process drives, e.g. 0,1,2,3 '
                    '(default: JAX\'s choice; SLURM: one GPU per task).')


def initialize_from_flags(values) -> None:
  """`initialize` with the flags of `define_flags` (absl's FLAGS); if they clash, the error
  goes to stderr and the process exits 2. Call it before anything touches a device."""
  try:
    initialize(values.distributed, values.coordinator_address, values.num_processes,
               values.process_id, [int(i) for i in values.local_device_ids or []])
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
