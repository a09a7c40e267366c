"""ViT-H/16 on ImageNet-1K at 448: the official in1k_vith16-448_ep300 config."""
from ijepa_jax.recipes import paper_recipe


def get_config():
  return paper_recipe('huge', 16, 448, epochs=300, warmup_epochs=40)
