"""The config schema: defaults every file in configs/ starts from, and checks of a resolved config."""
import ml_collections


def base_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name='fashion_mnist',   # any TFDS image-classification data set, or fashion_mnist
      dir='',                 # fashion_mnist: folder of idx files; TFDS: data_dir ('' = default)
      train_split='train',
      eval_split='test',
      image_size=28,          # after `pad_to`; the U-Net's input size
      channels=1,
      num_classes=10,
      pad_to=0,               # pad images to this size (0 = no padding)
      num_threads=4,          # grain read threads per process
  )

  config.diffusion = dict(
      logsnr_min=-20.0,
      logsnr_max=20.0,
      prediction='eps',       # 'eps' (paper) or 'v'
  )

  config.model = dict(
      channels=128,
      channel_mult=(1, 2, 2, 2),
      num_res_blocks=2,
      attention_resolutions=(16,),
      attention_head_channels=64,
      attention_num_heads=0,  # > 0 fixes the number of heads instead
      dropout=0.1,
      dtype='float32',        # compute dtype; params stay float32
  )

  config.train = dict(
      num_steps=100_000,
      batch_size=128,         # global batch, over all processes and devices
      p_uncond=0.1,           # Algorithm 1: probability of replacing the label by ∅
      learning_rate=2e-4,
      warmup_steps=1000,
      grad_clip=1.0,
      ema_decay=0.9999,       # with warm-up: min(decay, (1 + t) / (10 + t))
      on_nonfinite='stop',    # 'stop' (keep the last good checkpoint) or 'skip' the update
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,
      sample_every=0,         # also write a guidance grid every N steps (always at the end)
  )

  config.sample = dict(
      method='ancestral',     # 'ancestral' (Algorithm 2), 'ddim', 'dpmpp2m'
      steps=256,
      v=0.3,                  # ancestral variance interpolation (paper: 0.3 at 64x64)
      clip=True,              # clip x̃ to [-1, 1]
      guidance=(0.0, 0.3, 1.0, 4.0),
      per_class=4,           # samples per class and w in training grids (0 = no grids)
  )

  # Mesh axes: batch over ('data', 'fsdp'); parameters replicated, or sharded over 'fsdp'.
  config.mesh = dict(data=-1, fsdp=1)   # -1: all remaining devices
  return config


def validate(config):
  """Catches settings that would otherwise fail deep inside jit; raises ValueError."""
  t, s = config.train, config.sample
  if not 0.0 <= t.p_uncond <= 1.0:
    raise ValueError(f'config.train.p_uncond={t.p_uncond} must lie in [0, 1]')
  if t.batch_size <= 0 or t.num_steps < 0:
    raise ValueError('config.train.batch_size must be > 0 and config.train.num_steps >= 0')
  if t.on_nonfinite not in ('stop', 'skip'):
    raise ValueError(f"config.train.on_nonfinite={t.on_nonfinite!r}: use 'stop' or 'skip'")
  if config.diffusion.prediction not in ('eps', 'v'):
    raise ValueError(f"config.diffusion.prediction={config.diffusion.prediction!r}: use 'eps' or 'v'")
  if s.method not in ('ancestral', 'ddim', 'dpmpp2m'):
    raise ValueError(f"config.sample.method={s.method!r}: use 'ancestral', 'ddim' or 'dpmpp2m'")
  size = config.data.image_size
  if size % 2 ** (len(config.model.channel_mult) - 1):
    raise ValueError(f'config.data.image_size={size} must divide by 2^(levels-1) '
                     f'for channel_mult={tuple(config.model.channel_mult)}; set data.pad_to')
  return config
