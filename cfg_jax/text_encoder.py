"""The built-in text encoder: a small pre-LayerNorm transformer over byte tokens, trained jointly
with the U-Net from scratch (nothing to download). Its output sequence is what the U-Net's
cross-attention reads; the empty prompt (BOS alone) is the text kind's null condition."""
import flax.linen as nn
import jax.numpy as jnp

from cfg_jax import tokenizer


class TextEncoder(nn.Module):
  """(B, L) tokens → ((B, L, width) features, (B, L) bool mask of real tokens)."""
  width: int = 64
  layers: int = 2
  heads: int = 4
  max_len: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    mask = tokens != tokenizer.PAD
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (self.max_len, self.width))
    x = nn.Embed(tokenizer.VOCAB_SIZE, self.width, dtype=self.dtype)(tokens)
    x = x + pos[:tokens.shape[1]].astype(self.dtype)
    keys = mask[:, None, None, :]            # every position attends to the real tokens only
    for _ in range(self.layers):
      y = nn.LayerNorm(dtype=self.dtype)(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype)(y, mask=keys)
      y = nn.LayerNorm(dtype=self.dtype)(x)
      y = nn.gelu(nn.Dense(4 * self.width, dtype=self.dtype)(y))
      y = nn.Dense(self.width, dtype=self.dtype)(y)
      x = x + y
    return nn.LayerNorm(dtype=self.dtype)(x), mask
