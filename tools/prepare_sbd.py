"""Builds "trainaug", the SBD-augmented Pascal VOC 2012 training set (10,582 images on the real data).

    python tools/prepare_sbd.py --sbd-root /data/benchmark_RELEASE --voc-root /data/VOC

SBD (Hariharan et al., 2011) re-annotated 11,355 VOC 2011 images, stored as MATLAB files. This converts
benchmark_RELEASE/dataset/cls/<id>.mat into palette PNGs in VOCdevkit/VOC2012/SegmentationClassAug/, copies
VOC's own masks there for the VOC train ids (they take priority: they carry the 255 boundary band that SBD
lacks), and writes ImageSets/Segmentation/trainaug.txt = (VOC train | SBD train | SBD val) - VOC val, so no
validation image leaks into training. Then train with --dataset voc-aug.
"""
import argparse
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_utils/ and core/ live at the repository root
from core.cli import USER_ERRORS, ArgumentParser, one_line  # noqa: E402
from data_utils import read_split_ids, save_mask, voc_dir  # noqa: E402

LoadMat = Callable[[Path], dict]


def import_loadmat() -> LoadMat:
    """scipy.io.loadmat; scipy is needed by this tool only, so it is not a project dependency."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError("reading SBD's .mat files needs scipy: pip install scipy") from e
    return loadmat


def sbd_dataset_dir(sbd_root: Path) -> Path:
    """benchmark_RELEASE/dataset, checked to hold cls/, train.txt and val.txt."""
    dataset = sbd_root / "dataset"
    for needed in (dataset / "cls", dataset / "train.txt", dataset / "val.txt"):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} not found: --sbd-root must be SBD's benchmark_RELEASE folder "
                                    f"(it contains dataset/cls, dataset/train.txt and dataset/val.txt)")
    return dataset


def load_sbd_mask(path: Path, loadmat: LoadMat) -> np.ndarray:
    """SBD's class map: the GTcls struct's Segmentation field, (H, W) uint8 of VOC class indices."""
    try:
        return np.ascontiguousarray(loadmat(path)["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    except Exception as e:  # scipy raises many kinds on a damaged file; a file without GTcls is a KeyError
        raise ValueError(f"cannot read {path} as an SBD class map ({type(e).__name__}: {e}); re-extract "
                         f"benchmark_RELEASE from the SBD archive") from None


def trainaug_ids(voc_train: Sequence[str], voc_val: Sequence[str], sbd_train: Sequence[str],
                 sbd_val: Sequence[str]) -> list[str]:
    """(VOC train | SBD train | SBD val) - VOC val, sorted; SBD's val is not VOC's val, so it trains too."""
    ids = (set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val)
    leaked = ids & set(voc_val)
    if leaked:  # an explicit check rather than assert, which python -O would skip
        raise RuntimeError(f"VOC val ids leaked into trainaug: {sorted(leaked)[:5]}")
    return sorted(ids)


def write_mask(sample_id: str, voc: Path, sbd: Path, out_dir: Path, loadmat: LoadMat) -> str:
    """Writes one trainaug mask; returns "voc" or "sbd" for where it came from."""
    voc_mask, sbd_mat = voc / "SegmentationClass" / f"{sample_id}.png", sbd / "cls" / f"{sample_id}.mat"
    if voc_mask.is_file():
        shutil.copyfile(voc_mask, out_dir / voc_mask.name)
        return "voc"
    if not sbd_mat.is_file():
        raise FileNotFoundError(f"no mask for {sample_id}: neither {voc_mask} nor {sbd_mat} exists")
    save_mask(load_sbd_mask(sbd_mat, loadmat), out_dir / f"{sample_id}.png")
    return "sbd"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Convert SBD masks and write VOC 2012 trainaug.txt.")
    parser.add_argument("--sbd-root", required=True, help="SBD's benchmark_RELEASE folder")
    parser.add_argument("--voc-root", required=True, help="folder that contains VOCdevkit (with VOC2012)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    try:
        loadmat = import_loadmat()
        sbd, voc = sbd_dataset_dir(Path(args.sbd_root)), voc_dir(args.voc_root, "2012")
        splits = voc / "ImageSets" / "Segmentation"
        ids = trainaug_ids(read_split_ids(splits / "train.txt"), read_split_ids(splits / "val.txt"),
                           read_split_ids(sbd / "train.txt"), read_split_ids(sbd / "val.txt"))
        kept = [i for i in ids if (voc / "JPEGImages" / f"{i}.jpg").is_file()]
        out_dir = voc / "SegmentationClassAug"
        out_dir.mkdir(exist_ok=True)
        with tqdm(kept, desc="masks", unit="img") as bar:  # closed before an error is printed
            sources = [write_mask(i, voc, sbd, out_dir, loadmat) for i in bar]
    except (ImportError, *USER_ERRORS, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    (splits / "trainaug.txt").write_text("".join(f"{i}\n" for i in kept))
    print(f"trainaug: {len(kept)} ids written to {splits / 'trainaug.txt'} ({sources.count('voc')} VOC masks "
          f"copied, {sources.count('sbd')} SBD masks converted); {len(ids) - len(kept)} ids skipped because "
          f"their JPEG is not in {voc / 'JPEGImages'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
