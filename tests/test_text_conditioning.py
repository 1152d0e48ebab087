"""Conditions beyond class labels (cfg_jax.conditioning): each kind's null and dropout, the byte
tokenizer, cross-attention, guided sampling on condition pytrees, and the class-label path
unchanged bit for bit."""
import numpy as np
import pytest

import make_class_reference


def test_class_label_path_is_bit_identical_to_before_text_conditioning():
  """Parameters, output, one train step and samples of the tiny class config, against values
  computed by main c9343e2 (tests/make_class_reference.py) before conditions were pytrees."""
  ref = np.load(make_class_reference.PATH)
  now = make_class_reference.compute()
  for name in ('init', 'stepped'):
    assert sorted(now[name]) == list(ref[f'{name}_paths']), f'{name}: parameter tree changed'
    assert [now[name][k] for k in sorted(now[name])] == list(ref[f'{name}_digests']), name
  for name in ('output', 'loss', 'samples'):
    np.testing.assert_array_equal(now[name], ref[name], err_msg=name)
