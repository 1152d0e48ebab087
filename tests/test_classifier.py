"""The reference classifier as a feature extractor, and the real-data floor it gives."""
import functools
import os
import tempfile

import numpy as np
import pytest

from cfg_jax import config_lib, data
from cfg_jax.eval import classifier, features, metrics, sweep

DATA = config_lib.base_config().data


@functools.lru_cache(maxsize=None)
def tiny_classifier_dir():
  """A classifier trained for a few steps (seconds), shared by every test in this process."""
  directory = os.path.join(tempfile.mkdtemp(prefix='cfg_jax_clf_'), 'fashion_mnist')
  classifier.train_classifier(directory, steps=30, batch_size=64, progress=False)
  return directory


@pytest.fixture(scope='module')
def extractor():
  return classifier.load_extractor(tiny_classifier_dir())


@pytest.fixture(scope='module')
def fmnist_test():
  return data.load_fashion_mnist('test')


def test_saved_classifier_is_reused_and_describes_itself(extractor):
  m = extractor.meta
  assert (m['num_classes'], m['image_size'], m['channels'], m['feature_dim']) == (10, 28, 1, 128)
  assert 0.0 < m['test_accuracy'] <= 1.0 and m['steps'] == 30
  assert 'test accuracy' in extractor.name
  again = classifier.ensure_extractor(tiny_classifier_dir(), DATA)
  assert again.meta == m                                     # loaded, not retrained
  other = config_lib.base_config().data
  other.update(name='mnist')
  with pytest.raises(ValueError, match='trained on fashion_mnist'):
    classifier.ensure_extractor(tiny_classifier_dir(), other)


def test_features_do_not_depend_on_batching_or_padding(extractor, fmnist_test):
  x = data.to_unit_range(fmnist_test.images[:37])
  f, l = extractor(x)
  assert f.shape == (37, 128) and l.shape == (37, 10) and f.dtype == np.float32
  f_one, l_one = extractor(x[5:6])
  np.testing.assert_allclose(f_one[0], f[5], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(l_one[0], l[5], rtol=1e-4, atol=1e-5)
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)   # pad_to=32 data
  np.testing.assert_allclose(extractor(padded)[0], f, rtol=1e-5, atol=1e-6)


def test_cached_test_features_match_a_fresh_pass(extractor, fmnist_test):
  feats, logits, labels = features.real_features(extractor, tiny_classifier_dir(), DATA, 'test')
  assert feats.shape == (10_000, 128)
  np.testing.assert_array_equal(labels, fmnist_test.labels)
  np.testing.assert_allclose(extractor(data.to_unit_range(fmnist_test.images[:64]))[0], feats[:64],
                             rtol=1e-4, atol=1e-5)
  assert np.mean(logits.argmax(-1) == labels) == pytest.approx(extractor.meta['test_accuracy'])


def test_real_floor_is_reproducible_and_far_below_noise(extractor, fmnist_train):
  feats, _, _ = features.real_features(extractor, tiny_classifier_dir(), DATA, 'test')
  reference = metrics.Reference(feats, 'fashion_mnist test (10000)')
  train = features.real_features(extractor, tiny_classifier_dir(), DATA, 'train')
  np.testing.assert_array_equal(train[2], fmnist_train.labels)
  np.testing.assert_allclose(train[0][:64], extractor(data.to_unit_range(fmnist_train.images[:64]))[0],
                             rtol=1e-4, atol=1e-5)   # the cache holds the images' features
  floor = functools.partial(metrics.real_floor, *train, reference, 500, num_classes=10,
                            extractor=extractor.name)
  first, second = floor(seed=0), floor(seed=0)
  assert first == second
  assert first['num_samples'] == 500 and first['extractor'] == extractor.name
  noise = np.random.default_rng(0).uniform(-1, 1, (500, 28, 28, 1)).astype(np.float32)
  noise_row = metrics.evaluate_images(extractor, noise, sweep.balanced_labels(500, 10),
                                      reference, num_classes=10)
  assert first['fd_clf'] < 0.1 * noise_row['fd_clf']
  assert first['precision'] > 0.5 > noise_row['precision']
  assert floor(seed=1)['fd_clf'] == pytest.approx(first['fd_clf'], rel=0.5)   # another subset
