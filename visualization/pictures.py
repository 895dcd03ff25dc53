"""Pictures of predictions, drawn with numpy and PIL only (no optional extra): coloured masks, error maps,
image | ground truth | prediction strips, grids of them, and the overlay predict.py writes.

Strip layout (what the tests decode): a title strip HEADER px high, then the panels side by side, each of
the cell size and GAP px apart, on a white background. Panels are never resampled unless a grid is asked
for a `max_side`, so a prediction panel holds exactly the palette colours of the predicted mask.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_segmentation_masks

from core.constants import IGNORE_INDEX
from core.palette import VOC_PALETTE, Palette, PathLike, class_name
from core.platform import atomic_write

HEADER = 14  # px of the title strip
GAP = 4  # px of white between panels and between rows
WRONG = (255, 0, 0)  # wrongly predicted pixels in the error panel
IGNORED = (160, 160, 160)  # pixels without a label (255) in the error panel
TILE_TITLES = ("image", "ground truth", "prediction", "errors")
GRID_TITLES = ("image", "ground truth", "prediction")


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


def tile(image: np.ndarray, target: np.ndarray, pred: np.ndarray, palette: Palette = VOC_PALETTE) -> np.ndarray:
    """image | ground truth | prediction | errors, one strip (see the module docstring for the layout)."""
    panels = [image, colorize(target, palette), colorize(pred, palette), error_panel(image, target, pred)]
    return grid([panels], TILE_TITLES)


def sample_panels(image: np.ndarray, target: np.ndarray, pred: np.ndarray,
                  palette: Palette = VOC_PALETTE) -> List[np.ndarray]:
    """[image, ground truth, prediction] as (H, W, 3) uint8 panels, for a grid row."""
    return [image, colorize(target, palette), colorize(pred, palette)]


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], max_side: Optional[int] = None) -> np.ndarray:
    """Rows of (H, W, 3) uint8 panels in cells of the largest panel's size, titled once at the top.

    Args:
        rows: panels of each row (all rows have as many panels as there are titles).
        titles: one per column.
        max_side: panels larger than this are shrunk to it (masks nearest, photos bilinear), keeping a
            training run's vis/ grids small on large photos.
    """
    rows = [[_shrink(p, max_side, nearest=i > 0) for i, p in enumerate(r)] for r in rows]
    cell_h = max(p.shape[0] for r in rows for p in r)
    cell_w = max(p.shape[1] for r in rows for p in r)
    width = len(titles) * cell_w + (len(titles) - 1) * GAP
    height = HEADER + len(rows) * cell_h + (len(rows) - 1) * GAP
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            top, left = HEADER + r * (cell_h + GAP), c * (cell_w + GAP)
            canvas[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
    return _titled(canvas, titles, cell_w)


def _shrink(panel: np.ndarray, max_side: Optional[int], nearest: bool) -> np.ndarray:
    h, w = panel.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return panel
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(panel).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def _titled(canvas: np.ndarray, titles: Sequence[str], cell_w: int) -> np.ndarray:
    image = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for c, title in enumerate(titles):
        while title and font.getlength(title) > cell_w - 2:  # shorten titles wider than their cell
            title = title[:-1]
        draw.text((c * (cell_w + GAP) + 1, 1), title, fill="black", font=font)
    return np.asarray(image)


def overlay(photo: np.ndarray, mask: np.ndarray, class_names: Optional[Sequence[str]], alpha: float = 0.5,
            palette: Palette = VOC_PALETTE) -> Image.Image:
    """The photo blended with the palette colour of each class in `mask` by torchvision's
    draw_segmentation_masks, with a legend of the classes present on the right. Class 0 is left as the photo
    when it is the background (VOC-style class lists, or no names); in Cityscapes or ADE20K it is a class
    (road, wall) and is coloured like the others.

    Args:
        photo: (H, W, 3) uint8.
        mask: (H, W) uint8 predicted classes.
        alpha: opacity of the colours, 0 (photo only) to 1 (colours only).
    """
    colours = palette_array(palette)
    present = [int(c) for c in np.unique(mask)]
    image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)
    labels = torch.from_numpy(np.ascontiguousarray(mask))
    background = class_names is None or class_name(class_names, 0).lower() in ("background", "_background_")
    drawn = [c for c in present if c != 0 or not background]
    blended = image
    if drawn:  # draw_segmentation_masks warns on an empty mask list
        blended = draw_segmentation_masks(image, torch.stack([labels == c for c in drawn]), alpha=alpha,
                                          colors=[tuple(int(v) for v in colours[c]) for c in drawn])
        # It blends every pixel with itself outside the masks, which float rounding can move by one level.
        undrawn = ~torch.isin(labels, torch.tensor(drawn, dtype=labels.dtype))
        blended = torch.where(undrawn, image, blended)
    return _with_legend(Image.fromarray(blended.permute(1, 2, 0).numpy()), present, class_names, colours)


def _with_legend(picture: Image.Image, present: List[int], class_names: Optional[Sequence[str]],
                 colours: np.ndarray) -> Image.Image:
    font, row = ImageFont.load_default(), 16
    legend_w = 12 + max(int(font.getlength(class_name(class_names, c))) for c in present) + 8
    canvas = Image.new("RGB", (picture.width + legend_w, max(picture.height, row * len(present) + 8)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, c in enumerate(present):
        x, y = picture.width + 4, 4 + i * row
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(v) for v in colours[c]), outline="black")
        draw.text((x + 14, y - 1), class_name(class_names, c), fill="black", font=font)
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

