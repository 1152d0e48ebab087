"""The input pipeline: real Fashion-MNIST, TFDS by name, deterministic per-process order."""
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cfg_jax import data


def test_fashion_mnist_idx_files(fmnist_train):
  assert fmnist_train.images.shape == (60_000, 28, 28, 1)
  assert fmnist_train.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(fmnist_train.labels), [6000] * 10)
  assert fmnist_train.labels[0] == 9            # the first training image is an ankle boot
  test = data.load_fashion_mnist('test')
  assert len(test) == 10_000


def test_order_is_a_function_of_seed_and_step(fmnist_train):
  it = data.batches(fmnist_train, seed=3, global_batch_size=8)
  first = [next(it)['label'] for _ in range(5)]
  resumed = next(data.batches(fmnist_train, seed=3, global_batch_size=8, start_step=4))
  np.testing.assert_array_equal(resumed['label'], first[4])
  other = next(data.batches(fmnist_train, seed=4, global_batch_size=8))
  assert not np.array_equal(other['label'], first[0])


def test_each_process_reads_its_contiguous_slice(fmnist_train, monkeypatch):
  whole = data.batches(fmnist_train, seed=0, global_batch_size=12, start_step=2)
  want = [next(whole)['image'] for _ in range(2)]
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  parts = []
  for p in range(3):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    it = data.batches(fmnist_train, seed=0, global_batch_size=12, start_step=2)
    parts.append([next(it)['image'] for _ in range(2)])
  for step in range(2):
    np.testing.assert_array_equal(np.concatenate([parts[p][step] for p in range(3)]), want[step])


def test_any_tfds_dataset_by_name_without_tensorflow():
  config = ml_collections.ConfigDict(dict(name='cifar10', dir=''))
  with tfds.testing.mock_data(num_examples=16):
    source = data.load_source(config, 'train')
    batch = next(data.batches(source, seed=0, global_batch_size=4))
  assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (4,)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
  with pytest.raises(data.DataError, match='apt-get install dataset-fashion-mnist'):
    data.load_fashion_mnist('train', str(tmp_path))


def test_model_range_and_padding():
  x = np.array([0, 255], np.uint8).reshape(1, 2, 1, 1).repeat(2, axis=2)   # rows 0 and 255
  y = np.asarray(data.to_model_range(x, pad_to=4))
  assert y.shape == (1, 4, 4, 1)
  np.testing.assert_allclose(y[0, 1:3, 1:3, 0], [[-1, -1], [1, 1]])
  assert np.all(y[0, 0] == -1)
  np.testing.assert_array_equal(data.to_uint8(data.to_model_range(x)), x)
