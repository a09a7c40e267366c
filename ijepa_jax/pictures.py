"""Pictures of a run, as RGB uint8 arrays [H, W, 3] (written as PNG and to TensorBoard).

- `mask_picture`: for each image, the context patches and each target block of the mask
  sampler, one panel each, then all of them together. A panel shows the image in grey;
  the patches of its set are tinted with the set's colour and every other patch is dark
  grey, so a patch is coloured (its red, green and blue differ) exactly when it is in
  the set: `tests/test_pictures.py` reads the sampler's indices back from the PNG.
- `feature_picture`: the first three principal components of the target encoder's patch
  features as RGB, under each input image (and again with each position's mean taken out).

Layout (both): panels of `P = image_size * scale` pixels, `scale` the smallest integer
that makes P at least `MIN_PANEL`; `GAP` pixels around and between panels; a `TITLE`
pixels high line of text over each section.
"""

import io
import math
import re
from typing import Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw

MIN_PANEL = 112
GAP = 4
TITLE = 16
BACKGROUND = (255, 255, 255)
CONTEXT_COLOUR = (40, 110, 255)
TARGET_COLOURS = ((235, 40, 40), (255, 150, 0), (20, 170, 60), (190, 50, 220),
                  (0, 190, 200), (150, 90, 40), (240, 60, 150), (120, 120, 0))
_TINT = 0.55   # a set's patches: (1 - _TINT) * grey + _TINT * colour
_DARK = 0.3    # other patches: _DARK * grey (R = G = B)


def scale_for(image_size: int) -> int:
  return max(1, math.ceil(MIN_PANEL / image_size))


def _grey(image: np.ndarray) -> np.ndarray:
  """[H, W, C] uint8 -> luminance [H, W] float in [0, 255]."""
  x = image.astype(np.float32)
  if x.shape[-1] == 1:
    return x[..., 0]
  return x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)


def _upscale(x: np.ndarray, s: int) -> np.ndarray:
  return np.repeat(np.repeat(x, s, axis=0), s, axis=1)


def patch_panel(grey: np.ndarray, patch: int, sets: Sequence[tuple[np.ndarray, tuple]],
                scale: int) -> np.ndarray:
  """One panel [P, P, 3]: the patches of each (indices, colour) set tinted with its colour
  (later sets over earlier ones), every other patch dark grey. Indices are raster-order
  patch numbers on the (H / patch) x (W / patch) grid."""
  h, w = grey.shape
  gw = w // patch
  dark = np.repeat((_DARK * grey)[..., None], 3, axis=-1)
  out = dark.copy()
  for idx, colour in sets:
    tint = (1 - _TINT) * grey[..., None] + _TINT * np.asarray(colour, np.float32)
    for i in np.asarray(idx).reshape(-1):
      r, c = divmod(int(i), gw)
      sl = (slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
      out[sl] = tint[sl]
  return _upscale(np.round(out).astype(np.uint8), scale)


def _canvas(height: int, width: int) -> np.ndarray:
  return np.full((height, width, 3), BACKGROUND, np.uint8)


def _titles(canvas: np.ndarray, titles: Sequence[tuple[int, str]]) -> np.ndarray:
  """Black text at (y, GAP) for each (y, text)."""
  img = Image.fromarray(canvas)
  draw = ImageDraw.Draw(img)
  for y, text in titles:
    draw.text((GAP, y + 2), text, fill=(0, 0, 0))
  return np.asarray(img).copy()


def panel_layout(image_size: int) -> tuple[int, int]:
  """(panel size P, its stride P + GAP) of both pictures."""
  p = image_size * scale_for(image_size)
  return p, p + GAP


def mask_picture_size(num_images: int, num_targets: int, image_size: int,
                      sections: int = 1) -> tuple[int, int]:
  """(height, width) of `mask_picture` for these sizes."""
  _, stride = panel_layout(image_size)
  return sections * (TITLE + num_images * stride) + GAP, GAP + (num_targets + 3) * stride


def mask_picture(images: np.ndarray, sections: Sequence[tuple[str, dict | str]],
                 patch: int) -> np.ndarray:
  """Masks drawn over `images` [K, S, S, C] uint8, one section per (title, masks).

  `masks` is a dict of the sampler's arrays for these K images (`ctx_idx [K, Kc]`,
  `ctx_len [K]`, `tgt_idx [K, M, Kt]`, `tgt_len [K, M]`); entries past a length are
  padding and are not drawn. A section whose masks is a string shows that text instead
  (e.g. why a mode cannot sample this config). Row k of a section: the image, the context
  (blue), target blocks 1..M (one colour each), then all of them together.
  """
  k, size = images.shape[0], images.shape[1]
  m = max(s[1]['tgt_idx'].shape[1] for s in sections if isinstance(s[1], dict))
  scale = scale_for(size)
  p, stride = panel_layout(size)
  height, width = mask_picture_size(k, m, size, len(sections))
  canvas = _canvas(height, width)
  titles = []
  y = GAP
  for title, masks in sections:
    titles.append((y - GAP, title))
    y += TITLE
    for i in range(k):
      grey = _grey(images[i])
      image = np.repeat(grey[..., None], 3, -1) if images.shape[-1] == 1 else images[i, ..., :3]
      panels = [_upscale(np.asarray(image, np.uint8), scale)]
      if isinstance(masks, dict):
        ctx = (masks['ctx_idx'][i, :masks['ctx_len'][i]], CONTEXT_COLOUR)
        tgts = [(masks['tgt_idx'][i, j, :masks['tgt_len'][i, j]],
                 TARGET_COLOURS[j % len(TARGET_COLOURS)])
                for j in range(masks['tgt_idx'].shape[1])]
        panels += [patch_panel(grey, patch, [ctx], scale)]
        panels += [patch_panel(grey, patch, [t], scale) for t in tgts]
        panels += [patch_panel(grey, patch, [ctx] + tgts, scale)]
      for j, panel in enumerate(panels):
        canvas[y:y + p, GAP + j * stride:GAP + j * stride + p] = panel
      y += stride
    if isinstance(masks, str):
      titles.append((y - stride * k + p // 2 - TITLE, masks))
  return _titles(canvas, titles)


def pca_rgb(tokens: np.ndarray) -> np.ndarray:
  """tokens [K, N, D] -> [K, N, 3] uint8: the projections on the first three principal
  components of all K * N tokens together (so colours compare across images), each
  stretched from its 1st to its 99th percentile to 0..255."""
  k, n, d = tokens.shape
  x = tokens.reshape(k * n, d).astype(np.float64)
  x = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  comps = x @ vt[:3].T  # [K*N, <=3]
  if comps.shape[1] < 3:
    comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
  lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
  rgb = np.clip((comps - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
  return np.round(255 * rgb).astype(np.uint8).reshape(k, n, 3)


def feature_picture_size(num_images: int, image_size: int) -> tuple[int, int]:
  """(height, width) of `feature_picture`."""
  _, stride = panel_layout(image_size)
  return TITLE + 3 * stride + GAP, GAP + num_images * stride


def feature_picture(images: np.ndarray, tokens: np.ndarray, grid: tuple[int, int],
                    title: str) -> np.ndarray:
  """Three rows: the images [K, S, S, C]; the RGB of the first three principal components
  of their patch features (tokens [K, N, D] on `grid`); the same after taking out each
  position's mean over the K images, which leaves what differs between the images (the
  first PCA is mostly position while the encoder is young)."""
  k, size = images.shape[0], images.shape[1]
  scale = scale_for(size)
  p, _ = panel_layout(size)
  cell = p // grid[0]
  rows = [pca_rgb(tokens), pca_rgb(tokens - tokens.mean(axis=0, keepdims=True))]
  height, width = feature_picture_size(k, size)
  canvas = _canvas(height, width)
  for i in range(k):
    x = GAP + i * (p + GAP)
    image = images[i] if images.shape[-1] == 3 else np.repeat(images[i, ..., :1], 3, -1)
    canvas[TITLE + GAP:TITLE + GAP + p, x:x + p] = _upscale(image, scale)
    for r, rgb in enumerate(rows, start=1):
      fmap = _upscale(rgb[i].reshape(grid[0], grid[1], 3), cell)
      y = TITLE + GAP + r * (p + GAP)
      canvas[y:y + fmap.shape[0], x:x + fmap.shape[1]] = fmap
  return _titles(canvas, [(0, title)])


def save_png(path: str, image: np.ndarray) -> None:
  """Write [H, W, 3] uint8 as a PNG (local path or bucket)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format='PNG')
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buf.getvalue())


# -- training curves ----------------------------------------------------------------------

FIGSIZE = (15, 8)  # inches, at DPI: a 1500 x 800 picture
DPI = 100


def _series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r['step'], r[key]) for r in rows if key in r and r[key] is not None]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pts)
  return np.asarray(steps, float), np.asarray(values, float)


_HEADLINE = re.compile(r'^(?:eval|final|baseline|pixels)_([a-z0-9]+)_top1$')


def _probes_in(rows: Sequence[dict]) -> list[str]:
  """The probes whose headline figure (`<prefix>_<probe>_top1`) the rows hold, in the order
  first seen: any probe of the registry draws without a change here."""
  seen: dict[str, None] = {}
  for r in rows:
    for k in r:
      m = _HEADLINE.match(k)
      if m:
        seen.setdefault(m.group(1))
  return list(seen)


_COLOURS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown')


def _marker(x: np.ndarray) -> str | None:
  """A visible point on each value of a short series: a line through one or a few points
  draws nothing or hides where they are (a run of a few steps, a health check or two)."""
  return 'o' if len(x) <= 20 else None


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
    ax.plot(x, y, color='tab:blue', marker=_marker(x), markersize=4)
    if logy and len(y) and (y > 0).all():
      ax.set_yscale('log')
    ax.set_title(title)

  ax = axes[4]
  for i, name in enumerate(_probes_in(rows)):
    key, colour = f'{name}_top1', _COLOURS[i % len(_COLOURS)]
    x, y = _series(rows, f'eval_{key}')
    if len(x):
      ax.plot(x, 100 * y, marker='.', color=colour, label=f'{name} (periodic)')
    x, y = _series(rows, f'final_{key}')
    if len(x):
      ax.scatter(x, 100 * y, marker='*', s=120, color=colour, label=f'{name} (final)', zorder=3)
    for prefix, what, style in (('baseline', 'random init', '--'), ('pixels', 'pixels', ':')):
      x, y = _series(rows, f'{prefix}_{key}')
      if len(x):
        ax.axhline(100 * y[-1], ls=style, color=colour, label=f'{name}, {what}')
  ax.set_title('evaluation top-1 (%)')
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no evaluation yet (evals.every, evals.at_end)', ha='center',
            transform=ax.transAxes)

  ax = axes[5]
  x, y = _series(rows, 'health_effective_rank')
  ax.plot(x, y, color='tab:green', marker=_marker(x), markersize=4)
  ax.set_title('representation health')
  ax.set_ylabel('effective rank (RankMe)', color='tab:green')
  x, y = _series(rows, 'health_feature_std_mean')
  if len(x):
    twin = ax.twinx()
    twin.plot(x, y, color='tab:red', marker=_marker(x), markersize=4)
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
