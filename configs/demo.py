"""The embedded default: a small ViT pretrained with I-JEPA on Fashion-MNIST, on the CPU.

28x28 grey images, 4x4 patches (a 7x7 grid), the corrected mask sampler with
min_keep lowered to 4 (the official 10 is more than a 7x7 grid's target blocks
hold) and contexts capped at 32 patches (random subset beyond), float32 compute (bf16
matmuls are slow on CPUs), and a final
evaluation (linear probe, k-NN, low-shot) of the target encoder against the same
network at random initialisation, with a smaller evaluation every 200 steps.
"""
from ijepa_jax.recipes import fashion_mnist_demo


def get_config():
  return fashion_mnist_demo()
