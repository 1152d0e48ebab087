"""Byte-level tokenizer for the built-in text encoder: no vocabulary file, nothing to download.

Every prompt becomes [BOS, byte₁ + 2, byte₂ + 2, …] padded with PAD to a fixed length, so
any UTF-8 text round-trips, and the empty prompt (the text kind's null condition ∅) is BOS
alone: a sequence that is never empty, so attention over it is always defined.
"""
import numpy as np

PAD, BOS = 0, 1
OFFSET = 2                 # token of byte b is b + OFFSET
VOCAB_SIZE = 256 + OFFSET


class PromptTooLongError(ValueError):
  """A prompt with more UTF-8 bytes than the encoder's sequence holds."""


def encode(texts, max_len):
  """(N,) strings → (N, max_len) int32 tokens; a prompt longer than max_len − 1 bytes raises."""
  texts = [texts] if isinstance(texts, str) else list(texts)
  tokens = np.full((len(texts), max_len), PAD, np.int32)
  tokens[:, 0] = BOS
  for i, text in enumerate(texts):
    raw = np.frombuffer(text.encode('utf-8'), np.uint8)
    if len(raw) > max_len - 1:
      raise PromptTooLongError(f'prompt {text!r} has {len(raw)} bytes; this model reads at most '
                               f'{max_len - 1}; shorten it')
    tokens[i, 1:1 + len(raw)] = raw.astype(np.int32) + OFFSET
  return tokens


def decode(tokens):
  """(N, L) or (L,) tokens → strings (BOS and PAD dropped)."""
  tokens = np.asarray(tokens)
  rows = tokens[None] if tokens.ndim == 1 else tokens
  out = [bytes((row[row >= OFFSET] - OFFSET).astype(np.uint8).tolist()).decode('utf-8')
         for row in rows]
  return out[0] if tokens.ndim == 1 else out


def empty(max_len):
  """The empty prompt's tokens (max_len,): the text kind's null condition."""
  return encode([''], max_len)[0]
