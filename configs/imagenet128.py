"""ImageNet 128x128, 1000 classes: the paper's second setting (Ho & Salimans 2022, Table 2).

  python launch/train.py --config=configs/imagenet128.py --workdir=gs://BUCKET/cfg/imagenet128 \
      --config.data.name=MY_IMAGENET_128 --config.data.dir=gs://BUCKET/tensorflow_datasets

ADM's 128x128 model: 256 channels, multipliers (1, 1, 2, 3, 4), 2 residual blocks per
resolution, attention at 32, 16 and 8 with 4 heads, no dropout; batch 256, Adam 1e-4, EMA
0.9999, 2.7M steps, p_uncond 0.1; ancestral sampler with v = 0.2 (the paper samples with 128,
256 and 1024 steps). bfloat16 compute, float32 parameters.
Data: TFDS has no 128x128 ImageNet (`imagenet_resized` stops at 64x64). Prepare one yourself
(center crop and resize `imagenet2012` to 128x128, ArrayRecord format, features `image` uint8
(128, 128, 3) and `label`) and pass its name with --config.data.name.
  python launch/aot_report.py --config=configs/imagenet128.py --devices=64 --peak_tflops=275
"""
from cfg_jax import config_lib


def get_config():
  """What differs from config_lib.base_config(); the settings above are the result."""
  config = config_lib.base_config()
  config.data.update(name='imagenet2012_128x128', eval_split='validation', image_size=128,
                     channels=3, num_classes=1000, num_threads=16)
  config.model.update(channels=256, channel_mult=(1, 1, 2, 3, 4),
                      attention_resolutions=(32, 16, 8), attention_num_heads=4, dropout=0.0,
                      dtype='bfloat16')
  config.train.update(num_steps=2_700_000, batch_size=256, learning_rate=1e-4, log_every=100,
                      checkpoint_every=10_000)
  config.sample.update(v=0.2, per_class=0)
  return config
