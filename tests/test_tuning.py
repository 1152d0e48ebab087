"""Choosing w from a sweep and restoring the choice with the checkpoint."""
import numpy as np
import pytest

import cfg_jax
from cfg_jax import train, tuning
from conftest import tiny_config

ROWS = [{'w': 0.0, 'fd_clf': 3.0, 'class_agreement': 0.70},
        {'w': 0.3, 'fd_clf': 2.1, 'class_agreement': 0.80},
        {'w': 1.0, 'fd_clf': 2.4, 'class_agreement': 0.90},
        {'w': 4.0, 'fd_clf': 6.0, 'class_agreement': 0.99}]


def test_choose_lowest_fd_or_best_agreement_within_a_bound():
  assert tuning.choose(ROWS)['w'] == 0.3
  assert tuning.choose(ROWS, max_fd=2.5)['w'] == 1.0
  assert tuning.choose(ROWS, max_fd=10)['w'] == 4.0
  with pytest.raises(ValueError, match='no setting reaches FD-clf <= 1.0'):
    tuning.choose(ROWS, max_fd=1.0)


@pytest.fixture(scope='module')
def tiny_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tuning') / 'run')
  train.train(tiny_config(num_steps=20, checkpoint_every=20), workdir)
  return workdir


def test_the_choice_is_restored_by_load_and_used_when_no_w_is_given(tiny_workdir):
  pipe = cfg_jax.load(tiny_workdir)
  labels = np.arange(4)
  at = lambda w: pipe.sample(labels, w, steps=3, seed=1)
  path = tuning.save_choice(tiny_workdir, {'w': 2.0, 'fd_clf': 1.0, 'class_agreement': 0.9},
                            step=20, settings={'rescale': 0.5}, criterion='min_fd')
  try:
    tuned = cfg_jax.load(tiny_workdir)
    assert tuned.tuned['w'] == 2.0 and tuned.tuned['settings'] == {'rescale': 0.5}
    np.testing.assert_allclose(tuned.sample(labels, steps=3, seed=1),
                               pipe.sample(labels, 2.0, steps=3, seed=1, rescale=0.5), atol=1e-6)
    assert not np.allclose(at(2.0), at(0.0), atol=1e-3)
    np.testing.assert_allclose(tuned.sample(labels, 0.0, steps=3, seed=1), at(0.0), atol=1e-6)
  finally:
    import os
    os.remove(path)
  assert cfg_jax.load(tiny_workdir).tuned is None
  np.testing.assert_allclose(pipe.sample(labels, steps=3, seed=1), at(0.0), atol=1e-6)
