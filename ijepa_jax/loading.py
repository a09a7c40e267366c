"""Encoders for the command-line tools: from a run's checkpoint or from a weights file.

Shared by `ijepa_jax.tools.evaluate`, `ijepa_jax.tools.embed` and `ijepa_jax.tools.convert`.
"""

from typing import Any

import jax
import numpy as np

from ijepa_jax import layouts, sharding
from ijepa_jax.checkpoint import Checkpoints, find_checkpoint
from ijepa_jax.config import ConfigError
from ijepa_jax.spec import Arch, Run
from ijepa_jax.state import StepOnMesh, encoder_params
from ijepa_jax.train_step import TrainState


def restore_state(run: Run, path: str, mesh: jax.sharding.Mesh,
                  step: int | None = None) -> tuple[TrainState, int, dict]:
  """(state, step, meta) of a run's checkpoint: `path` is its workdir, its checkpoints/ folder
  or one checkpoints/<step> folder; `step` picks another saved step."""
  directory, latest = find_checkpoint(path)
  ckpts = Checkpoints(directory, read_only=True, config=run.config_dict())
  step = latest if step is None else step
  if step not in ckpts.all_steps():
    raise FileNotFoundError(f'{directory} has no checkpoint {step} (it has {ckpts.all_steps()})')
  on_mesh = StepOnMesh.build(run, mesh)
  with on_mesh.scope():
    state, meta = ckpts.restore(step, on_mesh.target)
  ckpts.close()
  return state, step, meta


def check_architecture(ours: Arch, arch: dict[str, int], what: str) -> None:
  """A ConfigError naming the config fields to change when `arch` (sizes of weights) differs
  from the run's (`ours`)."""
  names = ('width', 'depth', 'patch_size', 'mlp_dim', 'channels')
  names += ('pred_width', 'pred_depth') if 'pred_width' in arch else ()
  ours = {k: getattr(ours, k) for k in names}
  diff = {k: (arch[k], ours[k]) for k in ours if k in arch and arch[k] != ours[k]}
  if diff:
    fields = {'width': 'model.width', 'depth': 'model.depth', 'patch_size': 'model.patch_size',
              'mlp_dim': 'model.mlp_dim', 'channels': 'data.channels',
              'pred_width': 'model.pred_width', 'pred_depth': 'model.pred_depth'}
    raise ConfigError(
        f'{what} does not fit the config: ' + ', '.join(
            f'{k} {theirs} in the weights vs {mine} in the config ({fields[k]})'
            for k, (theirs, mine) in diff.items())
        + '. Use the config of that model (configs/vith14.py, vith16_448.py, vitg16.py for the '
        'released ones) or set those fields')


def encoder_from(run: Run, mesh: jax.sharding.Mesh, *,
                 workdir: str | None = None, weights: str | None = None, step: int | None = None,
                 which: str = 'target') -> tuple[Any, str, dict]:
  """(encoder params on `mesh`, a description, the checkpoint's metadata or {}) from a run
  (`workdir`, its latest or `step`
  checkpoint) or a weights file (an official `.pth.tar`, a timm/official encoder state dict,
  our safetensors export); `which`: the target (EMA) or the context encoder."""
  if bool(workdir) == bool(weights):
    raise ValueError('give exactly one of --workdir (a run) and --weights (a weights file)')
  if workdir:
    state, step, meta = restore_state(run, workdir, mesh, step)
    return encoder_params(state, which), f'{which} encoder of {workdir} at step {step}', meta
  part = 'target_encoder' if which == 'target' else 'encoder'
  params, grid = layouts.load_encoder_weights(weights, part)
  check_architecture(run.arch, layouts.architecture(params), weights)
  params = jax.device_put(jax.tree.map(np.asarray, params), sharding.replicated(mesh))
  return params, f'{part} of {weights} (trained at a {grid[0]}x{grid[1]} patch grid)', {}


def random_encoder(run: Run, mesh: jax.sharding.Mesh, seed: int,
                   which: str = 'target') -> Any:
  """The encoder of `run` at random initialisation (the official init) with `seed`, on
  `mesh`: the baseline that pretraining is measured against."""
  return encoder_params(StepOnMesh.build(run, mesh).init(seed), which)
