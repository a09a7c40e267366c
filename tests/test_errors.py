"""Bad input is one line and exit 2, in main.py and every tool: a table of what a new user
types on their first day, each run as the user would run it."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT, brightness_folder

FAST = ['--config.evals.every=0', '--config.evals.at_end=False', '--config.monitor.pictures=False']


def run(*args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)  # one device, as a user's laptop
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """A two-step run of the demo (batch 32) and a small image folder."""
  tmp = tmp_path_factory.mktemp('errors')
  proc = run('main.py', '--config=configs/demo.py', f'--workdir={tmp / "run"}',
             '--config.max_steps=2', '--config.batch_size=32', *FAST)
  assert proc.returncode == 0, proc.stderr[-3000:]
  brightness_folder(str(tmp / 'folder'), sizes=(('train', 40), ('test', 10)))
  (tmp / 'taken.npz').write_bytes(b'an earlier output')
  return tmp


CASES = [  # (what, arguments with {run}/{tmp} placeholders, text the one line holds)
    ('a config file that does not exist', ['main.py', '--config=configs/demoo.py',
                                          '--workdir={tmp}/x'], "did you mean 'configs/demo.py'"),
    ('a field that does not exist', ['main.py', '--config=configs/demo.py', '--workdir={tmp}/x',
                                    '--config.optim.lrr=1'], "did you mean 'optim.lr'"),
    ('a value that cannot work', ['main.py', '--config=configs/demo.py', '--workdir={tmp}/x',
                                 '--config.batch_size=0'], 'batch_size=0 must be positive'),
    ('a template\'s dataset size on another folder',
     ['main.py', '--config=configs/vits16.py', '--workdir={tmp}/x',
      '--config.data.dataset=image_folder', '--config.data.data_dir={tmp}/folder',
      '--config.batch_size=8'],
     'data.dataset_size=1281167 but image_folder/train has 80 images; pass '
     '--config.data.dataset_size=-1'),
    ('masks that cannot be sampled',
     ['-m', 'ijepa_jax.tools.draw_masks', '--config=configs/demo.py',
      '--config.masks.min_keep=60', '--out={tmp}/m.png'],
     'min_keep=60'),
    ('evaluate: a config file that does not exist',
     ['-m', 'ijepa_jax.tools.evaluate', '--config=configs/demoo.py', '--workdir={run}'],
     'no such file'),
    ('evaluate: a config that does not match the checkpoint',
     ['-m', 'ijepa_jax.tools.evaluate', '--config=configs/demo.py', '--workdir={run}',
      '--config.model.depth=2'], 'model.depth: 4 -> 2. Pass --workdir={run} alone'),
    ('embed: the same, with --workdir alone and an override',
     ['-m', 'ijepa_jax.tools.embed', '--workdir={run}', '--config.model.width=32',
      '--split=test', '--out={tmp}/e.npz'], 'first params/encoder/'),
    ('convert: the same', ['-m', 'ijepa_jax.tools.convert', '--mode=export', '--format=hf',
                           '--workdir={run}', '--config.model.depth=2', '--out={tmp}/hf'],
     'was written by another model'),
    ('embed: an output that exists', ['-m', 'ijepa_jax.tools.embed', '--workdir={run}',
                                      '--split=test', '--out={tmp}/taken.npz'],
     'taken.npz exists; pass --overwrite'),
    ('prepare: a source folder that does not exist',
     ['-m', 'ijepa_jax.tools.prepare', '--src={tmp}/no_such_folder', '--dst={tmp}/small'],
     "--src='{tmp}/no_such_folder' is not a folder"),
    ('prepare: a copy inside its source', ['-m', 'ijepa_jax.tools.prepare', '--src={tmp}/folder',
                                           '--dst={tmp}/folder/small'], 'is inside --src'),
    ('plot: a picture that exists', ['-m', 'ijepa_jax.tools.plot', '--workdir={run}',
                                     '--out={tmp}/taken.npz'], 'pass --overwrite'),
]


@pytest.mark.slow
@pytest.mark.parametrize('what,args,expect', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(demo_run, what, args, expect):
  fill = lambda a: a.format(run=demo_run / 'run', tmp=demo_run)
  proc = run(*[fill(a) for a in args])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, (what, proc.returncode, proc.stderr[-3000:])
  assert lines[0].startswith('error: ') and fill(expect) in lines[0], (what, lines[0])


@pytest.mark.slow
def test_tools_take_the_workdir_alone(demo_run):
  """The run's config travels with it: `<workdir>/config.py`, read when --workdir comes alone,
  with overrides on top; a default output that is taken gets a new name."""
  workdir = demo_run / 'run'
  assert '"batch_size": 32' in (workdir / 'config.py').read_text()
  first = run('-m', 'ijepa_jax.tools.plot', f'--workdir={workdir}')
  again = run('-m', 'ijepa_jax.tools.plot', f'--workdir={workdir}')
  assert first.returncode == again.returncode == 0, again.stderr[-2000:]
  assert 'curves.1.png' in again.stdout and (workdir / 'pictures' / 'curves.png').exists()
  out = demo_run / 'hf'
  proc = run('-m', 'ijepa_jax.tools.convert', '--mode=export', '--format=hf',
             f'--workdir={workdir}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (out / 'model.safetensors').exists()
