"""Eight simulated CPU devices for every test (set before jax is imported)."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: subprocess runs, several processes and the heaviest '
                          'compiles; `-m "not slow"` (the fast tier, under 5 minutes on 2 cores) '
                          'leaves these out; the default run, and CI, run them')
