"""How well a text-conditioned model follows prompts it was never trained on, across w.

  python launch/evaluate_text.py --workdir=workdirs/fmnist_text --guidance=0,0.3,1,2,4 \\
      --num_samples=1000 --out=workdirs/fmnist_text/eval_text

Prompts: captions of N class-balanced test images in the held-out templates (cfg_jax.captions;
e.g. "this boot is dark and narrow"), so they ask for attribute combinations that occur;
--templates=train words them like the training captions instead, which separates following an
unseen wording from following the words. For each w, N samples (sample i uses the same noise at
every w) are scored by
  class agreement   the reference classifier's label equals the prompt's class (also per class);
  attribute agreement, per attribute: among samples whose prompt named it, the share whose
                    measured level (the same functions and training-set terciles the captions
                    came from) is the one named;
  FD-clf            Fréchet distance in the classifier's features to the real test split
                    (with its bootstrap std, precision and recall: cfg_jax.eval.metrics).
Then the negative prompt: the plainest class prompts ("a coat") at each --negative_guidance w,
without and with --negative (default "dark"), and the share of samples at the level that word
names.
Writes OUT/metrics.json and prints both tables. The sampler, time grid and guidance variants
take the flags of launch/sample.py (--sampler, --grid, --guidance_rule, --interval, ...).
"""
import os

from absl import flags

from cfg_jax import cli, sampling_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Trained text-conditioned workdir.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_GUIDANCE = flags.DEFINE_list('guidance', ['0', '0.3', '1', '2', '4'], 'Values of w.')
_NUM = flags.DEFINE_integer('num_samples', 1000, 'Samples per w (classes balanced).')
_NEGATIVE = flags.DEFINE_string('negative', 'dark', 'An attribute word (dark, light, narrow, '
                                'wide, smooth, textured, …) for the negative-prompt test; '
                                '"" skips it.')
_NEGATIVE_W = flags.DEFINE_list('negative_guidance', ['1', '4'], 'Values of w (> 0) for the '
                                 'negative-prompt test.')
_TEMPLATES = flags.DEFINE_enum('templates', 'heldout', ['heldout', 'train'],
                                'Caption templates of the prompts: the held-out ones, never '
                                'trained on, or the training ones.')
_OUT = flags.DEFINE_string('out', None, 'Output folder (default: WORKDIR/eval_text).')
_CLASSIFIER = flags.DEFINE_string('classifier_dir', None, 'Reference classifier (default: '
                                  '~/.cache/cfg_jax/classifiers/<data set>; trained if missing).')
flags.mark_flags_as_required(['workdir'])


def _check_flags():
  from cfg_jax import captions  # pylint: disable=g-import-not-at-top
  ws = cli.guidance_values(_GUIDANCE.value)
  negative_ws = cli.guidance_values(_NEGATIVE_W.value, '--negative_guidance')
  cli.require(all(w > 0 for w in negative_ws), f'--negative_guidance must be > 0 (at w = 0 the '
              f'negative prompt has no effect), got {",".join(_NEGATIVE_W.value)}')
  cli.require(_NUM.value >= 20, f'--num_samples must be >= 20, got {_NUM.value}')
  cli.require(not _NEGATIVE.value or captions.attribute_of(_NEGATIVE.value) is not None,
              f'--negative={_NEGATIVE.value!r} names no attribute; use one of ' + ', '.join(
                  w for _, low, high in captions.ATTRIBUTES.values() for w in low + high))
  cli.require(os.path.isdir(_WORKDIR.value),
              f'--workdir={_WORKDIR.value} does not exist; train first with launch/train.py')
  try:
    return ws, negative_ws, sampling_flags.overrides()
  except sampling_flags.SamplingFlagError as e:
    cli.fail(str(e))


def main(argv):
  del argv
  ws, negative_ws, settings = _check_flags()
  cli.setup_runtime(single_process=True)
  cli.quiet_logging()
  import cfg_jax  # pylint: disable=g-import-not-at-top
  from cfg_jax import checkpoint  # pylint: disable=g-import-not-at-top

  out = _OUT.value or os.path.join(_WORKDIR.value, 'eval_text')
  cli.check_writable(out, '--out')
  try:
    pipe = cfg_jax.load(_WORKDIR.value, step=_STEP.value)
  except (checkpoint.CheckpointError, FileNotFoundError) as e:
    cli.fail(str(e))
  cli.require(tuple(pipe.config.condition.kinds) == ('text',),
              f'{_WORKDIR.value} is conditioned on {" + ".join(pipe.config.condition.kinds)}; '
              'launch/evaluate_text.py scores text-only models (configs/fashion_mnist.py:text); '
              'use launch/evaluate.py for class labels')
  os.makedirs(out, exist_ok=True)
  _evaluate(pipe, ws, negative_ws, out, settings)


def _evaluate(pipe, ws, negative_ws, out, settings):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cfg_jax import captions, conditioning, data  # pylint: disable=g-import-not-at-top
  from cfg_jax.eval import (classifier, features, metrics,  # pylint: disable=g-import-not-at-top
                            report)
  config, k = pipe.config, pipe.num_classes
  dc = config.data
  sampler = sampling_flags.sampler_settings(pipe, settings)
  seed = sampling_flags.SEED.value
  clf_dir = _CLASSIFIER.value or classifier.default_dir(dc.name)
  try:
    extractor = classifier.ensure_extractor(clf_dir, dc)
    test_feats, _, _ = features.real_features(extractor, clf_dir, dc, dc.eval_split)
    cuts = conditioning.attribute_cuts(dc)
    test_images, test_labels = data.all_images(data.load_source(dc, dc.eval_split))
  except (data.DataError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))
  reference = metrics.Reference(test_feats, f'{dc.name} {dc.eval_split} ({len(test_feats)} images)')
  templates = {'heldout': captions.HELDOUT_TEMPLATES, 'train': captions.TRAIN_TEMPLATES}
  prompts, labels, requested = captions.evaluation_prompts(
      test_images, test_labels, cuts, _NUM.value, seed, templates[_TEMPLATES.value])
  n = len(prompts)

  def draw(w, texts, negative=None):
    """uint8 samples for `texts` at w (sample i: noise stream i of --seed at every w)."""
    x = pipe.sample(prompts=texts, w=np.full(len(texts), w, np.float32),
                    negative_prompts=negative, steps=sampler.steps, method=sampler.method,
                    v=sampler.v, seed=seed,
                    batch_size=sampling_flags.BATCH.value, progress=True, **settings)
    return data.to_uint8(x)

  rows = []
  for w in ws:
    images = draw(w, prompts)
    scores = metrics.evaluate_images(extractor, data.to_unit_range(images), labels, reference,
                                     num_classes=k, seed=seed)
    row = {'w': w, **{key: scores[key] for key in ('class_agreement', 'fd_clf', 'fd_clf_std',
                                                     'precision', 'recall', 'num_samples',
                                                     'per_class_agreement')}}
    for a, (share, count) in captions.attribute_agreement(images, requested, cuts).items():
      row[f'{a}_agreement'], row[f'{a}_named'] = share, count
    rows.append(row)
    print(f'w = {w:g}: ' + ', '.join(f'{key} {value:.3f}' for key, value in row.items()
                                     if isinstance(value, float) and key != 'w'), flush=True)

  negative_rows = []
  if _NEGATIVE.value:
    attribute, level = captions.attribute_of(_NEGATIVE.value)
    plain = captions.class_prompts(np.arange(n) % k)
    for w in negative_ws:
      shares = {name: captions.level_shares(draw(w, plain, negative), cuts)[attribute][level]
                for name, negative in (('without', None), ('with', _NEGATIVE.value))}
      negative_rows.append({'w': w, 'attribute': attribute, 'word': _NEGATIVE.value, **shares})

  report.write_json(os.path.join(out, 'metrics.json'), {
      'settings': {'workdir': os.path.abspath(_WORKDIR.value), 'step': _STEP.value,
                   **sampler.record(), 'seed': seed, 'num_samples': n,
                   'sample_settings': settings,
                   'prompts': f'{_TEMPLATES.value} templates',
                   'templates': templates[_TEMPLATES.value],
                   'thresholds': cuts, 'extractor': extractor.name,
                   'reference': reference.name},
      'rows': rows, 'negative_prompt': negative_rows, 'example_prompts': prompts[:20]})
  attrs = list(captions.ATTRIBUTES)
  print('\n| w | class agreement | ' + ' | '.join(f'{a} agreement (n)' for a in attrs)
        + ' | FD-clf |')
  print('|---' * (3 + len(attrs)) + '|')
  for r in rows:
    cells = [f'{r[a + "_agreement"]:.3f} ({r[a + "_named"]})' for a in attrs]
    print(f'| {r["w"]:g} | {r["class_agreement"]:.3f} | ' + ' | '.join(cells)
          + f' | {r["fd_clf"]:.3f} |')
  if negative_rows:
    word = _NEGATIVE.value
    print(f'\nshare of samples measured "{word}" for the plain class prompts, without and with '
          f'"{word}" as the negative prompt\n| w | without | with |\n|---|---|---|')
    for r in negative_rows:
      print(f'| {r["w"]:g} | {r["without"]:.3f} | {r["with"]:.3f} |')
  print(f'wrote {out}/metrics.json')


if __name__ == '__main__':
  cli.run(main, 'nothing was written; rerun to evaluate again')
