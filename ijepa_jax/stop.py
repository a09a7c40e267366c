"""Stopping a run cleanly: SIGTERM / SIGINT become a request the training loop reads
between steps, agreed on by every process, with a deadline past which the process dumps
its stacks and exits for a restarter."""

import os
import signal
import sys
import threading

import jax
import numpy as np


class StopRequest:
  """SIGTERM / SIGINT set a flag that the loop reads between steps (a second SIGINT
  interrupts at once). With several processes they agree on it, so all save the same step.

  Agreement: every `check_every` steps each process contributes the flag *as it was before*
  the all-gather, and all decide on the gathered values alone. (Deciding on the local flag
  after the gather let a signal landing during the gather stop one process and not the
  other: one then entered the checkpoint's barrier, the other the next all-gather, and both
  hung. The stack dumps of a hung test run showed it.) A single process checks every step.

  A deadline bounds the stop: from the first signal, a watchdog thread gives the process
  `deadline` seconds to exit; past it, it dumps every thread's stack to stderr and exits
  with DEADLINE_EXIT (say a peer died and the agreement or a save's barrier never returns).
  A restarter then resumes from the latest complete checkpoint.

  The handler only records the signal (printing from a handler can collide with a print
  it interrupted); the loop reports it.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)
  DEADLINE_EXIT = 3

  def __init__(self, check_every: int = 1, deadline: float | None = None):
    self.signum: int | None = None
    self.check_every = check_every if jax.process_count() > 1 else 1
    self.deadline = deadline
    self._previous: dict = {}
    self._watchdog: threading.Timer | None = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self._start_watchdog()
    self.signum = signum

  def _start_watchdog(self) -> None:
    if self.deadline is None or self._watchdog is not None:
      return
    self._watchdog = threading.Timer(self.deadline, self._expire)
    self._watchdog.daemon = True  # never keeps a finished process alive
    self._watchdog.start()

  def _expire(self) -> None:
    import faulthandler  # pylint: disable=import-outside-toplevel
    print(f'[process {jax.process_index()}] error: still running {self.deadline:.0f}s after '
          f'{self.name} (checkpoint.stop_deadline); the stacks of all threads follow; exiting '
          f'{self.DEADLINE_EXIT}. The next start resumes from the latest complete checkpoint.',
          file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(self.DEADLINE_EXIT)  # pylint: disable=protected-access

  def requested(self, step: int) -> bool:
    """Whether to stop after `step`; afterwards `name` says which signal. With several
    processes, True only at a step all of them agree on."""
    if jax.process_count() == 1:
      return self.signum is not None
    if step % self.check_every:
      return False
    from jax.experimental import multihost_utils
    mine = self.signum or 0  # read once: a signal landing during the gather waits for the next
    nums = multihost_utils.process_allgather(np.int32(mine))
    if int(np.max(nums)) == 0:
      return False
    if self.signum is None:
      self.signum = int(np.max(nums))  # another process was signalled
    self._start_watchdog()  # the deadline holds on every process from the agreement on
    return True

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else 'a stop request'
