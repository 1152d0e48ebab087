"""Choosing w for a checkpoint from a guidance sweep, and keeping the choice beside it.

The paper leaves w to manual tuning. A sweep (`cfg_jax.eval.evaluate_workdir`) scores each setting; `choose`
picks the one with the lowest FD-clf, or, given a bound, the highest class agreement among
those whose FD-clf stays within it. `save_choice` writes it to WORKDIR/guidance.json, which
`cfg_jax.load(workdir)` reads, so `pipe.sample(labels)` and `launch/sample.py` use it when no w
is given.
"""
import json
import math
import os

CHOICE_FILE = 'guidance.json'


def choose(rows, *, max_fd=None):
  """The row to use: lowest FD-clf, or (max_fd given) the highest class agreement with
  FD-clf <= max_fd. Raises ValueError when no row qualifies."""
  rows = [r for r in rows if math.isfinite(r['fd_clf'])]
  if max_fd is None:
    if not rows:
      raise ValueError('no finite FD-clf in the sweep to choose from')
    return min(rows, key=lambda r: (r['fd_clf'], abs(r['w'])))
  within = [r for r in rows if r['fd_clf'] <= max_fd]
  if not within:
    best = min((r['fd_clf'] for r in rows), default=float('nan'))
    raise ValueError(f'no setting reaches FD-clf <= {max_fd} (the lowest is {best:.3f}); raise '
                     f'the bound or sweep other settings')
  return max(within, key=lambda r: (r['class_agreement'], -r['fd_clf']))


def save_choice(workdir, row, *, step, settings=None, criterion):
  """Writes the chosen w (and guidance settings) for checkpoint `step` beside the checkpoints."""
  choice = {'w': float(row['w']), 'settings': dict(settings or {}), 'step': int(step),
            'criterion': criterion,
            'metrics': {k: row[k] for k in ('fd_clf', 'class_agreement', 'num_samples',
                                            'extractor') if k in row}}
  path = os.path.join(workdir, CHOICE_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(choice, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)
  return path


def load_choice(workdir):
  """The saved choice (a dict with 'w', 'settings', 'step', ...), or None."""
  path = os.path.join(str(workdir), CHOICE_FILE)
  if '://' in path or not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
