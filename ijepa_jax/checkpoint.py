"""Checkpoints with orbax: asynchronous, atomic, keep the last K and every M-th for good.

A checkpoint `<workdir>/checkpoints/<step>/` holds two items:

- `state`: the whole `TrainState` (params, EMA target params, optimizer state,
  step), written by orbax's StandardSave (tensorstore/OCDBT arrays plus JSON
  metadata; no pickle). Restoring takes a target with shardings, so a
  checkpoint restores onto any mesh or number of devices.
- `meta`: JSON: the data-iterator position, the host RNG's state, the config
  and the time/throughput accounting.

Orbax writes each checkpoint to a temporary directory and renames it when it
is complete, so a save killed half-way is never read as a checkpoint; the
leftover temporary directory is removed at the next start. The training loop
only waits while the arrays are copied off the devices; the writing happens
in a background thread.
"""

import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ('state', 'meta')


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names the directory."""


def _explain(e: Exception, directory: str, doing: str) -> CheckpointError:
  text = f'{type(e).__name__}: {e}'
  hint = ''
  if 'No space left' in text or 'ENOSPC' in text or 'too large' in text.lower():
    hint = ' The disk is full: free space or point --workdir at a larger disk.'
  elif isinstance(e, PermissionError) or 'ermission denied' in text or 'Read-only' in text:
    hint = ' The directory is not writable: fix its permissions or use another --workdir.'
  return CheckpointError(f'{doing} in {directory} failed ({text}).{hint} Checkpoints already '
                         'complete there are untouched; the next start resumes from the latest.')


class Checkpoints:
  """The run's checkpoints in `directory`: save / restore / latest_step / wait / close."""

  def __init__(self, directory: str, keep: int = 3, keep_every: int = 0,
               async_save: bool = True, read_only: bool = False):
    self.directory = directory if '://' in directory else os.path.abspath(directory)  # gs://
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None, create=not read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save,
        read_only=read_only)
    try:
      self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    except OSError as e:
      raise _explain(e, self.directory, 'opening the checkpoint directory') from None

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step (half-written ones are never listed)."""
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> float:
    """Start saving `state` and `meta` as checkpoint `step`; returns the seconds it blocked."""
    t0 = time.time()
    try:
      self._mgr.check_for_errors()  # a failed background write of an earlier save
      self._mgr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except (OSError, ValueError, RuntimeError) as e:
      raise _explain(e, self.directory, f'saving checkpoint {step}') from None
    return time.time() - t0

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """(state, meta) of checkpoint `step`; `target` gives structure, dtypes and shardings
    (jax.ShapeDtypeStruct leaves with `sharding=`), which may differ from the saved ones."""
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (OSError, ValueError, KeyError) as e:
      raise _explain(e, self.directory, f'restoring checkpoint {step}') from None
    return out.state, out.meta

  def restore_meta(self, step: int) -> dict:
    return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    """Block until the background writes are done; raise CheckpointError if one failed."""
    try:
      self._mgr.wait_until_finished()
      self._mgr.check_for_errors()
    except (OSError, ValueError, RuntimeError) as e:
      raise _explain(e, self.directory, 'writing a checkpoint') from None

  def close(self) -> None:
    self._mgr.close()


def restore_target(abstract: Any, shardings: Any) -> Any:
  """Abstract state whose leaves carry the shardings to restore onto."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def find_checkpoint(path: str) -> tuple[str, int]:
  """(checkpoints directory, step) for `config.init_from` and the tools: a workdir (its latest
  checkpoint), its `checkpoints/` folder, or one `checkpoints/<step>` folder."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, 'state')):
    return os.path.dirname(path), int(base)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path!r} does not exist; give the workdir of a run, its '
                            'checkpoints/ folder or one checkpoints/<step> folder')
  step = Checkpoints(path, read_only=True).latest_step()
  if step is None:
    raise FileNotFoundError(f'{path!r} holds no complete checkpoint')
  return path, step
