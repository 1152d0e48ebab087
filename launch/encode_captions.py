"""Encodes Fashion-MNIST captions once with a frozen text encoder into an npz data set, for
training on precomputed embeddings (condition.kinds=('embedding',)).

  python launch/encode_captions.py --text_workdir=workdirs/fmnist_text --out=data/fmnist_emb
  python launch/encode_captions.py --encoder=my_encoders.py:encode --out=data/fmnist_emb

--encoder=FILE.py:FUNCTION (or module:function) is any function of a list of strings that
returns (embeddings (N, L, D) float, mask (N, L) bool), e.g. a wrapper around a Hugging Face
model you have on disk; --text_workdir uses the built-in encoder of a trained text model. Each
image gets one caption (cfg_jax.captions, epoch 0 of --seed). Writes OUT/train.npz and
OUT/test.npz (images, labels, embeddings as float16, mask) and OUT/SPLIT_captions.txt, and
prints the config flags that train on them.
"""
import importlib
import importlib.util
import os

from absl import flags

from cfg_jax import cli

_OUT = flags.DEFINE_string('out', None, 'Output folder for train.npz and test.npz.')
_ENCODER = flags.DEFINE_string('encoder', None, 'FILE.py:FUNCTION or module:function: list of '
                               'strings -> (embeddings (N, L, D), mask (N, L)).')
_TEXT_WORKDIR = flags.DEFINE_string('text_workdir', None, 'A trained text-conditioned workdir '
                                    'whose built-in encoder (EMA weights) encodes the captions.')
_SEED = flags.DEFINE_integer('seed', 0, 'Caption seed.')
_MAX = flags.DEFINE_integer('max_examples', 0, 'Encode only the first N of each split (0: all).')
_BATCH = flags.DEFINE_integer('batch_size', 1024, 'Captions per encoder call.')
flags.mark_flags_as_required(['out'])


def _user_encoder(spec):
  """The function named by FILE.py:FUNCTION or module:function."""
  where, _, name = spec.rpartition(':')
  cli.require(where and name, f'--encoder={spec}: write FILE.py:FUNCTION or module:function')
  try:
    if where.endswith('.py'):
      loader = importlib.util.spec_from_file_location('user_encoder', where)
      module = importlib.util.module_from_spec(loader)
      loader.loader.exec_module(module)
    else:
      module = importlib.import_module(where)
  except (ImportError, FileNotFoundError) as e:
    cli.fail(f'--encoder={spec}: cannot load {where} ({e})')
  cli.require(callable(getattr(module, name, None)), f'--encoder={spec}: {where} has no '
              f'function {name}')
  return getattr(module, name)


def _workdir_encoder(workdir):
  """The built-in text encoder of a trained text model, frozen, as strings -> (values, mask)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import cfg_jax  # pylint: disable=g-import-not-at-top
  from cfg_jax import checkpoint, text_encoder, tokenizer  # pylint: disable=g-import-not-at-top
  try:
    pipe = cfg_jax.load(workdir)
  except (checkpoint.CheckpointError, FileNotFoundError) as e:
    cli.fail(str(e))
  cli.require('text' in pipe.config.condition.kinds,
              f'{workdir} has no text encoder: it is conditioned on '
              f'{" + ".join(pipe.config.condition.kinds)}')
  m = pipe.config.model
  encoder = text_encoder.TextEncoder(m.context_dim, m.text_layers, m.text_heads, m.text_max_len)
  params = jax.device_get(pipe.params['text_encoder'])
  apply = jax.jit(lambda tokens: encoder.apply({'params': params}, tokens))

  def encode(texts):
    values, mask = apply(tokenizer.encode(texts, m.text_max_len))
    return np.asarray(values), np.asarray(mask)
  return encode


def main(argv):
  del argv
  cli.require((_ENCODER.value is None) != (_TEXT_WORKDIR.value is None),
              'give one of --encoder and --text_workdir')
  cli.require(_MAX.value >= 0, f'--max_examples must be >= 0, got {_MAX.value}')
  cli.require(_BATCH.value >= 1, f'--batch_size must be >= 1, got {_BATCH.value}')
  cli.require(_TEXT_WORKDIR.value is None or os.path.isdir(_TEXT_WORKDIR.value),
              f'--text_workdir={_TEXT_WORKDIR.value} does not exist')
  cli.check_writable(_OUT.value, '--out')
  cli.setup_runtime(single_process=True)
  cli.quiet_logging()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from cfg_jax import captions, data  # pylint: disable=g-import-not-at-top

  encode = (_user_encoder(_ENCODER.value) if _ENCODER.value
            else _workdir_encoder(_TEXT_WORKDIR.value))
  try:
    splits = {split: data.load_fashion_mnist(split) for split in ('train', 'test')}
  except data.DataError as e:
    cli.fail(str(e))
  cuts = captions.thresholds(captions.measures(splits['train'].images))
  shape = None
  for split, source in splits.items():
    n = min(_MAX.value or len(source), len(source))
    images, labels = source.images[:n], source.labels[:n]
    captioner = captions.Captioner(captions.measures(images), labels, cuts, _SEED.value)
    texts = [captioner(i, 0) for i in range(n)]
    values, masks = [], []
    for start in tqdm.trange(0, n, _BATCH.value, desc=f'encode {split}', unit='batch'):
      chunk = texts[start:start + _BATCH.value]
      v, m = encode(chunk)
      v, m = np.asarray(v), np.asarray(m, bool)
      cli.require(v.ndim == 3 and m.shape == v.shape[:2] and len(v) == len(chunk),
                  f'the encoder returned embeddings {v.shape} and mask {m.shape} for '
                  f'{len(chunk)} captions; it must return (N, L, D) and (N, L)')
      values.append(v.astype(np.float16))
      masks.append(m)
    values, masks = np.concatenate(values), np.concatenate(masks)
    shape = values.shape[1:]
    os.makedirs(_OUT.value, exist_ok=True)
    np.savez(os.path.join(_OUT.value, f'{split}.npz'), images=images, labels=labels,
             embeddings=values, mask=masks)
    with open(os.path.join(_OUT.value, f'{split}_captions.txt'), 'w', encoding='utf-8') as f:
      f.write('\n'.join(texts) + '\n')
    print(f'wrote {_OUT.value}/{split}.npz: {n:,} images with embeddings {shape}')
  print('train on them with\n  python launch/train.py --config=configs/fashion_mnist.py:text '
        f'--workdir=workdirs/fmnist_emb --config.data.name=npz --config.data.dir={_OUT.value} '
        f"--config.condition.kinds=\"('embedding',)\" --config.condition.embedding_len={shape[0]} "
        f'--config.condition.embedding_dim={shape[1]}')


if __name__ == '__main__':
  cli.run(main, 'nothing complete was written; rerun to encode again')
