"""The docs stay true: every config field is documented (and nothing documented is not a
field), the worked example of docs/pure_functions.md runs, relative links resolve, and every
shell command of the pages has a treatment in tests/docs_commands.py, which .ci/run runs."""

import glob
import os
import re
import subprocess
import sys

import pytest

from ijepa_jax.recipes import base_config

import docs_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(f'{ROOT}/docs/*.md'))


def fields(config, prefix=''):
  out = set()
  for key, value in config.items():
    if hasattr(value, 'items'):
      out |= fields(value, f'{prefix}{key}.')
    else:
      out.add(prefix + key)
  return out


def test_every_config_field_is_documented_and_no_other():
  known = fields(base_config())
  groups = {f.split('.')[0] for f in known if '.' in f}
  text = open(os.path.join(ROOT, 'docs/configs.md')).read()
  documented = set(re.findall(r'^\| `([a-z_.0-9]+)` \|', text, re.M))
  assert known - documented == set(), 'fields without a row in docs/configs.md'
  assert documented - known == set(), 'rows in docs/configs.md that are not config fields'
  for page in PAGES:  # a dotted config name anywhere must exist
    text = open(os.path.join(ROOT, page)).read()
    for name in re.findall(r'`(?:--config\.)?([a-z_]+\.[a-z_0-9]+)(?:=[^`]*)?`', text):
      if name.split('.')[0] in groups and not re.search(r'\.(py|png|md|json|jsonl|npz|sh)$', name):
        assert name in known, f'{page}: `{name}` is not a config field'


@pytest.mark.slow
def test_pure_functions_example_runs(tmp_path):
  text = open(os.path.join(ROOT, 'docs/pure_functions.md')).read()
  (block,) = re.findall(r'```python\n(.*?)```', text, re.S)
  script = tmp_path / 'example.py'
  script.write_text(block)
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'features: (8, 64) (8, 16, 64)' in proc.stdout


def test_relative_links_resolve():
  for page in PAGES:
    for target in re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', open(os.path.join(ROOT, page)).read()):
      if '://' in target:
        continue
      path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
      assert os.path.exists(path), f'{page}: link to {target}'


def test_every_command_has_a_treatment_and_ci_runs_them():
  assert sorted(docs_commands.PAGES) == sorted(PAGES), 'a page is missing from docs_commands.PAGES'
  first = True
  kinds = {}
  for page in docs_commands.PAGES:
    for command in docs_commands.commands(page):
      kind = docs_commands.plan(page, command, first)
      first = False
      kinds.setdefault(kind, []).append(command)
      # placeholders the shell cannot run (<...>, …) belong in ```text blocks
      assert '…' not in command and not re.search(r'<[a-z ]+>', command), (page, command)
      if kind == 'check':
        assert docs_commands.rewrite(kind, command) != command, (page, command)
  assert kinds['full'][0].endswith('main.py --config=configs/demo.py --workdir=workdir/demo')
  assert kinds['ci'] == [docs_commands.CI_COMMAND]
  assert kinds['external'] == [c for c in kinds['external'] if c.startswith('tfds build')]
  ci = open(os.path.join(ROOT, '.ci/run')).read()
  assert docs_commands.CI_COMMAND in ci and 'tests/docs_commands.py' in ci
  # the linter before the tests, at the version requirements-dev.txt pins
  assert -1 < ci.find('.venv/bin/ruff check ') < ci.find(docs_commands.CI_COMMAND)
  assert re.search(r'^ruff==[\d.]+', open(os.path.join(ROOT, 'requirements-dev.txt')).read(), re.M)


def test_smoke_and_check_rewrites():
  r = docs_commands.rewrite
  assert r('check', 'for s in 0 1; do .venv/bin/python main.py --config=c --config.seed=$s; done') \
      == ('for s in 0 1; do .venv/bin/python main.py --config=c --config.seed=$s '
          '--only_check_args; done')
  smoke = r('smoke', '.venv/bin/python main.py --config=configs/demo.py --workdir=w')
  assert smoke.startswith(
      '.venv/bin/python main.py --config=configs/demo.py --workdir=w --config.max_steps=')
  assert r('smoke', 'bash launch/local.sh 2 4 --config=x').startswith(
      'bash launch/local.sh 2 4 --config=x --config.max_steps=')
