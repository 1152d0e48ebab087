"""The config schema: defaults every file in configs/ starts from, and checks of a resolved config."""
import difflib

import ml_collections


class ConfigError(ValueError):
  """A config that cannot run: unknown key, wrong type, or values that do not fit together."""


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
  config.mesh = dict(
      data=-1,                        # -1: all remaining devices
      fsdp=1,
      fsdp_min_bytes=4 * 1024 ** 2,   # with fsdp > 1, smaller arrays stay replicated
  )
  return config


def _same_kind(value, default):
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def check_schema(config, schema=None, prefix='config'):
  """Every key of `config` exists in base_config() with a value of the same kind.

  Config files may set new keys by mistake (`config.train.batchsize = 64`), which would
  otherwise be ignored silently.
  """
  schema = base_config() if schema is None else schema
  for key, value in config.items():
    name = f'{prefix}.{key}'
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f'; did you mean {prefix}.{close[0]}?' if close else ''
      raise ConfigError(f'unknown config key {name}{hint}')
    default = schema[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'{name} must be a group of settings, got {value!r}')
      check_schema(value, default, name)
    elif not _same_kind(value, default):
      raise ConfigError(f'{name}={value!r} has the wrong type: expected a '
                        f'{type(default).__name__} like {default!r}')


def validate(config):
  """Catches settings that would otherwise fail deep inside jit; raises ConfigError."""
  check_schema(config)
  t, s = config.train, config.sample
  if not 0.0 <= t.p_uncond <= 1.0:
    raise ConfigError(f'config.train.p_uncond={t.p_uncond} must lie in [0, 1]')
  if t.batch_size <= 0 or t.num_steps < 0:
    raise ConfigError('config.train.batch_size must be > 0 and config.train.num_steps >= 0')
  if t.on_nonfinite not in ('stop', 'skip'):
    raise ConfigError(f"config.train.on_nonfinite={t.on_nonfinite!r}: use 'stop' or 'skip'")
  if config.diffusion.prediction not in ('eps', 'v'):
    raise ConfigError(
        f"config.diffusion.prediction={config.diffusion.prediction!r}: use 'eps' or 'v'")
  if s.method not in ('ancestral', 'ddim', 'dpmpp2m'):
    raise ConfigError(f"config.sample.method={s.method!r}: use 'ancestral', 'ddim' or 'dpmpp2m'")
  if config.model.dtype not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError(f"config.model.dtype={config.model.dtype!r}: use 'float32' or 'bfloat16'")
  if config.data.num_classes < 1:
    raise ConfigError(f'config.data.num_classes={config.data.num_classes} must be >= 1')
  size = config.data.pad_to or config.data.image_size
  if size % 2 ** (len(config.model.channel_mult) - 1):
    raise ConfigError(f'config.data.image_size={size} must divide by 2^(levels-1) '
                      f'for channel_mult={tuple(config.model.channel_mult)}; set data.pad_to')
  return config
