"""cfg_jax/model.py's U-Net and objective.train_step's objective in PyTorch: the speed yardstick.

Used by `benchmarks/train_step.py --torch` only (torch is the optional `bench` extra, never
imported by the package). Same blocks, widths, GroupNorm groups and epsilon, zero-initialised
output convolutions and parameter count as the Flax model; same loss (ε-MSE on z = αx + σε with
λ from the cosine log-SNR schedule, labels dropped to ∅ with p_uncond), Adam with linear
warm-up, global-norm clipping and an EMA. Activations are channels-last (NHWC in memory), the
layout oneDNN's CPU convolutions prefer, unless `channels_last=False`.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels, max_groups):
  return nn.GroupNorm(math.gcd(channels, max_groups), channels, eps=1e-6)  # flax's epsilon


def _conv(c_in, c_out, k=3, zero=False):
  conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
  if zero:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
  return conv


def _resample(x, factor):
  return F.interpolate(x, scale_factor=2, mode='nearest') if factor > 0 else F.avg_pool2d(x, 2)


def timestep_embedding(t, dim, max_period=10_000.0):
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
  args = 1000.0 * t[:, None] * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
  def __init__(self, c_in, c_out, emb_dim, dropout, groups, resample=0):
    super().__init__()
    self.resample = resample
    self.norm1, self.conv1 = _norm(c_in, groups), _conv(c_in, c_out)
    self.emb = nn.Linear(emb_dim, 2 * c_out)
    self.norm2, self.drop, self.conv2 = _norm(c_out, groups), nn.Dropout(dropout), _conv(c_out, c_out, zero=True)
    self.skip = _conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

  def forward(self, x, emb):
    h = F.silu(self.norm1(x))
    if self.resample:
      h, x = _resample(h, self.resample), _resample(x, self.resample)
    h = self.conv1(h)
    scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
    h = self.norm2(h) * (1 + scale) + shift
    h = self.conv2(self.drop(F.silu(h)))
    return self.skip(x) + h


class AttentionBlock(nn.Module):
  def __init__(self, channels, heads, groups):
    super().__init__()
    self.norm = _norm(channels, groups)
    self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
    nn.init.zeros_(self.attn.out_proj.weight)
    nn.init.zeros_(self.attn.out_proj.bias)

  def forward(self, x):
    b, c, h, w = x.shape
    y = self.norm(x).flatten(2).transpose(1, 2)   # (B, HW, C): a view when x is channels-last
    y, _ = self.attn(y, y, y, need_weights=False)
    return x + y.transpose(1, 2).reshape(b, c, h, w)


class _Stage(nn.Module):
  """A residual block, then attention if the resolution asks for it."""

  def __init__(self, block, attention=None):
    super().__init__()
    self.block, self.attention = block, attention or nn.Identity()

  def forward(self, x, emb):
    return self.attention(self.block(x, emb))


class UNet(nn.Module):
  """ε_θ(z, λ, c) on (B, C, H, W) images; the structure of cfg_jax.model.UNet, module for module."""

  def __init__(self, config):
    super().__init__()
    m, d = config.model, config.data
    ch, size = m.channels, d.pad_to or d.image_size
    self.channels, emb_dim = ch, 4 * m.channels
    heads = lambda c: m.attention_num_heads or max(1, c // m.attention_head_channels)
    stage = lambda c_in, c_out, size, **kw: _Stage(
        ResBlock(c_in, c_out, emb_dim, m.dropout, m.norm_groups, **kw),
        AttentionBlock(c_out, heads(c_out), m.norm_groups) if size in m.attention_resolutions else None)

    self.emb1, self.emb2 = nn.Linear(ch, emb_dim), nn.Linear(emb_dim, emb_dim)
    self.class_embed = nn.Embedding(d.num_classes + 1, emb_dim)   # row num_classes is ∅
    self.conv_in = _conv(d.channels, ch)
    self.down, skips, c = nn.ModuleList(), [ch], ch
    for level, mult in enumerate(m.channel_mult):
      for _ in range(m.num_res_blocks):
        self.down.append(stage(c, ch * mult, size))
        c = ch * mult
        skips.append(c)
      if level != len(m.channel_mult) - 1:
        self.down.append(stage(c, c, -1, resample=-1))   # Flax: no attention on resampling blocks
        size //= 2
        skips.append(c)
    self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, m.dropout, m.norm_groups),
                              AttentionBlock(c, heads(c), m.norm_groups),
                              ResBlock(c, c, emb_dim, m.dropout, m.norm_groups)])
    self.up = nn.ModuleList()
    for level, mult in reversed(list(enumerate(m.channel_mult))):
      for _ in range(m.num_res_blocks + 1):
        self.up.append(stage(c + skips.pop(), ch * mult, size))
        c = ch * mult
      if level != 0:
        self.up.append(stage(c, c, -1, resample=+1))
        size *= 2
    self.norm_out, self.conv_out = _norm(c, m.norm_groups), _conv(c, d.channels, zero=True)

  def forward(self, z, logsnr, labels):
    t = torch.atan(torch.exp(-0.5 * logsnr)) / (0.5 * math.pi)   # diffusion.noise_level_input
    emb = self.emb2(F.silu(self.emb1(timestep_embedding(t, self.channels))))
    emb = emb + self.class_embed(labels)
    h = self.conv_in(z)
    skips = [h]
    for s in self.down:
      h = s(h, emb)
      skips.append(h)
    h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
    for s in self.up:
      is_resample = s.block.resample != 0
      h = s(h if is_resample else torch.cat([h, skips.pop()], 1), emb)
    return self.conv_out(F.silu(self.norm_out(h)))


def logsnr_schedule(u, logsnr_min, logsnr_max):
  """cfg_jax.diffusion.logsnr_schedule, the same two branches."""
  b = math.atan(math.exp(-0.5 * logsnr_max))
  a = math.atan(math.exp(-0.5 * logsnr_min)) - b
  angle = a * u + b
  complement = math.atan(math.exp(0.5 * logsnr_min)) + a * (1.0 - u)
  return torch.where(angle < 0.25 * math.pi, -2.0 * torch.log(torch.tan(angle)),
                     2.0 * torch.log(torch.tan(complement)))


class Trainer:
  """Model, Adam and EMA; `step(images, labels)` is one step of Algorithm 1 on uint8 NHWC images."""

  def __init__(self, config, channels_last=True, seed=0):
    torch.manual_seed(seed)
    self.config, self.fmt = config, torch.channels_last if channels_last else torch.contiguous_format
    self.model = UNet(config).to(memory_format=self.fmt)
    self.params = [p for p in self.model.parameters()]
    t = config.train
    self.opt = torch.optim.Adam(self.params, lr=t.learning_rate, eps=1e-8, foreach=True)
    warmup = max(t.warmup_steps, 1)
    self.lr = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(s, warmup) / warmup)
    self.ema = [p.detach().clone() for p in self.params]
    self.num_steps = 0

  def num_params(self):
    return sum(p.numel() for p in self.params)

  def _images(self, images):
    """uint8 (B, H, W, C) → float [−1, 1] (B, C, H, W) in this trainer's memory format."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous(memory_format=self.fmt)

  def step(self, images, labels):
    c = self.config
    self.model.train()
    x, labels = self._images(images), torch.from_numpy(labels).long()
    drop = torch.rand(labels.shape) < c.train.p_uncond
    labels = torch.where(drop, c.data.num_classes, labels)
    logsnr = logsnr_schedule(torch.rand(x.shape[0]), c.diffusion.logsnr_min, c.diffusion.logsnr_max)
    alpha = torch.sigmoid(logsnr).sqrt()[:, None, None, None]
    sigma = torch.sigmoid(-logsnr).sqrt()[:, None, None, None]
    eps = torch.randn_like(x)
    loss = F.mse_loss(self.model(alpha * x + sigma * eps, logsnr, labels), eps)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, c.train.grad_clip, foreach=True)
    self.opt.step()
    self.lr.step()
    decay = min(c.train.ema_decay, (1.0 + self.num_steps) / (10.0 + self.num_steps))
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - decay)  # pylint: disable=protected-access
    self.num_steps += 1
    return loss.item()

  @torch.inference_mode()
  def forward(self, z, logsnr, labels):
    """One sampler call: NHWC float32 z, no dropout."""
    self.model.eval()
    z = torch.from_numpy(z).permute(0, 3, 1, 2).contiguous(memory_format=self.fmt)
    return self.model(z, torch.from_numpy(logsnr), torch.from_numpy(labels).long())
