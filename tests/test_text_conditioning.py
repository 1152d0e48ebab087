"""Conditions beyond class labels (cfg_jax.conditioning): each kind's null and dropout, the byte
tokenizer, cross-attention, guided sampling on condition pytrees with negative prompts, the
precomputed-embedding data path, and the class-label path unchanged (to float32 rounding)."""
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import make_class_reference
from cfg_jax import conditioning, data, diffusion, guidance, inference, model as model_lib
from cfg_jax import objective, sampling, sharding, tokenizer, train
from conftest import ROOT


def _config(variant):
  spec = importlib.util.spec_from_file_location('fmnist', os.path.join(ROOT, 'configs',
                                                                       'fashion_mnist.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  config.sample.per_class = 0
  return config


# --- The class path is what it was ----------------------------------------------------------


def test_class_label_path_is_what_it_was_before_text_conditioning():
  """Parameters, output, three train steps and samples of the tiny class config, against values
  computed by main c9343e2 (tests/make_class_reference.py) before conditions were pytrees. The
  initial parameters come from the RNG alone and match bit for bit; what is computed from them
  matches to float32 rounding, which XLA does differently on different CPUs and flags (measured
  up to 1.2e-7 in output and loss, 1.5e-5 in parameters, 1.2e-5 in samples; a learning rate of
  2.1e-3 instead of 2e-3 moves the parameters by 1.3e-4 and the loss by 5.6e-4)."""
  ref = np.load(make_class_reference.PATH)
  now = make_class_reference.compute()
  assert sorted(now['init']) == list(ref['init_paths']), 'init: parameter tree changed'
  assert [now['init'][k] for k in sorted(now['init'])] == list(ref['init_digests']), 'init'
  assert list(now['stepped_paths']) == list(ref['stepped_paths']), 'stepped: parameter tree changed'
  np.testing.assert_allclose(now['stepped'], ref['stepped'], rtol=0, atol=5e-5, err_msg='stepped')
  np.testing.assert_allclose(now['output'], ref['output'], rtol=0, atol=1e-6, err_msg='output')
  np.testing.assert_allclose(now['loss'], ref['loss'], rtol=1e-5, err_msg='loss')
  np.testing.assert_allclose(now['samples'], ref['samples'], rtol=0, atol=1e-4, err_msg='samples')


# --- Tokenizer ------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_and_marks_the_empty_prompt():
  texts = ['a dark ankle boot', '', 'café, 靴 and ünïcode', 'x' * 31]
  tokens = tokenizer.encode(texts, 32)
  assert tokens.shape == (4, 32) and tokens.dtype == np.int32
  assert tokenizer.decode(tokens) == texts
  assert list(tokens[:, 0]) == [tokenizer.BOS] * 4
  np.testing.assert_array_equal(tokens[1], [tokenizer.BOS] + [tokenizer.PAD] * 31)
  np.testing.assert_array_equal(tokens[0, 1:4], np.frombuffer(b'a d', np.uint8) + 2)
  assert tokens.max() < tokenizer.VOCAB_SIZE
  with pytest.raises(tokenizer.PromptTooLongError, match='32 bytes'):
    tokenizer.encode(['x' * 32], 32)


# --- Null conditions and dropout ------------------------------------------------------------


def _text_and_embedding(n, rng):
  return {'label': rng.integers(0, 10, n).astype(np.int32),
          'text': tokenizer.encode(['a coat'] * n, 8),
          'embedding': {'values': rng.normal(size=(n, 3, 2)).astype(np.float32) + 5.0,
                        'mask': np.ones((n, 3), bool)}}


def test_each_kind_has_its_null():
  cond = _text_and_embedding(4, np.random.default_rng(0))
  null = jax.tree.map(np.asarray, conditioning.null_like(cond, 10))
  np.testing.assert_array_equal(null['label'], [10] * 4)
  assert tokenizer.decode(null['text']) == [''] * 4
  np.testing.assert_array_equal(null['text'], np.tile(tokenizer.empty(8), (4, 1)))
  assert not null['embedding']['mask'].any() and not null['embedding']['values'].any()
  np.testing.assert_array_equal(conditioning.null_like(jnp.arange(3), 7), [7, 7, 7])


def test_dropout_rates_per_kind_are_independent_and_whole():
  """Each kind dropped at its own rate (binomial error), independently of the others, and all
  of a kind's leaves together."""
  n = 100_000
  cond = _text_and_embedding(n, np.random.default_rng(1))
  p = {'label': 0.1, 'text': 0.3, 'embedding': 0.5}
  out = jax.tree.map(np.asarray, objective.drop_condition(
      jax.random.key(0), cond, p, conditioning.null_like(cond, 10)))
  dropped = {'label': out['label'] == 10,
             'text': (out['text'][:, 1:] == tokenizer.PAD).all(1),
             'embedding': ~out['embedding']['mask'].any(1)}
  for kind, q in p.items():
    assert abs(dropped[kind].mean() - q) < 5 * np.sqrt(q * (1 - q) / n), kind
  # Whole: values are zero exactly where the mask is; kept rows are untouched.
  zero = (out['embedding']['values'] == 0).all((1, 2))
  np.testing.assert_array_equal(zero, dropped['embedding'])
  keep = ~dropped['embedding']
  np.testing.assert_array_equal(out['embedding']['values'][keep], cond['embedding']['values'][keep])
  # Independent: both dropped at the product of the rates.
  both = (dropped['label'] & dropped['text']).mean()
  assert abs(both - 0.03) < 5 * np.sqrt(0.03 * 0.97 / n)


def test_one_kind_alone_uses_train_p_uncond_and_its_own_when_given():
  config = _config('tiny,text')
  config.train.p_uncond = 0.2
  assert conditioning.p_uncond(config) == {'text': 0.2}
  config.condition.update(kinds=('label', 'text'), p_uncond=(0.1, 0.46))
  assert conditioning.p_uncond(config) == {'label': 0.1, 'text': 0.46}
  assert conditioning.p_uncond(_config('tiny')) == _config('tiny').train.p_uncond


# --- Cross-attention and the U-Net ------------------------------------------------------------


def _perturbed(params, scale=0.05):
  """Random non-zero parameters (zero-initialised output layers would hide the condition)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def test_cross_attention_shapes_and_masked_keys_do_not_matter():
  block = model_lib.CrossAttentionBlock(head_channels=4)
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 8))
  context = jax.random.normal(jax.random.key(1), (2, 5, 6))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  params = _perturbed(jax.jit(block.init)(jax.random.key(2), x, context, mask)['params'])
  apply = jax.jit(lambda c: block.apply({'params': params}, x, c, mask))
  out = apply(context)
  assert out.shape == x.shape
  masked = context.at[:, 3:].set(100.0)        # keys under mask = False
  np.testing.assert_allclose(apply(masked), out, atol=1e-6)
  changed = context.at[:, 0].add(1.0)          # a real key
  assert np.abs(np.asarray(apply(changed) - out)).max() > 1e-3


@pytest.fixture(scope='module')
def text_unet():
  config = _config('tiny,text')
  model = model_lib.from_config(config)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,)),
                               conditioning.example(config))['params']
  return config, model, _perturbed(params)


def test_text_unet_output_depends_on_the_prompt_only(text_unet):
  config, model, params = text_unet
  assert {'text_encoder', 'pooled_proj', 'CrossAttentionBlock_0'} <= set(params)
  assert 'class_embed' not in params
  z = jax.random.normal(jax.random.key(3), (3, 28, 28, 1))
  f = jax.jit(lambda tokens: model.apply({'params': params}, z, jnp.full((3,), 1.0),
                                         {'text': tokens}))
  max_len = config.model.text_max_len
  out = f(tokenizer.encode(['a dark coat', 'a bag', ''], max_len))
  assert out.shape == z.shape
  other = f(tokenizer.encode(['a light coat', 'a bag', ''], max_len))
  assert np.abs(np.asarray(other[0] - out[0])).max() > 1e-3        # a changed prompt matters
  np.testing.assert_array_equal(other[1:], out[1:])                 # per example


@pytest.mark.parametrize('null', ['learned', 'zeros'])
def test_embedding_null_is_a_learned_vector_or_zeros(null):
  config = _config('tiny')
  config.condition.update(kinds=('embedding',), embedding_len=4, embedding_dim=3)
  config.model.update(cross_attention_resolutions=(14,), context_dim=8, embedding_null=null)
  model = model_lib.from_config(config)
  params = _perturbed(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                          jnp.zeros((1,)), conditioning.example(config))['params'])
  assert ('null_embedding' in params) == (null == 'learned')
  z = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  net = jax.jit(lambda values, mask: model.apply(
      {'params': params}, z, jnp.zeros((2,)), {'embedding': {'values': values, 'mask': mask}}))
  apply = lambda values, mask: np.asarray(net(values, mask))
  empty = np.zeros((2, 4), bool)
  garbage = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
  out = apply(np.zeros((2, 4, 3), np.float32), empty)
  np.testing.assert_allclose(apply(garbage, empty), out, atol=1e-6)   # ∅ ignores the values
  if null == 'zeros':   # ∅ is one zero vector in the embedding space
    one = np.zeros((2, 4), bool)
    one[:, 0] = True
    np.testing.assert_allclose(apply(np.zeros((2, 4, 3), np.float32), one), out, atol=1e-6)
  else:   # ∅ differs from every real sequence, the zero vector included
    one = np.zeros((2, 4), bool)
    one[:, 0] = True
    assert np.abs(apply(np.zeros((2, 4, 3), np.float32), one) - out).max() > 1e-4


# --- Guided sampling on condition pytrees ------------------------------------------------------


def test_text_path_makes_one_call_per_step_on_interleaved_pairs():
  calls = []

  def eps_fn(z, logsnr, cond):
    calls.append((z.shape[0], jax.tree.map(lambda a: a, cond)))
    return jnp.zeros_like(z)

  prompts, negative = ['a coat', 'a bag', 'a dark dress'], ['dark', '', 'light']
  cond = {'text': jnp.asarray(tokenizer.encode(prompts, 16))}
  null = {'text': jnp.asarray(tokenizer.encode(negative, 16))}
  jax.make_jaxpr(lambda w: sampling.sample(eps_fn, cond, w, jax.random.key(0), shape=(4,),
                                           null_label=null, steps=5))(jnp.ones(3))
  assert [rows for rows, _ in calls] == [6, 6]        # once in the loop body, once at the end
  seen = {'text': None}

  def record(z, logsnr, cond):
    seen['text'] = cond['text']
    return jnp.zeros_like(z)
  sampling.sample(record, cond, 1.0, jax.random.key(0), shape=(1,), null_label=null, steps=2)
  interleaved = [p for pair in zip(prompts, negative) for p in pair]
  assert tokenizer.decode(np.asarray(seen['text'])) == interleaved


@pytest.fixture(scope='module')
def text_pipes(text_unet):
  config, model, params = text_unet
  mk = lambda devices: inference.Pipeline(config, params, sharding.make_mesh({'data': -1}, devices),
                                          model=model)
  return mk(jax.devices()), mk(jax.devices()[:1])


def test_text_sampler_has_no_cross_device_collectives(text_pipes):
  pipe = text_pipes[0]
  assert pipe.mesh.size == 8
  put = lambda a: jax.device_put(a, sharding.batch_sharding(pipe.mesh))
  prompts = [f'a coat number {i}' for i in range(16)]
  cond, null = pipe.condition(prompts=prompts, negative_prompts='dark')
  lowered = pipe.sample_batch.lower(
      pipe.params, jax.tree.map(put, cond), guidance.Guidance(w=put(np.ones(16, np.float32))),
      put(np.arange(16)), jax.random.key(0), 4, 0.3, (np.float32(-20), np.float32(20)),
      np.float32(7), jax.tree.map(put, null), method='ancestral', clip=True, grid='cosine')
  hlo = lowered.compile().as_text()
  for op in ('all-reduce', 'all-gather', 'all-to-all', 'collective-permute', 'reduce-scatter'):
    assert op not in hlo, op
  assert 'fusion' in hlo


def test_negative_prompt_takes_the_place_of_the_null(text_pipes, text_unet):
  """Two DDIM steps (two guided evaluations) recomputed in float64 NumPy from separate
  network calls on (z, prompt) and (z, negative prompt)."""
  config, model, params = text_unet
  _, pipe = text_pipes
  prompts, negative, w, seed = ['a dark coat', 'a bag'], ['textured', 'wide'], 2.5, 3
  x = pipe.sample(prompts=prompts, negative_prompts=negative, w=w, steps=2, method='ddim',
                  clip=False, seed=seed, grid='logsnr', logsnr_range=(-6.0, 6.0))

  alpha_sigma = lambda lam: (np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam))))

  def net(z, lam, texts):                      # ε; from v = α·ε − σ·x: ε = σ·z + α·v
    out = np.asarray(model.apply(
        {'params': params}, jnp.asarray(z, jnp.float32), jnp.full((2,), lam, jnp.float32),
        {'text': tokenizer.encode(texts, config.model.text_max_len)}), np.float64)
    a, s = alpha_sigma(lam)
    return out if config.diffusion.prediction == 'eps' else s * z + a * out
  key = jax.random.key(seed)
  z = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), 0),
                                             (28, 28, 1)), np.float64) for i in range(2)])
  lam0, lam1 = -6.0, 6.0
  a0, s0 = alpha_sigma(lam0)
  eps = (1 + w) * net(z, lam0, prompts) - w * net(z, lam0, negative)
  x0 = (z - s0 * eps) / a0
  a1, s1 = alpha_sigma(lam1)
  z1 = a1 * x0 + s1 * eps                      # DDIM: keep ε̂, move x̂ to λ₁
  eps1 = (1 + w) * net(z1, lam1, prompts) - w * net(z1, lam1, negative)
  np.testing.assert_allclose(x, (z1 - s1 * eps1) / a1, rtol=1e-4, atol=1e-4)

  # The empty negative prompt is the null; no negative prompt at all is the same program's ∅.
  base = pipe.sample(prompts=prompts, w=w, steps=2, method='ddim', clip=False, seed=seed,
                     grid='logsnr', logsnr_range=(-6.0, 6.0))
  empty = pipe.sample(prompts=prompts, negative_prompts='', w=w, steps=2, method='ddim',
                      clip=False, seed=seed, grid='logsnr', logsnr_range=(-6.0, 6.0))
  np.testing.assert_array_equal(empty, base)
  assert np.abs(base - x).max() > 1e-3


def test_pipeline_says_which_condition_a_model_takes(text_pipes):
  pipe = text_pipes[1]
  with pytest.raises(ValueError, match='conditioned on prompts; it takes no labels'):
    pipe.sample([1, 2], prompts=['a', 'b'], w=1.0)
  with pytest.raises(ValueError, match='give prompts'):
    pipe.sample(w=1.0)
  with pytest.raises(ValueError, match='3 negative prompts for 2 samples'):
    pipe.sample(prompts=['a', 'b'], negative_prompts=['x', 'y', 'z'], w=1.0)


# --- Precomputed embeddings from an npz data set ----------------------------------------------


def test_precomputed_embeddings_are_read_per_example_and_train(tmp_path):
  n, length, dim = 40, 5, 6
  rng = np.random.default_rng(0)
  images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28, 1)
  embeddings = np.repeat(np.arange(n, dtype=np.float32), length * dim).reshape(n, length, dim)
  mask = rng.random((n, length)) < 0.7
  np.savez(tmp_path / 'train.npz', images=images, labels=np.arange(n) % 10,
           embeddings=embeddings, mask=mask)
  config = _config('tiny')
  config.data.update(name='npz', dir=str(tmp_path))
  config.condition.update(kinds=('embedding',), embedding_len=length, embedding_dim=dim)
  config.model.update(cross_attention_resolutions=(14,), context_dim=8)
  source = data.load_source(config.data, 'train')
  assert conditioning.annotator(config, source) is None   # checked, nothing to add
  batch = next(data.batches(source, seed=0, global_batch_size=16, num_threads=1))
  index = batch['image'][:, 0, 0, 0]                      # each image carries its row number
  np.testing.assert_array_equal(batch['embeddings'], embeddings[index])
  np.testing.assert_array_equal(batch['mask'], mask[index])

  mesh = sharding.make_mesh({'data': -1}, jax.devices()[:1])
  built = train.build(config, mesh)
  state, metrics = built.step(built.init(jax.random.key(0)), sharding.global_batch(batch, mesh))
  assert np.isfinite(float(metrics['loss'])) and int(state.step) == 1

  config.condition.embedding_dim = 7
  with pytest.raises(data.DataError, match='embedding_len and embedding_dim'):
    conditioning.annotator(config, source)
