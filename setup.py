"""cfg_jax: classifier-free diffusion guidance in JAX/Flax."""
import re

import setuptools

with open('cfg_jax/__init__.py', encoding='utf-8') as f:   # the one place the version is written
  VERSION = re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)

setuptools.setup(
    name='cfg_jax',
    version=VERSION,
    description='Classifier-free diffusion guidance (Ho & Salimans 2022) in JAX/Flax',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['cfg_jax', 'cfg_jax.*']),
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.10,<0.11',
        'flax>=0.12,<0.13',
        'optax>=0.2.8,<0.3',
        'orbax-checkpoint>=0.12,<0.13',
        'ml-collections>=1.1,<2',
        'grain>=0.2.18,<0.3',
        'tensorflow-datasets>=4.9.10,<5',
        'importlib_resources>=6',   # tensorflow-datasets imports it without declaring it
        'numpy>=2.0,<3',
        'scipy>=1.13,<2',
        'absl-py>=2.1,<3',
        'tensorboardX>=2.6,<3',
        'matplotlib>=3.9,<4',
        'tqdm>=4.66,<5',
        'pillow>=10,<13',           # TFDS image features without TensorFlow
    ],
    extras_require={
        'cuda': ['jax[cuda12]>=0.10,<0.11'],
        'tpu': ['jax[tpu]>=0.10,<0.11'],
        'test': ['pytest>=8,<10', 'pytest-xdist>=3.6,<4', 'nbmake>=1.5,<2'],
        # benchmarks/train_step.py --torch only. Pinned so that pip takes the CPU wheel 2.13.0+cpu
        # where one is on hand (find-links, or --index-url https://download.pytorch.org/whl/cpu);
        # an open range lets pip fetch a newer multi-GB CUDA build from PyPI instead.
        'bench': ['torch==2.13.0'],
        'notebook': ['jupyter>=1.0', 'ipykernel>=6.29', 'nbclient>=0.10', 'nbformat>=5.10'],
    },
)
