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
from core.palette import PathLike, class_name
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


def _epoch_x(records: List[Dict[str, Any]]) -> List[int]:
    return [r["epoch"] + 1 for r in records]  # epochs completed: the end of epoch 0 is at x = 1


def _values(records: List[Dict[str, Any]], key: str, scale: float = 1.0) -> List[float]:
    return [math.nan if r.get(key) is None else r[key] * scale for r in records]


def curves_figure(runs: Sequence[RunHistory], labels: Optional[Sequence[str]] = None) -> Any:
    """Loss (train per print interval and per epoch, validation), metrics (mIoU, pixel and mean accuracy,
    best epoch marked) and learning rate against epochs; several runs share the axes, one colour each.

    Args:
        runs: histories from `load_history`.
        labels: one per run (default: the run directories).
    """
    figure = require_matplotlib("drawing curves")
    from matplotlib.ticker import MaxNLocator  # present once require_matplotlib has passed
    fig = figure(figsize=(CURVES_SIZE[0] / DPI, CURVES_SIZE[1] / DPI), dpi=DPI, layout="constrained")
    loss_ax, metric_ax, lr_ax = fig.subplots(1, 3)
    labels = list(labels) if labels is not None else [str(r.run_dir) for r in runs]
    several = len(runs) > 1
    for i, (run, label) in enumerate(zip(runs, labels)):
        colour = (lambda _: f"C{i}") if several else (lambda q: q)
        prefix = f"{label}: " if several else ""
        _plot_losses(loss_ax, run, prefix, colour)
        _plot_metrics(metric_ax, run, prefix, colour)
        _plot_lr(lr_ax, run, prefix, colour("C0"))
    for ax, title, ylabel in ((loss_ax, "Loss", "loss"), (metric_ax, "Validation metrics", "%"),
                              (lr_ax, "Learning rate", "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return fig


def _plot_losses(ax: Any, run: RunHistory, prefix: str, colour: Any) -> None:
    steps = [s for s in run.steps if s.get("steps_per_epoch")]
    if steps:
        ax.plot([s["global_step"] / s["steps_per_epoch"] for s in steps], _values(steps, "interval_loss"),
                color=colour("C0"), alpha=0.35, linewidth=1, label=f"{prefix}train loss (print interval)")
    ax.plot(_epoch_x(run.epochs), _values(run.epochs, "train_loss"), "o-", color=colour("C0"), markersize=4,
            label=f"{prefix}train loss (epoch)")
    val = [e for e in run.epochs if e.get("val_loss") is not None]
    if val:
        ax.plot(_epoch_x(val), _values(val, "val_loss"), "s--", color=colour("C3"), markersize=4,
                label=f"{prefix}validation loss")


def _plot_metrics(ax: Any, run: RunHistory, prefix: str, colour: Any) -> None:
    evaluated = run.evaluated
    for key, title, style, default in (("mean_iou", "mIoU", "o-", "C0"), ("pixel_acc", "pixel acc", "^:", "C1"),
                                       ("mean_acc", "mean acc", "v:", "C2")):
        ax.plot(_epoch_x(evaluated), _values(evaluated, key, 100), style, color=colour(default), markersize=4,
                label=f"{prefix}{title}")
    best = run.best()
    if best is not None:
        x, y = best["epoch"] + 1, best["mean_iou"] * 100
        ax.axvline(x, color=colour("C0"), linestyle="--", linewidth=0.8, alpha=0.6)
        ax.plot([x], [y], "*", color=colour("C3"), markersize=14,
                label=f"{prefix}best: mIoU {y:.1f} at epoch {best['epoch']}")


def _plot_lr(ax: Any, run: RunHistory, prefix: str, colour: str) -> None:
    steps = [s for s in run.steps if s.get("steps_per_epoch")]
    if steps:
        ax.plot([s["global_step"] / s["steps_per_epoch"] for s in steps], _values(steps, "lr"), "-",
                color=colour, label=f"{prefix}lr" if prefix else None)
    else:  # runs recorded before steps.jsonl existed: the rate at each epoch's end
        ax.plot(_epoch_x(run.epochs), _values(run.epochs, "lr"), "o-", color=colour,
                label=f"{prefix}lr" if prefix else None)


def per_class_iou_figure(runs: Sequence[RunHistory], labels: Optional[Sequence[str]] = None) -> Any:
    """IoU of every class over the evaluated epochs, one panel per run."""
    figure = require_matplotlib("drawing per-class IoU")
    from matplotlib.ticker import MaxNLocator  # present once require_matplotlib has passed
    labels = list(labels) if labels is not None else [str(r.run_dir) for r in runs]
    fig = figure(figsize=(6.5 * len(runs), 4.5), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs)))
    for ax, run, label in zip(axes, runs, labels):
        evaluated = [e for e in run.evaluated if isinstance(e.get("iou"), list)]
        count = max((len(e["iou"]) for e in evaluated), default=0)
        for c in range(count):
            ys = [math.nan if c >= len(e["iou"]) or e["iou"][c] is None else e["iou"][c] * 100 for e in evaluated]
            ax.plot(_epoch_x(evaluated), ys, marker="o", markersize=3, color=f"C{c % 10}",
                    linestyle="-" if c < 10 else "--", label=class_name(run.class_names, c))
        ax.set_title(f"Per-class IoU: {label}")
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("IoU (%)")
        ax.grid(alpha=0.3)
        if count:
            ax.legend(fontsize="x-small", ncol=1 if count <= 12 else 2)
    return fig


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
