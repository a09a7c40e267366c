"""Faults for the fault tests and the chaos soak (bench/chaos_soak.py): the tiny run they
drive, killing and stopping it, damaging its checkpoints, and reading its final state back.
A library: bench/chaos_soak.py, bench/bench_stop.py and the tests import it.
"""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

from bench import ROOT

FAULTS = ('sigkill', 'sigkill_saving', 'sigterm', 'damage')
# a tiny model: each start is dominated by Python imports and the compile, like a restart is
# (tests/test_faults.py runs its fault tests on it too)
TINY = ['--config.batch_size=16', '--config.model.width=32', '--config.model.depth=2',
        '--config.model.num_heads=2', '--config.model.pred_width=16',
        '--config.model.pred_depth=1', '--config.evals.every=0', '--config.evals.at_end=False',
        '--config.data.workers=2', '--config.log_every=1', '--config.monitor.pictures=False',
        '--config.monitor.health_every=0',
        '--config.num_epochs=0.05']  # 60000 / 16 * 0.05 = 187 steps in the schedule
SOAK = [*TINY, '--config.checkpoint.every=2', '--config.monitor.tensorboard=False']
DAMAGE_KINDS = ('truncated', 'garbage', 'no_metadata')


def command(workdir: str, steps: int) -> list[str]:
  return [sys.executable, 'main.py', '--config=configs/demo.py', f'--workdir={workdir}',
          *SOAK, f'--config.max_steps={steps}']


def env() -> dict:
  e = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  e.pop('XLA_FLAGS', None)  # one CPU device
  return e


def data_files(step_dir: str) -> list[str]:
  return [os.path.join(d, f) for d, _, files in os.walk(os.path.join(step_dir, 'state'))
          for f in files if os.path.basename(d) == 'd']


def damage(step_dir: str, how: str) -> None:
  """Damage a checkpoint as a partial copy, a bad disk or a lost file would."""
  if how == 'no_metadata':
    os.remove(os.path.join(step_dir, 'state', '_METADATA'))
    return
  for f in data_files(step_dir):
    size = os.path.getsize(f)
    with open(f, 'r+b') as fh:
      if how == 'truncated':
        fh.truncate(size // 2)
      else:
        fh.write(os.urandom(size))


def checkpoints(workdir: str) -> list[int]:
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(p) for p in os.listdir(d) if p.isdigit()) if os.path.isdir(d) else []


@dataclasses.dataclass
class Start:
  fault: str          # what the driver did to this start ('none': it ran to the end)
  seconds: float      # wall time of the start
  rc: int
  resumed_from: int   # the checkpoint it resumed from (0: fresh)
  last_step: int      # the last step it logged


def _run_once(workdir: str, steps: int, fault: str, rng: random.Random) -> Start:
  """One start of the run, with `fault` done to it at a random moment."""
  t0 = time.time()
  proc = subprocess.Popen(command(workdir, steps), cwd=ROOT, env=env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  at = rng.randint(1, 6)  # steps of this start before the fault
  seen, resumed, last = 0, 0, 0
  out = []
  for line in proc.stdout:
    out.append(line)
    if line.startswith('state: resumed from checkpoint'):
      resumed = int(line.split('checkpoint ')[1].split()[0])
    if line.startswith('step ') and '/' in line:
      last, seen = int(line.split()[1].split('/')[0]), seen + 1
      if fault in ('sigkill', 'sigterm') and seen >= at:
        proc.send_signal(signal.SIGKILL if fault == 'sigkill' else signal.SIGTERM)
        fault += '*'  # sent
    if fault == 'sigkill_saving' and line.startswith('checkpoint ') and 'writing in the' in line:
      proc.send_signal(signal.SIGKILL)  # the background write has just begun
      fault += '*'
  rc = proc.wait()
  sent = fault.endswith('*')
  fault = fault.rstrip('*')
  if rc not in (0, -signal.SIGKILL) or (rc == -signal.SIGKILL and not sent):
    raise RuntimeError(f'start ended with {rc} after {fault}:\n' + ''.join(out[-40:]))
  return Start(fault if sent else 'none', time.time() - t0, rc, resumed, last)


def soak(workdir: str, steps: int, faults: int, seed: int = 0, log=print) -> dict:
  """Run to `steps` through `faults` faults; returns the report (the final state is in
  `workdir`)."""
  rng = random.Random(seed)
  starts, kinds = [], {k: 0 for k in FAULTS}
  t0 = time.time()
  finished = lambda: (os.path.exists(os.path.join(workdir, 'final.json'))
                      or (starts and starts[-1].fault == 'none' and starts[-1].rc == 0
                          and checkpoints(workdir)[-1:] == [steps]))  # killed after the end
  while not finished():
    done = sum(kinds.values())
    fault = rng.choice(FAULTS) if done < faults else 'none'
    if fault == 'damage':
      ckpts = checkpoints(workdir)
      if len(ckpts) < 2:  # keep one intact checkpoint to resume from
        fault = rng.choice(FAULTS[:3])
      else:
        how = rng.choice(DAMAGE_KINDS)
        damage(os.path.join(workdir, 'checkpoints', str(ckpts[-1])), how)
        kinds['damage'] += 1
        log(f'fault {done + 1}: damaged checkpoint {ckpts[-1]} ({how})')
        continue
    start = _run_once(workdir, steps, fault, rng)
    starts.append(start)
    if start.fault != 'none':
      kinds[start.fault] += 1
      log(f'fault {sum(kinds.values())}: {start.fault} at step {start.last_step} '
          f'(resumed from {start.resumed_from}, {start.seconds:.1f}s)')
    elif done < faults:  # the run ended before the fault's moment: draw again
      log(f'start ran to the end before its fault ({fault})')
  final_json = os.path.join(workdir, 'final.json')
  final = json.load(open(final_json)) if os.path.exists(final_json) else {}
  redone = sum(max(0, s.last_step - n.resumed_from) for s, n in zip(starts, starts[1:]))
  return {'faults': kinds, 'faults_total': sum(kinds.values()), 'starts': len(starts),
          'steps': steps, 'steps_trained_again': redone, 'seconds': time.time() - t0,
          'damaged_checkpoints': final.get('damaged_checkpoints', 0)}


def final_state(workdir: str, step: int) -> list:
  """Every array of `workdir`'s checkpoint `step` (params, EMA, Adam moments, step) as numpy,
  with its tree path, whatever mesh wrote it."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    meta = getattr(meta, 'item_metadata', meta)  # the tree of array metadata
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    return jax.tree_util.tree_flatten_with_path(jax.device_get(ckptr.restore(path, target)))[0]


def compare_states(a_dir: str, b_dir: str, step: int) -> tuple[int, int]:
  """(arrays, arrays that differ in any bit) between two workdirs' checkpoint `step`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  a, b = final_state(a_dir, step), final_state(b_dir, step)
  assert [p for p, _ in a] == [p for p, _ in b], 'different state trees'
  return len(a), sum(not np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
