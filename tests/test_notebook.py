"""notebooks/evaluate_checkpoint.ipynb and launch/evaluate.py are both `evaluate_workdir`, run here
against a tiny checkpoint and a tiny classifier."""
import json
import os

import nbclient
import nbformat

import launcher
from conftest import ROOT, tiny_config
from test_classifier import tiny_classifier_dir
from cfg_jax import train
from cfg_jax.eval import report

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'evaluate_checkpoint.ipynb')


def test_notebook_and_launcher_are_one_evaluation(tmp_path, monkeypatch):
  """The notebook runs a sweep; the launcher, asked the same into the same folder, finds every
  sample already drawn (the same request, by the samples' tag) and reports the same numbers."""
  workdir, clf, out = str(tmp_path / 'tiny'), tiny_classifier_dir(), str(tmp_path / 'eval')
  train.train(tiny_config(), workdir)
  for name, value in (('WORKDIR', workdir), ('CLASSIFIER_DIR', clf), ('NUM_SAMPLES', '40'),
                      ('GUIDANCE', '0,1'), ('STEPS', '4'), ('EVAL_OUT', out)):
    monkeypatch.setenv(f'CFG_JAX_{name}', value)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(o.get('text', '') + str(o.get('data', {}).get('text/markdown', ''))
                 for o in outputs)
  assert '| 0 |' in text and '| 1 |' in text and 'real train' in text
  assert sum('image/png' in o.get('data', {}) for o in outputs) == 2   # grid and trade-off
  assert os.path.exists(os.path.join(out, 'samples_w1.npz'))
  assert os.path.exists(os.path.join(clf, 'features_train.npz'))   # the floor's cached features
  notebook = _metrics(out)

  proc = launcher.run_tool('evaluate.py', f'--workdir={workdir}', f'--classifier_dir={clf}',
                           '--num_samples=40', '--guidance=0,1', '--steps=4', '--grid_per_class=4',
                           '--cpu_devices=8', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  cli = _metrics(out)
  assert [r['reused_samples'] for r in cli['rows']] == [True, True]
  drop_hw = lambda settings: {k: v for k, v in settings.items() if k != 'hardware'}
  drop = lambda row: {k: v for k, v in row.items() if k not in ('sample_seconds', 'reused_samples')}
  assert [drop(r) for r in cli['rows']] == [drop(r) for r in notebook['rows']]
  assert cli['real'] == notebook['real']
  assert drop_hw(cli['settings']) == drop_hw(notebook['settings'])   # devices: 8 vs the cores
  assert (cli['settings']['grid'], cli['settings']['grid_logsnr']) == ('cosine', [-20.0, 20.0])
  assert report.format_table(cli['rows'], cli['real']) in proc.stdout
  assert f'wrote {out}/metrics.json, metrics.csv, tradeoff.png, grid.png' in proc.stdout
  assert {'metrics.csv', 'tradeoff.png', 'grid.png'} <= set(os.listdir(out))


def _metrics(out):
  with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as f:
    return json.load(f)
