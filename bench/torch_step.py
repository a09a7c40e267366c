"""The I-JEPA training step in PyTorch, as the official code (facebookresearch/ijepa) runs it,
timed on given masks: the reference our step is measured against (bench/bench_vs_torch.py,
bench/device_check.py).

  python bench/torch_step.py --job job.npz --out result.json [--threads 2] [--device cpu|cuda]
      [--attention official|sdpa]

Needs only torch and numpy (it runs in .venv-torch here and in the GPU image), so unlike the
other benchmarks it is a standalone script, run by path with argparse (bench/stepping.py's
`run_torch` starts it): that Python has neither this package nor absl, and importing the
`bench` package would import them. job.npz holds
the model sizes and the masks of every step, from our sampler; the step follows DESIGN.md's
account of the official modules:

- encoder: conv patch embedding, + fixed 2-D sin-cos positions, keep the masked tokens
  (`apply_masks`), pre-norm blocks (LayerNorm eps 1e-6, qkv with bias, softmax(q k^T / sqrt d)
  written out as the official `Attention` does, or with `--attention sdpa` through
  `F.scaled_dot_product_attention`, the strongest PyTorch a user gets without changing the
  official code's masks, exact GELU), final LayerNorm;
- predictor: Linear to its width, + its positions at the context; per target block, the
  context repeated and one mask token + position per target patch appended; blocks;
  LayerNorm; the target slots; Linear back;
- targets: the target encoder on the whole image, `F.layer_norm` without affine, gathered at
  each block, `repeat_interleave_batch`; loss `F.smooth_l1_loss`;
- AdamW (no weight decay on biases and 1-D parameters), then the EMA of the target encoder
  with `_foreach` ops; bf16 autocast on CUDA (the official `use_bfloat16`), float32 on the CPU.

Masks (`--cut`): `batch_min` is the official collator (every context cut to the batch's
shortest, every target block to the batch's shortest block: no padded work, the official
sampler's lengths); `none` keeps our fixed lengths, padding included, so both steps do the
same work (the fair comparison for the corrected sampler, whose per-image lengths the
official modules cannot express without padding).
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_2d(dim: int, grid: int) -> np.ndarray:
  """[grid*grid, dim]: first half the column coordinate, last half the row; [sin | cos]."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
  return np.concatenate([one_d(dim // 2, gh), one_d(dim // 2, gw)], axis=1).astype(np.float32)


def apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
  """The official apply_masks: for each mask [B, K], gather x [B, N, D] -> [B, K, D]; concat on
  batch."""
  return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).expand(-1, -1, x.size(-1))) for m in masks])


SDPA = False  # --attention sdpa: F.scaled_dot_product_attention (flash / memory-efficient kernels)


class Attention(nn.Module):
  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads, self.scale = heads, (dim // heads) ** -0.5
    self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    if SDPA:
      out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    else:  # written out, as the official Attention
      out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, heads)
    self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
  def __init__(self, image: int, patch: int, channels: int, dim: int, depth: int, heads: int,
               hidden: int):
    super().__init__()
    self.patch_embed = nn.Conv2d(channels, dim, patch, patch)
    self.register_buffer('pos_embed', torch.tensor(sincos_2d(dim, image // patch))[None])
    self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
    self.norm = nn.LayerNorm(dim, eps=1e-6)

  def forward(self, images, masks=None):
    x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
    if masks is not None:
      x = apply_masks(x, masks)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)


class Predictor(nn.Module):
  def __init__(self, grid: int, dim: int, width: int, depth: int, heads: int):
    super().__init__()
    self.predictor_embed = nn.Linear(dim, width)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
    self.register_buffer('pos', torch.tensor(sincos_2d(width, grid))[None])
    self.predictor_blocks = nn.ModuleList(Block(width, heads, 4 * width) for _ in range(depth))
    self.predictor_norm = nn.LayerNorm(width, eps=1e-6)
    self.predictor_proj = nn.Linear(width, dim)

  def forward(self, z, masks_x, masks):
    b = len(z) // len(masks_x)
    x = self.predictor_embed(z) + apply_masks(self.pos.repeat(b, 1, 1), masks_x)
    n_ctx = x.shape[1]
    tokens = self.mask_token + apply_masks(self.pos.repeat(b, 1, 1), masks)
    x = torch.cat([x.repeat(len(masks), 1, 1), tokens], dim=1)
    for blk in self.predictor_blocks:
      x = blk(x)
    return self.predictor_proj(self.predictor_norm(x)[:, n_ctx:])


def init_weights(module: nn.Module) -> None:
  for m in module.modules():
    if isinstance(m, (nn.Linear, nn.Conv2d)):
      nn.init.trunc_normal_(m.weight, std=0.02)
      nn.init.zeros_(m.bias)
  for p in module.parameters():
    if p.dim() == 3 and p.shape[:2] == (1, 1):  # the mask token
      nn.init.trunc_normal_(p, std=0.02)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--job', required=True)
  ap.add_argument('--out', required=True)
  ap.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave)')
  ap.add_argument('--device', default='cpu')
  ap.add_argument('--cut', default='batch_min', choices=('batch_min', 'none'))
  ap.add_argument('--attention', default='official', choices=('official', 'sdpa'),
                  help='written out as the official Attention, or F.scaled_dot_product_attention')
  args = ap.parse_args()
  global SDPA
  SDPA = args.attention == 'sdpa'
  if args.threads:
    torch.set_num_threads(args.threads)
  job = np.load(args.job)
  size = {k: int(job[k]) for k in ('image', 'patch', 'channels', 'width', 'depth', 'heads',
                                     'hidden', 'pred_width', 'pred_depth', 'pred_heads')}
  dev = torch.device(args.device)
  torch.manual_seed(0)
  grid = size['image'] // size['patch']
  dims = (size['image'], size['patch'], size['channels'], size['width'], size['depth'],
          size['heads'], size['hidden'])
  with dev:  # built (and initialised) on the device
    encoder, target = Encoder(*dims), Encoder(*dims)
    predictor = Predictor(grid, size['width'], size['pred_width'], size['pred_depth'],
                          size['pred_heads'])
  init_weights(encoder), init_weights(predictor)
  target.load_state_dict(encoder.state_dict())
  for p in target.parameters():
    p.requires_grad = False
  params = [p for m in (encoder, predictor) for p in m.parameters()]
  decay = [p for p in params if p.ndim > 1]  # the official rule: not a bias, not 1-D
  no_decay = [p for p in params if p.ndim <= 1]
  opt = torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}],
                          lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.04)
  enc_params, tgt_params = list(encoder.parameters()), list(target.parameters())
  cuda = dev.type == 'cuda'

  ctx_idx, ctx_len, tgt_idx, tgt_len = (job[k]
                                        for k in ('ctx_idx', 'ctx_len', 'tgt_idx', 'tgt_len'))
  steps, b = ctx_idx.shape[0], ctx_idx.shape[1]
  images = torch.randn(b, size['channels'], size['image'], size['image'], device=dev)
  batches = []
  if args.cut == 'none':
    ctx_len = np.full_like(ctx_len, ctx_idx.shape[-1])
    tgt_len = np.full_like(tgt_len, tgt_idx.shape[-1])
  for s in range(steps):
    kc, kt = int(ctx_len[s].min()), int(tgt_len[s].min())
    enc = [torch.from_numpy(ctx_idx[s, :, :kc].astype(np.int64)).to(dev)]
    pred = [torch.from_numpy(tgt_idx[s, :, m, :kt].astype(np.int64)).to(dev)
            for m in range(tgt_idx.shape[2])]
    batches.append((enc, pred))

  def step(masks_enc, masks_pred, momentum=0.998):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
      with torch.no_grad():
        h = F.layer_norm(target(images), (size['width'],))
        h = apply_masks(h, masks_pred)
        h = torch.cat([torch.cat([h[i * b:(i + 1) * b] for _ in masks_enc])
                       for i in range(len(h) // b)])  # repeat_interleave_batch
      z = predictor(encoder(images, masks_enc), masks_enc, masks_pred)
      loss = F.smooth_l1_loss(z, h)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      torch._foreach_mul_(tgt_params, momentum)
      torch._foreach_add_(tgt_params, enc_params, alpha=1.0 - momentum)
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  step(*batches[0]).item()  # warm-up
  sync()
  t0 = time.perf_counter()
  for enc, pred in batches[1:]:
    loss = step(enc, pred)
  loss = float(loss.item())
  sync()
  seconds = (time.perf_counter() - t0) / (steps - 1)
  result = {
      'step_ms': 1000 * seconds, 'images_per_sec': b / seconds, 'loss': loss,
      'cut': args.cut, 'attention': args.attention, 'threads': torch.get_num_threads(),
      'torch': torch.__version__, 'device': args.device,
      'mean_context_len': float(np.mean([int(c.min()) for c in ctx_len[1:]])),
      'mean_target_len': float(np.mean([int(t.min()) for t in tgt_len[1:]])),
      'peak_memory_gib': torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan,
  }
  with open(args.out, 'w') as f:
    json.dump(result, f)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
