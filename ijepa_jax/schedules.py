"""The official I-JEPA schedules: learning rate, weight decay and EMA momentum.

Each is a pure function of the 0-based update index `step` (the number of
updates already applied), written with jnp so it runs inside `jax.jit` and on
plain Python ints alike. The official trainer advances its schedulers once
*before* each update, so update `step` uses the official value at counter
`step + 1`; the momentum generator is read *after* each update, starting at
i = 0.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Schedules:
  """Official schedule constants (src/helper.py, src/utils/schedulers.py).

  warmup_steps = int(warmup_epochs * ipe); total_steps (T_max) =
  int(ipe_scale * num_epochs * ipe); ema_steps = ipe * num_epochs * ipe_scale
  (not rounded, as in the official generator).
  """
  warmup_steps: int
  total_steps: int
  ema_steps: float
  start_lr: float = 2e-4
  peak_lr: float = 1e-3
  final_lr: float = 1e-6
  weight_decay: float = 0.04
  final_weight_decay: float = 0.4
  ema_start: float = 0.996
  ema_end: float = 1.0

  @classmethod
  def from_epochs(cls, *, steps_per_epoch: int, num_epochs: float, warmup_epochs: float,
                  ipe_scale: float = 1.0, **values: Any) -> 'Schedules':
    ipe = steps_per_epoch
    return cls(warmup_steps=int(warmup_epochs * ipe), total_steps=int(ipe_scale * num_epochs * ipe),
               ema_steps=ipe * num_epochs * ipe_scale, **values)

  def learning_rate(self, step):
    """Linear warmup start_lr -> peak_lr, then cosine to final_lr (WarmupCosineSchedule)."""
    s = jnp.asarray(step, jnp.float32) + 1.0
    warm = self.start_lr + s / max(1, self.warmup_steps) * (self.peak_lr - self.start_lr)
    progress = (s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
    cos = self.final_lr + (self.peak_lr - self.final_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(s < self.warmup_steps, warm, jnp.maximum(self.final_lr, cos))

  def weight_decay_at(self, step):
    """Cosine from weight_decay to final_weight_decay over total_steps (CosineWDSchedule)."""
    s = jnp.asarray(step, jnp.float32) + 1.0
    progress = s / self.total_steps
    wd = self.final_weight_decay + (self.weight_decay - self.final_weight_decay) * 0.5 * (
        1.0 + jnp.cos(jnp.pi * progress))
    if self.final_weight_decay <= self.weight_decay:
      return jnp.maximum(self.final_weight_decay, wd)
    return jnp.minimum(self.final_weight_decay, wd)

  def momentum(self, step):
    """EMA momentum for the target update after update `step`: linear ema_start -> ema_end."""
    s = jnp.asarray(step, jnp.float32)
    return self.ema_start + s * (self.ema_end - self.ema_start) / self.ema_steps
