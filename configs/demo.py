"""The embedded default: a small ViT pretrained with I-JEPA on Fashion-MNIST, on the CPU.

28x28 grey images, 4x4 patches (a 7x7 grid), the corrected mask sampler with
min_keep lowered to 4 (the official 10 is more than a 7x7 grid's target blocks
hold) and contexts capped at 32 patches (random subset beyond), float32 compute (bf16
matmuls are slow on CPUs), and a final
evaluation (linear probe, k-NN, low-shot) of the target encoder against the same
network at random initialisation, with a smaller evaluation every 200 steps.
"""
from ijepa_jax.recipes import base_config


def get_config():
  c = base_config()
  c.batch_size = 128
  c.num_epochs = 1.0
  c.log_every = 25
  c.model.variant = 'custom'
  c.model.width = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.patch_size = 4
  c.model.pred_width = 32
  c.model.pred_depth = 2
  c.model.dtype = 'float32'
  c.model.scan_layers = False  # unrolled blocks: 1.3x the scan's speed on a CPU (docs/PERFORMANCE.md)
  c.data.dataset = 'fashion_mnist'
  c.data.image_size = 28
  c.data.channels = 1
  c.data.dataset_size = 60000
  # no random crop: at 28 px the official RandomResizedCrop (scale 0.3-1) cost the probe
  # 1.4 points over 3 seeds (docs/PERFORMANCE.md); scale = ratio = 1 is the whole image
  c.data.crop_scale = (1.0, 1.0)
  c.data.crop_ratio = (1.0, 1.0)
  c.data.mean = (0.2860,)      # Fashion-MNIST's pixel statistics
  c.data.std = (0.3530,)
  c.checkpoint.every = 100
  c.masks.mode = 'corrected'
  c.masks.min_keep = 4
  c.masks.context_len = 32  # mean context is ~24 of 49 patches; padding to 49 costs 1.7x the time
  c.optim.warmup_epochs = 0.1
  c.evals.every = 200          # k-NN + linear probe on 5k train / 2k test images: ~3% of the time
  c.evals.train_examples = 5000
  c.evals.test_examples = 2000
  c.evals.at_end = True        # then the full evaluation (60k / 10k) ...
  c.evals.baseline = True      # ... of the pretrained and of the randomly initialised encoder
  c.evals.crop_fraction = 1.0  # whole 28-px images, as in training
  c.monitor.health_every = 25  # the representation-health statistics with every log line
  return c
