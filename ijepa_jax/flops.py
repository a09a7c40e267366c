"""Analytic FLOP count of the I-JEPA train step, and peak FLOP/s per accelerator.

Counts matrix-multiply FLOPs (2 per multiply-add): the target encoder forward on all N
patches, the context encoder on the context tokens and the predictor on M sequences of
context + target tokens, forward and backward (backward = 2x forward). Elementwise work is
left out, as is usual for MFU.

Two counts of one step: *executed* (`train_step_flops`) is what the compiled step does, at
the mask sampler's fixed lengths Kc and Kt, padding included; *useful* (`useful_step_flops`)
is the same formula at each image's real lengths (`ctx_len`, `tgt_len`), the work the
official step does on the same masks, which cuts contexts to the batch minimum and draws one
target size per batch, so that it pads nothing. MFU on executed FLOPs says how busy the chip
is; MFU on useful FLOPs says how much of that work the method needed.
"""

import numpy as np

# Dense bf16 peak FLOP/s per chip, keyed by a substring of `device.device_kind`.
PEAK_FLOPS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6': 918e12,
    'H200': 989e12,
    'H100': 989e12,  # SXM; an H100 PCIe peaks at 756e12
    'A100': 312e12,
}


def peak_flops(device_kind: str) -> float | None:
  """Peak bf16 FLOP/s of one device of this kind, or None (e.g. a CPU)."""
  for key, value in PEAK_FLOPS.items():
    if key.lower() in device_kind.lower():
      return value
  return None


def transformer_flops(tokens, width: int, depth: int, hidden: int):
  """Forward FLOPs of `depth` pre-norm blocks (MLP `hidden` wide) over one sequence of
  `tokens` (an int, or a numpy array of lengths: then an array of float64 counts)."""
  if isinstance(tokens, np.ndarray):
    tokens = tokens.astype(np.float64)  # int32 lengths would overflow
  dense = 2 * tokens * (4 * width * width + 2 * width * hidden)  # qkv + proj + fc1 + fc2
  attention = 2 * 2 * tokens * tokens * width  # q k^T and p v
  return depth * (dense + attention)


def forward_parts(*, image_size: int, patch_size: int, channels: int, width: int, depth: int,
                  mlp_dim: int, pred_width: int, pred_depth: int, pred_out: int, context_len,
                  target_lens) -> dict:
  """Forward FLOPs of one image's three networks, {'target', 'context', 'predictor'}, with
  `context_len` context tokens and target blocks of `target_lens` [..., M] tokens (ints, or
  numpy arrays over images). The step runs the target forward only, the other two forward
  and backward (3x)."""
  n = (image_size // patch_size) ** 2
  patch = 2 * n * patch_size ** 2 * channels * width  # the whole image, both encoders
  target = patch + transformer_flops(n, width, depth, mlp_dim)
  context = patch + transformer_flops(context_len, width, depth, mlp_dim)
  sequences = np.asarray(context_len, np.float64)[..., None] + np.asarray(target_lens, np.float64)
  predictor = (2 * np.asarray(context_len, np.float64) * width * pred_width  # predictor_embed
               + transformer_flops(sequences, pred_width, pred_depth, 4 * pred_width).sum(-1)
               + 2 * np.asarray(target_lens, np.float64).sum(-1) * pred_width * pred_out)  # proj
  return {'target': target, 'context': context, 'predictor': predictor}


def _image_flops(**sizes):
  """Forward + backward FLOPs of one image's share of a step (`forward_parts`' arguments)."""
  f = forward_parts(**sizes)
  return f['target'] + 3 * (f['context'] + f['predictor'])


def train_step_flops(*, batch_size: int, image_size: int, patch_size: int, channels: int,
                     width: int, depth: int, mlp_dim: int, pred_width: int, pred_depth: int,
                     pred_out: int, context_len: int, target_len: int, num_targets: int) -> float:
  """Executed FLOPs of one train step on the global batch (forward + backward): an encoder of
  `width` x `depth` (MLP `mlp_dim`), a predictor of `pred_width` x `pred_depth` (MLP 4x,
  `pred_out` outputs per token), contexts of `context_len` tokens and `num_targets` target
  blocks of `target_len` (the mask sampler's padded shapes). `spec.Arch.step_flops` fills
  these in from a run."""
  per_image = _image_flops(
      image_size=image_size, patch_size=patch_size, channels=channels, width=width,
      depth=depth, mlp_dim=mlp_dim, pred_width=pred_width, pred_depth=pred_depth,
      pred_out=pred_out, context_len=context_len, target_lens=[target_len] * num_targets)
  return batch_size * int(round(float(per_image)))


def useful_step_flops(*, ctx_len: np.ndarray, tgt_len: np.ndarray, **sizes) -> float:
  """Useful FLOPs of one step over the images whose real lengths are given: `ctx_len` [B]
  context tokens and `tgt_len` [B, M] target tokens (the mask batch's), the sizes as for
  `train_step_flops` (without batch_size and the padded lengths)."""
  return float(np.sum(_image_flops(context_len=np.asarray(ctx_len, np.float64),
                                   target_lens=np.asarray(tgt_len, np.float64), **sizes)))
