"""Writes the VOC-class masks of COCO 2017 once, as palette PNGs, so training does not decode polygons.

    python tools/prepare_coco.py --data-path data/coco [--splits train val] [--workers 8]

Optional: --dataset coco decodes the masks on the fly without it. The masks (exactly what on-the-fly decoding
gives, turned like their photos) go to <data-path>/voc_masks/{train2017,val2017}/<image>.png; the list of
images, written last, tells --dataset coco to read them (and that pycocotools is no longer needed). A rerun
replaces them; an interrupted run leaves no list, so the split keeps decoding on the fly.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_utils/ and core/ live at the repository root
from core.cli import USER_ERRORS, ArgumentParser, non_negative_int, one_line  # noqa: E402
from core.platform import atomic_write  # noqa: E402
from data_utils import (  # noqa: E402
    add_max_image_pixels_flag,
    dataset_spec,
    missing_files,
    raise_if_missing,
    save_mask,
    set_max_image_pixels,
)
from data_utils.coco import PREPARED_DIR, coco_pairs, manifest_path, write_manifest  # noqa: E402


class _WriteMasks(Dataset):
    """Decodes and writes mask `index` in a loader worker; yields nothing but the count."""

    def __init__(self, dataset, out_dir: Path) -> None:
        self.dataset, self.out_dir = dataset, out_dir

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> int:
        image, _ = self.dataset.pairs[index]
        save_mask(self.dataset.load_mask(index), self.out_dir / f"{image.stem}.png", self.dataset.palette)
        return 1


def _unbatched(item: int) -> int:
    return item


def prepare_split(data_path: Path, split: str, workers: int) -> int:
    """Writes every mask of `split` (train2017 / val2017) and then its list; returns the number of masks."""
    spec = dataset_spec("coco")
    pairs = coco_pairs(data_path, split)  # checks the annotations and photos before anything is touched
    raise_if_missing(missing_files(pairs), data_path / "annotations" / f"instances_{split}.json")
    manifest_path(data_path, split).unlink(missing_ok=True)  # stale PNGs must not be read while rewriting
    dataset = spec.dataset_of(data_path, pairs)
    out_dir = data_path / PREPARED_DIR / split
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(_WriteMasks(dataset, out_dir), batch_size=None, num_workers=workers,
                        collate_fn=_unbatched)
    with tqdm(loader, desc=split, unit="mask") as bar:  # closed before an error is printed
        written = sum(bar)
    write_manifest(data_path, split, pairs, atomic_write)
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Write COCO's VOC-class masks once as palette PNGs.")
    parser.add_argument("--data-path", required=True, help="COCO root: train2017/, val2017/, annotations/")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val"),
                        help="splits to prepare (default: train val)")
    parser.add_argument("--workers", type=non_negative_int, default=min(8, os.cpu_count() or 1),
                        help="processes decoding masks (default: min(8, CPU count))")
    add_max_image_pixels_flag(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    spec, data_path = dataset_spec("coco"), Path(args.data_path)
    try:
        set_max_image_pixels(args.max_image_pixels)
        for split in args.splits:
            count = prepare_split(data_path, spec.split_on_disk(split), args.workers)
            print(f"{split}: {count} masks written to {data_path / PREPARED_DIR / spec.split_on_disk(split)}")
    except (*USER_ERRORS, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
