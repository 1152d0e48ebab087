"""Captions (cfg_jax.captions): attribute measures on hand-made images, terciles, captions as a
pure function of (seed, index, epoch) in the input pipeline, held-out templates, scoring."""
import itertools

import numpy as np
import pytest

from cfg_jax import captions, conditioning, data, tokenizer
from test_text_conditioning import _config


def _block(value, rows=10, cols=10, top=5, left=5):
  x = np.zeros((28, 28), np.uint8)
  x[top:top + rows, left:left + cols] = value
  return x


def test_attributes_of_hand_made_images():
  flat = _block(100)                                  # 10 x 10 square of grey 100
  stripes = _block(100)
  stripes[5:15, 5:15:2] = 200                         # columns alternate 200, 100
  triangle = np.zeros((28, 28), np.uint8)
  for r in range(8):                                  # rows of width 1, 3, 5, ..., 15
    triangle[r, 14 - r:15 + r] = 250
  faint = _block(20)                                  # below FOREGROUND: nothing
  images = np.stack([flat, stripes, triangle, faint])[..., None]
  np.testing.assert_allclose(captions.brightness(images), [100, 150, 250, 0])
  np.testing.assert_allclose(captions.width(images), [10, 10, 8, 0])   # mean of 1, 3, ..., 15
  # Stripes: 9 horizontal steps of 100 in each of 10 rows, 90 vertical steps of 0.
  np.testing.assert_allclose(captions.texture(images), [0, 9 * 10 * 100 / 180, 0, 0])
  with pytest.raises(TypeError, match='uint8'):
    captions.brightness(images.astype(np.float32))


def test_terciles_cut_three_equal_groups():
  values = {'brightness': np.arange(300.0), 'width': np.arange(300.0)[::-1],
            'texture': np.arange(300.0) % 30}
  cuts = captions.thresholds(values)
  lv = captions.levels(values, cuts)
  for name in values:
    np.testing.assert_array_equal(np.bincount(lv[name], minlength=3), [100, 100, 100])
  assert lv['brightness'][0] == captions.LOW and lv['brightness'][-1] == captions.HIGH


def _pool(n=200):
  rng = np.random.default_rng(0)
  levels = {a: rng.integers(0, 3, n) for a in captions.ATTRIBUTES}
  return levels, rng.integers(0, 10, n)


def _captioner(seed):
  """A Captioner over `_pool`'s levels (given as measures cut at 0.5 and 1.5)."""
  levels, labels = _pool()
  return captions.Captioner({a: v.astype(float) for a, v in levels.items()}, labels,
                            {a: (0.5, 1.5) for a in captions.ATTRIBUTES}, seed=seed)


def test_captions_name_the_measured_levels_and_the_class():
  levels, labels = _pool()
  for i in range(200):
    row = {a: v[i] for a, v in levels.items()}
    text, named = captions.caption(np.random.default_rng(i), int(labels[i]), row,
                                   captions.TRAIN_TEMPLATES)
    assert any(word in text for word in captions.CLASS_WORDS[labels[i]])
    for a, level in named.items():
      assert level == row[a] != captions.MIDDLE
      words = captions.ATTRIBUTES[a][1 if level == captions.LOW else 2]
      assert any(f' {w} ' in f' {text} ' for w in words), (text, a)
    unnamed = [a for a in captions.ATTRIBUTES if a not in named]
    for a in unnamed:   # no attribute word the caption does not mean
      for w in captions.ATTRIBUTES[a][1] + captions.ATTRIBUTES[a][2]:
        assert f' {w} ' not in f' {text} ', (text, a)


def test_every_caption_fits_the_text_config():
  """The longest rendering of every template (all three attributes, longest words) fits."""
  max_len = _config('text').model.text_max_len
  longest = [max(low + high, key=len) for _, low, high in captions.ATTRIBUTES.values()]
  nouns = [w for words in captions.CLASS_WORDS for w in words]
  worst = max(len(t.format(a='an', adjs=' '.join(longest), noun=noun,
                           pred=' and '.join(longest)).encode())
              for t, noun in itertools.product(
                  captions.TRAIN_TEMPLATES + captions.HELDOUT_TEMPLATES, nouns))
  assert worst <= max_len - 1, worst


def test_captioner_is_a_function_of_seed_index_epoch():
  cap, again, other = _captioner(3), _captioner(3), _captioner(4)
  assert [cap(i, 2) for i in range(50)] == [again(i, 2) for i in range(50)]
  assert sum(cap(i, 0) != cap(i, 1) for i in range(50)) > 25     # epochs vary the wording
  assert sum(cap(i, 0) != other(i, 0) for i in range(50)) > 25   # and so does the seed


def test_heldout_templates_never_appear_in_training():
  cap = _captioner(0)
  train = {cap(i, e) for i in range(200) for e in range(5)}
  assert not any(t.startswith('a grey shot of') or t.startswith('this ') for t in train)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (60, 28, 28, 1), dtype=np.uint8)
  cuts = captions.thresholds(captions.measures(images))
  prompts, want_labels, requested = captions.evaluation_prompts(images, np.arange(60) % 10, cuts,
                                                                30)
  assert all(p.startswith('a grey shot of') or p.startswith('this ') for p in prompts)
  np.testing.assert_array_equal(np.bincount(want_labels), [3] * 10)     # classes balanced
  assert all(set(np.unique(r)) <= {-1, captions.LOW, captions.HIGH} for r in requested.values())
  same, _, _ = captions.evaluation_prompts(images, np.arange(60) % 10, cuts, 30,
                                           templates=captions.TRAIN_TEMPLATES)
  assert not any(p.startswith('a grey shot of') or p.startswith('this ') for p in same)
  assert len(set(same)) > 10


def test_attribute_agreement_counts_by_hand():
  dark, light = _block(60)[..., None], _block(250)[..., None]
  images = np.stack([dark, dark, light, light])
  cuts = {'brightness': (100.0, 200.0), 'width': (5.0, 15.0), 'texture': (1.0, 2.0)}
  requested = {'brightness': np.int8([captions.LOW, captions.HIGH, captions.HIGH, -1]),
               'width': np.int8([-1, -1, -1, -1]),
               'texture': np.int8([captions.LOW, captions.LOW, captions.HIGH, captions.HIGH])}
  got = captions.attribute_agreement(images, requested, cuts)
  assert got['brightness'] == (2 / 3, 3)    # dark→LOW ✓, dark→HIGH ✗, light→HIGH ✓
  assert np.isnan(got['width'][0]) and got['width'][1] == 0
  assert got['texture'] == (0.5, 4)         # flat blocks are smooth: LOW ✓ ✓, HIGH ✗ ✗


def test_input_pipeline_captions_resume_exactly(fmnist_train):
  config = _config('tiny,text')
  source = data.ArraySource(fmnist_train.images[:256], fmnist_train.labels[:256])
  annotate = conditioning.annotator(config, source)
  stream = lambda start: data.batches(source, seed=0, global_batch_size=32, start_step=start,
                                      num_threads=1, annotate=annotate)
  first = [next(b) for b in [stream(0)] for _ in range(10)]
  resumed = stream(9)                               # step 9 is in the second epoch (8 per epoch)
  np.testing.assert_array_equal(next(resumed)['tokens'], first[9]['tokens'])
  texts = tokenizer.decode(first[9]['tokens'])
  # Each row's caption is the Captioner's for its own image, in epoch 1.
  values = captions.measures(source.images)
  cap = captions.Captioner(values, source.labels, captions.thresholds(values), config.seed)
  index = [int(np.flatnonzero((source.images == im).all((1, 2, 3)))[0]) for im in first[9]['image']]
  assert texts == [cap(i, 1) for i in index]


def test_attribute_cuts_are_the_training_splits_terciles(tmp_path):
  rng = np.random.default_rng(0)
  splits = {'train': rng.integers(0, 256, (60, 28, 28, 1), dtype=np.uint8),
            'test': np.zeros((30, 28, 28, 1), np.uint8)}   # a split that would cut elsewhere
  for name, images in splits.items():
    np.savez(tmp_path / f'{name}.npz', images=images, labels=np.arange(len(images)) % 10)
  config = _config('tiny,text')
  config.data.update(name='npz', dir=str(tmp_path))
  cuts = conditioning.attribute_cuts(config.data)
  for name, (measure, _, _) in captions.ATTRIBUTES.items():
    np.testing.assert_allclose(cuts[name], np.quantile(measure(splits['train']), [1 / 3, 2 / 3]))
