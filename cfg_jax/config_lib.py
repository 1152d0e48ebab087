"""The config schema: defaults every file in configs/ starts from, and checks of a resolved config."""
import difflib
import math

import ml_collections

from cfg_jax import conditioning, diffusion, guidance, model as model_lib, objective, sampling


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
      logsnr_min=diffusion.LOGSNR_MIN,  # training λ range (the schedule λ(u) maps onto it)
      logsnr_max=diffusion.LOGSNR_MAX,
      prediction='eps',       # 'eps' (paper) or 'v'
      train_logsnr='cosine',  # training λ: 'cosine' (paper: λ(u), u ~ U[0,1]), 'normal', 'logistic'
      train_logsnr_mean=2.4,  # 'normal', 'logistic': λ's mean, std (normal: EDM's log-normal σ)
      train_logsnr_std=2.4,
  )

  config.model = dict(
      channels=128,
      channel_mult=(1, 2, 2, 2),
      num_res_blocks=2,
      attention_resolutions=(16,),
      attention_head_channels=64,
      attention_num_heads=0,  # > 0 fixes the number of heads instead
      dropout=0.1,
      norm_groups=32,         # GroupNorm groups: gcd(width, norm_groups) (32: the paper's U-Net)
      dtype='float32',        # compute dtype; params stay float32
      # Sequence conditions ('text', 'embedding' in condition.kinds):
      cross_attention_resolutions=(),  # resolutions with cross-attention to the sequence
      context_dim=64,         # the sequence's width in the U-Net (= the text encoder's width)
      text_layers=2,          # built-in text encoder (a transformer over byte tokens)
      text_heads=4,
      text_max_len=64,        # tokens, BOS included: prompts of up to 63 UTF-8 bytes
      embedding_null='learned',  # the 'embedding' kind's null: 'learned' vector or 'zeros'
      guidance_embed=False,   # w is an input: a guidance-distilled student (cfg_jax.distill)
  )

  # What the model is conditioned on (cfg_jax.conditioning): 'label' (the paper's class
  # labels), 'text' (captions through the built-in encoder; Fashion-MNIST captions from
  # cfg_jax.captions), 'embedding' (precomputed, from an npz data set); kinds combine.
  config.condition = dict(
      kinds=('label',),
      p_uncond=(),            # dropout probability per kind, in kinds' order; (): train.p_uncond
      embedding_len=0,        # 'embedding': sequence length L and width D of the data set's
      embedding_dim=0,        #   embeddings (N, L, D)
  )

  config.train = dict(
      num_steps=100_000,
      batch_size=128,         # global batch, over all processes and devices
      p_uncond=0.1,           # Algorithm 1: probability of replacing the label by ∅
      learning_rate=2e-4,
      warmup_steps=1000,
      lr_schedule='constant', # after warm-up: 'constant' (paper) or 'cosine' decay to 0
      adam_b2=0.999,          # Adam's β₂ (0.999: Adam's own, the paper's U-Net's; EDM2: 0.99)
      loss_weighting='none',  # 'none' (paper: plain ε-MSE), 'min_snr' (γ), 'edm' (σ_data)
      min_snr_gamma=5.0,
      edm_sigma_data=0.5,
      grad_clip=1.0,
      ema_decay=0.9999,       # with warm-up: min(decay, (1 + t) / (10 + t))
      ema_power=0.0,          # > 0: EDM2's power-function EMA with this γ instead of ema_decay
      on_nonfinite='stop',    # 'stop' (keep the last good checkpoint) or 'skip' the update
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,
      sample_every=0,         # also write a guidance grid every N steps
      grid_at_end=True,       # and one when training ends (quickstart.sh draws its own instead)
  )

  config.sample = dict(
      method='ancestral',     # 'ancestral' (Algorithm 2), 'ddim', 'dpmpp2m'
      steps=256,
      v=0.3,                  # ancestral variance interpolation (paper: 0.3 at 64x64)
      grid='cosine',          # time grid: 'cosine' (paper: uniform u), 'logsnr' (uniform λ), 'edm'
      logsnr_min=diffusion.LOGSNR_MIN,  # the grid's λ range (paper: the training range)
      logsnr_max=diffusion.LOGSNR_MAX,
      rho=7.0,                # 'edm' grid's ρ
      # Guidance beyond the paper's rule (cfg_jax.guidance; 0 or () is off, the paper's default):
      guidance_rule='cfg',    # 'cfg' (paper), 'apg', 'cfgpp'
      interval=(),            # (λ_lo, λ_hi): guide only there, B network rows elsewhere
      interval_sigma=(),      # or EDM's (σ_lo, σ_hi], σ = e^{−λ/2}
      rescale=0.0,            # CFG rescale φ
      threshold=0.0,          # dynamic thresholding percentile p in (0, 1]
      apg_eta=0.0,            # APG: weight of the parallel part η,
      apg_norm=0.0,           #   norm threshold r (0: none),
      apg_momentum=-0.5,      #   momentum β
      w_schedule='constant',  # 'constant' (paper), 'linear', 'cosine', 'table'
      w_table=(),             # 'table': ((λ_k, ...), (factor_k, ...))
      clip=True,              # clip x̃ to [-1, 1]
      guidance=(0.0, 0.3, 1.0, 4.0),
      per_class=4,           # samples per class and w in training grids (0 = no grids)
  )

  # How a distilled student was made (cfg_jax.distill_train writes it; '' for a trained model).
  config.distill = dict(
      stage='',               # 'guidance' (Meng et al. 2023 stage 1) or 'progressive' (stage 2)
      teacher='',             # the teacher's workdir
      w_min=0.0,              # the range of w it was distilled on
      w_max=0.0,
      round=0,                # progressive: the halving this student is (1, 2, ...)
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


def _choice(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f'{name}={value!r}: use one of {", ".join(allowed)}')


def _ranges(config):
  """(name, value, whether it is in range, the range in words) for every numeric setting."""
  t, s, m, d, g = config.train, config.sample, config.model, config.data, config.diffusion
  finite = lambda *xs: all(math.isfinite(x) for x in xs)
  mesh_size = lambda n: n == -1 or n >= 1
  return [
      ('seed', config.seed, config.seed >= 0, '>= 0'),
      ('data.image_size', d.image_size, d.image_size >= 1, '>= 1'),
      ('data.channels', d.channels, d.channels >= 1, '>= 1'),
      ('data.num_classes', d.num_classes, d.num_classes >= 1, '>= 1'),
      ('data.pad_to', d.pad_to, d.pad_to == 0 or d.pad_to >= d.image_size,
       f'0 (no padding) or >= data.image_size={d.image_size}'),
      ('data.num_threads', d.num_threads, d.num_threads >= 1, '>= 1'),
      ('diffusion.logsnr_min', g.logsnr_min, finite(g.logsnr_min, g.logsnr_max)
       and g.logsnr_min < g.logsnr_max, f'finite and < diffusion.logsnr_max={g.logsnr_max}'),
      ('model.channels', m.channels, m.channels >= 1, '>= 1'),
      ('model.channel_mult', tuple(m.channel_mult),
       len(m.channel_mult) >= 1 and all(isinstance(c, int) and c >= 1 for c in m.channel_mult),
       'one or more integers >= 1'),
      ('model.num_res_blocks', m.num_res_blocks, m.num_res_blocks >= 1, '>= 1'),
      ('model.attention_head_channels', m.attention_head_channels,
       m.attention_head_channels >= 1, '>= 1'),
      ('model.attention_num_heads', m.attention_num_heads, m.attention_num_heads >= 0,
       '>= 0 (0: from attention_head_channels)'),
      ('model.dropout', m.dropout, 0.0 <= m.dropout < 1.0, 'in [0, 1)'),
      ('model.norm_groups', m.norm_groups, m.norm_groups >= 1, '>= 1'),
      ('model.context_dim', m.context_dim, m.context_dim >= 1, '>= 1'),
      ('model.text_layers', m.text_layers, m.text_layers >= 0, '>= 0'),
      ('model.text_heads', m.text_heads, m.text_heads >= 1 and m.context_dim % m.text_heads == 0,
       f'>= 1 and divide model.context_dim={m.context_dim}'),
      ('model.text_max_len', m.text_max_len, m.text_max_len >= 2, '>= 2'),
      ('condition.p_uncond', tuple(config.condition.p_uncond),
       all(isinstance(p, (int, float)) and 0.0 <= p <= 1.0 for p in config.condition.p_uncond)
       and len(config.condition.p_uncond) in (0, len(config.condition.kinds)),
       f'() or one probability in [0, 1] per kind of {tuple(config.condition.kinds)}'),
      ('train.num_steps', t.num_steps, t.num_steps >= 0, '>= 0'),
      ('train.batch_size', t.batch_size, t.batch_size >= 1, '>= 1'),
      ('train.p_uncond', t.p_uncond, 0.0 <= t.p_uncond <= 1.0, 'in [0, 1]'),
      ('train.learning_rate', t.learning_rate, finite(t.learning_rate) and t.learning_rate > 0,
       'finite and > 0'),
      ('train.warmup_steps', t.warmup_steps, t.warmup_steps >= 0, '>= 0'),
      ('train.adam_b2', t.adam_b2, 0.0 <= t.adam_b2 < 1.0, 'in [0, 1)'),
      ('train.grad_clip', t.grad_clip, finite(t.grad_clip) and t.grad_clip > 0, 'finite and > 0'),
      ('train.ema_decay', t.ema_decay, 0.0 <= t.ema_decay < 1.0, 'in [0, 1)'),
      ('train.log_every', t.log_every, t.log_every >= 1, '>= 1'),
      ('train.checkpoint_every', t.checkpoint_every, t.checkpoint_every >= 1, '>= 1'),
      ('train.keep_checkpoints', t.keep_checkpoints, t.keep_checkpoints >= 1, '>= 1'),
      ('train.sample_every', t.sample_every, t.sample_every >= 0, '>= 0 (0: none during training)'),
      ('sample.steps', s.steps, s.steps >= 2, '>= 2'),
      ('sample.v', s.v, 0.0 <= s.v <= 1.0, 'in [0, 1]'),
      ('sample.guidance', tuple(s.guidance),
       all(isinstance(w, (int, float)) and finite(w) and w >= -1 for w in s.guidance)
       and (len(s.guidance) >= 1 or not s.per_class), 'finite numbers >= -1'),
      ('sample.per_class', s.per_class, s.per_class >= 0, '>= 0 (0: no grids)'),
      ('mesh.data', config.mesh.data, mesh_size(config.mesh.data), '-1 (the rest) or >= 1'),
      ('mesh.fsdp', config.mesh.fsdp, mesh_size(config.mesh.fsdp)
       and (config.mesh.data, config.mesh.fsdp) != (-1, -1),
       '-1 (the rest) or >= 1, not -1 with mesh.data=-1'),
  ]


def _check_condition(config):
  kinds, c = tuple(config.condition.kinds), config.condition
  if not kinds or len(set(kinds)) != len(kinds) or not set(kinds) <= set(conditioning.KINDS):
    raise ConfigError(f'config.condition.kinds={kinds}: use one or more distinct kinds of '
                      f'{", ".join(conditioning.KINDS)}')
  _choice('config.model.embedding_null', config.model.embedding_null, model_lib.EMBEDDING_NULLS)
  sequence = {'text', 'embedding'} & set(kinds)
  if sequence and not config.model.cross_attention_resolutions:
    raise ConfigError(f'config.condition.kinds={kinds} needs cross-attention: set '
                      'config.model.cross_attention_resolutions, e.g. (14, 7)')
  if 'text' in kinds and config.data.name != 'fashion_mnist':
    raise ConfigError("config.condition.kinds with 'text' needs captions, which exist for "
                      "fashion_mnist only (cfg_jax.captions); for other data use 'embedding'")
  if 'embedding' in kinds and not (c.embedding_len >= 1 and c.embedding_dim >= 1):
    raise ConfigError('config.condition.kinds with \'embedding\' needs the data set\'s '
                      'config.condition.embedding_len and embedding_dim (L and D of its '
                      '(N, L, D) embeddings)')


def validate(config):
  """Catches settings that would otherwise fail deep inside jit; raises ConfigError."""
  check_schema(config)
  for name, value, ok, allowed in _ranges(config):
    if not ok:
      raise ConfigError(f'config.{name}={value!r} must be {allowed}')
  t, s = config.train, config.sample
  if t.on_nonfinite not in ('stop', 'skip'):
    raise ConfigError(f"config.train.on_nonfinite={t.on_nonfinite!r}: use 'stop' or 'skip'")
  d = config.diffusion
  if d.prediction not in ('eps', 'v'):
    raise ConfigError(f"config.diffusion.prediction={d.prediction!r}: use 'eps' or 'v'")
  _choice('config.diffusion.train_logsnr', d.train_logsnr, diffusion.TRAIN_LOGSNR)
  _choice('config.train.lr_schedule', t.lr_schedule, objective.LR_SCHEDULES)
  _choice('config.train.loss_weighting', t.loss_weighting, objective.LOSS_WEIGHTINGS)
  _choice('config.sample.method', s.method, sampling.METHODS)
  _choice('config.sample.grid', s.grid, sampling.GRIDS)
  _choice('config.sample.guidance_rule', s.guidance_rule, guidance.COMBINE_RULES)
  _choice('config.sample.w_schedule', s.w_schedule, guidance.SCHEDULES)
  for name in ('interval', 'interval_sigma'):
    pair = tuple(s[name])
    if pair and not (len(pair) == 2 and pair[0] < pair[1]):
      raise ConfigError(f'config.sample.{name}={pair} must be () or (low, high) with low < high')
  if s.interval and s.interval_sigma:
    raise ConfigError('config.sample.interval and interval_sigma: give one of them')
  if s.interval_sigma and not s.interval_sigma[0] > 0:
    raise ConfigError(f'config.sample.interval_sigma={tuple(s.interval_sigma)} must be > 0')
  if (s.w_schedule == 'table') != bool(s.w_table):
    raise ConfigError("config.sample.w_table goes with w_schedule='table', and only with it")
  _check_condition(config)
  if config.model.dtype not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError(f"config.model.dtype={config.model.dtype!r}: use 'float32' or 'bfloat16'")
  size = model_lib.input_shape(config)[0]
  if size % 2 ** (len(config.model.channel_mult) - 1):
    raise ConfigError(f'config.data.image_size={size} must divide by 2^(levels-1) '
                      f'for channel_mult={tuple(config.model.channel_mult)}; set data.pad_to')
  return config
