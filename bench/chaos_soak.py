"""A chaos soak: one training run under a driver that kills, stops and damages it K times.

  python -m bench.chaos_soak --faults=20 --steps=80 [--seed=0] [--workdir=/tmp/soak]

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

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from bench import ROOT
from bench.faults import command, compare_states, env, soak
from ijepa_jax import cli

FLAGS = flags.FLAGS


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
  proc = subprocess.run(command(ref, FLAGS.steps), cwd=ROOT, env=env(), capture_output=True,
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
  app.run(main, flags_parser=cli.parse_flags)
