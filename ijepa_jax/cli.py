"""The command line of main.py, the tools and the benchmarks: a mistyped flag or config field
is one line and exit 2.

ml_collections raises a bare KeyError / AttributeError (a Python traceback) for an unknown
`--config.<field>`; absl prints usage and exits 1 for a value of the wrong type. Both are the
user's to fix, so `parse_flags` (pass it to `app.run(main, flags_parser=parse_flags)`) turns
them into `error: ...` naming the field and the closest valid one, and exit 2 (`fail`).
`load_config_file` is the one loader of a config file outside absl's flag; `start` opens the
`main` of main.py and of the tools that load a model.
"""

import difflib
import importlib.util
import json
import os
import sys
from typing import NoReturn

from absl import flags, logging
import ml_collections

from ijepa_jax.paths import output_path

PREFIX = '--config.'


def field_paths(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every field's dotted path, sections included ('optim', 'optim.lr', ...)."""
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out += field_paths(value, f'{prefix}{key}.')
  return out


def unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
  """None when `path` names a field of `config`, else the message: which part is unknown and
  the closest valid field."""
  node = config
  for i, part in enumerate(path.split('.')):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = '.'.join(path.split('.')[:i])
      paths = field_paths(config)
      close = difflib.get_close_matches(path, paths, n=1, cutoff=0.6)
      if not close:  # a typo in a short leaf name scores low against the whole path
        section = node if isinstance(node, ml_collections.ConfigDict) else {}
        close = [f'{known}.{c}' if known else c
                 for c in difflib.get_close_matches(part, list(section), n=1, cutoff=0.5)]
      if close:
        hint = f"did you mean '{close[0]}'?"
      elif isinstance(node, ml_collections.ConfigDict):
        hint = f"'{known or 'the config'}' has " + ', '.join(sorted(node))
      else:
        hint = f"'{known}' is a value, not a section"
      return f"the config has no field '{path}' ({PREFIX}{path}): {hint}"
    node = node[part]
  return None


def _config_file(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


RUN_CONFIG = 'config.py'  # in a workdir: the run's resolved config, written at each start


def run_config_text(config_json: str) -> str:
  """`<workdir>/config.py`: the run's whole config as readable JSON, loadable as a config file
  (`--config=<workdir>/config.py`, which the tools assume when given `--workdir` alone)."""
  body = json.dumps(json.loads(config_json), indent=2, sort_keys=True)
  return ('"""The config this run was started with (every default and override, the dataset\'s\n'
          'size filled in), written by main.py at its latest start. The tools read it when given\n'
          '--workdir alone; --config.<field>=... overrides still apply on top."""\n\n'
          'from ijepa_jax.cli import config_from_json\n\n'
          f"CONFIG = r'''\n{body}\n'''\n\n\n"
          'def get_config():\n  return config_from_json(CONFIG)\n')


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """`recipes.base_config()` with the values of a config's JSON (`run_config_text`): every
  field keeps its type (tuples, placeholders), so overrides on top parse as usual."""
  from ijepa_jax.recipes import base_config  # pylint: disable=import-outside-toplevel

  def fill(node: ml_collections.ConfigDict, values: dict, path: str) -> None:
    for key, value in values.items():
      if key not in node:
        raise ValueError(f'{path}{key} is not a field of this version\'s config')
      if isinstance(node[key], ml_collections.ConfigDict):
        fill(node[key], value, f'{path}{key}.')
      else:
        node[key] = tuple(value) if isinstance(node[key], tuple) else value

  config = base_config()
  fill(config, json.loads(text), '')
  return config


def with_run_config(argv: list[str]) -> list[str]:
  """`argv` with `--config=<workdir>/config.py` added where it names no config but a workdir
  that holds one: the tools (and a resume) need only `--workdir`."""
  if _config_file(argv) is not None or 'config' not in flags.FLAGS:  # (plot takes no config)
    return argv
  for i, arg in enumerate(argv):
    workdir = (arg.split('=', 1)[1] if arg.startswith('--workdir=') else
               argv[i + 1] if arg == '--workdir' and i + 1 < len(argv) else None)
    if workdir and os.path.isfile(os.path.join(workdir, RUN_CONFIG)):
      return argv[:1] + [f'--config={os.path.join(workdir, RUN_CONFIG)}'] + argv[1:]
  return argv


def missing_config_file(argv: list[str]) -> str | None:
  """The message for a `--config` file that does not exist (naming the closest one)."""
  spec = _config_file(argv)
  if spec is None or os.path.isfile(spec.partition(':')[0]):
    return None
  path = spec.partition(':')[0]
  folder = os.path.dirname(path) or '.'
  files = (sorted(f for f in os.listdir(folder) if f.endswith('.py'))
           if os.path.isdir(folder) else [])
  close = difflib.get_close_matches(os.path.basename(path), files, n=1, cutoff=0.6)
  hint = (f"did you mean '{os.path.join(os.path.dirname(path), close[0])}'?" if close else
          f"{folder}/ has {', '.join(files)}" if files else 'give the path of a config file')
  return f'--config={spec}: no such file ({hint})'


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as `--config=path[:arg]` names it."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_ijepa_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def config_typos(argv: list[str]) -> list[str]:
  """The messages for every `--config.<field>` of `argv` that the config file lacks."""
  spec = _config_file(argv)
  if spec is None:
    return []
  config = load_config_file(spec)
  names = [a[len(PREFIX):].split('=', 1)[0] for a in argv if a.startswith(PREFIX)]
  return [m for m in (unknown_field(config, n) for n in names) if m]


def free_output(path: str, explicit: bool, overwrite: bool = False) -> str:
  """`paths.output_path` for a program: an explicit output that exists is one line, exit 2."""
  try:
    return output_path(path, explicit, overwrite)
  except FileExistsError as e:
    fail(e)


def fail(message, code: int = 2) -> NoReturn:
  """`error: <message>` on stderr, and exit `code`: 2 for what the user must fix (a flag, a
  config, missing data), 1 for a failure of the run itself."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def start(level: int, distributed: bool = True) -> None:
  """An entry point's first step, after its flags are parsed: absl's logging at `level` unless
  --verbosity / -v was given (orbax logs every file it writes at INFO and warns about every
  read-only open), then, with `distributed`, this process joins the multi-process run that the
  flags of `multihost.define_flags` describe (their clash: error, exit 2), before anything
  touches a device."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(level)
  if distributed:  # multihost imports jax: here, not when a program imports this module
    from ijepa_jax import multihost  # pylint: disable=import-outside-toplevel
    multihost.initialize_from_flags(flags.FLAGS)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, with exit 2 and one line for a mistyped flag, field, value or config
  file; `--workdir` alone brings the run's own config (`with_run_config`)."""
  argv = with_run_config(argv)
  missing = missing_config_file(argv)
  if missing:
    fail(missing)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # an unknown flag, a value of the wrong type, a missing flag
    fail(str(e))
  except (KeyError, AttributeError):  # ml_collections: an unknown --config.<field>
    try:
      typos = config_typos(argv)
    except Exception:  # noqa: BLE001 - the config file itself is broken: show the traceback
      typos = []
    if not typos:
      raise
    fail('; '.join(typos))
