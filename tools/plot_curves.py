"""Draw the curves of one or several training runs on the same axes, and their per-class IoU over epochs.

    python tools/plot_curves.py runs/fcn_resnet50_voc
    python tools/plot_curves.py runs/lr0.01 runs/lr0.02 --output compare.png --labels "lr 0.01" "lr 0.02"

Reads each run directory's steps.jsonl and metrics.jsonl (a run still training can be drawn). Writes
--output (loss, validation metrics, learning rate; runs labelled by directory) and <output>_per_class.png
(one panel per run, classes in their mask colours). Needs matplotlib (pip install matplotlib).
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.cli import ArgumentParser, HelpFormatter, UsageError, run_main  # noqa: E402
from core.outputs import check_output  # noqa: E402
from recording.history import load_history  # noqa: E402
from visualization.plots import curves_figure, per_class_iou_figure, require_matplotlib, run_labels, save_figure  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (a training run's --output-dir)")
    parser.add_argument("--output", default="curves.png", help="PNG to write; the per-class figure goes next to it")
    parser.add_argument("--labels", nargs="+", default=None, help="legend label of each run (default: its folder's name)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    require_matplotlib("tools/plot_curves.py")
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise UsageError(f"--labels has {len(args.labels)} labels for {len(args.runs)} runs; give one per run")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output {output}: must be a .png file")
    per_class = output.with_name(f"{output.stem}_per_class.png")
    for path in (output, per_class):
        check_output("--output", path, "png")
    runs = [load_history(run) for run in args.runs]
    labels = args.labels or run_labels(runs)
    save_figure(curves_figure(runs, labels), output)
    save_figure(per_class_iou_figure(runs, labels), per_class)
    print(f"wrote {output} and {per_class}")
    return 0


if __name__ == "__main__":
    run_main(main, parse_args())
