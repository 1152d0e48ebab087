"""What a sweep leaves for people: the Markdown table, metrics.csv, metrics.json, the trade-off
plot. Reads rows as `cfg_jax.eval.sweep` and `metrics.real_floor` make them; computes nothing."""
import csv
import json
import os

ROW_KEYS = ('w', 'fd_clf', 'fd_clf_std', 'inception_score', 'inception_score_std', 'class_agreement',
            'precision', 'recall', 'num_samples', 'extractor')


def format_table(rows, real=None, floatfmt='.3f'):
  """A Markdown table of sweep rows (and the real-data row first, if given)."""
  head = ('w', 'FD-clf ↓ (± bootstrap std)', 'score ↑ (± split std)', 'class agreement ↑', 'precision ↑', 'recall ↑', 'samples')
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

  def line(label, r):
    vals = [format(r[key], floatfmt) for key in ('fd_clf', 'inception_score', 'class_agreement',
                                                   'precision', 'recall')]
    if r.get('fd_clf_std') is not None:
      vals[0] += f' ± {r["fd_clf_std"]:.2f}'
    vals[1] += f' ± {r["inception_score_std"]:.2f}'
    return '| ' + ' | '.join([label] + vals + [str(r['num_samples'])]) + ' |'

  if real is not None:
    lines.append(line('real train', real))
  lines += [line(f'{r["w"]:g}', r) for r in rows]
  return '\n'.join(lines)


def format_differences(differences):
  """One line per `metrics.fd_differences` entry: the change of FD-clf and its paired error."""
  return '\n'.join(f'FD-clf(w={d["w_to"]:g}) - FD-clf(w={d["w_from"]:g}) = {d["difference"]:+.3f} '
                   f'(paired bootstrap std {d["paired_std"]:.3f})' for d in differences)


def write_csv(path, rows, real=None):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(ROW_KEYS)
    if real is not None:
      writer.writerow(['real'] + [real[key] for key in ROW_KEYS[1:]])
    for r in rows:
      writer.writerow([r[key] for key in ROW_KEYS])


def write_json(path, payload):
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)


def plot_tradeoff(rows, path=None, real=None, title=None):
  """FD-clf against the score, class agreement and precision/recall; one labelled point per w.

  `rows` is one sweep's rows, or {label: rows} to draw several sweeps (e.g. one per p_uncond)
  on the same axes. Saves a PNG to `path` if given; returns the matplotlib figure.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  if path:
    matplotlib.use('Agg', force=False)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = rows if isinstance(rows, dict) else {None: rows}
  panels = [('inception_score', 'score (classifier softmax) ↑', 'fd_clf', 'FD-clf ↓'),
            ('class_agreement', 'class agreement ↑', 'fd_clf', 'FD-clf ↓'),
            ('recall', 'recall ↑', 'precision', 'precision ↑')]
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  for ax, (xkey, xlabel, ykey, ylabel) in zip(axes, panels):
    for label, run in runs.items():
      run = sorted(run, key=lambda r: r['w'])
      xs, ys = [r[xkey] for r in run], [r[ykey] for r in run]
      ax.plot(xs, ys, 'o-', label=label)
      for x, y, r in zip(xs, ys, run):
        ax.annotate(f'w={r["w"]:g}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7)
    if real is not None:
      ax.plot([real[xkey]], [real[ykey]], '*', color='tab:red', markersize=12,
              label='real train data')
    if real is not None or len(runs) > 1:
      ax.legend(fontsize=8, loc='best')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  first = next((run for run in runs.values() if run), None)
  if first:
    n, name = first[0]['num_samples'], first[0]['extractor']
    fig.suptitle((title + '\n' if title else '') + f'{n} samples per w; features: {name}',
                 fontsize=9)
  fig.tight_layout()
  if path:
    fig.savefig(path, dpi=120)
  return fig
