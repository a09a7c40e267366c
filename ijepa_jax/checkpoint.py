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

import logging
import os
import sys
import time
import traceback
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ijepa_jax.config import ConfigError

ITEMS = ('state', 'meta')


class _ItemMetadataNote(logging.Filter):
  """Drops orbax's warning that an item's folder (`<step>/state`, `<step>/meta`) has no
  `_CHECKPOINT_METADATA`: orbax writes that file once per step, then looks for it in each
  item on every restore, and the warning reads like damage on an ordinary resume. A step
  folder without one is still reported."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not (text.startswith('Metadata file does not exist:')
                and any(text.endswith(f'/{item}/_CHECKPOINT_METADATA') for item in ITEMS))


logging.getLogger('absl').addFilter(_ItemMetadataNote())  # orbax logs through absl


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names the directory."""


class CheckpointMismatchError(CheckpointError, ConfigError):
  """A readable checkpoint of another model than this config builds: the user's to fix (exit
  2 in every program, as a ConfigError), named by its first differing array and fields."""


def config_changes(saved: dict, current: dict, prefix: str = '') -> list[str]:
  """`field: saved -> current` for every config field that differs (nested dicts walked)."""
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_changes(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return out


class DamagedCheckpointsError(CheckpointError):
  """Every checkpoint of the run is damaged (none was moved); exit 2: a person decides."""


DAMAGED_DIR = 'damaged_checkpoints'  # beside `checkpoints/`: where damaged ones are moved


def _path_key(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _shapes(tree: Any) -> dict[str, tuple]:
  return {_path_key(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _late_callback_on_closed_loop(u) -> bool:
  """Whether an unraisable exception is a tensorstore read finishing after orbax's event
  loop closed: `call_soon_threadsafe` on the closed loop raising 'Event loop is closed'."""
  return (u.exc_type is RuntimeError and str(u.exc_value) == 'Event loop is closed'
          and any(f.name == 'call_soon_threadsafe'
                  for f in traceback.extract_tb(u.exc_traceback)))


class _UnretrievedReadsOf(logging.Filter):
  """Drops asyncio's 'Task/Future exception was never retrieved' records whose exception
  names a file under one of `directories`."""

  def __init__(self):
    super().__init__()
    self.directories: set[str] = set()

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    unretrieved = str(record.msg).split('\n', 1)[0].endswith('exception was never retrieved')
    return not (unretrieved and exc is not None
                and any(d in str(exc) for d in self.directories))


_unretrieved_reads = _UnretrievedReadsOf()


def _quiet_failed_reads(directory: str) -> None:
  """Keep stderr readable while the checkpoints in `directory` are checked for damage.

  Orbax reads a checkpoint's arrays in one `asyncio.run(gather(...))`. When a damaged file
  fails one read, the loop closes with the other reads still in flight, and each of them
  echoes the failure: asyncio logs every other failed read as 'Task exception was never
  retrieved', and each read that finishes later on tensorstore's threads prints an
  unraisable 'Event loop is closed' traceback, hundreds in all, interleaved with our own
  messages for seconds after. The damage is already reported once, by `restore_intact`; only
  those two echoes are dropped (the first only for files under `directory`), everything else
  still reaches the previous hook and asyncio's logger. Installed once per process."""
  _unretrieved_reads.directories.add(directory)
  logger = logging.getLogger('asyncio')
  if _unretrieved_reads not in logger.filters:
    logger.addFilter(_unretrieved_reads)
  previous = sys.unraisablehook
  if getattr(previous, '_ijepa_drops_closed_loop_callbacks', False):
    return

  def hook(u):
    if not _late_callback_on_closed_loop(u):
      previous(u)
  hook._ijepa_drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


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
               async_save: bool = True, read_only: bool = False, config: dict | None = None):
    """`config`: this run's config (`Run.config_dict()`), to name the fields that differ
    from a checkpoint's when its arrays do not fit."""
    self.config = config
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
    (jax.ShapeDtypeStruct leaves with `sharding=`), which may differ from the saved ones.
    A checkpoint of another model is a CheckpointMismatchError (one line)."""
    self._check_metadata(step, target)
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (OSError, ValueError, KeyError) as e:
      raise _explain(e, self.directory, f'restoring checkpoint {step}') from None
    return out.state, out.meta

  def _saved_shapes(self, step: int) -> tuple[dict[str, tuple] | None, str]:
    """(the array shapes checkpoint `step` says it holds, '') or (None, why they are
    unreadable)."""
    try:
      with ocp.StandardCheckpointer() as reader:
        tree = reader.metadata(os.path.join(self.directory, str(step), 'state'))
    except Exception as e:  # noqa: BLE001 - any failure to read the metadata is damage
      return None, f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
    tree = getattr(tree, 'item_metadata', tree)
    if tree is None:  # orbax logs the failure and returns nothing
      return None, 'its array metadata (state/_METADATA, the OCDBT manifest) cannot be read'
    return _shapes(tree), ''

  def _check_metadata(self, step: int, target: Any) -> str | None:
    """None if checkpoint `step`'s array metadata reads and matches `target`, else why it is
    damaged. Metadata that reads well but describes other shapes than `target` is not damage
    but another model's checkpoint: a CheckpointError, and nothing is moved."""
    saved, why = self._saved_shapes(step)
    if saved is None:
      return why
    want = _shapes(target)
    if saved != want:
      raise CheckpointMismatchError(self._mismatch(step, saved, want))
    return None

  def _mismatch(self, step: int, saved: dict, want: dict) -> str:
    """One line: the first differing array (a parameter before an optimizer moment), the
    config fields that differ from the checkpoint's own, and what to pass."""
    diff = sorted((k for k in set(saved) | set(want) if saved.get(k) != want.get(k)),
                  key=lambda k: (not k.startswith(('params/', 'target_params/')), k))
    fields = ''
    try:
      saved_config = self.restore_meta(step).get('config', {}) if self.config else {}
      # the fields that shape the state
      changes = [c for c in config_changes(saved_config, self.config or {})
                 if c.startswith(('model.', 'data.image_size', 'data.channels', 'target_space'))]
    except Exception:  # noqa: BLE001  (no readable meta: the arrays alone say it)
      changes = []
    if changes:
      fields = f'; the config differs from the checkpoint\'s in {", ".join(changes[:3])}'
    workdir = os.path.dirname(self.directory)
    return (f'checkpoint {step} in {self.directory} was written by another model than this '
            f'config builds ({len(diff)} arrays differ, first {diff[0]}: saved '
            f'{saved.get(diff[0])}, this config {want.get(diff[0])}){fields}. Pass '
            f'--workdir={workdir} alone to use the config the run was started with, or that '
            'config\'s values')

  def _try_restore(self, step: int, target: Any) -> tuple[Any, dict | None, str | None]:
    """(state, meta, None) if checkpoint `step` restores, else (None, None, why not)."""
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - a checksum, a truncated file, bad JSON: all damage
      return None, None, f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
    if not isinstance(out.meta, dict) or 'accounting' not in out.meta:
      return None, None, 'its meta item (data position, accounting) is missing or incomplete'
    return out.state, out.meta, None

  def restore_intact(self, target: Any, log=print) -> tuple[Any, dict, int, list[dict]]:
    """(state, meta, step, damaged): the newest checkpoint that restores; each newer one that
    does not is moved to `<workdir>/damaged_checkpoints/` (never deleted) and listed in
    `damaged` as {'step', 'reason', 'moved_to'}.

    With several processes, a checkpoint counts as intact only if it restored on every
    process (each reads its own shards), so all resume from the same step. If no checkpoint
    is intact, nothing is moved and DamagedCheckpointsError says so."""
    _quiet_failed_reads(self.directory)
    failed = []
    for step in reversed(self.all_steps()):
      # two phases, each agreed by all processes, so that none starts a restore (whose reads
      # may wait for the others) that another has already given up on
      reasons = _all_reasons(self._check_metadata(step, target))
      if not reasons:
        state, meta, reason = self._try_restore(step, target)
        reasons = _all_reasons(reason)
        if not reasons:
          break
      failed.append((step, reasons))
      log(f'WARNING: checkpoint {step} in {self.directory} is damaged and cannot be restored '
          f'({"; ".join(reasons)})')
    else:
      if failed:
        raise DamagedCheckpointsError(
            f'every checkpoint in {self.directory} is damaged: ' + '; '.join(
                f'{s}: {r[0]}' for s, r in failed) + '. Nothing was moved: restore a copy, or '
            'move the checkpoints folder away to start afresh.')
      return None, None, None, []
    damaged = [{'step': s, 'reason': '; '.join(r), 'moved_to': self._move_aside(s)}
               for s, r in failed]
    for d in damaged:
      log(f'WARNING: moved damaged checkpoint {d["step"]} to {d["moved_to"]}; resuming from '
          f'checkpoint {step}, the newest intact one')
    if damaged:
      self._mgr.reload()
    return state, meta, step, damaged

  def _move_aside(self, step: int) -> str:
    """Move checkpoint `step` to `damaged_checkpoints/<step>[.N]` beside the checkpoints
    folder (process 0 moves; every process waits for it)."""
    dest_dir = epath.Path(self.directory).parent / DAMAGED_DIR  # local or gs://
    dest, n = dest_dir / str(step), 1
    while dest.exists():
      dest, n = dest_dir / f'{step}.{n}', n + 1
    if jax.process_index() == 0:
      dest_dir.mkdir(parents=True, exist_ok=True)
      (epath.Path(self.directory) / str(step)).rename(dest)
    _barrier(f'ijepa_moved_damaged_checkpoint_{step}')
    return str(dest)

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


def _all_reasons(reason: str | None) -> list[str]:
  """Every process's reason why a checkpoint did not restore (empty: it restored on all).
  Each process reads its own shards, so one can fail where another does not."""
  if jax.process_count() == 1:
    return [reason] if reason else []
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  bad = multihost_utils.process_allgather(np.int32(reason is not None))
  out = [f'process {i}: damaged' for i in np.flatnonzero(bad) if i != jax.process_index()]
  return ([reason] if reason else []) + out


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


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
