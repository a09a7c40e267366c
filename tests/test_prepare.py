"""The prepare tool: a shrunk copy of an image folder, same layout, corrupt images named and
left out, resumable, one-line errors."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ijepa_jax.data import FolderSource
from ijepa_jax.tools.prepare import prepare_folder, target_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(path, width, height, fmt='JPEG'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), np.uint8)
  Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
  """train/{a,b} and validation/a: two JPEGs to shrink (one portrait, one .JPEG), a JPEG
  already small, a PNG, and two corrupt files (garbage, a truncated JPEG)."""
  src = tmp_path / 'src'
  _save(src / 'train' / 'a' / 'wide.jpg', 600, 400)
  _save(src / 'train' / 'a' / 'small.jpg', 200, 100)
  _save(src / 'train' / 'b' / 'square.png', 500, 500, 'PNG')
  _save(src / 'validation' / 'a' / 'tall.JPEG', 400, 600)
  (src / 'train' / 'b' / 'garbage.jpg').write_bytes(b'not an image')
  whole = io.BytesIO()
  Image.new('RGB', (300, 300), 'red').save(whole, format='JPEG')
  (src / 'train' / 'b' / 'cut.jpg').write_bytes(whole.getvalue()[:400])
  return src


def test_target_size_keeps_aspect_within_both_limits():
  assert target_size(600, 400, 128, 0) == (192, 128)
  assert target_size(600, 400, 0, 300) == (300, 200)
  assert target_size(600, 400, 128, 150) == (150, 100)  # the stricter limit wins
  assert target_size(100, 50, 128, 0) == (100, 50)  # never enlarged


def test_copy_has_the_layout_sizes_and_leaves_out_corrupt_images(folder, tmp_path):
  dst = tmp_path / 'dst'
  lines = []
  counts = prepare_folder(str(folder), str(dst), short_side=128, threads=2, report=lines.append)
  assert {k: counts[k] for k in ('resized', 'copied', 'done_before', 'corrupt')} == {
      'resized': 3, 'copied': 1, 'done_before': 0, 'corrupt': 2}
  assert sorted(line.split(': ')[1] for line in lines) == [
      f'{folder}/train/b/cut.jpg', f'{folder}/train/b/garbage.jpg']
  assert all(line.startswith('skipped a corrupt image: ') for line in lines)
  files = sorted(str(p.relative_to(dst)) for p in dst.rglob('*') if p.is_file())
  assert files == ['train/a/small.jpg', 'train/a/wide.jpg', 'train/b/square.jpg',
                   'validation/a/tall.JPEG']  # the PNG became a JPEG; no temporary files
  sizes = {f: Image.open(dst / f).size for f in files}
  assert sizes == {'train/a/small.jpg': (200, 100), 'train/a/wide.jpg': (192, 128),
                   'train/b/square.jpg': (128, 128), 'validation/a/tall.JPEG': (128, 192)}
  assert all(Image.open(dst / f).format == 'JPEG' for f in files)
  # within the limits: the same bytes; shrunk: the same picture (noise averages to grey)
  assert (dst / 'train/a/small.jpg').read_bytes() == (folder / 'train/a/small.jpg').read_bytes()
  assert abs(np.asarray(Image.open(dst / 'train/a/wide.jpg')).mean() - 127.5) < 5
  src = FolderSource(str(dst), 'train')
  assert src.classes == ['a', 'b'] and len(src) == 3


def test_a_second_run_skips_what_is_done_and_redoes_a_killed_write(folder, tmp_path):
  dst = tmp_path / 'dst'
  prepare_folder(str(folder), str(dst), short_side=128, report=lambda line: None)
  (dst / 'train/a/wide.jpg').unlink()  # as if killed while writing it
  (dst / 'train/a/wide.jpg.part').write_bytes(b'half')
  before = (dst / 'train/b/square.jpg').stat().st_mtime_ns
  counts = prepare_folder(str(folder), str(dst), short_side=128, report=lambda line: None)
  assert (counts['resized'], counts['copied'], counts['done_before'],
          counts['corrupt']) == (1, 0, 3, 2)
  assert Image.open(dst / 'train/a/wide.jpg').size == (192, 128)
  assert not (dst / 'train/a/wide.jpg.part').exists()
  assert (dst / 'train/b/square.jpg').stat().st_mtime_ns == before  # not written again


def prepare(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'ijepa_jax.tools.prepare', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_cli_summary_and_one_line_errors(folder, tmp_path):
  proc = prepare(f'--src={folder}', f'--dst={tmp_path / "dst"}', '--max_side=100',
                 '--short_side=0', '--threads=1')
  assert proc.returncode == 0, proc.stderr
  assert 'wrote 4 images (4 resized, 0 copied)' in proc.stdout and '2 corrupt' in proc.stdout
  assert proc.stderr.count('skipped a corrupt image') == 2
  assert Image.open(tmp_path / 'dst/train/a/small.jpg').size == (100, 50)
  for args, message in (
      ([f'--src={tmp_path / "nope"}', f'--dst={tmp_path / "x"}'], "--src='"),
      ([f'--src={folder}', f'--dst={folder / "copy"}'], 'is inside --src'),
      ([f'--src={folder}', f'--dst={tmp_path / "x"}', '--short_side=0'], 'not both 0')):
    proc = prepare(*args)
    assert proc.returncode == 2 and proc.stderr.startswith('error: ') and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
