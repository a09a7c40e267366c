"""What a run reports, and where: the console (with a live progress line in a terminal),
`<workdir>/metrics.jsonl`, TensorBoard event files beside it, and the parameter overview.

Only process 0 prints and writes. The event files are written with tensorboardX (no
TensorFlow); `tensorboard --logdir=<workdir or its parent>` shows them.
"""

import hashlib
import json
import math
import os
import platform
import sys
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from ijepa_jax.paths import is_remote


# -- the console ---------------------------------------------------------------

class Console:
  """Process 0's stdout. In a terminal, `status` keeps one live line rewritten in place
  (cleared before every regular line); in a log file or a pipe `status` writes nothing, so
  the log has only whole lines and no carriage returns."""

  def __init__(self, stream=None, live: bool | None = None):
    self.stream = stream
    self._live = live
    self._shown = False
    self._t_status = 0.0

  @property
  def out(self):
    return self.stream or sys.stdout

  @property
  def live(self) -> bool:
    if self._live is not None:
      return self._live
    isatty = getattr(self.out, 'isatty', None)
    return bool(isatty and isatty())

  def print(self, msg: str) -> None:
    if jax.process_index() != 0:
      return
    if self._shown:
      self.out.write('\r\033[K')
      self._shown = False
    self.out.write(msg + '\n')
    self.out.flush()

  def status(self, msg: str, min_interval: float = 0.25) -> None:
    """Show `msg` on the live line (at most every `min_interval` seconds); a no-op outside
    a terminal."""
    if jax.process_index() != 0 or not self.live:
      return
    now = time.monotonic()
    if now - self._t_status < min_interval:
      return
    self._t_status = now
    self.out.write('\r\033[K' + msg)
    self.out.flush()
    self._shown = True


CONSOLE = Console()


def log(msg: str) -> None:
  """A whole line on process 0's stdout."""
  CONSOLE.print(msg)


def fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  return f'{h}h{rem // 60:02d}m' if h else f'{rem // 60}m{rem % 60:02d}s'


class Progress:
  """The live line: step, loss, images/s over the recent steps and the ETA."""

  def __init__(self, total: int, batch_size: int, console: Console = CONSOLE):
    self.total, self.batch_size, self.console = total, batch_size, console
    self._t = None
    self._rate = None  # steps/s, smoothed

  def step(self, step: int, loss: float) -> None:
    now = time.monotonic()
    if self._t is not None:
      rate = 1.0 / max(now - self._t, 1e-9)
      self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
    self._t = now
    if self._rate is None:
      return
    eta = (self.total - step) / self._rate
    self.console.status(f'step {step:>6d}/{self.total} | loss {loss:.4f} | '
                        f'{self._rate * self.batch_size:,.0f} img/s | ETA {fmt_time(eta)}')

  def pause(self) -> None:
    """Forget the last step's time (an evaluation or a checkpoint ran in between)."""
    self._t = None


# -- metrics.jsonl ---------------------------------------------------------------

class MetricsLog:
  """`metrics.jsonl` (process 0): on resume, rows past the restored step are dropped.

  A local file is appended to row by row. A bucket object cannot be appended to, so
  there (or with `rewrite=True`) the rows are kept and the whole file is rewritten at
  every `flush()` (the trainer flushes at each checkpoint and at the end), which also
  keeps the log in step with the checkpoints.
  """

  def __init__(self, path: str, resume_step: int, rewrite: bool | None = None):
    self.path = epath.Path(path)
    self.rewrite = is_remote(path) if rewrite is None else rewrite
    self.file = None
    self.rows: list[str] = []
    self.active = jax.process_index() == 0
    if not self.active:
      return
    if self.path.exists():
      for line in self.path.read_text().splitlines(keepends=True):
        try:
          if json.loads(line)['step'] <= resume_step:
            self.rows.append(line if line.endswith('\n') else line + '\n')
        except (ValueError, KeyError):
          pass  # a line torn by a kill
    self._write_all()
    if not self.rewrite:
      self.file = self.path.open('a')
      self.rows = []

  def _write_all(self) -> None:
    if self.rewrite:
      self.path.write_text(''.join(self.rows))
      return
    tmp = self.path.parent / (self.path.name + '.tmp')  # a kill mid-write keeps the old file
    tmp.write_text(''.join(self.rows))
    os.replace(str(tmp), str(self.path))

  def write(self, row: dict) -> None:
    if not self.active:
      return
    line = json.dumps(row) + '\n'
    if self.rewrite:
      self.rows.append(line)
    else:
      self.file.write(line)
      self.file.flush()

  def flush(self) -> None:
    if self.active and self.rewrite:
      self._write_all()

  def close(self) -> None:
    self.flush()
    if self.file:
      self.file.close()


def _cpuinfo() -> tuple[str, str]:
  """(CPU model name, its feature flags) from /proc/cpuinfo; empty where there is none."""
  model = flags = ''
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and not model:
          model = value.strip()
        elif key in ('flags', 'Features') and not flags:
          flags = ' '.join(sorted(value.split()))
  except OSError:
    pass
  return model, flags


def host_description() -> dict[str, Any]:
  """What this process's figures came from: jax and jaxlib, Python, the devices and the
  host CPU. XLA:CPU compiles for the host's instruction set, so two CPU runs repeat bit for
  bit only on the same versions and the same `cpu_flags_sha1`."""
  import jaxlib
  model, flags = _cpuinfo()
  device = jax.devices()[0]
  return {
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
      'python': platform.python_version(),
      'platform': device.platform, 'device_kind': device.device_kind,
      'devices': jax.device_count(), 'processes': jax.process_count(),
      'cpu': model or platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count(),
      'cpu_flags_sha1': hashlib.sha1(flags.encode()).hexdigest()[:12] if flags else None,
  }


def read_metrics(workdir: str) -> list[dict]:
  """The rows of `<workdir>/metrics.jsonl` (a torn last line is skipped)."""
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist: is --workdir a training run\'s workdir?')
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      pass
  return rows


# -- TensorBoard -----------------------------------------------------------------

_SCHEDULES = ('lr', 'weight_decay', 'momentum')
_PERF = ('images_per_sec', 'images_per_sec_per_device', 'flops_per_sec', 'useful_flops_per_sec',
         'mfu', 'mfu_useful', 'input_wait', 'monitor_seconds', 'time')
_GROUPS = ('eval', 'final', 'baseline', 'pixels', 'health')


def tag_for(key: str) -> str:
  """The TensorBoard tag of a metrics.jsonl key: `schedule/lr`, `perf/mfu`, `eval/knn_top1`,
  `health/effective_rank`, `train/loss`, ..."""
  if key in _SCHEDULES:
    return f'schedule/{key}'
  if key in _PERF:
    return f'perf/{key}'
  group, _, rest = key.partition('_')
  if group in _GROUPS and rest:
    return f'{group}/{rest}'
  return f'train/{key}'


class TensorBoard:
  """Event files in `logdir` (process 0 only; a no-op elsewhere or when disabled).

  On resume from step S, events past S that an interrupted start had written are hidden
  (`purge_step`), as metrics.jsonl drops its rows past S.
  """

  def __init__(self, logdir: str, resume_step: int = 0, enabled: bool = True):
    self.writer = None
    if not enabled or jax.process_index() != 0:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    # the file name has the start's second and host: pid and nanoseconds keep two starts
    # within one second (a quick crash and restart) from writing the same file
    self.writer = SummaryWriter(str(logdir), purge_step=resume_step + 1 if resume_step else None,
                                flush_secs=30, filename_suffix=f'.{os.getpid()}.{time.time_ns()}')

  def scalars(self, row: dict) -> None:
    """Every finite number of a metrics row except the step, under `tag_for(key)`."""
    if self.writer is None:
      return
    step = int(row['step'])
    for key, value in row.items():
      if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
        self.writer.add_scalar(tag_for(key), float(value), step)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """An RGB picture [H, W, 3] uint8."""
    if self.writer is not None:
      self.writer.add_image(tag, image, step, dataformats='HWC')

  def text(self, tag: str, text: str, step: int = 0) -> None:
    if self.writer is not None:
      self.writer.add_text(tag, text, step)

  def flush(self) -> None:
    if self.writer is not None:
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None


class RunLog:
  """Every metrics row to metrics.jsonl and TensorBoard; pictures to PNG files and
  TensorBoard."""

  def __init__(self, workdir: str, resume_step: int, tensorboard: bool = True):
    self.workdir = workdir
    self.jsonl = MetricsLog(os.path.join(workdir, 'metrics.jsonl'), resume_step)
    self.tb = TensorBoard(workdir, resume_step, tensorboard)

  def write(self, row: dict) -> None:
    self.jsonl.write(row)
    self.tb.scalars(row)

  def picture(self, name: str, image: np.ndarray, step: int) -> str:
    """`<workdir>/pictures/<name>.png` and the TensorBoard image `pictures/<tag>` (the name
    up to its `_step...` suffix); returns the path."""
    from ijepa_jax.pictures import save_png  # pylint: disable=import-outside-toplevel
    path = os.path.join(self.workdir, 'pictures', f'{name}.png')
    if jax.process_index() == 0:
      save_png(path, image)
      self.tb.image('pictures/' + name.split('_step')[0], image, step)
    return path

  def flush(self) -> None:
    self.jsonl.flush()
    self.tb.flush()

  def close(self) -> None:
    self.jsonl.close()
    self.tb.close()


# -- the parameter overview --------------------------------------------------------

def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _shard_bytes(leaf: Any, sharding: Any) -> int:
  shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
  return int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize


def parameter_overview(state: Any, shardings: Any | None = None) -> str:
  """A table of every parameter (path, shape, count; the scanned blocks carry a leading
  depth axis), the totals per module, and the bytes of the whole train state on one
  device (parameters, EMA target, optimizer state) under `shardings`.

  `state`: a TrainState of arrays or abstract arrays (`jax.ShapeDtypeStruct`).
  """
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  rows = [(_path_name(p), tuple(x.shape), int(np.prod(x.shape))) for p, x in leaves]
  width = max(len(r[0]) for r in rows)
  lines = ['parameters (blocks stacked on a leading depth axis):']
  for name, shape, count in rows:
    lines.append(f'  {name:<{width}}  {str(list(shape)):<22} {count:>14,}')
  modules: dict[str, int] = {}
  for name, _, count in rows:
    top = name.split('/')[0]
    modules[top] = modules.get(top, 0) + count
  total = sum(modules.values())
  lines.append('  ' + ' | '.join(f'{k} {v:,}' for k, v in modules.items())
               + f' | total {total:,}')
  if shardings is not None:
    parts = {}
    for part in ('params', 'target_params', 'opt_state'):
      tree, sh = getattr(state, part), getattr(shardings, part)
      parts[part] = sum(_shard_bytes(x, s) for x, s in zip(jax.tree.leaves(tree),
                                                            jax.tree.leaves(sh)))
    mib = lambda b: f'{b / 2**20:,.1f} MiB'
    lines.append(f'  per device: params {mib(parts["params"])}, EMA target '
                 f'{mib(parts["target_params"])}, optimizer {mib(parts["opt_state"])}; '
                 f'train state {mib(sum(parts.values()))}')
  return '\n'.join(lines)
