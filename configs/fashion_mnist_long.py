"""The demo's longer sibling: under 30 minutes of pretraining on 2 CPU cores.

What it changes from configs/demo.py: an encoder twice as wide (128, 4 heads of 32),
three epochs instead of 1.25, a warmup of 0.25 epochs, and the periodic evaluation every
234 steps (half an epoch). Everything else, the variance-covariance terms included, is
the demo's. Its results, beside raw pixels and random initialisation, are in
docs/RESULTS.md.
"""
from ijepa_jax.recipes import fashion_mnist_demo


def get_config():
  c = fashion_mnist_demo()
  c.model.width = 128
  c.num_epochs = 3.0
  c.optim.warmup_epochs = 0.25
  c.evals.every = 234
  c.checkpoint.every = 234
  return c
