"""Training curves of a run from its metrics.jsonl, at any time (also while it trains).

  python -m ijepa_jax.tools.plot --workdir=workdir/demo [--out=curves.png]

Six panels against the step: the loss (log scale), the learning rate, the weight decay,
the EMA momentum, the evaluation top-1 (each probe's periodic figure as a line, the final
ones as points, the random-init baseline dashed and the raw pixels dotted) and the
representation health (effective rank, feature std). Writes `<workdir>/pictures/curves.png`
unless `--out` is given; the trainer draws the same picture at the end of a run
(`pictures.curves_image`).
"""

import os

from absl import app, flags

from ijepa_jax import cli
from ijepa_jax.pictures import curves_image, save_png
from ijepa_jax.reporting import read_metrics

flags.DEFINE_string('workdir', None, 'the run\'s workdir (its metrics.jsonl is read)')
flags.DEFINE_string('out', '', 'the PNG to write (default: <workdir>/pictures/curves.png, or '
                    'curves.1.png, ... where that exists)')
flags.DEFINE_bool('overwrite', False, 'replace an existing picture')
flags.mark_flag_as_required('workdir')


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  try:
    rows = read_metrics(workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e), exitcode=2) from None
  out = flags.FLAGS.out or os.path.join(workdir, 'pictures', 'curves.png')
  out = cli.free_output(out, bool(flags.FLAGS.out), flags.FLAGS.overwrite)
  save_png(out, curves_image(rows))
  print(f'wrote {out} ({len(rows)} rows of metrics, last step {rows[-1]["step"] if rows else "-"})')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
