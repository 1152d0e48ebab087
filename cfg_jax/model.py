"""ADM-style class-conditional U-Net (Dhariwal & Nichol 2021) in Flax linen.

The class embedding (with one extra row, index `num_classes`, for the null label ∅) is added to
the noise-level embedding and enters every residual block through scale-shift normalisation.
Nothing here knows about guidance: the null label is just another class. A guidance-distilled
student (`guidance_embed`, Meng et al. 2023) also takes the guidance strength w, through a
sinusoidal embedding and an MLP whose last layer starts at zero, so that it starts as its teacher.

Beyond labels, the condition may be a dict of kinds (cfg_jax.conditioning): a token sequence for
the built-in text encoder or precomputed embeddings. Their sequence enters through
cross-attention blocks at `cross_attention_resolutions`, and its masked mean through a
projection added to the noise-level embedding. A label-only model has none of these modules,
so its parameters and outputs are what they were before sequence conditions existed.
Parameters are float32; activations use `dtype` (bfloat16 on accelerators).
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfg_jax import conditioning, diffusion, text_encoder


class GroupNorm(nn.Module):
  """GroupNorm, optionally followed by the scale-shift modulation y·(1 + scale) + shift, with all
  of it folded into one (x − mean)·mul + add per (example, channel).

  The parameters ('scale', 'bias'), epsilon and one-pass variance are flax.linen.GroupNorm's, so
  checkpoints load either way; the statistics come from per-channel sums over the positions.
  Flax reduces a (B, H, W, G, C/G) view over three axes and modulates in separate passes; on
  XLA:CPU this form makes the default train step about 5% faster (benchmarks/CPU_SPEED.md).
  """
  groups: int
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, scale_shift=None):
    """x: (B, ..., C); scale_shift: None or (scale, shift), each (B, C)."""
    b, c = x.shape[0], x.shape[-1]
    gamma = self.param('scale', nn.initializers.ones, (c,))
    beta = self.param('bias', nn.initializers.zeros, (c,))
    x32 = x.astype(jnp.float32)
    rows = x32.reshape(b, -1, c)
    per_group = lambda s: jnp.sum(s.reshape(b, self.groups, c // self.groups), -1)
    count = rows.shape[1] * (c // self.groups)
    mean = per_group(jnp.sum(rows, 1)) / count
    var = jnp.maximum(per_group(jnp.sum(rows * rows, 1)) / count - mean ** 2, 0.0)
    per_channel = lambda g: jnp.repeat(g, c // self.groups, axis=-1)   # (B, G) -> (B, C)
    mul = gamma * jax.lax.rsqrt(per_channel(var) + self.epsilon)
    add = jnp.broadcast_to(beta, mul.shape)
    if scale_shift is not None:
      scale, shift = (a.astype(jnp.float32) for a in scale_shift)
      mul, add = mul * (1 + scale), add * (1 + scale) + shift
    spread = lambda a: a.reshape((b,) + (1,) * (x.ndim - 2) + (c,))
    # (x − mean)·mul, not x·mul − mean·mul: no cancellation where |mean| ≫ the spread.
    return ((x32 - spread(per_channel(mean))) * spread(mul) + spread(add)).astype(self.dtype)


def _norm(channels, max_groups, dtype):
  """GroupNorm with gcd(channels, max_groups) groups: at most max_groups, all of one width."""
  return GroupNorm(math.gcd(channels, max_groups), dtype=dtype)


def timestep_embedding(t, dim, max_period=10_000.0):
  """Sinusoidal embedding of t ∈ [0, 1] (scaled by 1000, as in ADM's discrete steps)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t[:, None].astype(jnp.float32) * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def guidance_embedding(w, dim):
  """Sinusoidal embedding of w, as t = w/100: periods from 0.2π (finer than the steps of a w
  sweep) to 2000π in w."""
  return timestep_embedding(0.01 * w, dim)


def _resample(x, factor):
  b, h, w, c = x.shape
  if factor > 0:
    return jax.image.resize(x, (b, h * 2, w * 2, c), 'nearest')
  return nn.avg_pool(x, (2, 2), (2, 2))


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, scale-shift by the embedding, dropout, conv; optional up/down."""
  out_channels: int
  dropout: float
  resample: int = 0        # +1 upsample, -1 downsample, 0 none (BigGAN-style residual)
  norm_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, *, train):
    conv = lambda c, k=3, **kw: nn.Conv(c, (k, k), dtype=self.dtype, **kw)
    h = nn.silu(_norm(x.shape[-1], self.norm_groups, self.dtype)(x))
    if self.resample:
      h, x = _resample(h, self.resample), _resample(x, self.resample)
    h = conv(self.out_channels)(h)
    scale, shift = jnp.split(nn.Dense(2 * self.out_channels, dtype=self.dtype)(nn.silu(emb)), 2, -1)
    h = _norm(self.out_channels, self.norm_groups, self.dtype)(h, (scale, shift))
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv(self.out_channels, kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over the spatial positions, residual, zero-initialised output."""
  head_channels: int = 64
  num_heads: int = 0       # if > 0, overrides head_channels
  norm_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    heads = self.num_heads or max(1, c // self.head_channels)
    y = _norm(c, self.norm_groups, self.dtype)(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(
        num_heads=heads, dtype=self.dtype, out_kernel_init=nn.initializers.zeros)(y)
    return x + y.reshape(b, h, w, c)


class CrossAttentionBlock(nn.Module):
  """Multi-head attention from the spatial positions to a condition sequence (keys where
  `mask`), residual, zero-initialised output."""
  head_channels: int = 64
  num_heads: int = 0
  norm_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, mask):
    b, h, w, c = x.shape
    heads = self.num_heads or max(1, c // self.head_channels)
    y = _norm(c, self.norm_groups, self.dtype)(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(
        num_heads=heads, qkv_features=c, out_features=c, dtype=self.dtype,
        out_kernel_init=nn.initializers.zeros)(y, context, mask=mask[:, None, None, :])
    return x + y.reshape(b, h, w, c)


EMBEDDING_NULLS = ('learned', 'zeros')


class UNet(nn.Module):
  """ε_θ(z, λ, c) (or v_θ, see `prediction` in the config): images (B, H, W, C) → same shape."""
  num_classes: int
  channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (16,)
  attention_head_channels: int = 64
  attention_num_heads: int = 0
  dropout: float = 0.1
  norm_groups: int = 32          # GroupNorm: gcd(width, norm_groups) groups
  # Sequence conditions ('text', 'embedding'); unused by a label-only condition.
  cross_attention_resolutions: Sequence[int] = ()
  context_dim: int = 64          # width of the sequence cross-attention reads (= text encoder's)
  text_layers: int = 2
  text_heads: int = 4
  text_max_len: int = 64
  embedding_null: str = 'learned'   # the 'embedding' kind's ∅: a learned vector or zeros
  guidance_embed: bool = False   # a distilled student: w is an input (default 0)
  dtype: jnp.dtype = jnp.float32

  def _context(self, cond):
    """The condition's sequence (B, L, context_dim) and key mask (B, L), or (None, None)."""
    parts = []
    if 'text' in cond:
      parts.append(text_encoder.TextEncoder(self.context_dim, self.text_layers, self.text_heads,
                                            self.text_max_len, dtype=self.dtype,
                                            name='text_encoder')(cond['text']))
    if 'embedding' in cond:
      values, mask = cond['embedding']['values'], cond['embedding']['mask']
      # ∅ is the empty sequence; it is read as one null vector at position 0.
      empty = ~jnp.any(mask, axis=-1)
      first = jnp.arange(mask.shape[1]) == 0
      null_at = empty[:, None] & first[None, :]
      values = jnp.where(null_at[..., None], 0.0, values)
      context = nn.Dense(self.context_dim, dtype=self.dtype, name='embedding_proj')(values)
      if self.embedding_null == 'learned':
        null = self.param('null_embedding', nn.initializers.normal(0.02), (self.context_dim,))
        context = jnp.where(null_at[..., None], null.astype(context.dtype), context)
      parts.append((context, mask | null_at))
    if not parts:
      return None, None
    return (jnp.concatenate([c for c, _ in parts], 1), jnp.concatenate([m for _, m in parts], 1))

  @nn.compact
  def __call__(self, z, logsnr, cond, w=None, *, train=False):
    """cond: (B,) class labels, or a dict of condition kinds (cfg_jax.conditioning); w: the
    guidance strength, for a `guidance_embed` student only."""
    emb_dim = 4 * self.channels
    block = lambda c, **kw: ResBlock(c, self.dropout, norm_groups=self.norm_groups,
                                     dtype=self.dtype, **kw)
    attn = lambda: AttentionBlock(self.attention_head_channels, self.attention_num_heads,
                                  self.norm_groups, dtype=self.dtype)
    cross = lambda: CrossAttentionBlock(self.attention_head_channels, self.attention_num_heads,
                                        self.norm_groups, dtype=self.dtype)
    cond = cond if isinstance(cond, dict) else {'label': cond}

    # Noise level and class (index num_classes is the null label ∅) share one embedding.
    t = diffusion.noise_level_input(logsnr)
    emb = timestep_embedding(t, self.channels)
    emb = nn.Dense(emb_dim, dtype=self.dtype)(emb)
    emb = nn.Dense(emb_dim, dtype=self.dtype)(nn.silu(emb))
    if 'label' in cond:
      emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=self.dtype,
                           name='class_embed')(cond['label'])
    context, mask = self._context(cond)
    if context is not None:   # the sequence's masked mean joins the noise-level embedding
      weights = mask.astype(context.dtype)[..., None]
      pooled = jnp.sum(context * weights, 1) / jnp.maximum(jnp.sum(weights, 1), 1.0)
      emb = emb + nn.Dense(emb_dim, dtype=self.dtype, name='pooled_proj')(pooled)
    if self.guidance_embed:   # zero at initialisation for every w: the student starts as its teacher
      b = z.shape[0]
      w = jnp.zeros((b,), jnp.float32) if w is None else jnp.broadcast_to(w, (b,))
      w_emb = nn.Dense(emb_dim, dtype=self.dtype, name='w_embed_in')(
          guidance_embedding(w, self.channels))
      emb = emb + nn.Dense(emb_dim, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                           name='w_embed_out')(nn.silu(w_emb))
    elif w is not None:
      raise ValueError('this U-Net takes no w (guidance_embed=False); guide it with two calls')

    def attend(h):
      """Self-attention and cross-attention wherever this resolution has them."""
      if h.shape[1] in self.attention_resolutions:
        h = attn()(h)
      if context is not None and h.shape[1] in self.cross_attention_resolutions:
        h = cross()(h, context, mask)
      return h

    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(z.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = attend(block(self.channels * mult)(h, emb, train=train))
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = block(h.shape[-1], resample=-1)(h, emb, train=train)
        skips.append(h)

    h = block(h.shape[-1])(h, emb, train=train)
    h = attn()(h)
    if context is not None and h.shape[1] in self.cross_attention_resolutions:
      h = cross()(h, context, mask)
    h = block(h.shape[-1])(h, emb, train=train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = attend(block(self.channels * mult)(jnp.concatenate([h, skips.pop()], -1), emb,
                                               train=train))
      if level != 0:
        h = block(h.shape[-1], resample=+1)(h, emb, train=train)

    h = nn.silu(_norm(h.shape[-1], self.norm_groups, self.dtype)(h))
    out = nn.Conv(z.shape[-1], (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)


def input_shape(config):
  """(H, W, C) of the U-Net's input: the data's images, padded to `data.pad_to` if set."""
  size = config.data.pad_to or config.data.image_size
  return (size, size, config.data.channels)


def init_params(model, config, rng):
  """`model`'s parameters, initialised on one dummy example of `config`'s input shape and
  condition kinds."""
  return model.init(rng, jnp.zeros((1,) + input_shape(config)), jnp.zeros((1,)),
                    conditioning.example(config))['params']


def from_config(config):
  """The U-Net described by `config.model`, for `config.data.num_classes` classes."""
  m = config.model
  return UNet(
      num_classes=config.data.num_classes,
      channels=m.channels,
      channel_mult=tuple(m.channel_mult),
      num_res_blocks=m.num_res_blocks,
      attention_resolutions=tuple(m.attention_resolutions),
      attention_head_channels=m.attention_head_channels,
      attention_num_heads=m.attention_num_heads,
      dropout=m.dropout,
      norm_groups=m.norm_groups,
      cross_attention_resolutions=tuple(m.cross_attention_resolutions),
      context_dim=m.context_dim,
      text_layers=m.text_layers,
      text_heads=m.text_heads,
      text_max_len=m.text_max_len,
      embedding_null=m.embedding_null,
      guidance_embed=m.guidance_embed,
      dtype=jnp.dtype(m.dtype))
