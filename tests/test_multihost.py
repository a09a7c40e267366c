"""When a process joins a multi-process run, and the errors for flags that cannot work (the
real joining is tested in test_multiprocess.py)."""

import pytest

from ijepa_jax import multihost


def test_cluster_detection():
  assert multihost.cluster_detected({}) is None
  assert multihost.cluster_detected({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}) is None  # salloc
  assert multihost.cluster_detected({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}) == 'slurm'
  assert multihost.cluster_detected({'OMPI_COMM_WORLD_SIZE': '4'}) == 'openmpi'
  assert multihost.cluster_detected({'OMPI_COMM_WORLD_SIZE': '1'}) is None


def test_single_process_unless_asked(monkeypatch):
  for var in ('SLURM_JOB_ID', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(var, raising=False)
  assert multihost.initialize('auto') is False
  assert multihost.initialize('off') is False


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='sometimes'), 'choose one of'),
    (dict(mode='off', process_id=1), 'drop them'),
    (dict(coordinator_address='localhost:1234', num_processes=2), 'needs --num_processes and'),
    (dict(coordinator_address='localhost:1234', num_processes=2, process_id=2), r'\[0, --num'),
])
def test_flags_that_cannot_work(kwargs, match):
  with pytest.raises(ValueError, match=match):
    multihost.initialize(**kwargs)
