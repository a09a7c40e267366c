"""The package's structure (docs/ARCHITECTURE.md): no import cycles between its modules,
nothing but the entry point imports the training loop, the core imports only the core, and
the command-line tools (ijepa_jax/tools/) are used by nothing in the library nor by each
other. Read from the source, every import counted (also those inside functions)."""

import ast
import os

from helpers import ROOT

PACKAGE = os.path.join(ROOT, 'ijepa_jax')


def imports_of(path: str, modules: set[str]) -> set[str]:
  """The package modules that the file at `path` imports, anywhere in it."""
  deps = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == 'ijepa_jax':
        deps |= {a.name for a in node.names if a.name in modules}
      elif node.module.startswith('ijepa_jax.'):
        deps.add(node.module.split('.')[1])
    elif isinstance(node, ast.Import):
      deps |= {a.name.split('.')[1] for a in node.names if a.name.startswith('ijepa_jax.')}
  return deps


def files_of(module: str) -> list[str]:
  """The source files of a module of the package: `<m>.py`, or every file of the
  sub-package `<m>/` (one node of the graph: `probes`)."""
  path = os.path.join(PACKAGE, module)
  if os.path.isdir(path):
    return [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith('.py')]
  return [path + '.py']


def module_names() -> set[str]:
  """The package's modules and its sub-packages but the tools (tests of their own, below)."""
  return ({f[:-3] for f in os.listdir(PACKAGE) if f.endswith('.py')}
          | {d for d in os.listdir(PACKAGE) if d != 'tools'
             and os.path.isfile(os.path.join(PACKAGE, d, '__init__.py'))})


def graph() -> dict[str, set[str]]:
  modules = module_names()
  return {m: set().union(*(imports_of(f, modules) for f in files_of(m))) - {m} for m in modules}


def cycle_through(g: dict[str, set[str]], start: str) -> list[str] | None:
  """A path start -> ... -> start, or None."""
  stack, seen = [(start, [start])], set()
  while stack:
    node, path = stack.pop()
    for nxt in sorted(g[node]):
      if nxt == start:
        return path + [start]
      if nxt not in seen:
        seen.add(nxt)
        stack.append((nxt, path + [nxt]))
  return None


def test_no_import_cycles():
  g = graph()
  assert len(g) > 30  # every module was read
  cycles = {m: c for m in g if (c := cycle_through(g, m))}
  assert not cycles, cycles


def test_cycle_detection_finds_a_planted_cycle():
  g = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert cycle_through(g, 'a') == ['a', 'b', 'c', 'a']
  assert cycle_through(g, 'd') is None


def test_only_the_entry_point_imports_the_trainer():
  g = graph()
  assert not {m for m, deps in g.items() if 'trainer' in deps}
  modules = set(g)
  bench = os.path.join(ROOT, 'bench')
  users = [f for f in os.listdir(bench) if f.endswith('.py')
           and 'trainer' in imports_of(os.path.join(bench, f), modules)]
  assert not users
  assert 'trainer' in imports_of(os.path.join(ROOT, 'main.py'), modules)


CORE = {'pos_embed', 'pixels', 'models', 'masks', 'objective', 'schedules', 'train_step',
        'health', 'features', 'probes', 'flops', 'packing'}  # docs/ARCHITECTURE.md, layer (a)


def test_the_core_imports_only_the_core():
  g = graph()
  assert CORE <= set(g)
  outside = {m: sorted(g[m] - CORE) for m in CORE if g[m] - CORE}
  assert not outside, outside
  # and reads no config: no module of the core names ml_collections
  readers = [m for m in CORE
             if any('ml_collections' in open(f).read() for f in files_of(m))]
  assert not readers, readers


TOOLS = os.path.join(PACKAGE, 'tools')


def test_the_tools_are_tools_only():
  tools = sorted(f[:-3] for f in os.listdir(TOOLS) if f.endswith('.py') and f != '__init__.py')
  assert tools == ['convert', 'draw_masks', 'embed', 'evaluate', 'plot', 'prepare']
  users = {m for m, deps in graph().items() if 'tools' in deps}  # the library's modules
  users |= {f for f in os.listdir(os.path.join(ROOT, 'bench')) if f.endswith('.py')
            and 'tools' in imports_of(os.path.join(ROOT, 'bench', f), {'tools'})}
  assert not users
  for t in tools:
    text = open(os.path.join(TOOLS, f'{t}.py')).read()
    tree = ast.parse(text)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {i for i in imported if i.startswith('ijepa_jax.tools')}, t  # no other tool
    assert "if __name__ == '__main__':" in text and 'app.run(main' in text, t


def test_no_benchmark_is_both_a_program_and_a_library():
  """A bench/ file with a `__main__` block is imported by no other file of bench/ or tests/;
  shared code sits in the files without one (stepping.py, faults.py)."""
  bench = os.path.join(ROOT, 'bench')
  programs = {f[:-3] for f in os.listdir(bench) if f.endswith('.py')
              and "if __name__ == '__main__':" in open(os.path.join(bench, f)).read()}
  assert {'chaos_soak', 'bench_step', 'device_check'} <= programs
  assert not {'stepping', 'faults'} & programs
  users = []
  for folder in (bench, os.path.join(ROOT, 'tests')):
    for f in os.listdir(folder):
      if not f.endswith('.py'):
        continue
      tree = ast.parse(open(os.path.join(folder, f)).read())
      for n in ast.walk(tree):
        mods = ([n.module] if isinstance(n, ast.ImportFrom) and n.module else
                [a.name for a in n.names] if isinstance(n, ast.Import) else [])
        users += [(f, m) for m in mods if m.startswith('bench.') and m.split('.')[1] in programs]
  assert not users, users


def test_the_benchmarks_are_modules_with_absl_flags():
  """Every bench/ program runs as `python -m bench.<name>` with absl flags and
  `cli.parse_flags`, as main.py and the tools do; but torch_step.py, a standalone script for a
  Python with only torch and numpy. No file of bench/ or tests/ edits `sys.path`."""
  bench = os.path.join(ROOT, 'bench')
  programs = []
  for folder in (bench, os.path.join(ROOT, 'tests')):
    for f in sorted(os.listdir(folder)):
      if not f.endswith('.py'):
        continue
      text = open(os.path.join(folder, f)).read()
      tree = ast.parse(text)
      assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == 'path'
                  and isinstance(n.value, ast.Name) and n.value.id == 'sys'], f
      if folder == bench and "if __name__ == '__main__':" in text and f != 'torch_step.py':
        programs.append(f[:-3])
        assert 'app.run(main, flags_parser=cli.parse_flags)' in text, f
        assert 'argparse' not in {a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                                  for a in n.names}, f
  assert {'bench_input', 'bench_masks', 'device_check', 'padding', 'bench_step'} <= set(programs)
