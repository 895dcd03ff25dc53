"""A run's history read back from its run directory: steps.jsonl (every print interval) and metrics.jsonl
(every epoch), for curves.png and tools/plot_curves.py."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from core.palette import PathLike

from .run_files import CHECKPOINTS, CONFIG_FILE, METRICS_FILE, STEPS_FILE


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    """The JSON objects of a .jsonl file; a torn last line (a crash mid-append) is skipped, not an error."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass
class RunHistory:
    """What a run recorded. `steps`: one dict per print interval (epoch, step, global_step, steps_per_epoch,
    loss, interval_loss, lr, images_per_s); `epochs`: the metrics.jsonl lines."""

    run_dir: Path
    steps: List[Dict[str, Any]] = field(default_factory=list)
    epochs: List[Dict[str, Any]] = field(default_factory=list)
    class_names: Optional[List[str]] = None
    palette: Optional[List[int]] = None  # the checkpoint's (None: the VOC colours)
    args: Dict[str, Any] = field(default_factory=dict)  # config.yaml's resolved arguments, when there is one

    def loss_labels(self) -> tuple:
        """What the train and the validation loss are: the run's criterion with the aux term in training
        (train_utils.loss.criterion), on the main head only in evaluation."""
        loss = self.args.get("loss", "ce")
        if self.args.get("loss") == "ce+dice" and self.args.get("dice_weight") is not None:
            loss = f"ce + {self.args['dice_weight']:g} x dice"
        aux = self.args.get("aux")
        if aux is None:  # the model's default: only the ResNet FCNs have an aux head
            aux = str(self.args.get("model", "fcn_resnet50")).startswith("fcn_resnet")
        weight = self.args.get("aux_weight", 0.5)
        train = f"{loss} + {weight:g} x aux head" if aux and weight else loss
        return f"train loss ({train})", f"validation loss ({loss}, main head)"

    @property
    def evaluated(self) -> List[Dict[str, Any]]:
        """The epochs that have metrics."""
        return [e for e in self.epochs if "mean_iou" in e]

    def best(self) -> Optional[Dict[str, Any]]:
        """The evaluated epoch with the highest mIoU (the one best.pth holds), or None."""
        scored = [e for e in self.evaluated if isinstance(e.get("mean_iou"), (int, float))]
        return max(scored, key=lambda e: e["mean_iou"]) if scored else None


def load_history(run_dir: PathLike, class_names: Optional[List[str]] = None) -> RunHistory:
    """The history of the run in `run_dir`; FileNotFoundError when it holds neither record file."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file() and not (run_dir / STEPS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: no {METRICS_FILE} or {STEPS_FILE}; pass the run directory of a "
                                f"training run (its --output-dir)")
    meta = checkpoint_meta(run_dir)
    return RunHistory(run_dir, read_jsonl(run_dir / STEPS_FILE), read_jsonl(run_dir / METRICS_FILE),
                      class_names if class_names is not None else meta.get("class_names"), meta.get("palette"),
                      run_args(run_dir))


def run_args(run_dir: Path) -> Dict[str, Any]:
    """config.yaml's resolved arguments ({} when it is missing or unreadable: only labels depend on it)."""
    try:
        args = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("args")
    except (OSError, yaml.YAMLError, AttributeError, UnicodeDecodeError):
        return {}
    return args if isinstance(args, dict) else {}


def checkpoint_meta(run_dir: Path) -> Dict[str, Any]:
    """class_names and palette stored in the run's last.pth or best.pth (memory-mapped: the weights are not
    read); {} when neither file has them."""
    for name in CHECKPOINTS:
        try:
            ckpt = torch.load(run_dir / name, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # a missing, foreign or damaged file only costs the names
            continue
        names, palette = ckpt.get("class_names"), ckpt.get("palette")
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            ok = isinstance(palette, list) and len(palette) == 768 and all(type(v) is int for v in palette)
            return {"class_names": names, "palette": palette if ok else None}
    return {}


def checkpoint_class_names(run_dir: Path) -> Optional[List[str]]:
    """Class names stored in the run's last.pth or best.pth (memory-mapped: the weights are not read)."""
    for name in CHECKPOINTS:
        try:
            names = torch.load(run_dir / name, map_location="cpu", weights_only=True, mmap=True).get("class_names")
        except Exception:  # a missing, foreign or damaged file only costs the names
            continue
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
    return None
