"""ImageNet 64x64, 1000 classes: the paper's main setting (Ho & Salimans 2022, Table 1).

  python launch/train.py --config=configs/imagenet64.py --workdir=gs://BUCKET/cfg/imagenet64 \
      --config.data.dir=gs://BUCKET/tensorflow_datasets

ADM's 64x64 model with the paper's changes: 192 channels, multipliers (1, 2, 3, 4), 3 residual
blocks per resolution, attention at 32, 16 and 8 with 64 channels per head, dropout 0.1; batch
2048, Adam 3e-4 with 1000 warm-up steps, EMA 0.9999, 400k steps, p_uncond 0.1; ancestral
sampler with v = 0.3 and 256 steps. bfloat16 compute, float32 parameters.
Data: TFDS `imagenet_resized/64x64`, prepared once in ArrayRecord format (docs/SCALING.md).
Check memory and step time before renting a pod:
  python launch/aot_report.py --config=configs/imagenet64.py --devices=64 --peak_tflops=275
"""
from cfg_jax import config_lib


def get_config():
  """What differs from config_lib.base_config(); the settings above are the result."""
  config = config_lib.base_config()
  config.data.update(name='imagenet_resized/64x64', eval_split='validation', image_size=64,
                     channels=3, num_classes=1000, num_threads=16)
  config.model.update(channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                      attention_resolutions=(32, 16, 8), dtype='bfloat16')
  config.train.update(num_steps=400_000, batch_size=2048, learning_rate=3e-4, log_every=100,
                      checkpoint_every=5000)
  # 1000 classes make a guidance grid of every class useless; evaluate with launch/evaluate.py.
  config.sample.update(per_class=0)
  return config
