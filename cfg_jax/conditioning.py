"""The model's condition c as a small pytree, and each kind's null condition ∅.

A condition is either a bare (B,) int array of class labels (the paper's, and every class
config's, exactly as before) or a dict of kinds, each with its own null:

  'label'      (B,) int32 class labels             ∅: the extra label num_classes
  'text'       (B, L) int32 byte tokens (cfg_jax.tokenizer) for the built-in text encoder
                                                    ∅: the empty prompt (BOS, then padding)
  'embedding'  {'values': (B, L, D) float, 'mask': (B, L) bool}, precomputed per example
                                                    ∅: the empty sequence (mask all False), which
                                                       the U-Net reads as its null embedding
                                                       (learned or zeros: model.embedding_null)

Kinds combine ({'label': …, 'text': …}); condition dropout (objective.drop_condition) drops
each kind with its own probability, and guided sampling pairs every example with a condition of
the same structure (∅, or a negative prompt), so nothing downstream knows which kinds exist.
"""
import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import captions, data, tokenizer

KINDS = ('label', 'text', 'embedding')


def is_labels_only(config):
  """Whether `config` conditions on class labels alone (the condition is a bare label array)."""
  return tuple(config.condition.kinds) == ('label',)


def from_batch(batch, kinds):
  """The condition of a data batch: its labels, or a dict of the configured kinds."""
  kinds = tuple(kinds)
  if kinds == ('label',):
    return batch['label']
  columns = {'label': lambda: batch['label'], 'text': lambda: batch['tokens'],
             'embedding': lambda: {'values': batch['embeddings'], 'mask': batch['mask']}}
  return {kind: columns[kind]() for kind in kinds}


def null_like(cond, num_classes):
  """∅ with the structure, shapes and dtypes of `cond` (see the module docstring)."""
  if not isinstance(cond, dict):
    return jnp.full_like(cond, num_classes)
  null = {}
  for kind, c in cond.items():
    if kind == 'label':
      null[kind] = jnp.full_like(c, num_classes)
    elif kind == 'text':
      null[kind] = jnp.zeros_like(c).at[..., 0].set(tokenizer.BOS)
    elif kind == 'embedding':
      null[kind] = jax.tree.map(jnp.zeros_like, c)
    else:
      raise ValueError(f'unknown condition kind {kind!r}; choose from {", ".join(KINDS)}')
  return null


def p_uncond(config):
  """Each kind's dropout probability: train.p_uncond for a bare label condition; for a dict,
  condition.p_uncond (one per kind, in the order of condition.kinds), else train.p_uncond each."""
  kinds, per_kind = tuple(config.condition.kinds), tuple(config.condition.p_uncond)
  if kinds == ('label',) and not per_kind:
    return config.train.p_uncond
  return dict(zip(kinds, per_kind or (config.train.p_uncond,) * len(kinds)))


def example(config, batch_size=1):
  """A condition of the configured kinds and shapes (all ∅), for initialising the model."""
  k, c = config.data.num_classes, config.condition
  labels = np.full((batch_size,), k, np.int32)
  if is_labels_only(config):
    return jnp.zeros((batch_size,), jnp.int32)
  parts = {'label': lambda: labels,
           'text': lambda: np.tile(tokenizer.empty(config.model.text_max_len), (batch_size, 1)),
           'embedding': lambda: {
               'values': np.zeros((batch_size, c.embedding_len, c.embedding_dim), np.float32),
               'mask': np.zeros((batch_size, c.embedding_len), bool)}}
  return jax.tree.map(jnp.asarray, {kind: parts[kind]() for kind in c.kinds})


def batch_size(cond):
  """B, the leading dimension every leaf of a condition shares."""
  return jax.tree.leaves(cond)[0].shape[0]


def annotator(config, source):
  """The input pipeline's `annotate(example, index, epoch)` for `config`'s kinds: for 'text',
  the tokens of a caption of the example (cfg_jax.captions; attribute terciles from `source`,
  the training split), a pure function of (config.seed, index, epoch). None if nothing is
  added; an 'embedding' source is checked against the config instead."""
  kinds = tuple(config.condition.kinds)
  if 'embedding' in kinds:
    check_embeddings(source, config)
  if 'text' not in kinds:
    return None
  images, labels = data.all_images(source)
  values = captions.measures(images)
  captioner = captions.Captioner(values, labels, captions.thresholds(values), config.seed)
  max_len = config.model.text_max_len

  def annotate(example, index, epoch):
    return {**example, 'tokens': tokenizer.encode([captioner(index, epoch)], max_len)[0]}
  return annotate


def attribute_cuts(data_config):
  """{attribute: (t₁, t₂)}: the terciles of the training split that captions are cut at (the
  same ones `annotator` uses), for measuring samples against the words of a prompt."""
  images, _ = data.all_images(data.load_source(data_config, data_config.train_split))
  return captions.thresholds(captions.measures(images))


def check_embeddings(source, config):
  """The data set's `embeddings` (N, L, D) and `mask` (N, L) columns fit the config."""
  c = config.condition
  example = source[0]
  missing = [k for k in ('embeddings', 'mask') if k not in example]
  if missing:
    raise data.DataError(f"condition.kinds has 'embedding' but the data set has no "
                         f"{missing[0]!r} column; an npz data set needs embeddings (N, L, D) "
                         f"and mask (N, L) beside images and labels (README)")
  shape, mask = np.shape(example['embeddings']), np.shape(example['mask'])
  if shape != (c.embedding_len, c.embedding_dim) or mask != shape[:1]:
    raise data.DataError(f'the data set\'s embeddings are {shape} per example with a mask of '
                         f'{mask}; the config says ({c.embedding_len}, {c.embedding_dim}): set '
                         f'config.condition.embedding_len and embedding_dim')
