"""The launchers on a text-conditioned workdir: launch/sample.py with prompts and a negative
prompt writes what one in-process call draws; mistakes (and launchers that take class-label
models only) cost one line and exit status 2."""
import json
import os

import numpy as np
import pytest

import cfg_jax
import launcher
from cfg_jax import train
from test_text_conditioning import _config


@pytest.fixture(scope='module')
def text_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('text') / 'run')
  config = _config('tiny,text')
  config.train.update(num_steps=2, checkpoint_every=2)
  train.train(config, workdir)
  return workdir


def test_sample_launcher_draws_prompts_with_a_negative_prompt(text_workdir, tmp_path):
  out = str(tmp_path / 'samples')
  prompts = ['a dark ankle boot', 'this coat is wide']
  proc = launcher.run_tool('sample.py', f'--workdir={text_workdir}', '--guidance=0,2',
                           '--per_class=2', *[f'--prompt={p}' for p in prompts],
                           '--negative_prompt=textured', '--cpu_devices=8', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '8 samples (2 w x 2 prompts x 2)' in proc.stdout
  saved = np.load(os.path.join(out, 'samples.npz'))
  want = [p for p in prompts for _ in range(2)] * 2
  assert saved['prompts'].tolist() == want
  pipe = cfg_jax.load(text_workdir)
  x = pipe.sample(prompts=want, w=saved['w'], negative_prompts='textured')
  np.testing.assert_allclose(saved['images'], x, atol=1e-5)
  assert os.path.getsize(os.path.join(out, 'grid.png')) > 1000


def test_evaluate_text_scores_prompts_and_the_negative_prompt(text_workdir, tmp_path):
  """launch/evaluate_text.py end to end (tiny model, tiny classifier): one row per w with class,
  per-class and per-attribute agreement, the negative-prompt rows, and the templates it used."""
  from cfg_jax import captions   # pylint: disable=g-import-not-at-top
  from test_classifier import tiny_classifier_dir   # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'eval')
  proc = launcher.run_tool('evaluate_text.py', f'--workdir={text_workdir}', '--guidance=0,2',
                           '--num_samples=20', '--steps=2', '--grid=logsnr', '--templates=train',
                           '--negative=dark', '--negative_guidance=1', '--cpu_devices=2',
                           f'--classifier_dir={tiny_classifier_dir()}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as f:
    result = json.load(f)
  assert [r['w'] for r in result['rows']] == [0.0, 2.0]
  for row in result['rows']:
    assert 0 <= row['class_agreement'] <= 1 and row['num_samples'] == 20
    assert len(row['per_class_agreement']) == 10
    # the mean of the per-class shares is the overall share: 2 prompts of each class
    assert np.isclose(np.mean(row['per_class_agreement']), row['class_agreement'])
    assert all(f'{a}_agreement' in row for a in captions.ATTRIBUTES)
  assert result['settings']['templates'] == list(captions.TRAIN_TEMPLATES)
  settings = result['settings']   # the sampler it ran: the flags, else the config's
  assert (settings['sampler'], settings['steps'], settings['grid']) == ('ancestral', 2, 'logsnr')
  assert settings['variance_v'] == 0.3 and settings['grid_rho'] is None
  assert not any(p.startswith(('a grey shot of', 'this ')) for p in result['example_prompts'])
  (negative,) = result['negative_prompt']
  assert negative['w'] == 1.0 and negative['attribute'] == 'brightness'
  assert 0 <= negative['without'] <= 1 and 0 <= negative['with'] <= 1
  assert '| w | class agreement |' in proc.stdout


@pytest.mark.parametrize('tool,flags,message', [
    ('sample.py', ['--prompt=' + 'x' * 70], "has 70 bytes; this model reads at most 63"),
    ('sample.py', ['--prompt='], '--prompt must not be empty'),
    ('evaluate_text.py', ['--negative=purple'], "--negative='purple' names no attribute"),
    ('evaluate.py', [], 'is conditioned on text, not class labels alone; evaluate text models '
                        'with launch/evaluate_text.py'),
])
def test_text_launcher_mistakes_cost_one_line(text_workdir, tool, flags, message):
  proc = launcher.run_tool(tool, f'--workdir={text_workdir}', *flags, '--cpu_devices=1')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and 'Traceback' not in proc.stderr


def test_distillation_refuses_a_text_teacher(text_workdir, tmp_path):
  proc = launcher.run_tool('distill.py', f'--teacher={text_workdir}',
                           f'--workdir={tmp_path / "student"}', '--cpu_devices=1')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert (f'the teacher {text_workdir} is conditioned on text; distillation takes '
          'class-conditioned teachers only') in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_encode_captions_writes_an_npz_data_set_the_trainer_reads(tmp_path):
  encoder = tmp_path / 'toy_encoder.py'
  encoder.write_text('import numpy as np\n\n'
                     'def encode(texts):\n'
                     '  """(N, 4, 3): the caption\'s length; the mask covers len % 4 + 1."""\n'
                     '  n = np.array([len(t) for t in texts], np.float32)\n'
                     '  values = np.broadcast_to(n[:, None, None], (len(texts), 4, 3))\n'
                     '  return values, np.arange(4)[None] <= (n[:, None] % 4)\n')
  out = str(tmp_path / 'emb')
  proc = launcher.run_tool('encode_captions.py', f'--encoder={encoder}:encode', f'--out={out}',
                           '--max_examples=40', '--batch_size=16', '--cpu_devices=1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '--config.condition.embedding_len=4 --config.condition.embedding_dim=3' in proc.stdout
  from cfg_jax import data   # pylint: disable=g-import-not-at-top
  source = data.load_npz('train', out)
  texts = open(os.path.join(out, 'train_captions.txt'), encoding='utf-8').read().splitlines()
  assert len(source) == len(texts) == 40
  lengths = np.array([len(t) for t in texts], np.float32)
  np.testing.assert_array_equal(source.columns['embeddings'][:, 0, 0], lengths)
  np.testing.assert_array_equal(source.columns['mask'].sum(1), lengths % 4 + 1)
  np.testing.assert_array_equal(source.images, data.load_fashion_mnist('train').images[:40])
  proc = launcher.run_tool('encode_captions.py', '--encoder=nowhere.py:f', f'--out={out}')
  assert proc.returncode == 2 and 'cannot load nowhere.py' in proc.stderr


def test_prompts_notebook_draws_both_grids_and_counts_the_negative_word(text_workdir, tmp_path,
                                                                        monkeypatch):
  """notebooks/sample_prompts.ipynb, headless on the tiny text checkpoint: both grids (without and
  with the negative prompt) are shown, and its w = 0 images are the same with and without it
  (the guided rule reduces to ε(z, c) there), as the table's w = 0 row must then say."""
  nbclient, nbformat = pytest.importorskip('nbclient'), pytest.importorskip('nbformat')
  out = str(tmp_path / 'nb')
  for name, value in (('WORKDIR', text_workdir), ('PROMPTS', 'a dark ankle boot|a bag'),
                      ('NEGATIVE_PROMPT', 'dark'), ('GUIDANCE', '0,3'), ('PER_PROMPT', '2'),
                      ('STEPS', '3'), ('OUT', out)):
    monkeypatch.setenv(f'CFG_JAX_{name}', value)
  nb = nbformat.read(os.path.join(launcher.ROOT, 'notebooks', 'sample_prompts.ipynb'), as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  assert sum('image/png' in o.get('data', {}) for o in outputs) == 2
  assert {'grid.png', 'grid_negative_dark.png'} <= set(os.listdir(out))
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'share of samples measured "dark" (brightness), 4 per w' in text
  row0 = next(line for line in text.splitlines() if line.startswith('| 0 |'))
  without, with_negative = row0.strip('|').split('|')[1:]
  assert without.strip() == with_negative.strip()
