"""The I-JEPA trainer: one readable loop around the pure train step.

Sections: (1) check the config, the workdir and the data before compiling
anything, (2) build model, mesh and shardings, (3) resume from the latest
checkpoint (or `init_from`, or a fresh init) and compile, (4) train: log to
stdout and `<workdir>/metrics.jsonl`, checkpoint every `checkpoint.every`
steps, at the end and on SIGTERM/SIGINT, evaluate every `evals.every` steps, (5) the final
evaluation (`evals.at_end`).

Faults: SIGTERM/SIGINT save a checkpoint and return (exit 0); `kill -9` loses
only the steps since the last complete checkpoint (metrics rows past it are
dropped at the next start, so the log has no duplicates); a non-finite loss
or gradient never reaches the weights (`guarded_train_step`) and stops the
run by default (`nonfinite='skip'` skips and counts such steps).
"""

import contextlib
import json
import os
import socket
import sys
import time
import uuid

import jax
import ml_collections
from etils import epath

from ijepa_jax import cli
from ijepa_jax import data as data_lib
from ijepa_jax import sharding
from ijepa_jax.checkpoint import CheckpointError, Checkpoints, config_changes, find_checkpoint
from ijepa_jax.evaluation import Evaluator, eval_splits, summary, with_baseline
from ijepa_jax.flops import peak_flops
from ijepa_jax.input_pipeline import Batches, TransformConfig, prefetch
from ijepa_jax.loading import random_encoder
from ijepa_jax.monitor import Monitor
from ijepa_jax.paths import is_remote
from ijepa_jax.reporting import (Progress, RunLog, fmt_time, host_description, log,
                                 parameter_overview)
from ijepa_jax.spec import Run, describe_arch, resolve
from ijepa_jax.state import (StepOnMesh, device_memory, encoder_params, global_batch,
                             param_count)
from ijepa_jax.stop import StopRequest
from ijepa_jax.train_step import TrainState

DataMissingError = data_lib.DataMissingError


class NonFiniteError(FloatingPointError):
  """A non-finite loss or gradient with nonfinite='stop'; the message says what to change."""


# -- (1) workdir and data ------------------------------------------------------

def check_writable(workdir: str) -> None:
  """Fail now, not at the first checkpoint, when the workdir cannot be written.

  A bucket (gs://...) works through etils.epath, as orbax writes there (it needs the
  `gcs` extra: gcsfs)."""
  try:
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / (f'.write_test.{socket.gethostname()}.{jax.process_index()}.'
                    f'{uuid.uuid4().hex}')
    probe.write_text('ok')
    probe.unlink()
  except (OSError, ImportError, ValueError) as e:
    hint = (' (for gs:// install the gcs extra: pip install -e ".[gcs]", and check the '
            'bucket\'s permissions)' if is_remote(workdir) else '')
    raise CheckpointError(f'--workdir={workdir} is not writable ({type(e).__name__}: {e}); '
                          f'pass a directory this process can write{hint}') from None


def write_run_config(workdir: str, config_json: str) -> None:
  """`<workdir>/config.py` (process 0): this start's whole config, which the tools read when
  given `--workdir` alone."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / cli.RUN_CONFIG).write_text(cli.run_config_text(config_json))


def make_batches(run: Run, source: data_lib.Source) -> Batches:
  return Batches(source, run.batch_size, run.seed, run.sampler, TransformConfig.of(run.data),
                 jax.process_index(), jax.process_count(), run.data.workers,
                 run.steps_per_epoch, run.packer)


# -- (2)-(3) resume or initialise (the state builders are in state.py) --------

def _fresh_accounting() -> dict:
  return {'train_seconds': 0.0, 'skipped_images': 0, 'nonfinite_steps': 0, 'starts': 0,
          'damaged_checkpoints': 0}


def restore_or_init(run: Run, ckpts, on_mesh: StepOnMesh, data_meta):
  """(state, accounting, how): the latest checkpoint of this workdir, else `init_from`,
  else a fresh init."""
  target = on_mesh.target
  state, meta, latest, damaged = ckpts.restore_intact(target, log)
  if latest is not None:
    meta['accounting']['damaged_checkpoints'] = (
        meta['accounting'].get('damaged_checkpoints', 0) + len(damaged))
    for key in ('dataset_size', 'global_batch', 'seed'):
      if meta['data'].get(key) != data_meta[key]:
        log(f'warning: checkpoint {latest} was written with data {key}={meta["data"].get(key)}, '
            f'this run has {data_meta[key]}: the data order from here differs from that run\'s')
    changes = config_changes(meta.get('config', {}), run.config_dict())
    if changes:
      log(f'note: the config differs from the one checkpoint {latest} was written with (this '
          f'run\'s values apply from here): ' + '; '.join(changes))
    return state, meta['accounting'], f'resumed from checkpoint {latest} in {ckpts.directory}'
  if run.init_from:
    directory, step = find_checkpoint(run.init_from)
    loaded, _ = Checkpoints(directory, read_only=True).restore(step, target)
    if run.init_from_mode == 'full':
      state = loaded
    else:
      fresh = on_mesh.init(run.seed)
      state = fresh.replace(params=loaded.params, target_params=loaded.target_params)
    return state, _fresh_accounting(), (f'initialised from {directory}/{step} '
                                        f'({run.init_from_mode})')
  return on_mesh.init(run.seed), _fresh_accounting(), 'fresh initialisation'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrain as `config` says, resuming from `workdir`'s latest checkpoint if there is one.

  Returns the final metrics (and probe accuracies); `preempted: 1.0` when a
  signal stopped the run early (its checkpoint is saved).
  """
  t_start = time.time()
  n_dev, n_proc = jax.device_count(), jax.process_count()
  platform = jax.default_backend()
  run = resolve(config, n_dev, n_proc, platform)  # all but what needs the data's size
  check_writable(workdir)
  sources = data_lib.Sources()  # every split opened once in this start, then handed on
  d = run.data
  source = sources(d.dataset, d.split, d.data_dir)
  run = run.sized(len(source), f'{d.dataset}/{d.split}')
  if run.evals.every > 0 or run.evals.at_end:  # the labelled evaluation data is there: fail early
    eval_splits(run.evals, run.data, 1, 1, cache=False, sources=sources)
  masks = run.sampler
  mesh = sharding.make_mesh(*run.mesh)
  on_mesh = StepOnMesh.build(run, mesh)
  abstract = on_mesh.abstract
  total, a = run.total_steps, run.arch
  log(f'model: {describe_arch(a)} | encoder '
      f'{param_count(abstract.params["encoder"]):,} params, predictor '
      f'{param_count(abstract.params["predictor"]):,} params | {a.dtype} compute, '
      f'remat {a.remat_policy}, attention '
      + ', '.join(f'{k} {v}' for k, v in a.attention_backends.items()))
  plural = 's' if masks.num_targets != 1 else ''
  log(f'masks: {run.masks.strategy} strategy, {run.masks.mode} mode, grid '
      f'{masks.height}x{masks.width}, context len {masks.context_len}, {masks.num_targets} '
      f'target{plural} x len {masks.target_len}'
      + ('' if run.packer is None else f' | packed: {run.packer.describe()}'))
  log(f'data: {d.dataset}/{d.split}, {len(source):,} images | schedule: '
      f'{total} steps, global batch {run.batch_size}, {run.steps_per_epoch} steps/epoch')

  batches = make_batches(run, source)
  k = run.checkpoint
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), k.keep, k.keep_every, k.async_save,
                      config=run.config_dict())
  log(f'mesh: {dict(mesh.shape)} over {n_dev} {jax.devices()[0].platform} device(s), '
      f'{n_proc} process(es)')
  data_meta = {'seed': run.seed, 'dataset_size': len(source), 'global_batch': run.batch_size}
  in_flight = None
  try:
    with StopRequest(k.stop_check_every, k.stop_deadline) as stop, on_mesh.scope():
      state_sh = on_mesh.shardings
      state, acct, how = restore_or_init(run, ckpts, on_mesh, data_meta)
      start = int(state.step)
      acct['starts'] += 1
      write_run_config(workdir, run.config_json)  # once the state fits: a failed start keeps it
      log(f'state: {how}, at step {start}')
      if start >= total:  # a finished run started again: leave its results as they are
        log(f'already trained: checkpoint {start} of {total} steps; nothing to do (evaluate it '
            f'with python -m ijepa_jax.tools.evaluate --config=... --workdir={workdir})')
        final = epath.Path(workdir) / 'final.json'
        return json.loads(final.read_text()) if final.exists() else {'step': float(start)}
      overview = parameter_overview(abstract, state_sh)
      log(overview)
      compiled, seconds = on_mesh.compile(state)
      flops = a.step_flops(run.batch_size, masks, run.packer)
      log(f'compiled the train step in {seconds:.1f}s | {flops / 1e9:,.1f} GFLOP/step | '
          f'{device_memory(compiled)}')
      ev = run.evals
      periodic = None
      if ev.every > 0 and start < total:
        periodic = Evaluator(run, mesh, ev.train_examples, ev.test_examples,
                             ev.periodic_probes, sources=sources)
        log(f'evaluation every {ev.every} steps: {periodic.describe()}')
      run_log = RunLog(workdir, start, run.monitor.tensorboard)
      try:
        run_log.tb.text('config', '```\n' + str(config) + '\n```')
        run_log.tb.text('parameters', '```\n' + overview + '\n```')
        monitor = Monitor(run, mesh, state_sh, run_log, log, source)
        loop = _Loop(run, compiled, mesh, ckpts, stop, run_log, acct, flops,
                     dict(data_meta, process_count=n_proc), t_start, periodic, monitor)
        state, last = loop.run(state, start, batches)
        if last.get('preempted'):
          return last
        if ev.at_end:
          last.update(final_evaluation(run, mesh, state, sources))
          run_log.write({'step': int(state.step), **{
              k: v for k, v in last.items() if k.startswith(('final_', 'baseline_', 'pixels_'))}})
        if monitor.warnings:
          last['collapse_warnings'] = monitor.warnings
        monitor.end(int(state.step))
      finally:
        run_log.close()
      for key in ('eval', 'monitor'):  # time the log lines' throughput leaves out
        if acct.get(f'{key}_seconds'):
          name = 'periodic_eval' if key == 'eval' else key
          last[f'{name}_seconds'] = acct[f'{key}_seconds']
          train = max(last.get('train_seconds', 0), 1e-9)
          last[f'{name}_fraction'] = acct[f'{key}_seconds'] / train
  except BaseException as e:
    in_flight = e
    raise
  finally:
    batches.close()
    try:
      ckpts.wait()  # let a save in flight finish: it is a good checkpoint
    except CheckpointError as e:
      if in_flight is None:
        raise
      print(f'error: {e}', file=sys.stderr)  # keep the exception already on its way up
    finally:
      ckpts.close()
  last['damaged_checkpoints'] = acct.get('damaged_checkpoints', 0)  # moved aside, all starts
  last['total_seconds'] = time.time() - t_start
  last['host'] = host_description()  # what a bitwise repeat needs to match
  if jax.process_index() == 0:
    (epath.Path(workdir) / 'final.json').write_text(json.dumps(last, indent=1))
  return last


class _Loop:
  """The training loop's state between steps: logging, checkpoints, faults."""

  def __init__(self, run: Run, compiled, mesh, ckpts, stop, run_log, acct, flops,
               data_meta, t_start, evaluator=None, monitor=None):
    self.spec, self.compiled, self.mesh, self.ckpts = run, compiled, mesh, ckpts
    self.evaluator, self.monitor = evaluator, monitor
    self.stop, self.run_log, self.acct, self.flops = stop, run_log, acct, flops
    self.total = run.total_steps
    self.progress = Progress(self.total, run.batch_size) if run.monitor.progress else None
    self.data_meta, self.t_start = data_meta, t_start
    self.last: dict[str, float] = {}
    self.peak = peak_flops(jax.devices()[0].device_kind)  # None on a CPU

  def run(self, state: TrainState, start: int, batches: Batches) -> tuple[TrainState, dict]:
    self.t_log, self.n_log = time.time(), 0
    self.wait_log, self.useful_log = 0.0, 0.0  # since the last log line
    self.cuts_logged = 0  # packed groups whose contexts were cut to fit, last logged
    self.train_seconds0, self.t_train = self.acct['train_seconds'], time.time()
    self.eval_seconds0 = self.acct.get('eval_seconds', 0.0)
    stream = prefetch(batches, start, self.total, self.spec.data.prefetch)
    with contextlib.closing(stream):
      return self._steps(state, start, stream)

  def _steps(self, state: TrainState, start: int, stream) -> tuple[TrainState, dict]:
    run = self.spec
    pending = None
    for step, (waited, local) in enumerate(_waits(stream), start=start + 1):
      self.wait_log += waited
      # the work the method needed: this process's images at their real mask lengths (the
      # other processes' parts are the same in distribution)
      useful = jax.process_count() * run.arch.useful_flops(local['ctx_len'], local['tgt_len'])
      skipped = local.pop('skipped')
      for name in skipped:
        print(f'[process {jax.process_index()}] skipped a corrupt image at step {step}: {name}',
              flush=True)
      self.acct['skipped_images'] += len(skipped)
      if run.packer is not None and run.packer.cuts > self.cuts_logged:
        self.cuts_logged = run.packer.cuts
        log(f'note: {self.cuts_logged} packed group(s) so far had contexts too long for the '
            'packed rows and were subsampled to fit (masks.pack; expected about once in 1e9)')
      if step == start + 1 and self.monitor:
        self.monitor.begin(state, start, local)
      batch = global_batch(local, self.mesh)
      state, metrics = self.compiled(state, batch)
      if pending is not None:  # read the previous step's metrics: the device is busy meanwhile
        self._resolve(*pending)
      pending = (step, metrics, useful)
      if self.monitor and self.monitor.due(step):
        # a health check or a feature map (its first call compiles): its time is left out of
        # the log lines' throughput, as an evaluation's is, and counted on its own; the step
        # it waits for is not
        jax.block_until_ready(state)
        t0 = time.time()
        self.monitor.after_step(step, state, batch)
        dt = time.time() - t0
        self.t_log += dt
        self.acct['monitor_seconds'] = self.acct.get('monitor_seconds', 0.0) + dt
      preempted = self.stop.requested(step)
      if preempted:
        log(f'{self.stop.name} received: saving a checkpoint at step {step}')
      if self.evaluator and step % run.evals.every == 0 and not preempted and not (
          step == self.total and run.evals.at_end):
        self._resolve(*pending)
        pending = None
        self._evaluate(step, state)
      if step % run.checkpoint.every == 0 or step == self.total or preempted:
        if pending is not None:
          self._resolve(*pending)
          pending = None
        self._save(step, state)
      if preempted:
        self.ckpts.wait()
        log(f'stopped by {self.stop.name} at step {step}: checkpoint '
            f'{step} is complete; run the same command again to resume')
        return state, dict(self.last, step=step, preempted=1.0)
    if pending is not None:
      self._resolve(*pending)
    self.last['train_seconds'] = self._train_seconds()
    log(f'trained to step {self.total} ({fmt_time(time.time() - self.t_train)} in this start, '
        f'{fmt_time(self.last["train_seconds"])} in all)')
    return state, self.last

  def _train_seconds(self) -> float:
    """Seconds spent training, all starts together, periodic evaluations excluded."""
    return (self.train_seconds0 + time.time() - self.t_train
            - (self.acct.get('eval_seconds', 0.0) - self.eval_seconds0))

  def _evaluate(self, step: int, state: TrainState) -> None:
    t0 = time.time()
    res = self.evaluator(encoder_params(state, self.spec.evals.encoder))
    dt = time.time() - t0
    self.acct['eval_seconds'] = self.acct.get('eval_seconds', 0.0) + dt
    self.t_log += dt  # throughput figures leave the evaluation out
    if self.progress:
      self.progress.pause()
    log(f'eval at step {step}: {summary(res)}'
        + f' [{dt:.1f}s; {100 * self.acct["eval_seconds"] / max(self._train_seconds(), 1e-9):.1f}% '
        'of the training time so far]')
    self.run_log.write({'step': step, **{f'eval_{k}': v for k, v in res.items()}})

  def _save(self, step: int, state: TrainState) -> None:
    acct = dict(self.acct, train_seconds=self._train_seconds(),
                images_seen=step * self.spec.batch_size)
    meta = {
        'step': step,
        'data': dict(self.data_meta, next_step=step),
        # the host RNG is counter-based: numpy Generators seeded with (stream, seed, step,
        # position or process), so (seed, step) is its whole state
        'host_rng': {'seed': self.spec.seed, 'step': step},
        'accounting': acct,
        'config': self.spec.config_dict(),
    }
    blocked = self.ckpts.save(step, state, meta)
    self.run_log.flush()  # a bucket's log is rewritten with each checkpoint
    log(f'checkpoint {step}: training blocked {blocked:.2f}s, writing in the background')

  def _resolve(self, step: int, metrics: dict, useful: float) -> None:
    run = self.spec
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    self.n_log += 1  # steps finished since the last log line
    self.useful_log += useful
    if m['finite'] < 1.0:
      self.acct['nonfinite_steps'] += 1
      if run.nonfinite == 'stop':
        raise NonFiniteError(
            f'step {step}: loss {m["loss"]} / gradient norm {m["grad_norm"]} is not finite; the '
            f'update was not applied and the run stopped (latest complete checkpoint: '
            f'{self.ckpts.latest_step()}). Lower optim.lr, set optim.grad_clip, use '
            'model.dtype=float32, or set nonfinite=skip to skip such steps and count them.')
      log(f'warning: step {step} had a non-finite loss or gradient; skipped '
          f'({self.acct["nonfinite_steps"]} so far)')
    if self.progress:
      self.progress.step(step, m['loss'])
    if step % run.log_every and step != self.total:
      return
    dt = time.time() - self.t_log
    n_dev = jax.device_count()
    m.update(step=step, images_per_sec=self.n_log * run.batch_size / dt,
             images_per_sec_per_device=self.n_log * run.batch_size / dt / n_dev,
             flops_per_sec=self.n_log * self.flops / dt, time=time.time() - self.t_start,
             useful_flops_per_sec=self.useful_log / dt, input_wait=self.wait_log / dt,
             skipped_images=self.acct['skipped_images'],
             monitor_seconds=self.acct.get('monitor_seconds', 0.0),
             nonfinite_steps=self.acct['nonfinite_steps'],
             damaged_checkpoints=self.acct.get('damaged_checkpoints', 0))
    if self.peak:  # model FLOPs utilisation: analytic FLOPs / (devices x peak)
      m['mfu'] = m['flops_per_sec'] / (n_dev * self.peak)
      m['mfu_useful'] = m['useful_flops_per_sec'] / (n_dev * self.peak)
    eta = (self.total - step) * dt / max(self.n_log, 1)
    terms = ''.join(f' ({k} {m[k]:.4f})' for k in ('jepa_loss', 'var_loss', 'cov_loss', 'sigreg')
                    if k in m)  # the anti-collapse terms, when they are on
    log(f'step {step:>6d}/{self.total} | loss {m["loss"]:.4f}{terms} | lr {m["lr"]:.2e} | '
        f'{m["images_per_sec"]:,.0f} img/s ({m["images_per_sec_per_device"]:,.1f}/device) | '
        + (f'MFU {100 * m["mfu"]:.1f}% ({100 * m["mfu_useful"]:.1f}% useful) | ' if 'mfu' in m
           else '') + f'input wait {100 * m["input_wait"]:.0f}% | ETA {fmt_time(eta)}')
    self.run_log.write(m)
    self.last = m
    self.t_log, self.n_log = time.time(), 0
    self.wait_log, self.useful_log = 0.0, 0.0


def _waits(stream):
  """(seconds the loop waited for it, batch) for each batch of `stream`: time the device
  queue may have run dry for want of input (with input that keeps up, the prefetched batch is
  there at once and the loop waits on the device instead)."""
  it = iter(stream)
  while True:
    t0 = time.perf_counter()
    try:
      item = next(it)
    except StopIteration:
      return
    yield time.perf_counter() - t0, item


def final_evaluation(run: Run, mesh: jax.sharding.Mesh, state: TrainState,
                     sources: data_lib.Sources | None = None) -> dict[str, float]:
  """The full evaluation (`evals.final_*`) of the trained encoder and, with
  `evals.baseline`, of the same network at random initialisation (seed + 1)."""
  ev = run.evals
  evaluator = Evaluator(run, mesh, ev.final_train_examples, ev.final_test_examples,
                        ev.final_probes, cache=ev.baseline,
                        sources=sources)  # decoded once for both
  log(f'final evaluation: {evaluator.describe()}')
  baseline = random_encoder(run, mesh, run.seed + 1, ev.encoder) if ev.baseline else None
  return with_baseline(evaluator, 'final', encoder_params(state, ev.encoder), baseline, log)
