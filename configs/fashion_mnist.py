"""Fashion-MNIST, 28x28 grey, 10 classes: the embedded default, sized for a 2-core CPU.

  python launch/train.py --config=configs/fashion_mnist.py --workdir=workdirs/fmnist

Variants: `configs/fashion_mnist.py:tiny` is a seconds-scale model for tests and smoke runs.
The U-Net runs at the native 28x28 (28 -> 14 -> 7), so no padding is needed.
"""
from cfg_jax import config_lib


def get_config(variant=''):
  config = config_lib.base_config()
  config.model.update(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(7,), attention_head_channels=32, dropout=0.1)
  config.train.update(num_steps=2000, batch_size=64, learning_rate=1e-3, warmup_steps=100,
                      ema_decay=0.998, log_every=50, checkpoint_every=250)
  config.sample.update(method='dpmpp2m', steps=24, per_class=8)

  if variant == 'tiny':
    config.model.update(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(14,), attention_head_channels=8, dropout=0.0)
    config.train.update(num_steps=20, batch_size=16, learning_rate=2e-3, warmup_steps=5, log_every=5,
                        checkpoint_every=10, ema_decay=0.99)
    config.sample.update(steps=8, per_class=2)
  elif variant:
    raise ValueError(f'unknown variant {variant!r} of fashion_mnist (known: tiny)')
  return config
