"""ViT-H/14 on ImageNet-1K at 224: the official in1k_vith14_ep300 config."""
from ijepa_jax.recipes import paper_recipe


def get_config():
  return paper_recipe('huge', 14, 224, epochs=300, warmup_epochs=40)
