"""Say what a checkpoint holds: format version, model, classes, dataset, training state, metrics.

    python tools/inspect_checkpoint.py runs/fcn_resnet50_voc/best.pth
    python tools/inspect_checkpoint.py fcn_resnet50_coco-1167a1af.pth     # a raw state dict (format 0)
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages live at the repository root
from core.checkpoint import describe, load_checkpoint  # noqa: E402
from core.cli import ArgumentParser, HelpFormatter, run_main  # noqa: E402
from src import get_spec, guess_architecture  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("checkpoints", nargs="+", metavar="FILE", help="checkpoint files")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        print(describe(ckpt))
        if not ckpt.model_name:
            print(f"  layout: {layout(ckpt.state_dict)}")
    return 0


def layout(state: dict) -> str:
    """The registry's models whose raw state dicts look like `state`, and the class count they read off it."""
    names = guess_architecture(state)
    if not names:
        return "no model of the registry"
    key = get_spec(names[0]).classes_key
    return f"{' or '.join(names)}, {state[key].shape[0]} classes" + (
        ", auxiliary head" if any(k.startswith("aux_classifier.") for k in state) else "")


if __name__ == "__main__":
    run_main(main, parse_args())
