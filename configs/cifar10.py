"""CIFAR-10, 32x32 colour, 10 classes: one accelerator, between Fashion-MNIST and ImageNet.

  python launch/train.py --config=configs/cifar10.py --workdir=workdirs/cifar10

A DDPM-sized U-Net (128 channels, multipliers (1, 2, 2, 2), 2 residual blocks, attention at
16x16, dropout 0.1; 43M parameters) with the paper's training recipe: batch 128, Adam 2e-4
with 1000 warm-up steps, EMA 0.9999, p_uncond 0.1; ancestral sampler, v = 0.3, 256 steps.
Data: TFDS `cifar10`, prepared once with `tfds build cifar10 --file_format=array_record`.
"""
from cfg_jax import config_lib


def get_config():
  """What differs from config_lib.base_config(); the settings above are the result."""
  config = config_lib.base_config()
  config.data.update(name='cifar10', image_size=32, channels=3)
  config.model.update(dtype='bfloat16')
  config.train.update(num_steps=400_000, log_every=100, checkpoint_every=5000, sample_every=50_000)
  config.sample.update(per_class=8)
  return config
