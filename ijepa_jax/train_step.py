"""Train state, optimizer and the pure I-JEPA update.

`IJepa` bundles the static pieces (modules, optimizer, schedules, loss kind);
`create_train_state` and `train_step` are pure functions of arrays that a user
can call inside their own `jax.jit`.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from ijepa_jax.models import Predictor, VisionTransformer, gather_tokens
from ijepa_jax.objective import (AntiCollapse, jepa_loss, normalize_targets, pixel_targets,
                                 real_tokens)
from ijepa_jax.schedules import Schedules

# images [B,H,W,C], ctx_idx [B,Kc], ctx_len [B], tgt_idx [B,M,Kt], tgt_len [B,M]; packed
# (masks.pack): also ctx_pack, ctx_seg, ctx_unpack, pred_pack, pred_seg, pred_unpack
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """step, params {'encoder', 'predictor'}, target_params (EMA encoder), opt_state."""
  step: jax.Array
  params: Any
  target_params: Any
  opt_state: Any


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: kernels and the mask token.

  The official rule is "not a bias and not 1-D"; under nn.scan biases and
  LayerNorm scales gain a depth axis, so we select by name instead: `bias`
  and LayerNorm `scale` are exempt, every other parameter is decayed.
  """
  def decayed(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] not in ('bias', 'scale')
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(schedules: Schedules, *, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, grad_clip: float = 0.0) -> optax.GradientTransformation:
  """AdamW as torch.optim.AdamW with the official lr / wd schedules and decay mask.

  Update: p -= lr * (adam(g) + wd * p) on decayed params; optional global-norm
  clipping first (the official recipe uses none: grad_clip = 0).
  """
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  parts += [
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(schedules.weight_decay_at, mask=decay_mask),
      optax.scale_by_learning_rate(schedules.learning_rate),
  ]
  return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class IJepa:
  """The static half of I-JEPA training: modules, optimizer, schedules, loss kind and the
  optional anti-collapse terms (none by default: the official objective)."""
  encoder: VisionTransformer
  predictor: Predictor
  optimizer: optax.GradientTransformation
  schedules: Schedules
  loss: str = 'smooth_l1'
  anti_collapse: AntiCollapse = AntiCollapse()
  # 'representation' (I-JEPA) or 'pixels' (the paper's ablation: the predictor, whose
  # predictor_proj then has p*p*C outputs, regresses each target patch's normalised pixels)
  target_space: str = 'representation'
  # gradient accumulation: the batch's gradient summed over this many micro-batches (images
  # j, j + k, j + 2k, ... form micro-batch j), one update per batch (`train_step`)
  accum_steps: int = 1


def create_train_state(model: IJepa, rng: jax.Array, batch: Batch) -> TrainState:
  """Initialise params (the official init: Linear/conv weights and the mask token
  N(0, 0.02), biases 0, LayerNorm 1/0), the EMA copy and the optimizer state.

  `batch` only supplies shapes (abstract arrays are fine). Parameters stay
  wrapped in logical-partitioning boxes so `jax.eval_shape` of this function
  yields the sharding specs; call `nn.unbox` on the result (the trainer does).
  """
  k_enc, k_pred = jax.random.split(rng)
  enc = model.encoder.init(k_enc, batch['images'], batch['ctx_idx'], batch['ctx_len'])['params']
  ctx = jax.eval_shape(model.encoder.apply, {'params': enc}, batch['images'],
                       batch['ctx_idx'], batch['ctx_len'])
  pred = model.predictor.init(k_pred, jnp.zeros(ctx.shape, ctx.dtype), batch['ctx_idx'],
                              batch['ctx_len'], batch['tgt_idx'], batch['tgt_len'])['params']
  params = {'encoder': enc, 'predictor': pred}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    target_params=jax.tree.map(jnp.copy, enc),
                    opt_state=model.optimizer.init(params))


def packing_of(batch: Batch, network: str) -> tuple[jax.Array, jax.Array, jax.Array] | None:
  """A packed batch's (pack, seg, unpack) arrays of `network` ('ctx' or 'pred'; masks.pack,
  ijepa_jax/packing.py), or None where that network is not packed."""
  if f'{network}_pack' not in batch:
    return None
  return tuple(batch[f'{network}_{k}'] for k in ('pack', 'seg', 'unpack'))


def _forward(model: IJepa, params: Any, target_params: Any,
             batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(predictions [B, M, Kt, D], targets [B, M, Kt, D], target-encoder tokens [B, N, D],
  context-encoder tokens [B, Kc, D]); with pixel targets D is p*p*C for the first two."""
  h = model.encoder.apply({'params': target_params}, batch['images'])  # [B, N, D]
  b, m, kt = batch['tgt_idx'].shape
  if model.target_space == 'pixels':  # (h then only feeds the health monitor)
    targets = pixel_targets(batch['images'], model.encoder.patch_size, batch['tgt_idx'])
  else:
    targets = gather_tokens(normalize_targets(h), batch['tgt_idx'].reshape(b, m * kt))
  targets = jax.lax.stop_gradient(targets.reshape(b, m, kt, -1))
  z = model.encoder.apply({'params': params['encoder']}, batch['images'],
                          batch['ctx_idx'], batch['ctx_len'], packing=packing_of(batch, 'ctx'))
  pred = model.predictor.apply({'params': params['predictor']}, z, batch['ctx_idx'],
                               batch['ctx_len'], batch['tgt_idx'], batch['tgt_len'],
                               packing=packing_of(batch, 'pred'))
  return pred, targets, jax.lax.stop_gradient(h), z


def predictions_and_targets(model: IJepa, params: Any, target_params: Any,
                            batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The two sides of the I-JEPA objective: (predictions [B, M, Kt, D], targets
  [B, M, Kt, D], the target encoder's output tokens [B, N, D]).

  Targets are the target encoder's tokens of the whole image through an affine-free
  LayerNorm, gathered at the target blocks (gradient-free); predictions are the
  predictor's outputs there, from the context encoder's tokens of the context block.
  """
  return _forward(model, params, target_params, batch)[:3]


def loss_terms(model: IJepa, params: Any, target_params: Any, batch: Batch,
               step: jax.Array | int = 0, tokens: jax.Array | None = None) -> dict[str, jax.Array]:
  """Every term of the objective: 'jepa_loss' (the I-JEPA regression), the active
  anti-collapse terms unweighted ('var_loss', 'cov_loss', 'sigreg'; on the context
  encoder's tokens, SIGReg's directions drawn from (seed, step)) and 'loss', their weighted
  sum, which is what the gradient follows. `tokens`: the real target tokens to average
  over, where `batch` is a micro-batch of a larger one (`jepa_loss`)."""
  pred, targets, _, z = _forward(model, params, target_params, batch)
  terms = {'jepa_loss': jepa_loss(pred, targets, batch['tgt_len'], model.loss, tokens)}
  extra = model.anti_collapse.terms(z, batch['ctx_len'], step)
  terms['loss'] = terms['jepa_loss'] + model.anti_collapse.total(extra)
  return terms | extra


def compute_loss(model: IJepa, params: Any, target_params: Any, batch: Batch,
                 step: jax.Array | int = 0) -> jax.Array:
  """The objective for `params` against the (gradient-free) target encoder: the I-JEPA loss,
  plus the anti-collapse terms where the model has them."""
  return loss_terms(model, params, target_params, batch, step)['loss']


def ema_update(target: Any, online: Any, momentum: jax.Array) -> Any:
  """target <- m * target + (1 - m) * online, leaf by leaf (float32)."""
  return jax.tree.map(lambda t, o: t * momentum + (1.0 - momentum) * o, target, online)


def micro_batches(batch: Batch, k: int) -> Batch:
  """`batch` [B, ...] as k micro-batches [k, B / k, ...]: micro-batch j holds images j,
  j + k, j + 2k, ... (each device's rows split the same way: no data moves between devices
  where B / k is a multiple of their number)."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f'a batch of {x.shape[0]} does not split into {k} micro-batches')
    return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)
  return jax.tree.map(split, batch)


def _loss_and_grads(model: IJepa, state: TrainState, batch: Batch):
  """(loss, terms, gradient) of the objective on `batch`, in `model.accum_steps`
  micro-batches when that is above 1: their gradients are summed under `lax.scan`, so one
  micro-batch's activations are alive at a time. The I-JEPA loss is averaged over the whole
  batch's real target tokens, so it and its gradient equal the one-batch values; the
  anti-collapse terms, which need a batch's statistics, are each micro-batch's, averaged."""
  def objective(params, b, tokens=None, share=1.0):
    terms = loss_terms(model, params, state.target_params, b, state.step, tokens)
    extra = {k: v for k, v in terms.items() if k not in ('loss', 'jepa_loss')}
    return terms['jepa_loss'] + share * model.anti_collapse.total(extra), terms

  k = model.accum_steps
  if k == 1:
    (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch)
    return loss, terms, grads
  tokens = real_tokens(batch['tgt_len'], batch['tgt_idx'].shape[-1])

  def one(total, b):
    (_, terms), g = jax.value_and_grad(objective, has_aux=True)(state.params, b, tokens, 1.0 / k)
    return jax.tree.map(jnp.add, total, g), terms

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  grads, each = jax.lax.scan(one, zeros, micro_batches(batch, k))
  terms = {name: v.mean() for name, v in each.items()}  # the anti-collapse terms: averaged
  terms['jepa_loss'] = each['jepa_loss'].sum()          # already over the whole batch
  extra = {name: v for name, v in terms.items() if name not in ('loss', 'jepa_loss')}
  terms['loss'] = terms['jepa_loss'] + model.anti_collapse.total(extra)
  return terms['loss'], terms, grads


def train_step(model: IJepa, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
  """One I-JEPA update: loss -> grads -> AdamW -> EMA of the target encoder.

  Pure; jit it (the trainer jits it with shardings and a donated state).
  Returns the new state and scalar metrics.
  """
  loss, terms, grads = _loss_and_grads(model, state, batch)
  updates, opt_state = model.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  momentum = model.schedules.momentum(state.step)
  target_params = ema_update(state.target_params, params['encoder'], momentum)
  metrics = {
      'loss': loss,
      'lr': model.schedules.learning_rate(state.step),
      'weight_decay': model.schedules.weight_decay_at(state.step),
      'momentum': momentum,
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(params),
      'context_len': batch['ctx_len'].astype(jnp.float32).mean(),
      'target_len': batch['tgt_len'].astype(jnp.float32).mean(),
  }
  if model.anti_collapse.active:
    metrics |= {k: v for k, v in terms.items() if k != 'loss'}
  new_state = TrainState(step=state.step + 1, params=params, target_params=target_params,
                         opt_state=opt_state)
  return new_state, metrics


def guarded_train_step(model: IJepa, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
  """`train_step` that keeps params, EMA and optimizer state unchanged when the loss, the
  gradient norm or the updated parameters' norm is not finite (the step counter still
  advances, so the data moves on).

  `metrics['finite']` (1.0 / 0.0) says which happened; the trainer either stops on a
  non-finite step (default) or skips it and counts it (`nonfinite='skip'`). XLA fuses the
  select into the update, so a finite step costs no extra memory traffic.
  """
  new, metrics = train_step(model, state, batch)
  finite = (jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
            & jnp.isfinite(metrics['param_norm']))
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new.replace(step=state.step), state)
  metrics['finite'] = finite.astype(jnp.float32)
  return kept.replace(step=new.step), metrics
