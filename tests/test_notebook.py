"""notebooks/evaluate_checkpoint.ipynb runs headlessly against a tiny checkpoint it trains here."""
import os

import nbclient
import nbformat

from conftest import ROOT, tiny_config
from test_classifier import tiny_classifier_dir
from cfg_jax import train

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'evaluate_checkpoint.ipynb')


def test_evaluate_notebook_executes(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'tiny')
  train.train(tiny_config(), workdir)
  monkeypatch.setenv('CFG_JAX_WORKDIR', workdir)
  monkeypatch.setenv('CFG_JAX_CLASSIFIER_DIR', tiny_classifier_dir())
  monkeypatch.setenv('CFG_JAX_NUM_SAMPLES', '40')
  monkeypatch.setenv('CFG_JAX_GUIDANCE', '0,1')
  monkeypatch.setenv('CFG_JAX_STEPS', '4')
  monkeypatch.setenv('CFG_JAX_EVAL_OUT', str(tmp_path / 'eval'))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(o.get('text', '') + str(o.get('data', {}).get('text/markdown', ''))
                 for o in outputs)
  assert '| 0 |' in text and '| 1 |' in text and 'real train' in text
  assert any('image/png' in o.get('data', {}) for o in outputs)
  assert os.path.exists(tmp_path / 'eval' / 'grid.png')
  assert os.path.exists(tmp_path / 'eval' / 'samples_w1.npz')
