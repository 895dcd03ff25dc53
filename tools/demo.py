"""The embedded demo behind `make demo`: data, an untrained baseline, training, validation and prediction,
and the pictures of all of it (curves.png, vis/ grids, validation tiles and figures; matplotlib draws them).

    python tools/demo.py [--device cpu] [--min-miou 0.5]

Every step runs the project's own command (printed before it runs), so the demo doubles as a tutorial.
Offline and self-contained: the dataset is generated, the backbone starts from random weights.
"""
import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from core.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from core.cli import USER_ERRORS, ArgumentParser, HelpFormatter, one_line, read_config  # noqa: E402
from core.palette import load_class_names  # noqa: E402
from core.runtime import add_device_flag  # noqa: E402
from data_utils import make_demo_dataset  # noqa: E402
from src import build_model  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="training config")
    add_device_flag(parser)
    parser.add_argument("--min-miou", type=float, default=0.5, help="fail if the trained mIoU is below this")
    return parser.parse_args()


class StepFailed(Exception):
    """A step's command failed; it has printed its own error."""


def step(title: str, *command: str) -> None:
    print(f"\n=== {title}\n$ {shlex.join(['python', *command])}", flush=True)
    code = subprocess.run([sys.executable, *command], cwd=ROOT).returncode
    if code != 0:
        raise StepFailed(f"step '{title}' failed (exit code {code}); see its error above")


def miou(json_path: Path) -> float:
    return json.loads(json_path.read_text())["single-scale"]["mean_iou"]


def main() -> int:
    args = parse_args()
    try:
        return run_demo(args)
    except (StepFailed, *USER_ERRORS, OSError, yaml.YAMLError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1


def run_demo(args: argparse.Namespace) -> int:
    args.config = str(Path(args.config).expanduser().resolve())  # train.py runs from the repository root
    config = read_config(args.config)
    if not isinstance(config, dict):
        raise ValueError(f"{args.config}: expected a mapping of flag names to values; start from configs/demo.yaml")
    wrong = [k for k in ("data-path", "output-dir", "model") if not isinstance(config.get(k), str)]
    if wrong:
        raise ValueError(f"{args.config}: the demo needs {', '.join(wrong)} in the config, as text; start from "
                         f"configs/demo.yaml")
    data, out = ROOT / config["data-path"], ROOT / config["output-dir"]
    dataset = str(config.get("dataset", "voc"))
    start = time.perf_counter()
    if not (data / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").is_file():
        print(f"=== demo data\n$ python my_dataset.py demo --out {config['data-path']} --overwrite")
        # The demo's own folder: an interrupted earlier run may have left part of it.
        make_demo_dataset(data, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    # The untrained model, for comparison: same architecture and seed as the training run starts from.
    torch.manual_seed(0)
    names = load_class_names(data / "classes.json")
    untrained = build_model(config["model"], len(names))
    save_checkpoint(Checkpoint(untrained.state_dict(), model_name=config["model"], num_classes=len(names),
                               class_names=names, aux=getattr(untrained, "aux_classifier", None) is not None,
                               dataset=dataset),
                    out / "untrained.pth")
    common = ["--data-path", str(data), "--dataset", dataset, "--device", args.device, "-j",
              str(config.get("workers", 1))]
    step("untrained model", "validation.py", *common, "--weights", str(out / "untrained.pth"),
         "--json", str(out / "untrained.json"))
    step("training", "train.py", "--config", args.config, "--device", args.device, "--overwrite")
    pictures = importlib.util.find_spec("matplotlib") is not None
    if not pictures:
        print("note: matplotlib is not installed, so the demo draws no curves or validation figures: "
              "pip install matplotlib (make demo installs it)", file=sys.stderr)
    step("validation of the best checkpoint", "validation.py", *common, "--weights", str(out / "best.pth"),
         "--json", str(out / "best.json"),
         *(["--save-dir", str(out / "val_pictures"), "--worst", "3"] if pictures else []))
    image = sorted((data / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("val_*.jpg"))[0]
    step("prediction", "predict.py", "--weights", str(out / "best.pth"), "--image", str(image), "--output",
         str(out / "prediction.png"), "--overlay", "--device", args.device, "--runs", "5")
    before, after = miou(out / "untrained.json"), miou(out / "best.json")
    grids = sorted((out / "vis").glob("epoch_*.png"), key=lambda p: int(p.stem[6:]))
    print(f"\n=== done in {time.perf_counter() - start:.0f} s\n"
          f"mIoU on the demo validation set: untrained {before * 100:.1f} -> trained {after * 100:.1f}\n"
          f"run directory   {out}: config.yaml, train.log, results.txt, metrics.jsonl, steps.jsonl, last.pth, "
          f"best.pth\n"
          f"validation      {out / 'record_mAP.txt'}\n"
          f"prediction      {out / 'prediction.png'} and {out / 'prediction_overlay.png'}")
    if grids:
        print(f"predictions     {grids[-1]} (image | ground truth | prediction; one grid per evaluation in "
              f"{out / 'vis'})")
    if pictures:
        val = out / "val_pictures"
        print(f"curves          {out / 'curves.png'} (loss, validation metrics, learning rate)\n"
              f"validation      {val / 'tiles'} (image | ground truth | prediction | errors per image), "
              f"{val / 'confusion.png'}, {val / 'per_class_iou.png'}, the 3 worst images in {val / 'worst'}")
    if after < args.min_miou:
        print(f"error: the trained mIoU {after:.3f} is below {args.min_miou}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
