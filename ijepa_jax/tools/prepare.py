"""A smaller copy of an image folder, made once, so that training decodes fewer pixels:

  python -m ijepa_jax.tools.prepare --src=<image folder> --dst=<new folder> \
      [--short_side=320] [--max_side=0] [--quality=90] [--threads=<cores>]

Every image under --src (at any depth, .jpg/.jpeg/.png, so the whole
`<split>/<class>/<name>` tree) is written to the same path under --dst as a JPEG,
shrunk (never enlarged) so that its short side is at most --short_side and its
long side at most --max_side (0: no limit on that side). A JPEG already within
the limits is copied byte for byte; the others are decoded (at a reduced JPEG
scale where that still leaves twice the pixels needed), resized with Pillow's
bicubic filter and encoded at --quality. A non-JPEG keeps its name with `.jpg`
for its extension.

Each file is written under a temporary name and renamed once complete, so a run
that was stopped can be started again: files already in --dst are skipped. An
image that cannot be decoded is named on stderr and left out; the summary counts
it. Exit 2 with one line for a missing --src or a --dst inside --src.
"""

import concurrent.futures
import os
import shutil
import sys
import time

from absl import app, flags
from PIL import Image

from ijepa_jax import cli
from ijepa_jax.data import CorruptImageError, DataMissingError, ImageFiles, load_pixels, open_file

FLAGS = flags.FLAGS
flags.DEFINE_string('src', None, 'The image folder to copy (e.g. the root holding train/ and '
                    'validation/).')
flags.DEFINE_string('dst', None, 'Where to write the copy (created; files already there are kept).')
flags.DEFINE_integer('short_side', 320,
                     'Shrink so that the short side is at most this (0: no limit).')
flags.DEFINE_integer('max_side', 0, 'Shrink so that the long side is at most this (0: no limit).')
flags.DEFINE_integer('quality', 90, 'JPEG quality of the images that are re-encoded.')
flags.DEFINE_integer('threads', 0, 'Worker threads (0: one per CPU core).')
flags.mark_flags_as_required(['src', 'dst'])

JPEG_NAMES = ('.jpg', '.jpeg')


def target_size(width: int, height: int, short_side: int, max_side: int) -> tuple[int, int]:
  """(w, h) within both limits (0: none), aspect kept, never larger than (width, height)."""
  r = min(1.0, short_side / min(width, height) if short_side else 1.0,
          max_side / max(width, height) if max_side else 1.0)
  return max(1, round(width * r)), max(1, round(height * r))


def out_name(rel: str) -> str:
  """A source's path in the copy: a JPEG name is kept, any other gets `.jpg`."""
  stem, ext = os.path.splitext(rel)
  return rel if ext.lower() in JPEG_NAMES else stem + '.jpg'


def prepare_one(src: str, dst: str, short_side: int, max_side: int, quality: int) -> str:
  """Write the copy of image `src` at `dst` (via `dst`.part); 'resized' or 'copied'.
  CorruptImageError if `src` does not decode."""
  img = open_file(src)
  size = target_size(img.width, img.height, short_side, max_side)
  part = dst + '.part'
  if size == img.size and img.format == 'JPEG':
    load_pixels(img, src)  # a truncated JPEG is not copied
    shutil.copyfile(src, part)
    how = 'copied'
  else:
    # decode at a reduced JPEG scale only down to twice the target (as Pillow's thumbnail)
    drafted = img.draft(None, (2 * size[0], 2 * size[1]))
    box = drafted[1] if drafted else None
    img = load_pixels(img, src)
    if img.mode not in ('RGB', 'L'):
      img = img.convert('RGB')
    img.resize(size, Image.Resampling.BICUBIC, box=box).save(part, format='JPEG', quality=quality)
    how = 'resized'
  os.replace(part, dst)
  return how


def prepare_folder(src: str, dst: str, short_side: int = 320, max_side: int = 0,
                   quality: int = 90, threads: int = 0, report=print) -> dict:
  """Copy the image folder `src` to `dst` shrunk (module docstring). Returns the counts
  {'resized', 'copied', 'done_before', 'corrupt', 'seconds'}; corrupt images are reported
  one line each. DataMissingError for a missing or empty `src`, ValueError for `dst` inside
  it or two sources with one name in the copy."""
  src, dst = os.path.abspath(src), os.path.abspath(dst)
  if os.path.commonpath([src, dst]) == src:
    raise ValueError(f'--dst={dst!r} is inside --src={src!r}: the copy would be copied again')
  files = ImageFiles(src, '--src')
  rels = [os.path.relpath(p, src) for p in files.paths]
  outs = [out_name(r) for r in rels]
  if len(set(outs)) < len(outs):
    seen: dict[str, str] = {}
    for r, o in zip(rels, outs):
      if o in seen:
        raise ValueError(f'{seen[o]} and {r} would both be written to {o}')
      seen[o] = r
  for d in sorted({os.path.dirname(o) for o in outs}):
    os.makedirs(os.path.join(dst, d), exist_ok=True)
  todo = [(os.path.join(src, r), os.path.join(dst, o)) for r, o in zip(rels, outs)
          if not os.path.exists(os.path.join(dst, o))]
  counts = {'resized': 0, 'copied': 0, 'done_before': len(rels) - len(todo), 'corrupt': 0}

  def one(job):
    try:
      return prepare_one(*job, short_side, max_side, quality)
    except CorruptImageError as e:
      return e

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
    for result in pool.map(one, todo):
      if isinstance(result, CorruptImageError):
        counts['corrupt'] += 1
        report(f'skipped a corrupt image: {result}')
      else:
        counts[result] += 1
  counts['seconds'] = time.perf_counter() - t0
  return counts


def main(argv):
  del argv
  limits = (FLAGS.short_side, FLAGS.max_side)
  if min(limits) < 0 or max(limits) == 0 or not 1 <= FLAGS.quality <= 100:
    cli.fail('--short_side and --max_side must be >= 0 and not both 0; --quality in 1..100')
  try:
    c = prepare_folder(FLAGS.src, FLAGS.dst, FLAGS.short_side, FLAGS.max_side, FLAGS.quality,
                       FLAGS.threads, report=lambda line: print(line, file=sys.stderr))
  except (DataMissingError, ValueError) as e:
    cli.fail(str(e))
  written = c['resized'] + c['copied']
  print(f'{FLAGS.dst}: wrote {written:,} images ({c["resized"]:,} resized, {c["copied"]:,} '
        f'copied) in {c["seconds"]:.1f}s ({written / max(c["seconds"], 1e-9):,.0f}/s), '
        f'{c["done_before"]:,} already there, {c["corrupt"]:,} corrupt (named above)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
