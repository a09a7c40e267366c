"""Training curves of a run from its metrics.jsonl, at any time (also while it trains).

  python -m ijepa_jax.plot --workdir=workdir/demo [--out=curves.png]

Six panels against the step: the loss (log scale), the learning rate, the weight decay,
the EMA momentum, the evaluation top-1 (periodic k-NN and linear probe as lines, the final
ones as points, the random-init baseline dashed) and the representation health (effective
rank, feature std). Writes `<workdir>/pictures/curves.png` unless `--out` is given; the
trainer draws the same picture at the end of a run.
"""

import os
from typing import Sequence

import numpy as np
from absl import app, flags
from ijepa_jax import cli

from ijepa_jax.reporting import read_metrics

FIGSIZE = (15, 8)  # inches, at DPI: a 1500 x 800 picture
DPI = 100


def _series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r['step'], r[key]) for r in rows if key in r and r[key] is not None]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pts)
  return np.asarray(steps, float), np.asarray(values, float)


def curves_image(rows: Sequence[dict]) -> np.ndarray:
  """The six panels as an RGB array [800, 1500, 3] uint8."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  fig = Figure(figsize=FIGSIZE, dpi=DPI)
  canvas = FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
  axes = fig.subplots(2, 3).ravel()
  panels = [('loss', 'loss', True), ('lr', 'learning rate', False),
            ('weight_decay', 'weight decay', False), ('momentum', 'EMA momentum', False)]
  for ax, (key, title, logy) in zip(axes, panels):
    x, y = _series(rows, key)
    ax.plot(x, y, color='tab:blue')
    if logy and len(y) and (y > 0).all():
      ax.set_yscale('log')
    ax.set_title(title)

  ax = axes[4]
  for key, label, colour in (('linear_top1', 'linear probe', 'tab:blue'),
                             ('knn_top1', 'k-NN', 'tab:orange')):
    x, y = _series(rows, f'eval_{key}')
    if len(x):
      ax.plot(x, 100 * y, marker='.', color=colour, label=f'{label} (periodic)')
    x, y = _series(rows, f'final_{key}')
    if len(x):
      ax.scatter(x, 100 * y, marker='*', s=120, color=colour, label=f'{label} (final)', zorder=3)
    x, y = _series(rows, f'baseline_{key}')
    if len(x):
      ax.axhline(100 * y[-1], ls='--', color=colour, label=f'{label}, random init')
  ax.set_title('evaluation top-1 (%)')
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no evaluation yet (evals.every, evals.at_end)', ha='center',
            transform=ax.transAxes)

  ax = axes[5]
  x, y = _series(rows, 'health_effective_rank')
  ax.plot(x, y, color='tab:green')
  ax.set_title('representation health')
  ax.set_ylabel('effective rank (RankMe)', color='tab:green')
  x, y = _series(rows, 'health_feature_std_mean')
  if len(x):
    twin = ax.twinx()
    twin.plot(x, y, color='tab:red')
    twin.set_ylabel('mean per-dimension feature std', color='tab:red')
  else:
    ax.text(0.5, 0.5, 'no health checks yet (monitor.health_every)', ha='center',
            transform=ax.transAxes)
  for ax in axes:
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def main(argv):
  del argv
  from ijepa_jax.pictures import save_png  # pylint: disable=import-outside-toplevel
  workdir = flags.FLAGS.workdir
  try:
    rows = read_metrics(workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  out = flags.FLAGS.out or os.path.join(workdir, 'pictures', 'curves.png')
  save_png(out, curves_image(rows))
  print(f'wrote {out} ({len(rows)} rows of metrics, last step {rows[-1]["step"] if rows else "-"})')


if __name__ == '__main__':  # flags only for the command: the trainer imports this module
  flags.DEFINE_string('workdir', None, 'the run\'s workdir (its metrics.jsonl is read)')
  flags.DEFINE_string('out', '', 'the PNG to write (default: <workdir>/pictures/curves.png)')
  flags.mark_flag_as_required('workdir')
  app.run(main, flags_parser=cli.parse_flags)
