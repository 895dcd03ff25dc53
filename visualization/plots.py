"""Figures drawn with matplotlib (an optional extra): training curves, per-class IoU over epochs, the
confusion heatmap and per-class IoU bars. Each returns a matplotlib Figure (no pyplot state, safe in any
process); `save_figure` writes it atomically. Without matplotlib, `require_matplotlib` raises one line
saying what to install.
"""
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from core.cli import UsageError
from core.palette import VOC_PALETTE, PathLike, class_name
from core.platform import atomic_write
from recording.history import RunHistory

DPI = 100
CURVES_SIZE = (1500, 450)  # px of curves.png: loss | metrics | learning rate


def require_matplotlib(purpose: str) -> Any:
    """matplotlib's Figure class, or a UsageError naming `purpose` and the pip command."""
    try:  # an optional extra: imported when a figure is drawn, not when the module is
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(f"{purpose} needs matplotlib, which is not installed: pip install matplotlib") from None
    return Figure


def save_figure(fig: Any, path: PathLike) -> None:
    """Writes `fig` as a PNG at its own size (no tight bounding box: the size is the figure's)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


def figure_array(fig: Any) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array (for TensorBoard)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional extra, as above

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# Epochs are numbered from 0 everywhere (train.log, metrics.jsonl, results.txt, vis/epoch_E.png, best.pth):
# a per-epoch value sits at x = its epoch, and the print intervals of epoch E run from E - 1 to E, so each
# epoch's last interval ends on its epoch's point.
EPOCH_AXIS = "epoch (from 0, as in train.log; a point = the epoch's end)"


def _epoch_x(records: List[Dict[str, Any]]) -> List[int]:
    return [r["epoch"] for r in records]


def _step_x(steps: List[Dict[str, Any]]) -> List[float]:
    return [s["global_step"] / s["steps_per_epoch"] - 1 for s in steps]


def _values(records: List[Dict[str, Any]], key: str, scale: float = 1.0) -> List[float]:
    return [math.nan if r.get(key) is None else r[key] * scale for r in records]


def curves_figure(runs: Sequence[RunHistory], labels: Optional[Sequence[str]] = None) -> Any:
    """Loss (train per print interval and per epoch, validation; log scale, so a first huge value does not
    flatten the rest), metrics (mIoU, pixel and mean accuracy, best epoch marked) and learning rate against
    epochs; several runs share the axes, one colour each. Legends sit below the panels, outside the data.

    Args:
        runs: histories from `load_history`.
        labels: one per run (default: the run directories' names).
    """
    figure = require_matplotlib("drawing curves")
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # present once require_matplotlib has passed
    labels = list(labels) if labels is not None else run_labels(runs)
    several = len(runs) > 1
    # Below each panel: 3 legend rows for one run, 3 per run for several.
    rows = 3 * len(runs) if several else 3
    height = CURVES_SIZE[1] + (18 * rows - 54 if several else 0)
    fig = figure(figsize=(CURVES_SIZE[0] / DPI, height / DPI), dpi=DPI, layout="constrained")
    loss_ax, metric_ax, lr_ax = fig.subplots(1, 3)
    for i, (run, label) in enumerate(zip(runs, labels)):
        colour = (lambda _: f"C{i}") if several else (lambda q: q)
        prefix = f"{label}: " if several else ""
        _plot_losses(loss_ax, run, prefix, colour)
        _plot_metrics(metric_ax, run, prefix, colour)
        _plot_lr(lr_ax, run, prefix, colour("C0"))
    stepped = any(s.get("steps_per_epoch") for run in runs for s in run.steps)
    for ax, title, ylabel in ((loss_ax, "Loss (log scale)", "loss"), (metric_ax, "Validation metrics", "%"),
                              (lr_ax, "Learning rate", "learning rate")):
        ax.set_title(title)
        ax.set_xlabel(EPOCH_AXIS, fontsize="small")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_xlim(left=-1 if stepped else -0.5)  # epoch 0's print intervals start at x = -1
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0f}" if x >= 0 else ""))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16),
                      ncol=1 if several or ax is loss_ax else 2, frameon=False)
    if _positive(loss_ax):
        loss_ax.set_yscale("log")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return fig


def run_labels(runs: Sequence[RunHistory]) -> List[str]:
    """Short legend labels: each run directory's name, with its parent where two names are the same."""
    names = [r.run_dir.resolve().name for r in runs]
    return [f"{r.run_dir.resolve().parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]


def _positive(ax: Any) -> bool:
    """Whether every finite value drawn on `ax` is above 0 (a log scale can show them)."""
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()] or [[]])
    ys = ys[np.isfinite(ys)]
    return ys.size > 0 and bool((ys > 0).all())


def _plot_losses(ax: Any, run: RunHistory, prefix: str, colour: Any) -> None:
    train, val_label = run.loss_labels()
    steps = [s for s in run.steps if s.get("steps_per_epoch")]
    if steps:
        ax.plot(_step_x(steps), _values(steps, "interval_loss"), color=colour("C0"), alpha=0.35, linewidth=1,
                label=f"{prefix}{train}, per print interval")
    ax.plot(_epoch_x(run.epochs), _values(run.epochs, "train_loss"), "o-", color=colour("C0"), markersize=4,
            label=f"{prefix}{train}, epoch mean")
    val = [e for e in run.epochs if e.get("val_loss") is not None]
    if val:
        ax.plot(_epoch_x(val), _values(val, "val_loss"), "s--", color=colour("C3"), markersize=4,
                label=f"{prefix}{val_label}")


def _plot_metrics(ax: Any, run: RunHistory, prefix: str, colour: Any) -> None:
    evaluated = run.evaluated
    for key, title, style, default in (("mean_iou", "mIoU", "o-", "C0"), ("pixel_acc", "pixel acc", "^:", "C1"),
                                       ("mean_acc", "mean acc", "v:", "C2")):
        ax.plot(_epoch_x(evaluated), _values(evaluated, key, 100), style, color=colour(default), markersize=4,
                label=f"{prefix}{title}")
    best = run.best()
    if best is not None:
        x, y = best["epoch"], best["mean_iou"] * 100
        ax.axvline(x, color=colour("C0"), linestyle="--", linewidth=0.8, alpha=0.6)
        ax.plot([x], [y], "*", color=colour("C3"), markersize=14,
                label=f"{prefix}best: mIoU {y:.1f} at epoch {best['epoch']}")


def _plot_lr(ax: Any, run: RunHistory, prefix: str, colour: str) -> None:
    steps = [s for s in run.steps if s.get("steps_per_epoch")]
    if steps:
        ax.plot(_step_x(steps), _values(steps, "lr"), "-", color=colour, label=f"{prefix}lr" if prefix else None)
    else:  # runs recorded before steps.jsonl existed: the rate at each epoch's end
        ax.plot(_epoch_x(run.epochs), _values(run.epochs, "lr"), "o-", color=colour,
                label=f"{prefix}lr" if prefix else None)


def per_class_iou_figure(runs: Sequence[RunHistory], labels: Optional[Sequence[str]] = None) -> Any:
    """IoU of every class over the evaluated epochs, one panel per run."""
    figure = require_matplotlib("drawing per-class IoU")
    from matplotlib.ticker import MaxNLocator  # present once require_matplotlib has passed
    labels = list(labels) if labels is not None else run_labels(runs)
    fig = figure(figsize=(6.5 * len(runs), 4.5), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs)))
    for ax, run, label in zip(axes, runs, labels):
        evaluated = [e for e in run.evaluated if isinstance(e.get("iou"), list)]
        count = max((len(e["iou"]) for e in evaluated), default=0)
        for c in range(count):
            ys = [math.nan if c >= len(e["iou"]) or e["iou"][c] is None else e["iou"][c] * 100 for e in evaluated]
            ax.plot(_epoch_x(evaluated), ys, marker="o", markersize=3, color=class_colour(run.palette, c),
                    markeredgecolor="black", markeredgewidth=0.4, linestyle=("-", "--", ":")[c // 10 % 3],
                    label=class_name(run.class_names, c))
        ax.set_title(f"Per-class IoU: {label}")
        ax.set_xlim(left=-0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(EPOCH_AXIS, fontsize="small")
        ax.set_ylabel("IoU (%)")
        ax.grid(alpha=0.3)
        if count:  # beside the panel, outside the data
            ax.legend(fontsize="x-small", ncol=1 if count <= 24 else 2, loc="upper left", bbox_to_anchor=(1.01, 1),
                      frameon=False)
    return fig


def class_colour(palette: Optional[Sequence[int]], index: int) -> tuple:
    """Class `index`'s mask colour (the run's palette, else VOC's) as a matplotlib RGB tuple."""
    colours = palette if palette is not None else VOC_PALETTE
    return tuple(v / 255 for v in colours[3 * index:3 * index + 3])


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Any:
    """Row-normalised confusion heatmap (rows ground truth, columns prediction) with class names; cells
    hold percentages of their row (classes without ground-truth pixels are left blank)."""
    figure = require_matplotlib("drawing the confusion matrix")
    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(matrix)
    rows = matrix.sum(1, keepdims=True)
    frac = np.divide(matrix, rows, out=np.full(matrix.shape, np.nan), where=rows > 0)
    side = max(5.0, 0.45 * n + 3.0)
    fig = figure(figsize=(side + 1.0, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(frac * 100, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="% of the ground-truth row")
    names = [class_name(class_names, i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90, fontsize="small")
    ax.set_yticks(range(n), names, fontsize="small")
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (each row sums to 100%)")
    if n <= 30:  # beyond that the numbers no longer fit in their cells
        for (r, c), value in np.ndenumerate(frac):
            if not np.isnan(value) and value >= 0.0005:
                ax.text(c, r, f"{value * 100:.1f}" if value < 0.9995 else "100", ha="center", va="center",
                        fontsize=7 if n > 12 else 9, color="white" if value > 0.6 else "black")
    return fig


def class_iou_figure(iou: Sequence[Optional[float]], class_names: Sequence[str]) -> Any:
    """Horizontal bars of per-class IoU, best at the top; classes absent from ground truth and predictions
    (IoU NaN) are listed at the bottom as n/a."""
    figure = require_matplotlib("drawing per-class IoU")
    values = [math.nan if v is None else float(v) for v in iou]
    # Bars are drawn bottom-up: absent classes at the bottom, then ascending IoU, so the best is at the top.
    order = sorted(range(len(values)), key=lambda i: (not math.isnan(values[i]), np.nan_to_num(values[i])))
    fig = figure(figsize=(7, max(3.0, 0.3 * len(values) + 1.5)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    shown = [0.0 if math.isnan(values[i]) else values[i] * 100 for i in order]
    ax.barh(range(len(order)), shown, color=["C0" if not math.isnan(values[i]) else "lightgrey" for i in order])
    ax.set_yticks(range(len(order)), [class_name(class_names, i) for i in order], fontsize="small")
    for y, i in enumerate(order):
        text = "n/a" if math.isnan(values[i]) else f"{values[i] * 100:.1f}"
        ax.text(min(shown[y], 100) + 1, y, text, va="center", fontsize="small")
    finite = [v for v in values if not math.isnan(v)]
    mean = f"{np.mean(finite) * 100:.1f}" if finite else "n/a"
    ax.set_xlim(0, 110)
    ax.set_xlabel("IoU (%)")
    ax.set_title(f"Per-class IoU (mean IoU {mean})")
    ax.grid(axis="x", alpha=0.3)
    return fig
