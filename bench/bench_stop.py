"""What a stop costs: the processes' agreement per step, and the time from SIGTERM to exit 0.

  python -m bench.bench_stop [--steps=150] [--checks=1,10] [--vitl]

Prints one table:
- **agreement**: two processes (one CPU device each, a tiny model whose step takes a few
  milliseconds, so a per-step host synchronisation shows) train `--steps` steps with
  `checkpoint.stop_check_every` at each value of `--checks` (1 is what every step did before);
  steps/s over the steps after the first 20 (compile and warm-up left out), from the runs'
  metrics.jsonl.
- **SIGTERM to exit 0**, measured from outside the process: the demo (`configs/demo.py`,
  one process, after 10 steps), and with `--vitl` a process holding a ViT-L/16-sized train
  state (params, EMA target, Adam moments: 4.8 GiB of random numbers) that does on SIGTERM
  what the training loop does: save it through `Checkpoints`, wait for the write, exit.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from bench import ROOT, load_config
from bench.faults import TINY, env
from ijepa_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer('steps', 150, 'Steps of each two-process run (21 to 187: the tiny schedule '
                     'is 0.05 epochs of batch 16).')
flags.DEFINE_list('checks', ['1', '10'], 'checkpoint.stop_check_every values to compare.')
flags.DEFINE_bool('vitl', False, 'Also time SIGTERM to exit with a ViT-L/16-sized state.')
flags.DEFINE_bool('child', False, 'Internal: the ViT-L/16-sized process.')


def _port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def agreement(steps: int, check: int) -> float:
  """Steps/s of two processes after step 20, stopping agreed every `check` steps."""
  wd = tempfile.mkdtemp(prefix='bench_stop_')
  port = _port()
  args = lambda i: [sys.executable, 'main.py', '--config=configs/demo.py', f'--workdir={wd}',
                    *TINY, '--config.checkpoint.every=100000', f'--config.max_steps={steps}',
                    f'--config.checkpoint.stop_check_every={check}',
                    f'--coordinator_address=localhost:{port}', '--num_processes=2',
                    f'--process_id={i}']
  procs = [subprocess.Popen(args(i), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL) for i in range(2)]
  if [p.wait() for p in procs] != [0, 0]:
    raise RuntimeError(f'the two-process run with stop_check_every={check} failed ({wd})')
  rows = {r['step']: r['time'] for r in map(json.loads, open(os.path.join(wd, 'metrics.jsonl')))
          if 'time' in r}
  shutil.rmtree(wd)
  return (steps - 20) / (rows[steps] - rows[20])


def sigterm_to_exit(cmd: list[str], ready: str) -> tuple[float, str]:
  """Seconds from SIGTERM (sent once `ready` is printed) to the process's exit, and its last
  line."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if ready in line:
      break
  t0 = time.perf_counter()
  proc.send_signal(signal.SIGTERM)
  rest = proc.communicate()[0]
  dt = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f'exit {proc.returncode}:\n' + ''.join(lines[-20:]) + rest[-3000:])
  return dt, (rest.strip().splitlines() or [''])[-1]


def vitl_child() -> None:
  """Hold a ViT-L/16-sized state; on SIGTERM save it as the loop does and exit 0."""
  import jax  # pylint: disable=import-outside-toplevel

  from bench.stepping import random_state  # pylint: disable=import-outside-toplevel
  from ijepa_jax.checkpoint import Checkpoints  # pylint: disable=import-outside-toplevel
  from ijepa_jax.spec import resolve_here  # pylint: disable=import-outside-toplevel
  from ijepa_jax.stop import StopRequest  # pylint: disable=import-outside-toplevel
  config = load_config('vitl16')
  config.batch_size = 8  # the batch does not enter the state; a small one builds it faster
  state = random_state(resolve_here(config))
  root = tempfile.mkdtemp(prefix='bench_stop_vitl_')
  ckpts = Checkpoints(os.path.join(root, 'checkpoints'), keep=1)
  with StopRequest(deadline=600) as stop:
    print(f'holding {sum(x.size for x in jax.tree.leaves(state)):,} numbers', flush=True)
    step = 0
    while not stop.requested(step):
      time.sleep(0.05)  # a training step
      step += 1
    ckpts.save(step, state, {'step': step})
    ckpts.wait()
    ckpts.close()
  shutil.rmtree(root)
  print(f'saved step {step} and exited', flush=True)


def main(argv):
  del argv
  if FLAGS.child:
    vitl_child()
    return
  if not 20 < FLAGS.steps <= 187:
    cli.fail(f'--steps={FLAGS.steps} must be in 21..187 (the tiny schedule\'s length)')
  rows = []
  for check in map(int, FLAGS.checks):
    rows.append((f'two processes, stop agreed every {check} step(s)',
                 f'{agreement(FLAGS.steps, check):.1f} steps/s'))
  wd = tempfile.mkdtemp(prefix='bench_stop_demo_')
  dt, last = sigterm_to_exit(
      [sys.executable, 'main.py', '--config=configs/demo.py', f'--workdir={wd}',
       '--config.evals.every=0', '--config.evals.at_end=False', '--config.log_every=1',
       '--config.monitor.health_every=0', '--config.monitor.pictures=False'],
      'step     10/')
  shutil.rmtree(wd)
  rows.append(('SIGTERM to exit 0, demo (checkpoint of 3.4 MiB)', f'{dt:.2f} s'))
  if FLAGS.vitl:
    dt, last = sigterm_to_exit([sys.executable, '-m', 'bench.bench_stop', '--child'], 'holding')
    rows.append(('SIGTERM to exit 0, ViT-L/16-sized state (4.8 GiB)', f'{dt:.2f} s'))
  print('| measurement | value |\n|---|---|')
  for name, value in rows:
    print(f'| {name} | {value} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
