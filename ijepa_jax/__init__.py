"""ijepa-jax: I-JEPA (Assran et al., CVPR 2023) in JAX/Flax.

The pure building blocks, usable inside your own `jax.jit`:

- `VisionTransformer`, `Predictor`, `VARIANTS`: the encoder and predictor (Flax linen).
- `sincos_2d`: the fixed 2-D position table in the official layout.
- `MaskConfig`, `MaskSampler`, `MaskBatch`: host-side multi-block masks, fixed shapes.
- `Packer`, `batch_masks`: those masks' sequences packed into fixed-shape rows (less padded
  work where lengths vary), which the step takes beside them.
- `normalize_targets`, `jepa_loss`: the objective.
- `Schedules`, `make_optimizer`: official lr / weight-decay / EMA schedules and AdamW.
- `IJepa`, `TrainState`, `create_train_state`, `train_step`, `guarded_train_step`
  (skips non-finite updates), `compute_loss`, `ema_update`.
- `encode(params, images)`: frozen-encoder features (mean-pooled, last-4, tokens) of any
  encoder parameter tree, ours or imported.

Evaluation: `ijepa_jax.probes` (linear probe, k-NN, low-shot on feature arrays) and
`ijepa_jax.evaluation` (features of labelled images, the evaluator); weights in and out:
`ijepa_jax.layouts` (official / timm / HuggingFace names) and `ijepa_jax.formats` (torch and
safetensors files).

Host side: `ijepa_jax.data` (image sources, the official train/eval transforms),
`ijepa_jax.input_pipeline.Batches`, `ijepa_jax.checkpoint.Checkpoints`.
"""

from ijepa_jax.features import encode
from ijepa_jax.masks import MaskBatch, MaskConfig, MaskSampler
from ijepa_jax.models import VARIANTS, Predictor, VisionTransformer
from ijepa_jax.objective import jepa_loss, normalize_targets
from ijepa_jax.packing import Packer, batch_masks
from ijepa_jax.pos_embed import sincos_2d
from ijepa_jax.schedules import Schedules
from ijepa_jax.train_step import (IJepa, TrainState, compute_loss, create_train_state,
                                  ema_update, guarded_train_step, make_optimizer,
                                  train_step)

__all__ = [
    'VARIANTS', 'VisionTransformer', 'Predictor', 'sincos_2d', 'MaskConfig', 'MaskSampler',
    'MaskBatch', 'normalize_targets', 'jepa_loss', 'Schedules', 'make_optimizer', 'IJepa',
    'TrainState', 'create_train_state', 'train_step', 'guarded_train_step', 'compute_loss',
    'ema_update', 'encode', 'Packer', 'batch_masks',
]
