"""Compares the guidance sweeps of several runs (e.g. one per p_uncond) along their trade-offs.

  python launch/compare.py --evals=workdirs/fmnist_p0.1/eval,workdirs/fmnist_p0.2/eval,\
workdirs/fmnist_p0.5/eval --out=docs/results/p_uncond

Reads each folder's metrics.json (written by launch/evaluate.py), refuses sweeps measured
differently (extractor, samples per w, sampler, time grid, steps, seed), and writes OUT.png (all
runs on the trade-off axes) and OUT.md (FD-clf, score, class agreement, precision and recall per
w; the lowest FD-clf of each run; FD-clf at equal class agreement and at equal score, interpolated
along each curve), which it also prints. Paper §8: a worse p_uncond shows as a curve lying above
the others.
"""
import json
import os

from absl import flags
import numpy as np

from cfg_jax import cli
from cfg_jax.eval import metrics, report

_EVALS = flags.DEFINE_list('evals', None, 'Folders holding a metrics.json each.')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension (.png and .md).')
_LEVELS = flags.DEFINE_integer('levels', 4, 'Matched levels of class agreement and of score.')
flags.mark_flags_as_required(['evals', 'out'])

MUST_MATCH = ('num_samples_per_w', 'sampler', 'variance_v', 'grid', 'grid_logsnr', 'grid_rho',
              'steps', 'seed', 'clip')


def _load(folder):
  path = os.path.join(folder, 'metrics.json')
  try:
    with open(path, encoding='utf-8') as f:
      result = json.load(f)
  except (OSError, ValueError) as e:
    cli.fail(f'cannot read {path} ({e}); run launch/evaluate.py --out={folder} first')
  if not result.get('rows'):
    cli.fail(f'{path} has no rows yet; let launch/evaluate.py finish')
  return dict(result, folder=folder)


def _check_comparable(results, folders):
  first = results[0]
  for result, folder in zip(results[1:], folders[1:]):
    for key in MUST_MATCH:
      ours, theirs = (r['settings'].get(key, 'not recorded') for r in (result, first))
      if ours != theirs:   # sweeps from before session 14 did not record their time grid
        cli.fail(f'{folder} was measured with {key}={ours!r}, {folders[0]} with {theirs!r}; '
                 'rerun one so they match')
    if result['extractor']['description'] != first['extractor']['description']:
      cli.fail(f'{folder} and {folders[0]} used different feature extractors')


def _labels(results):
  """Names that tell the runs apart: p_uncond, else the checkpoint, else the sampling settings
  (e.g. the guidance rule and its parameters), else the folder."""
  candidates = (
      [f'p_uncond={r["settings"]["p_uncond"]:g}' for r in results],
      [f'{os.path.basename(r["settings"]["workdir"])}@{r["settings"]["checkpoint_step"]}'
       for r in results],
      [', '.join(f'{k}={_setting(v)}' for k, v in
                 sorted(r['settings'].get('sample_settings', {}).items())) or 'cfg'
       for r in results],
      [os.path.basename(os.path.normpath(r['folder'])) for r in results])
  return next((c for c in candidates if len(set(c)) == len(c)), candidates[-1])


def _setting(value):
  if isinstance(value, (list, tuple)):
    return ','.join(f'{v:g}' for v in value)
  return f'{value:g}' if isinstance(value, float) else str(value)


def _levels(runs, key, n):
  lo = max(min(r[key] for r in rows) for rows in runs.values())
  hi = min(max(r[key] for r in rows) for rows in runs.values())
  return [] if lo > hi else [float(x) for x in np.linspace(lo, hi, n)]


def _fmt(x):
  return '–' if x is None else f'{x:.2f}'


def _per_w_table(runs, header, cell):
  """A Markdown table with a row per w and a column per run; `cell(row)` formats one entry."""
  by_w = [{r['w']: r for r in rows} for rows in runs.values()]
  lines = ['| w | ' + ' | '.join(f'{label}: {header}' for label in runs) + ' |',
           '|---|' + '---|' * len(runs)]
  for w in sorted(set().union(*by_w)):
    lines.append(f'| {w:g} | ' + ' | '.join(cell(d[w]) if w in d else '–' for d in by_w) + ' |')
  return lines


def comparison(runs, results, num_levels):
  """The Markdown comparison of runs {label: rows}."""
  s, labels = results[0]['settings'], list(runs)
  lines = [f'Extractor {results[0]["extractor"]["description"]}; reference '
           f'{results[0]["reference"]}; {s["num_samples_per_w"]} samples per w; {s["sampler"]} '
           f'{s["steps"]} steps, seed {s["seed"]}. Checkpoints: ' + ', '.join(
               f'{label} step {r["settings"]["checkpoint_step"]}' for label, r in zip(labels, results)),
           '']
  lines += _per_w_table(runs, 'FD-clf / score / agreement', lambda r: (
      f'{r["fd_clf"]:.2f} ± {r["fd_clf_std"]:.2f} / {r["inception_score"]:.2f} / '
      f'{r["class_agreement"]:.3f}'))
  lines += [''] + _per_w_table(runs, 'precision / recall',
                               lambda r: f'{r["precision"]:.3f} / {r["recall"]:.3f}')
  lines += ['', '| | ' + ' | '.join(labels) + ' |', '|---|' + '---|' * len(labels)]
  best = [min(rows, key=lambda r: r['fd_clf']) for rows in runs.values()]
  lines.append('| lowest FD-clf (at w) | ' + ' | '.join(
      f'{b["fd_clf"]:.2f} (w={b["w"]:g})' for b in best) + ' |')
  for key, name in (('class_agreement', 'class agreement'), ('inception_score', 'score')):
    levels = _levels(runs, key, num_levels)
    fds = [metrics.matched(rows, key, levels) for rows in runs.values()]
    for i, level in enumerate(levels):
      lines.append(f'| FD-clf at {name} {level:.3f} | ' + ' | '.join(_fmt(f[i]) for f in fds) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  folders = _EVALS.value
  cli.require(len(folders) >= 2, '--evals needs at least two folders to compare')
  cli.require(_LEVELS.value >= 1, f'--levels must be >= 1, got {_LEVELS.value}')
  cli.setup_runtime(single_process=True)
  cli.quiet_logging()
  cli.check_writable(os.path.dirname(os.path.abspath(_OUT.value)), '--out')
  results = [_load(folder) for folder in folders]
  _check_comparable(results, folders)
  runs = dict(zip(_labels(results), (r['rows'] for r in results)))
  text = comparison(runs, results, _LEVELS.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + '.md', 'w', encoding='utf-8') as f:
    f.write(text + '\n')
  report.plot_tradeoff(runs, _OUT.value + '.png', results[0].get('real'),
                        title='guidance sweeps compared')
  print(text)
  print(f'wrote {_OUT.value}.md, {_OUT.value}.png')


if __name__ == '__main__':
  cli.run(main, 'nothing was written')
