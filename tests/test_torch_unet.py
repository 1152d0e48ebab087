"""benchmarks/torch_unet.py is the same network as cfg_jax.model.UNet: Flax parameters copied
into it give the same outputs. Skipped without PyTorch (the optional `bench` extra)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import model as model_lib
from conftest import tiny_config

torch = pytest.importorskip('torch')
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, 'benchmarks'))
import torch_unet  # pylint: disable=g-import-not-at-top,wrong-import-position


def _t(a):
  return torch.from_numpy(np.array(a))


def _conv(conv, p):
  conv.weight.copy_(_t(p['kernel']).permute(3, 2, 0, 1))   # HWIO → OIHW
  conv.bias.copy_(_t(p['bias']))


def _linear(linear, p):
  linear.weight.copy_(_t(p['kernel']).T)
  linear.bias.copy_(_t(p['bias']))


def _norm(norm, p):
  norm.weight.copy_(_t(p['scale']))
  norm.bias.copy_(_t(p['bias']))


def _res_block(block, p):
  _norm(block.norm1, p['GroupNorm_0'])
  _conv(block.conv1, p['Conv_0'])
  _linear(block.emb, p['Dense_0'])
  _norm(block.norm2, p['GroupNorm_1'])
  _conv(block.conv2, p['Conv_1'])
  if 'Conv_2' in p:
    _conv(block.skip, p['Conv_2'])


def _attention(block, p):
  _norm(block.norm, p['GroupNorm_0'])
  mha = p['MultiHeadDotProductAttention_0']
  c = block.norm.num_channels
  w = [_t(mha[k]['kernel']).reshape(c, c).T for k in ('query', 'key', 'value')]
  block.attn.in_proj_weight.copy_(torch.cat(w))
  block.attn.in_proj_bias.copy_(torch.cat([_t(mha[k]['bias']).reshape(c)
                                           for k in ('query', 'key', 'value')]))
  block.attn.out_proj.weight.copy_(_t(mha['out']['kernel']).reshape(c, c).T)
  block.attn.out_proj.bias.copy_(_t(mha['out']['bias']))


@torch.no_grad()
def _load(net, params):
  """Flax names its submodules in call order (ResBlock_0, …), the order torch registers them."""
  _linear(net.emb1, params['Dense_0'])
  _linear(net.emb2, params['Dense_1'])
  net.class_embed.weight.copy_(_t(params['class_embed']['embedding']))
  _conv(net.conv_in, params['Conv_0'])
  _norm(net.norm_out, params['GroupNorm_0'])
  _conv(net.conv_out, params['Conv_1'])
  res = [m for m in net.modules() if isinstance(m, torch_unet.ResBlock)]
  att = [m for m in net.modules() if isinstance(m, torch_unet.AttentionBlock)]
  assert len(res) == sum(k.startswith('ResBlock_') for k in params)
  assert len(att) == sum(k.startswith('AttentionBlock_') for k in params)
  for i, m in enumerate(res):
    _res_block(m, params[f'ResBlock_{i}'])
  for i, m in enumerate(att):
    _attention(m, params[f'AttentionBlock_{i}'])


@pytest.mark.parametrize('norm_groups', [32, 4])   # tiny widths 8, 16: 8 and 16 groups; 4 and 4
def test_same_outputs_from_the_same_parameters(norm_groups):
  config = tiny_config()   # 2 heads at 16 channels, attention at 14x14 and in the middle
  config.model.norm_groups = norm_groups
  flax_model = model_lib.from_config(config)
  b = 4
  z = np.random.default_rng(0).normal(size=(b, 28, 28, 1)).astype(np.float32)
  logsnr = np.array([-8.0, -1.0, 2.0, 12.0], np.float32)
  labels = np.array([0, 3, 9, 10], np.int32)   # 10 is the null label ∅
  params = flax_model.init(jax.random.key(0), z, logsnr, labels)['params']
  # Random values everywhere, so that zero-initialised layers (and attention) count too.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  want = np.asarray(flax_model.apply({'params': params}, jnp.asarray(z), logsnr, labels))

  trainer = torch_unet.Trainer(config)
  assert trainer.num_params() == sum(x.size for x in leaves)
  _load(trainer.model, params)
  got = trainer.forward(z, logsnr, labels).permute(0, 2, 3, 1).numpy()
  assert np.abs(want).mean() > 0.1
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
