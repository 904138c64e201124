"""Figures for interpretation, drawn with PIL only (no matplotlib): labelled image grids.

- images in [-1, 1] are shown as they are;
- a difference image ``a − b`` (paper section 3.5, appendix E) is shown as
  its positive part in colour on black: where, and in which colour, image a has more than b.
  The reverse difference ``b − a`` shows the other half; both of one row share one scale;
- the per-pixel difference energy ``Σ_c (a − b)²`` is shown as a heat map (black, red, yellow, white);
- signed tables (global relevance) use a diverging map: blue negative, white 0, red positive.

Every function returns a uint8 array [H, W, 3]; `save_figure` writes it atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from viscoin.utils.images import save_image, to_uint8

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)


# Stand-ins for the symbols that PIL's built-in font lacks.
_ASCII = str.maketrans({"λ": "lam ", "Δ": "diff ", "Φ": "Phi", "φ": "phi", "−": "-", "²": "^2", "·": "-",
                        "…": "...", "x̃"[1]: "~", "—": "-", "≥": ">=", "≤": "<=", "Ω": "Omega", "w̄"[1]: "_"})


@lru_cache(maxsize=8)
def font(size: int = 14) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at `size` pixels when installed (it has the Greek symbols), else PIL's built-in font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1: scalable, offline
    except TypeError:                              # older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def _unicode(fnt: ImageFont.ImageFont) -> bool:
    return "DejaVu" in str(getattr(fnt, "path", ""))


def text(s: str, fnt: ImageFont.ImageFont) -> str:
    """`s` as the font can draw it: Greek and math symbols spelled out for PIL's built-in font."""
    return s if _unicode(fnt) else s.translate(_ASCII).replace("  ", " ")


def _text_size(s: str, fnt: ImageFont.ImageFont) -> tuple[int, int]:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text(s, fnt), font=fnt, spacing=2)
    return box[2] - box[0], box[3] - box[1]


def _draw(draw: ImageDraw.ImageDraw, xy: tuple[int, int], s: str, fnt: ImageFont.ImageFont, fill: tuple) -> None:
    draw.multiline_text(xy, text(s, fnt), fill=fill, font=fnt, spacing=2)


# ---------------------------------------------------------------------------------------------
# Colour maps


def image_rgb(img: torch.Tensor) -> np.ndarray:
    """An image [3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    return to_uint8(img.unsqueeze(0))[0]


def difference_rgb(diff: torch.Tensor, scale: float | None = None) -> np.ndarray:
    """Positive part of a signed difference image [3, H, W], in colour on black.

    ``clamp(diff, 0) / scale``; `scale` defaults to the largest |diff| (an all-zero difference is black).
    """
    d = diff.detach().float().cpu()
    scale = float(d.abs().max()) if scale is None else float(scale)
    if scale <= 0:
        return np.zeros((*d.shape[1:], 3), dtype=np.uint8)
    pos = (d.clamp(min=0) / scale).clamp(0, 1)
    return (pos.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def heatmap(values: torch.Tensor, vmax: float | None = None) -> np.ndarray:
    """Non-negative values [H, W] -> uint8 [H, W, 3], "hot" map: 0 black, then red, yellow, white at vmax."""
    v = values.detach().float().cpu()
    vmax = float(v.max()) if vmax is None else float(vmax)
    t = (v / vmax).clamp(0, 1) if vmax > 0 else torch.zeros_like(v)
    rgb = torch.stack([(t * 3).clamp(0, 1), (t * 3 - 1).clamp(0, 1), (t * 3 - 2).clamp(0, 1)], dim=-1)
    return (rgb.numpy() * 255 + 0.5).astype(np.uint8)


def diverging(values: torch.Tensor, vmax: float | None = None) -> np.ndarray:
    """Signed values [H, W] -> uint8 [H, W, 3]: blue negative, white 0, red positive (±vmax saturate)."""
    v = values.detach().float().cpu()
    vmax = float(v.abs().max()) if vmax is None else float(vmax)
    t = (v / vmax).clamp(-1, 1) if vmax > 0 else torch.zeros_like(v)
    pos, neg = t.clamp(min=0), (-t).clamp(min=0)
    rgb = torch.stack([1 - neg, 1 - pos - neg, 1 - pos], dim=-1).clamp(0, 1)
    return (rgb.numpy() * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Labelled grids


@dataclass
class Cell:
    """One image of a grid, with an optional caption under it."""

    image: np.ndarray | None          # uint8 [H, W, 3]; None: an empty cell
    caption: str = ""


@dataclass
class Row:
    """One row of a grid: a label on the left, then cells."""

    label: str
    cells: list[Cell] = field(default_factory=list)


def cell_size_for(resolution: int, target: int = 112) -> int:
    """Cell side in pixels: small images magnified by an integer factor to about `target`, large ones capped."""
    if resolution >= target:
        return min(resolution, 2 * target)
    return resolution * max(1, round(target / resolution))


def _fit(image: np.ndarray, size: int) -> Image.Image:
    pil = Image.fromarray(image)
    if pil.width == size and pil.height == size:
        return pil
    # Magnify with NEAREST (pixels stay visible, no blur); shrink with LANCZOS.
    resample = Image.Resampling.NEAREST if size > max(pil.width, pil.height) else Image.Resampling.LANCZOS
    return pil.resize((size, size), resample)


def labelled_grid(
    rows: Sequence[Row],
    title: str | Sequence[str] = "",
    column_labels: Sequence[str] = (),
    cell: int = 112,                  # cell side in pixels
    pad: int = 6,                     # pixels between cells
    font_size: int = 14,
) -> np.ndarray:
    """Compose rows of captioned images under a title and column labels into one uint8 image [H, W, 3]."""
    if not rows:
        raise ValueError("labelled_grid: no rows")
    f_title, f_label, f_caption = font(font_size + 4), font(font_size), font(max(8, font_size - 2))
    titles = [title] if isinstance(title, str) else list(title)
    titles = [t for t in titles if t]
    ncols = max(max((len(r.cells) for r in rows), default=0), len(column_labels))
    label_w = max([_text_size(r.label, f_label)[0] for r in rows] + [0]) + (2 * pad if any(r.label for r in rows) else 0)
    col_h = max([_text_size(t, f_label)[1] for t in column_labels] + [0]) + (pad if column_labels else 0)
    title_h = sum(_text_size(t, f_title)[1] + pad for t in titles)
    caption_h = []
    for r in rows:
        h = max([_text_size(c.caption, f_caption)[1] for c in r.cells if c.caption] + [0])
        caption_h.append(h + 2 if h else 0)
    row_h = [max(cell, _text_size(r.label, f_label)[1]) + caption_h[i] for i, r in enumerate(rows)]
    width = 2 * pad + label_w + ncols * cell + max(ncols - 1, 0) * pad
    width = max(width, max([_text_size(t, f_title)[0] for t in titles] + [0]) + 2 * pad)
    height = 2 * pad + title_h + col_h + sum(row_h) + (len(rows) - 1) * pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = pad
    for t in titles:
        _draw(draw, (pad, y), t, f_title, TEXT)
        y += _text_size(t, f_title)[1] + pad
    x0 = pad + label_w
    for i, t in enumerate(column_labels):
        tw = _text_size(t, f_label)[0]
        _draw(draw, (x0 + i * (cell + pad) + (cell - tw) // 2, y), t, f_label, TEXT)
    y += col_h
    for r, h, ch in zip(rows, row_h, caption_h):
        lw, lh = _text_size(r.label, f_label)
        _draw(draw, (pad, y + max(0, (cell - lh) // 2)), r.label, f_label, TEXT)
        for j, c in enumerate(r.cells):
            x = x0 + j * (cell + pad)
            if c.image is not None:
                canvas.paste(_fit(c.image, cell), (x, y))
            if c.caption:
                tw = _text_size(c.caption, f_caption)[0]
                _draw(draw, (x + max(0, (cell - tw) // 2), y + cell + 1), c.caption, f_caption, MUTED)
        y += h + pad
    return np.asarray(canvas, dtype=np.uint8).copy()


def save_figure(path: str | os.PathLike, figure: np.ndarray) -> None:
    """Write a figure (uint8 [H, W, 3]) atomically; the format follows the suffix."""
    save_image(path, figure)


# ---------------------------------------------------------------------------------------------
# The figures of `viscoin explain` and of the report


def _fmt_lambda(lam: float) -> str:
    return f"{lam:g}"


def concept_effect_cells(
    sweep: torch.Tensor,              # [L, 3, R, R] images of one λ sweep
    lambdas: Sequence[float],
) -> list[Cell]:
    """Cells of one λ sweep: the images, then Δ = x_{λmax} − x_{λmin}, the reverse Δ and its energy."""
    lo, hi = int(np.argmin(lambdas)), int(np.argmax(lambdas))
    d = sweep[hi].float() - sweep[lo].float()
    scale = float(d.abs().max())
    energy = d.pow(2).sum(dim=0)
    cells = [Cell(image_rgb(img)) for img in sweep]
    cells += [Cell(difference_rgb(d, scale)), Cell(difference_rgb(-d, scale)),
              Cell(heatmap(energy), f"max {float(energy.max()):.3g}")]
    return cells


def effect_column_labels(lambdas: Sequence[float]) -> list[str]:
    lo, hi = _fmt_lambda(min(lambdas)), _fmt_lambda(max(lambdas))
    return [f"λ = {_fmt_lambda(v)}" for v in lambdas] + [f"Δ λ{hi} − λ{lo}", f"Δ λ{lo} − λ{hi}", "energy |Δ|²"]


def explain_figure(
    image: torch.Tensor,                        # the input [3, R, R] in [-1, 1]
    reconstruction: torch.Tensor,               # x̃ [3, R, R]
    class_name: str,                            # predicted class ĉ
    probability: float,                         # g(x)_ĉ
    concepts: Sequence[int],                    # shown concepts j
    relevance: Sequence[float],                 # their r_{j,x}
    sweeps: Sequence[torch.Tensor],             # their λ sweeps [L, 3, R, R]
    lambdas: Sequence[float],
    source: str = "",                           # e.g. the image file name
    cell: int | None = None,
    decoder: str = "G(w̄ + Ω(Φ, Φ'))",           # what draws the images (the model's `decoder_name`)
) -> np.ndarray:
    """The figure of `viscoin explain`: prediction, top concepts with relevance, λ sweeps and differences."""
    cell = cell or cell_size_for(image.shape[-1])
    title = [f"prediction: {class_name} (p = {probability:.2f})" + (f"   [{source}]" if source else "")]
    head = labelled_grid([Row("", [Cell(image_rgb(image), "input x"), Cell(image_rgb(reconstruction), "reconstruction x̃")])],
                         title, cell=cell)
    if not concepts:
        return stack([head, labelled_grid([Row("no concept passes the threshold")], cell=1)])
    rows = [Row(f"concept {j}\nr = {r:+.2f}", concept_effect_cells(sweep, lambdas))
            for j, r, sweep in zip(concepts, relevance, sweeps)]
    sub = (f"{len(concepts)} most relevant concepts (local relevance r): φ_j scaled by λ, everything else fixed, "
           f"drawn by {decoder}")
    return stack([head, labelled_grid(rows, sub, effect_column_labels(lambdas), cell=cell)])


def stack(figures: Sequence[np.ndarray], pad: int = 6) -> np.ndarray:
    """Stack figures (uint8 [H, W, 3]) vertically on a white background, left-aligned."""
    width = max(f.shape[1] for f in figures)
    height = sum(f.shape[0] for f in figures) + pad * (len(figures) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for f in figures:
        out[y:y + f.shape[0], :f.shape[1]] = f
        y += f.shape[0] + pad
    return out


def pair_figure(
    class_name: str,
    concept: int,
    relevance: float,                           # r_{j,c}
    images: torch.Tensor,                       # most activating samples of the class [M, 3, R, R]
    activations: Sequence[float],               # their a_j
    sweeps: torch.Tensor,                       # their λ sweeps [M, L, 3, R, R] (λ = 1: reconstruction)
    lambdas: Sequence[float],
    cell: int | None = None,
) -> np.ndarray:
    """Paper figure 4 / appendix E for one class–concept pair: one column per maximally activating
    sample of the class; rows: the sample, its λ sweep (λ = 1 is the reconstruction), Δ, reverse Δ, energy."""
    cell = cell or cell_size_for(images.shape[-1], target=96)
    lo, hi = int(np.argmin(lambdas)), int(np.argmax(lambdas))
    ls, hs = _fmt_lambda(lambdas[lo]), _fmt_lambda(lambdas[hi])
    rows = [Row("sample", [Cell(image_rgb(img), f"a = {a:.2f}") for img, a in zip(images, activations)])]
    for li, lam in enumerate(lambdas):
        label = f"λ = {_fmt_lambda(lam)}" + ("\n(reconstr.)" if lam == 1 else "")
        rows.append(Row(label, [Cell(image_rgb(s[li])) for s in sweeps]))
    d = sweeps[:, hi].float() - sweeps[:, lo].float()
    scale = float(d.abs().max())
    energy = d.pow(2).sum(dim=1)
    rows.append(Row(f"Δ λ{hs} − λ{ls}", [Cell(difference_rgb(x, scale)) for x in d]))
    rows.append(Row(f"Δ λ{ls} − λ{hs}", [Cell(difference_rgb(-x, scale)) for x in d]))
    rows.append(Row("energy", [Cell(heatmap(e, float(energy.max()))) for e in energy]))
    title = [f"class {class_name} · concept {concept} (r = {relevance:+.2f})",
             "most activating training samples of the class"]
    return labelled_grid(rows, title, cell=cell)


def samples_figure(
    title: str | Sequence[str],
    images: torch.Tensor,                       # [M, 3, R, R]
    captions: Sequence[str],
    ncols: int | None = None,
    cell: int | None = None,
) -> np.ndarray:
    """A captioned strip (or grid) of images, e.g. a concept's most activating samples over all classes."""
    cell = cell or cell_size_for(images.shape[-1], target=96)
    n = images.shape[0]
    ncols = ncols or n
    rows = []
    for s in range(0, n, ncols):
        rows.append(Row("", [Cell(image_rgb(images[i]), captions[i]) for i in range(s, min(n, s + ncols))]))
    return labelled_grid(rows, title, cell=cell)


def matrix_figure(
    values: torch.Tensor,                       # [C, K] signed (global relevance)
    title: str | Sequence[str],
    row_names: Sequence[str],
    max_cell: int = 36,
) -> np.ndarray:
    """A signed matrix as a diverging heat map with row names on the left and concept indices on top."""
    c, k = values.shape
    px = max(4, min(max_cell, 900 // max(k, 1)))
    img = np.repeat(np.repeat(diverging(values, 1.0), px, axis=0), px, axis=1)
    f = font(12)
    names = [n if len(n) <= 28 else n[:27] + "…" for n in row_names] if px >= 12 else []
    label_w = max([_text_size(n, f)[0] for n in names] + [0]) + 8
    title_lines = [title] if isinstance(title, str) else list(title)
    th = sum(_text_size(t, font(14))[1] + 4 for t in title_lines)
    top = th + (18 if px >= 14 else 4)
    width = max([label_w + img.shape[1] + 12] + [_text_size(t, font(14))[0] + 12 for t in title_lines])
    canvas = Image.new("RGB", (width, top + img.shape[0] + 12), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = 4
    for t in title_lines:
        _draw(draw, (6, y), t, font(14), TEXT)
        y += _text_size(t, font(14))[1] + 4
    if px >= 14:
        for j in range(k):
            s = str(j)
            _draw(draw, (label_w + j * px + (px - _text_size(s, f)[0]) // 2, th + 2), s, f, MUTED)
    if px >= 12:
        for i, n in enumerate(names):
            _draw(draw, (4, top + i * px + (px - _text_size(n, f)[1]) // 2), n, f, TEXT)
    canvas.paste(Image.fromarray(img), (label_w, top))
    return np.asarray(canvas, dtype=np.uint8).copy()


def visualisations_figure(
    title: str | Sequence[str],
    images: torch.Tensor,                                   # the samples [M, 3, R, R]
    captions: Sequence[str],                                # one per sample
    blocks: Sequence[tuple[str, torch.Tensor, Sequence[str], Sequence[str]]],
    cell: int | None = None,
) -> np.ndarray:
    """Several systems' visualisations on the same samples, one column per sample: the samples' row, then per
    block (a system) one row per view, ``(label, views [M, V, 3, R, R], view labels [V], captions of its last
    row [M] or [])``."""
    cell = cell or cell_size_for(images.shape[-1], target=96)
    rows = [Row("sample", [Cell(image_rgb(img), cap) for img, cap in zip(images, captions)])]
    for label, views, view_labels, last_captions in blocks:
        assert views.shape[:2] == (images.shape[0], len(view_labels)), (views.shape, len(view_labels))
        for v, view in enumerate(view_labels):
            caps = last_captions if v == len(view_labels) - 1 and last_captions else [""] * images.shape[0]
            name = f"{label}\n{view}" if v == 0 else view                  # the system named once per block
            rows.append(Row(name, [Cell(image_rgb(views[m, v]), caps[m]) for m in range(images.shape[0])]))
    return labelled_grid(rows, title, cell=cell)
