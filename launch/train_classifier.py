"""Trains the reference classifier whose features FD-clf, the score and precision/recall use.

  python launch/train_classifier.py [--out=~/.cache/cfg_jax/classifiers/fashion_mnist] \
      [--config=configs/fashion_mnist.py] [--steps=2400] [--force]

A small CNN (cfg_jax.eval.classifier.Classifier), trained on the config's train split, saved as an
orbax checkpoint with its test accuracy, plus the cached features of the test split.
launch/evaluate.py runs this itself when the classifier is missing. OUT is checked to be
writable before training starts. Runs in one process (one host).
"""
from absl import flags
from ml_collections import config_flags

from cfg_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Diffusion config whose data set to use (default: Fashion-MNIST).')
_OUT = flags.DEFINE_string('out', None, 'Classifier folder (default: '
                           '~/.cache/cfg_jax/classifiers/<data set>).')
_STEPS = flags.DEFINE_integer('steps', 2400, 'Training steps (batch 128).')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_SEED = flags.DEFINE_integer('seed', 0, 'Initialisation and data-order seed.')
_FORCE = flags.DEFINE_bool('force', False, 'Retrain even if OUT already holds a classifier.')


def main(argv):
  del argv
  cli.require(_STEPS.value >= 1, f'--steps must be >= 1, got {_STEPS.value}')
  cli.require(_BATCH.value >= 1, f'--batch_size must be >= 1, got {_BATCH.value}')
  cli.require(_SEED.value >= 0, f'--seed must be >= 0, got {_SEED.value}')
  cli.setup_runtime(single_process=True)
  cli.quiet_logging()
  import shutil  # pylint: disable=g-import-not-at-top
  from cfg_jax import config_lib, data  # pylint: disable=g-import-not-at-top
  from cfg_jax.eval import classifier  # pylint: disable=g-import-not-at-top

  data_config = (_CONFIG.value or config_lib.base_config()).data
  out = _OUT.value or classifier.default_dir(data_config.name)
  cli.check_writable(out, '--out')
  if classifier.exists(out) and not _FORCE.value:
    extractor = classifier.load_extractor(out)
    print(f'{out} already holds {extractor.name}; pass --force to retrain')
    return
  if _FORCE.value:
    shutil.rmtree(out, ignore_errors=True)
  try:
    extractor = classifier.train_classifier(out, data_config, steps=_STEPS.value,
                                            batch_size=_BATCH.value, seed=_SEED.value)
  except (data.DataError, ValueError) as e:   # ValueError: also config_lib.ConfigError
    cli.fail(str(e))
  m = extractor.meta
  print(f'wrote {out}: test accuracy {100 * m["test_accuracy"]:.2f}% after {m["steps"]} steps '
        f'({m["train_seconds"]:.0f} s on {m["devices"]})')


if __name__ == '__main__':
  cli.run(main, 'the classifier was not saved; rerun to train it')
