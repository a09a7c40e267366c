from setuptools import find_packages, setup

with open('requirements.txt') as f:
  requirements = [line.strip() for line in f if line.strip() and not line.startswith('#')]

setup(
    name='ijepa-jax',
    version='0.1.0',
    description='I-JEPA self-supervised ViT pretraining in JAX/Flax',
    packages=find_packages(include=['ijepa_jax', 'ijepa_jax.*']),
    python_requires='>=3.12',
    install_requires=requirements,
    extras_require={
        # tensorboard: its own event reader, which the tests read our event files back with
        'test': ['pytest>=8', 'tensorboard>=2.16'],
        # gs:// workdirs and data_dir without TensorFlow: etils.epath (used by orbax and by us)
        # reaches Cloud Storage through fsspec's gcsfs
        'gcs': ['gcsfs>=2024.1'],
    },
)
