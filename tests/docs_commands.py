"""Run every shell command of README.md and docs/*.md, so that none can go stale.

`.ci/run` calls this after the test suite, in the repository root of a clean clone:

  .venv/bin/python tests/docs_commands.py [--list] [--page=docs/quickstart.md]

A command is a line of a ```bash block (a trailing backslash continues it; a `for ... done`
loop spans its lines; `#` lines are comments). Pages run in `PAGES` order, each command
once, and each gets one treatment (`plan`, first rule that matches):

- `ci`: the README's test command: that is .ci/run itself.
- `full`: as written. README's first command (set up, then the whole demo into
  workdir/demo, which the later commands use), the pictures and plot tools.
- `smoke`: as written, with `SMOKE` flags added to each main.py / evaluate / embed / local.sh
  invocation (a few steps, a few thousand images), so the run takes seconds.
- `check`: the measurement commands of PERFORMANCE.md and RESULTS.md take hours at full
  size: absl's `--only_check_args` is added to each program of `ABSL_PROGRAMS` in them (every
  flag and `--config.*` field they use must still exist); the benchmarks of `SMOKE` run at a
  small size (the GPU check with `--smoke`, on the CPU).
- `missing`: needs what this machine cannot have (ImageNet, the official weights): runs as
  written and must exit 2 with the message that says what is missing.
- `stub`: the Cloud TPU and SLURM launchers, against stand-in `gcloud`, `sbatch`, `srun`,
  `squeue` and `scancel` that record their calls and answer as the real ones would.
- `external`: `tfds build` needs TensorFlow, which this project never installs, and
  ImageNet's tarballs: listed, not run.

Exit 1 if any command does not do what its treatment expects.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md', 'docs/quickstart.md', 'docs/configs.md', 'docs/anti_collapse.md',
         'docs/data.md', 'docs/checkpoints.md', 'docs/evaluation.md', 'docs/weights.md',
         'docs/masks.md', 'docs/ablations.md', 'docs/monitoring.md', 'docs/pure_functions.md',
         'docs/scaling.md', 'docs/launch_local.md', 'docs/launch_tpu.md', 'docs/launch_slurm.md',
         'docs/ARCHITECTURE.md', 'docs/RESULTS.md', 'docs/PERFORMANCE.md']
CI_COMMAND = 'IJEPA_TORCH_REF=1 bash launch/setup.sh && .venv/bin/python -m pytest -q tests'
MEASUREMENT_PAGES = ('docs/RESULTS.md', 'docs/PERFORMANCE.md')

# added to each invocation of these programs at smoke size (later flags win in absl)
SMOKE = {
    'main.py': ['--config.max_steps=6', '--config.evals.every=0', '--config.evals.at_end=False',
                '--config.monitor.feature_maps=2'],
    'ijepa_jax.tools.evaluate': ['--config.evals.final_train_examples=2000',
                           '--config.evals.final_test_examples=500',
                           '--config.evals.probe_steps=100',
                           '--config.evals.attentive_epochs=2'],
    'ijepa_jax.tools.embed': ['--limit=64'],
    'bench.bench_input': ['--images=64', '--batch=32'],
    'bench.bench_masks': ['--batches=2'],
    'bench.device_check': ['--smoke'],
    'bench.padding': ['--steps=2'],
}
SMALL_BENCHMARKS = tuple(p for p in SMOKE if p.startswith('bench.'))  # `check` runs them small
ABSL_PROGRAMS = ('main.py', 'ijepa_jax.tools.evaluate', 'ijepa_jax.tools.embed',
                 'ijepa_jax.tools.convert', 'bench.bench_memory', 'bench.bench_checkpoint',
                 'bench.bench_step', 'bench.bench_vs_torch', 'bench.profile_step',
                 'bench.grad_balance', 'bench.chaos_soak', 'bench.bench_stop')
# (a regex the command matches, the output it must print) for kind 'missing'
MISSING = [
    (r'--images=my_photos/', "--images='my_photos/' is not a folder"),
    (r'IN1K-vit\.h\.14-300e\.pth\.tar', 'IN1K-vit.h.14-300e.pth.tar'),
    (r'data_dir=/data/tensorflow_datasets', "data.data_dir='/data/tensorflow_datasets'"),
    (r'data_dir=/data/imagenet', '/data/imagenet'),
]
STUB_COMMANDS = ('launch/tpu_pod.sh', 'sbatch', 'srun', 'squeue', 'scancel')


def commands(page: str) -> list[str]:
  """The commands of a page's ```bash blocks, in order."""
  out, block, pending = [], False, ''
  for line in open(os.path.join(ROOT, page)).read().splitlines():
    if line.startswith('```'):
      block = line.strip() == '```bash' if not block else False
      continue
    if not block:
      continue
    text = line.strip()
    if not pending and (not text or text.startswith('#')):
      continue
    text = re.sub(r'\s+#\s.*$', '', text)  # a comment after the command
    pending = f'{pending} {text}'.strip() if pending else text
    if pending.endswith('\\'):
      pending = pending[:-1].rstrip()
      continue
    if re.match(r'for\s', pending) and not re.search(r'\bdone\b', pending):
      pending += ';' if not pending.endswith(('do', ';')) else ''
      continue
    out.append(pending)
    pending = ''
  return out


def plan(page: str, command: str, first: bool) -> str:
  """The treatment of `command` (module docstring)."""
  if command == CI_COMMAND:
    return 'ci'
  if command.startswith('tfds build'):
    return 'external'
  if any(re.search(pattern, command) for pattern, _ in MISSING):
    return 'missing'
  if any(re.search(rf'(^|[\s;&/]){re.escape(s)}\b', command) for s in STUB_COMMANDS):
    return 'stub'
  if page in MEASUREMENT_PAGES:
    return 'check'
  if first or re.search(r'ijepa_jax\.(draw_masks|plot|convert)\b|tensorboard\b', command):
    return 'full'
  if re.search(r'(main\.py|ijepa_jax\.evaluate|ijepa_jax\.embed|launch/local\.sh)', command):
    return 'smoke'
  return 'full'


def _invocations(command: str, program: str) -> re.Pattern:
  """The span of each invocation of `program` in `command`: up to the next ; && | or end."""
  return re.compile(rf'({re.escape(program)}\b[^;&|]*?)(\s*(?:;|&&|\||$))')


def rewrite(kind: str, command: str) -> str:
  """The command as it is run: smoke flags or --only_check_args added."""
  if kind == 'smoke' or (kind == 'check' and any(_invocations(command, p).search(command)
                                                  for p in SMALL_BENCHMARKS)):
    for program, extra in SMOKE.items():
      key = 'main.py' if program == 'main.py' else program
      if program == 'main.py' and 'launch/local.sh' in command:
        key = 'launch/local.sh'
      command = _invocations(command, key).sub(
          lambda m, extra=extra: f'{m.group(1)} {" ".join(extra)}{m.group(2)}', command)
  if kind == 'check':
    for program in ABSL_PROGRAMS:
      command = _invocations(command, program).sub(
          lambda m: f'{m.group(1)} --only_check_args{m.group(2)}', command)
  return command


STUBS = {
    # gcloud: queries answer as a ready slice would; everything else succeeds
    'gcloud': r'''#!/usr/bin/env bash
echo "gcloud $*" >> "$STUB_LOG"
case "$*" in
  *"queued-resources describe"*"--format"*) echo ACTIVE ;;
  *"tpu-vm describe"*"--format"*) echo "READY HEALTHY" ;;
  *"tpu-vm ssh"*) echo "(stand-in ssh: not run)" ;;
esac
exit 0
''',
    # sbatch: the batch script must at least parse; it is not run
    'sbatch': r'''#!/usr/bin/env bash
echo "sbatch $*" >> "$STUB_LOG"
for a in "$@"; do case "$a" in *.sbatch) bash -n "$a" || exit 1 ;; esac; done
echo "Submitted batch job 1"
''',
    'srun': '#!/usr/bin/env bash\necho "srun $*" >> "$STUB_LOG"\n',
    'squeue': ('#!/usr/bin/env bash\necho "squeue $*" >> "$STUB_LOG"\n'
               'echo "JOBID PARTITION NAME ST"\n'),
    'scancel': '#!/usr/bin/env bash\necho "scancel $*" >> "$STUB_LOG"\n',
}


def stub_dir() -> str:
  d = tempfile.mkdtemp(prefix='docs_stubs_')
  for name, text in STUBS.items():
    path = os.path.join(d, name)
    with open(path, 'w') as f:
      f.write(text)
    os.chmod(path, 0o755)
  return d


def run(kind: str, command: str, exports: list[str], stubs: str) -> tuple[bool, str]:
  """(ok, a short report) for one command."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)
  if kind == 'stub':
    env['PATH'] = f'{stubs}:{env["PATH"]}'
    env['STUB_LOG'] = os.path.join(stubs, 'calls.log')
  script = '\n'.join(['set -eo pipefail', *exports, rewrite(kind, command)])
  t0 = time.time()
  if re.search(r'(^|\s)(\.venv/bin/)?tensorboard\s', command):
    # a server: it must come up and serve, then it is stopped
    proc = subprocess.Popen(['bash', '-c', script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = ''
    deadline = time.time() + 120
    while time.time() < deadline and 'http://' not in out:
      line = proc.stdout.readline()
      if not line:
        break
      out += line
    os.killpg(proc.pid, 15)
    proc.wait()
    return 'http://' in out, out[-2000:]
  proc = subprocess.run(['bash', '-c', script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=3600)
  out = proc.stdout + proc.stderr
  took = f'{time.time() - t0:.0f}s'
  if kind == 'missing':
    want = next(msg for pattern, msg in MISSING if re.search(pattern, command))
    ok = proc.returncode == 2 and want in out
    return ok, f'exit {proc.returncode} ({took}), expected 2 naming {want!r}\n{out[-1500:]}'
  return proc.returncode == 0, f'exit {proc.returncode} ({took})\n{out[-3000:]}'


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--list', action='store_true', help='print the plan, run nothing')
  parser.add_argument('--page', action='append', help='only these pages (in PAGES order)')
  args = parser.parse_args()
  stubs = stub_dir()
  seen: set[str] = set()
  failures, counts = [], {}
  first = True
  for page in PAGES:
    exports: list[str] = []
    for command in commands(page):
      kind = plan(page, command, first)
      first = False
      if command.startswith('export '):
        exports.append(command)
        continue
      if command in seen:
        continue
      seen.add(command)
      counts[kind] = counts.get(kind, 0) + 1
      if args.page and page not in args.page:
        continue
      print(f'[{kind:8s}] {page}: {rewrite(kind, command)}', flush=True)
      if args.list or kind in ('ci', 'external'):
        continue
      ok, report = run(kind, command, exports, stubs)
      if not ok:
        failures.append(f'{page}: {command}\n{report}')
        print('  FAILED: ' + report.replace('\n', '\n  '), flush=True)
  print(f'docs commands: {counts}; failed: {len(failures)}'
        + ('' if args.list else ' (ci: run by .ci/run itself; external: not run, see above)'))
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
