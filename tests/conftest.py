"""Eight simulated CPU devices for every test (set before jax is imported), and one XLA
compilation cache for the whole run.

The cache: most of the suite's time went to compiling the same tiny programs again, in each of
the ~40 training runs it starts as subprocesses (which inherit the environment). JAX's
persistent cache keys an executable by its program, compile options and jax/XLA version, so a
hit loads exactly what a compile would produce. It lives in a fresh folder per run, removed at
exit; a cache set by the caller is kept.
"""
import atexit
import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='ijepa-tests-xla-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')  # the tiny ones too


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: subprocess runs, several processes and the heaviest '
                          'compiles; `-m "not slow"` (the fast tier, under 5 minutes on 2 cores) '
                          'leaves these out; the default run, and CI, run them')
