"""launch/compare.py on hand-written sweeps: the report's numbers and its refusals."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(folder, p_uncond, fds, steps=12, sample_settings=None, grid='edm', rho=7.0):
  """A metrics.json as launch/evaluate.py writes it, with class agreement 0.4, 0.6, 0.8."""
  rows = [{'w': w, 'fd_clf': fd, 'fd_clf_std': 0.1, 'inception_score': 4.0 + w,
           'class_agreement': a, 'precision': 0.7, 'recall': 0.7, 'num_samples': 2000,
           'extractor': 'toy'} for w, fd, a in zip((0.0, 1.0, 4.0), fds, (0.4, 0.6, 0.8))]
  settings = {'workdir': f'/runs/p{p_uncond}', 'checkpoint_step': 2000, 'p_uncond': p_uncond,
              'num_samples_per_w': 2000, 'sampler': 'dpmpp2m', 'variance_v': None, 'steps': steps,
              'seed': 0, 'clip': True, 'sample_settings': sample_settings or {}}
  if grid:   # launch/evaluate.py records its time grid since session 14
    settings.update(grid=grid, grid_logsnr=[-8.764, 12.43], grid_rho=rho)
  os.makedirs(folder)
  with open(os.path.join(folder, 'metrics.json'), 'w', encoding='utf-8') as f:
    json.dump({'settings': settings, 'extractor': {'description': 'toy'}, 'reference': 'toy ref',
               'real': dict(rows[0], fd_clf=0.1, class_agreement=0.93), 'rows': rows}, f)
  return str(folder)


def _compare(*folders, out):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'compare.py'),
                         f'--evals={",".join(folders)}', f'--out={out}'],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_report_interpolates_each_curve_at_equal_class_agreement(tmp_path):
  a = _sweep(tmp_path / 'a', 0.1, (10.0, 8.0, 9.0))
  b = _sweep(tmp_path / 'b', 0.5, (12.0, 11.0, 12.0))
  result = _compare(a, b, out=tmp_path / 'cmp')
  assert result.returncode == 0, result.stderr
  text = (tmp_path / 'cmp.md').read_text()
  assert '| lowest FD-clf (at w) | 8.00 (w=1) | 11.00 (w=1) |' in text
  # Agreement 0.4 → 0.8 in 4 levels: 0.533 lies 2/3 of the way from 0.4 to 0.6.
  assert '| FD-clf at class agreement 0.533 | 8.67 | 11.33 |' in text
  assert (tmp_path / 'cmp.png').stat().st_size > 10_000


def test_refuses_sweeps_measured_differently(tmp_path):
  a = _sweep(tmp_path / 'a', 0.1, (10.0, 8.0, 9.0))
  b = _sweep(tmp_path / 'b', 0.5, (12.0, 11.0, 12.0), steps=24)
  result = _compare(a, b, out=tmp_path / 'cmp')
  assert result.returncode == 2
  assert 'steps=24' in result.stderr and 'steps' in result.stderr.strip().splitlines()[-1]
  assert not (tmp_path / 'cmp.md').exists()
  c = _sweep(tmp_path / 'c', 0.5, (12.0, 11.0, 12.0), grid='cosine')
  result = _compare(a, c, out=tmp_path / 'cmp')
  assert result.returncode == 2 and "grid='cosine'" in result.stderr
  d = _sweep(tmp_path / 'd', 0.5, (12.0, 11.0, 12.0), grid=None)   # written before grids were
  result = _compare(a, d, out=tmp_path / 'cmp')
  assert result.returncode == 2 and "grid='not recorded'" in result.stderr
  e = _sweep(tmp_path / 'e', 0.5, (12.0, 11.0, 12.0), rho=5.0)
  result = _compare(a, e, out=tmp_path / 'cmp')
  assert result.returncode == 2 and 'grid_rho=5.0' in result.stderr


def test_sweeps_of_one_checkpoint_are_named_by_their_guidance_settings(tmp_path):
  a = _sweep(tmp_path / 'a', 0.1, (10.0, 8.0, 9.0))
  b = _sweep(tmp_path / 'b', 0.1, (12.0, 11.0, 12.0),
             sample_settings={'rule': 'apg', 'apg_norm': 5.0})
  c = _sweep(tmp_path / 'c', 0.1, (11.0, 9.0, 10.0), sample_settings={'interval_sigma': [0.2, 4]})
  result = _compare(a, b, c, out=tmp_path / 'cmp')
  assert result.returncode == 0, result.stderr
  text = (tmp_path / 'cmp.md').read_text()
  assert '| lowest FD-clf (at w) | 8.00 (w=1) | 11.00 (w=1) | 9.00 (w=1) |' in text
  assert '| | cfg | apg_norm=5, rule=apg | interval_sigma=0.2,4 |' in text
