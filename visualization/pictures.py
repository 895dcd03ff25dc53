"""Pictures of predictions, drawn with numpy and PIL only (no optional extra): coloured masks, error maps,
image | ground truth | prediction strips, grids of them, and the overlay predict.py writes.

Grid layout (what the tests decode), top to bottom on a white background: a heading strip TEXT_H px high
when there is a heading; the column titles, TEXT_H px; then per row a caption strip of TEXT_H px (when rows
have captions) and the row's panels side by side, GAP px apart; GAP px between rows; last the legend. Panels
smaller than MIN_PANEL px are enlarged by a whole factor (panel_scale) with nearest-neighbour sampling, so
every image pixel is a block of identical pixels and a prediction panel holds exactly the palette colours of
the predicted mask. Larger panels are only shrunk when a grid is asked for a `max_side`.
"""
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_segmentation_masks

from core.constants import IGNORE_INDEX
from core.palette import VOC_PALETTE, Palette, PathLike, class_name
from core.platform import atomic_write

FONT_PX = 13  # text size of titles, captions and legends in grids and tiles
TEXT_H = FONT_PX + 7  # px of a heading, title or caption strip
GAP = 4  # px of white between panels and between rows
MIN_PANEL = 192  # px: smaller panels are enlarged to at least this (a 64-px image is unreadable at 64 px)
WRONG = (255, 0, 0)  # wrongly predicted pixels in the error panel
IGNORED = (160, 160, 160)  # pixels without a label (255) in the error panel
TILE_TITLES = ("image", "ground truth", "prediction", "errors")
GRID_TITLES = ("image", "ground truth", "prediction")
# Overlays list a class in their legend only when it covers at least this share of the photo's pixels.
LEGEND_MIN_SHARE = 0.001
LegendEntry = Tuple[Tuple[int, int, int], str]


def font(size: int = FONT_PX) -> ImageFont.ImageFont:
    """PIL's bundled font at `size` px (its fixed 11-px bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def palette_array(palette: Palette = VOC_PALETTE) -> np.ndarray:
    """The flat 768-int palette as a (256, 3) uint8 lookup table."""
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def colorize(mask: np.ndarray, palette: Palette = VOC_PALETTE) -> np.ndarray:
    """(H, W) uint8 labels -> (H, W, 3) uint8 palette colours (255 in the palette's ignore colour)."""
    return palette_array(palette)[mask]


def error_panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray,
                ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Wrong pixels red, unlabelled pixels grey, correct ones the photo in dark grey (so red stands out).

    Args:
        image: (H, W, 3) uint8 photo at the mask's size.
        target, pred: (H, W) labels and predictions.
    """
    dark = (image.astype(np.float32).mean(-1, keepdims=True) * 0.45).astype(np.uint8).repeat(3, -1)
    out = np.where((target != pred)[..., None], np.array(WRONG, np.uint8), dark)
    return np.where((target == ignore_index)[..., None], np.array(IGNORED, np.uint8), out)


def tile(image: np.ndarray, target: np.ndarray, pred: np.ndarray, palette: Palette = VOC_PALETTE,
         class_names: Optional[Sequence[str]] = None, caption: Optional[str] = None) -> np.ndarray:
    """image | ground truth | prediction | errors, one captioned strip with its legend (see the module
    docstring for the layout)."""
    panels = [image, colorize(target, palette), colorize(pred, palette), error_panel(image, target, pred)]
    legend = class_legend([target, pred], class_names, palette, errors=True)
    return grid([panels], TILE_TITLES, captions=None if caption is None else [caption], legend=legend)


def sample_panels(image: np.ndarray, target: np.ndarray, pred: np.ndarray,
                  palette: Palette = VOC_PALETTE) -> List[np.ndarray]:
    """[image, ground truth, prediction] as (H, W, 3) uint8 panels, for a grid row."""
    return [image, colorize(target, palette), colorize(pred, palette)]


def class_legend(masks: Sequence[np.ndarray], class_names: Optional[Sequence[str]], palette: Palette = VOC_PALETTE,
                 errors: bool = False) -> List[LegendEntry]:
    """Legend entries for the classes in `masks` (named, in the palette's colours), the unlabelled band
    when there is one, and with `errors` the error panel's two colours."""
    colours = palette_array(palette)
    values = sorted(set().union(*(np.unique(m).tolist() for m in masks)))
    entries = [(_rgb(colours[v]), class_name(class_names, v)) for v in values if v != IGNORE_INDEX]
    if IGNORE_INDEX in values:
        entries.append((_rgb(colours[IGNORE_INDEX]), "no label (255): boundary band, not scored"))
    if errors:
        entries += [(WRONG, "errors: wrong class"), (IGNORED, "errors: no label")]
    return entries


def panel_scale(height: int, width: int) -> int:
    """The whole factor that enlarges a height x width panel to at least MIN_PANEL px on its longer side."""
    return max(1, math.ceil(MIN_PANEL / max(height, width)))


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], max_side: Optional[int] = None,
         captions: Optional[Sequence[str]] = None, heading: Optional[str] = None,
         legend: Sequence[LegendEntry] = ()) -> np.ndarray:
    """Rows of (H, W, 3) uint8 panels in cells of the largest panel's size, titled once at the top, laid
    out as the module docstring says.

    Args:
        rows: panels of each row (all rows have as many panels as there are titles).
        titles: one per column.
        max_side: panels larger than this are shrunk to it (masks nearest, photos bilinear), keeping a
            training run's vis/ grids small on large photos.
        captions: one line above each row (image name, IoU).
        heading: one line above everything (the epoch).
        legend: (colour, text) swatches below the rows, wrapped to the picture's width.
    """
    rows = [[_shrink(p, max_side, nearest=i > 0) for i, p in enumerate(r)] for r in rows]
    cell_h = max(p.shape[0] for r in rows for p in r)
    cell_w = max(p.shape[1] for r in rows for p in r)
    k = panel_scale(cell_h, cell_w)
    rows = [[p.repeat(k, 0).repeat(k, 1) for p in r] for r in rows]  # nearest: pixel blocks, exact colours
    cell_h, cell_w = cell_h * k, cell_w * k
    width = len(titles) * cell_w + (len(titles) - 1) * GAP
    caption_h = TEXT_H if captions else 0
    top0 = (TEXT_H if heading else 0) + TEXT_H
    body_h = top0 + len(rows) * (caption_h + cell_h) + (len(rows) - 1) * GAP
    text = font()
    lines = _legend_lines(legend, width, text)
    canvas = Image.new("RGB", (width, body_h + (GAP + len(lines) * TEXT_H if lines else 0)), "white")
    draw = ImageDraw.Draw(canvas)
    if heading:
        _text(draw, (2, 3), heading, width - 4, text)
    for c, title in enumerate(titles):
        _text(draw, (c * (cell_w + GAP) + 2, top0 - TEXT_H + 3), title, cell_w - 4, text)
    for r, panels in enumerate(rows):
        top = top0 + r * (caption_h + cell_h + GAP)
        if captions:
            _text(draw, (2, top + 3), captions[r], width - 4, text)
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (c * (cell_w + GAP), top + caption_h))
    _draw_legend(draw, lines, body_h + GAP, text)
    return np.asarray(canvas)


def _rgb(colour: Sequence[int]) -> Tuple[int, int, int]:
    return tuple(int(v) for v in colour[:3])


def _text(draw: ImageDraw.ImageDraw, xy: Tuple[int, int], text: str, max_w: int, face) -> None:
    while text and face.getlength(text) > max_w:  # shorten text wider than its room
        text = text[:-1]
    draw.text(xy, text, fill="black", font=face)


def _legend_lines(legend: Sequence[LegendEntry], width: int, face) -> List[List[LegendEntry]]:
    """The entries wrapped into lines no wider than `width`."""
    lines, used, swatch = [], width, FONT_PX
    for entry in legend:
        need = swatch + 6 + int(face.getlength(entry[1])) + 14
        if used + need > width and (not lines or lines[-1]):
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += need
    return lines


def _draw_legend(draw: ImageDraw.ImageDraw, lines: List[List[LegendEntry]], top: int, face) -> None:
    for i, line in enumerate(lines):
        x, y = 2, top + i * TEXT_H + 3
        for colour, label in line:
            draw.rectangle([x, y, x + FONT_PX - 1, y + FONT_PX - 1], fill=colour, outline="black")
            draw.text((x + FONT_PX + 6, y - 1), label, fill="black", font=face)
            x += FONT_PX + 6 + int(face.getlength(label)) + 14


def _shrink(panel: np.ndarray, max_side: Optional[int], nearest: bool) -> np.ndarray:
    h, w = panel.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return panel
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(panel).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def overlay(photo: np.ndarray, mask: np.ndarray, class_names: Optional[Sequence[str]], alpha: float = 0.5,
            palette: Palette = VOC_PALETTE, contours: bool = True) -> Image.Image:
    """The photo blended with the palette colour of each class in `mask` by torchvision's
    draw_segmentation_masks, thin contours along the class boundaries, and a legend on the right of the
    classes that cover at least LEGEND_MIN_SHARE of the pixels. Class 0 is left as the photo (and out of the
    legend) when it is the background (VOC-style class lists, or no names); in Cityscapes or ADE20K it is a
    class (road, wall) and is coloured like the others.

    Args:
        photo: (H, W, 3) uint8.
        mask: (H, W) uint8 predicted classes.
        (Both are enlarged by panel_scale when smaller than MIN_PANEL px.)
        alpha: opacity of the colours, 0 (photo only) to 1 (colours only).
        contours: draw the boundaries of the coloured regions, white on dark photo pixels and black on light
            ones, so that a region stays visible whatever the photo and the palette (VOC's dark colours vanish
            on a dark photo at alpha 0.5).
    """
    k = panel_scale(*mask.shape)  # a photo smaller than MIN_PANEL px is enlarged (nearest) to be readable
    photo, mask = (photo.repeat(k, 0).repeat(k, 1), mask.repeat(k, 0).repeat(k, 1)) if k > 1 else (photo, mask)
    colours = palette_array(palette)
    values = np.unique(mask)
    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)
    labels = torch.from_numpy(np.ascontiguousarray(mask))
    background = class_names is None or class_name(class_names, 0).lower() in ("background", "_background_")
    drawn = [int(c) for c in values if c != 0 or not background]
    blended = image
    if drawn:  # draw_segmentation_masks warns on an empty mask list
        blended = draw_segmentation_masks(image, torch.stack([labels == c for c in drawn]), alpha=alpha,
                                          colors=[_rgb(colours[c]) for c in drawn])
        # It blends every pixel with itself outside the masks, which float rounding can move by one level.
        undrawn = ~torch.isin(labels, torch.tensor(drawn, dtype=labels.dtype))
        blended = torch.where(undrawn, image, blended)
    picture = blended.permute(1, 2, 0).numpy()
    if contours and drawn:
        picture = _with_contours(picture, photo, mask, drawn)
    listed = legend_classes(mask, drawn)
    return _with_legend(Image.fromarray(picture), listed, len(drawn) - len(listed), class_names, colours)


def legend_classes(mask: np.ndarray, drawn: Sequence[int]) -> List[int]:
    """The drawn classes an overlay's legend lists: those covering at least LEGEND_MIN_SHARE of `mask`."""
    values, counts = np.unique(mask, return_counts=True)
    share = dict(zip(values.tolist(), (counts / mask.size).tolist()))
    return [c for c in drawn if share.get(c, 0.0) >= LEGEND_MIN_SHARE]


def legend_font_size(width: int, height: int) -> int:
    """An overlay legend's text size in px: FONT_PX on small pictures, 1/28 of the shorter side on large ones."""
    return max(FONT_PX, round(min(width, height) / 28))


def contour_width(height: int, width: int) -> int:
    """Contour thickness in px: 1 up to 500 px, then growing with the image so it stays visible."""
    return max(1, round(max(height, width) / 500))


def class_edges(mask: np.ndarray, drawn: Sequence[int], thickness: int = 1) -> np.ndarray:
    """(H, W) bool: pixels on a boundary between two labels where at least one side is a drawn class,
    widened to `thickness` px."""
    is_drawn = np.isin(mask, list(drawn))
    edge = np.zeros(mask.shape, dtype=bool)
    for a, b, da, db in ((mask[1:], mask[:-1], is_drawn[1:], is_drawn[:-1]),
                         (mask[:, 1:], mask[:, :-1], is_drawn[:, 1:], is_drawn[:, :-1])):
        step = (a != b) & (da | db)
        if a.shape[0] != mask.shape[0]:  # vertical neighbours: mark the lower pixel
            edge[1:] |= step
        else:
            edge[:, 1:] |= step
    if thickness > 1:
        r = thickness - 1
        edge = torch.nn.functional.max_pool2d(torch.from_numpy(edge)[None, None].float(), 2 * r + 1, 1,
                                              r)[0, 0].bool().numpy()
    return edge


def _with_contours(picture: np.ndarray, photo: np.ndarray, mask: np.ndarray, drawn: Sequence[int]) -> np.ndarray:
    edge = class_edges(mask, drawn, contour_width(*mask.shape))
    dark = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) < 128
    out = picture.copy()
    out[edge & dark] = 255
    out[edge & ~dark] = 0
    return out


def _with_legend(picture: Image.Image, listed: List[int], hidden: int, class_names: Optional[Sequence[str]],
                 colours: np.ndarray) -> Image.Image:
    """The picture with a legend on its right, its text scaled with the picture (readable on a 64-px
    prediction and on a 4000-px photo alike)."""
    size = legend_font_size(*picture.size)
    face, row, pad = font(size), round(size * 1.5), max(4, size // 3)
    lines = [class_name(class_names, c) for c in listed] or ["no class but the background"]
    note = f"{hidden} more below {LEGEND_MIN_SHARE:.1%} of the pixels" if hidden else \
        f"classes under {LEGEND_MIN_SHARE:.1%} of the pixels are not listed"
    legend_w = 3 * pad + size + max(int(face.getlength(t)) for t in lines)
    note_face = font(max(FONT_PX - 2, round(size * 0.7)))
    legend_w = max(legend_w, 2 * pad + int(note_face.getlength(note)))
    height = max(picture.height, pad + row * (len(lines) + 1) + pad)
    canvas = Image.new("RGB", (picture.width + legend_w, height), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + pad
    for i, text in enumerate(lines):
        y = pad + i * row
        if listed:
            draw.rectangle([x, y, x + size - 1, y + size - 1], fill=_rgb(colours[listed[i]]), outline="black")
        draw.text((x + size + pad if listed else x, y - size // 8), text, fill="black", font=face)
    draw.text((x, pad + len(lines) * row), note, fill="dimgray", font=note_face)
    return canvas


def write_png(picture: np.ndarray, path: PathLike) -> None:
    """An (H, W, 3) uint8 array as a PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(picture).save(f, format="PNG"))


def heatmap(matrix: np.ndarray, cell: int = 16) -> np.ndarray:
    """A row-normalised confusion matrix as an (n*cell, n*cell, 3) uint8 picture, white (0) to dark blue
    (1): the TensorBoard image when matplotlib, which draws the labelled one, is not installed."""
    rows = matrix.sum(1, keepdims=True)
    frac = np.divide(matrix, rows, out=np.zeros(matrix.shape, np.float64), where=rows > 0)
    colour = 255 - frac[..., None] * np.array([230, 190, 110])  # white -> (25, 65, 145)
    return np.kron(colour, np.ones((cell, cell, 1))).astype(np.uint8)

