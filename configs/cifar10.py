"""CIFAR-10, 32x32 colour, 10 classes: one accelerator, between Fashion-MNIST and ImageNet.

  python launch/train.py --config=configs/cifar10.py --workdir=workdirs/cifar10

A DDPM-sized U-Net (128 channels, multipliers (1, 2, 2, 2), 2 residual blocks, attention at
16x16, dropout 0.1; 43M parameters) with the paper's training recipe: batch 128, Adam 2e-4
with 1000 warm-up steps, EMA 0.9999, p_uncond 0.1; ancestral sampler, v = 0.3, 256 steps.
Data: TFDS `cifar10`, prepared once with `tfds build cifar10 --file_format=array_record`.
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(name='cifar10', train_split='train', eval_split='test', image_size=32,
                     channels=3, num_classes=10)
  config.model.update(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16,), attention_head_channels=64, dropout=0.1,
                      dtype='bfloat16')
  config.train.update(num_steps=400_000, batch_size=128, p_uncond=0.1, learning_rate=2e-4,
                      warmup_steps=1000, grad_clip=1.0, ema_decay=0.9999, log_every=100,
                      checkpoint_every=5000, sample_every=50_000)
  config.sample.update(method='ancestral', steps=256, v=0.3, clip=True, per_class=8)
  return config
