"""A chaos soak: one training run under a driver that kills, stops and damages it K times.

  python bench/chaos_soak.py --faults=20 --steps=80 [--seed=0] [--workdir=/tmp/soak]

The driver runs `main.py` (a tiny model on the embedded Fashion-MNIST, one CPU device,
a checkpoint every 2 steps) and, until K faults have happened, does one of these at a random
moment of each start, then starts the same command again:

- `sigkill`: SIGKILL after a random number of logged steps (nothing saved since the last
  complete checkpoint survives);
- `sigkill_saving`: SIGKILL right after a checkpoint's background write began;
- `sigterm`: SIGTERM after a random number of steps (the run saves and exits 0);
- `damage`: between two starts, truncate, overwrite or strip the metadata of the newest
  checkpoint (the next start moves it aside and resumes from the one before).

Then the run finishes undisturbed, and its final parameters, EMA parameters and optimizer
state are compared, bit for bit, with an uninterrupted run of the same command. Prints one
table: faults of each kind, restarts, the steps trained again, the wall time against the
uninterrupted run, and the time lost per fault. `tests/test_faults.py` runs a short version.
"""

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
from ijepa_jax import cli  # noqa: E402

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


def _env() -> dict:
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
  proc = subprocess.Popen(command(workdir, steps), cwd=ROOT, env=_env(), text=True,
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
  finished = lambda: (os.path.exists(os.path.join(workdir, 'final.json'))  # noqa: E731
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


FLAGS = flags.FLAGS


def define_flags() -> None:  # not at import: bench_stop and the tests import this module
  flags.DEFINE_integer('faults', 20, 'Faults to survive (K).')
  flags.DEFINE_integer('steps', 80, 'Steps of the run.')
  flags.DEFINE_integer('seed', 0, 'Seed of the driver\'s choices.')
  flags.DEFINE_string('workdir', None, 'Where the two runs go (default: a temporary folder).')


def main(argv):
  del argv
  base = FLAGS.workdir or tempfile.mkdtemp(prefix='chaos_soak_')
  ref, soaked = os.path.join(base, 'uninterrupted'), os.path.join(base, 'soaked')
  for d in (ref, soaked):
    shutil.rmtree(d, ignore_errors=True)
  t0 = time.time()
  proc = subprocess.run(command(ref, FLAGS.steps), cwd=ROOT, env=_env(), capture_output=True,
                        text=True)
  if proc.returncode:
    sys.exit(f'the uninterrupted run failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}')
  ref_seconds = time.time() - t0
  report = soak(soaked, FLAGS.steps, FLAGS.faults, FLAGS.seed)
  n, differ = compare_states(ref, soaked, FLAGS.steps)
  lost = (report['seconds'] - ref_seconds) / max(report['faults_total'], 1)
  report.update(uninterrupted_seconds=ref_seconds, seconds_lost_per_fault=lost,
                arrays=n, arrays_differing=differ)
  print(f'\nchaos soak: {FLAGS.steps} steps, seed {FLAGS.seed}, {base}')
  print('| faults | sigkill | sigkill while saving | sigterm | damaged checkpoint | starts '
        '| steps trained again | wall, soaked | wall, uninterrupted | lost per fault '
        '| final state |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  k = report['faults']
  print(f'| {report["faults_total"]} | {k["sigkill"]} | {k["sigkill_saving"]} | {k["sigterm"]} '
        f'| {k["damage"]} | {report["starts"]} | {report["steps_trained_again"]} '
        f'| {report["seconds"]:.1f}s | {ref_seconds:.1f}s | {lost:.1f}s '
        f'| {n - differ}/{n} arrays bitwise equal |')
  with open(os.path.join(base, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1)
  if differ:
    sys.exit(f'{differ} of {n} arrays differ from the uninterrupted run')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
