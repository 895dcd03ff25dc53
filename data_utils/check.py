"""Scanning a dataset's masks: per-class pixel counts (class weights) and the `check` command's report."""
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.constants import IGNORE_INDEX
from core.palette import PathLike
from core.platform import atomic_write

from .datasets import SegmentationDataset
from .io import image_note, label_counts
from .pairs import Pair
from .registry import dataset_spec


class _ScanItems(Dataset):
    """Yields (mask value counts, problem, note) per sample instead of raising, so one bad file does not end a
    scan; the note says what reading did to a 16-bit or float photo. With `masks_only`, only the masks are read
    (pixel counts, no check of the images)."""

    def __init__(self, dataset: SegmentationDataset, masks_only: bool = False) -> None:
        self.dataset, self.masks_only = dataset, masks_only

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str, str]:
        try:
            if self.masks_only:
                return label_counts(self.dataset.load_mask(index)), "", ""
            _, mask = self.dataset.load(index)
        except (FileNotFoundError, ValueError) as e:
            return np.zeros(256, dtype=np.int64), str(e), ""
        return label_counts(mask.numpy()), "", image_note(self.dataset.pairs[index][0])


class _MaskCounts(Dataset):
    """Mask value counts of the samples `indices` of `dataset`; an unreadable mask raises, naming its file."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> np.ndarray:
        return label_counts(self.dataset.load_mask(self.indices[index]))


def _unbatched(item: object) -> object:
    return item


def class_pixel_counts(dataset: SegmentationDataset, indices: Sequence[int], workers: int = 0,
                       progress: bool = True) -> np.ndarray:
    """Pixel count of each of the 256 mask values, (256,) int64, over the masks of samples `indices` (label
    map applied); only masks are read, in `workers` loader processes. Each rank passes its share, e.g.
    range(rank, len(dataset), world_size), and the counts are summed across ranks.

    Args:
        dataset: the dataset whose masks to count.
        indices: sample indices to count.
        workers: DataLoader worker processes (0: in this process).
        progress: show a progress bar.
    """
    counts = np.zeros(256, dtype=np.int64)
    items = _MaskCounts(dataset, indices)
    if not len(items):
        return counts
    loader = DataLoader(items, batch_size=None, num_workers=workers, collate_fn=_unbatched)
    for item_counts in tqdm(loader, desc="counting pixels", unit="mask", disable=not progress):
        counts += item_counts
    return counts


def scan_split(pairs: list[Pair], class_names: list[str], workers: int, masks_only: bool = False,
               progress: bool = True, label_map: Optional[np.ndarray] = None,
               unlabelled: Optional[list[str]] = None,
               notes: Optional[list[str]] = None) -> tuple[np.ndarray, list[str]]:
    """Counts of each mask value over all pairs and one problem line per unreadable or invalid pair (with
    `masks_only`, the images are not read). `label_map` (raw value -> train id) is applied to each mask; the
    mask files in which every pixel is IGNORE_INDEX are appended to `unlabelled`, and a line per photo that
    was read converted (16-bit, float) to `notes`, when they are given."""
    if not pairs:
        return np.zeros(256, dtype=np.int64), []
    return scan_dataset(SegmentationDataset(pairs, class_names, label_map=label_map), workers, masks_only, progress,
                        unlabelled, notes)


def scan_dataset(dataset: SegmentationDataset, workers: int, masks_only: bool = False, progress: bool = True,
                 unlabelled: Optional[list[str]] = None,
                 notes: Optional[list[str]] = None) -> tuple[np.ndarray, list[str]]:
    """Counts of each mask value over every sample of `dataset` and one problem line per unreadable or invalid
    sample (with `masks_only`, the images are not read); samples without a labelled pixel are appended to
    `unlabelled`, photos read converted to `notes`, when they are given."""
    counts, problems = np.zeros(256, dtype=np.int64), []
    items = _ScanItems(dataset, masks_only)
    loader = DataLoader(items, batch_size=None, num_workers=workers, collate_fn=_unbatched)
    loop = tqdm(loader, desc="scanning", unit="img", disable=not progress)
    for index, (item_counts, problem, note) in enumerate(loop):
        counts += item_counts
        if problem:
            problems.append(problem)
        elif unlabelled is not None and not item_counts[:IGNORE_INDEX].any():
            unlabelled.append(str(dataset.pairs[index][1]))
        if note and notes is not None:
            notes.append(note)
    return counts, problems


def print_report(num_images: int, counts: np.ndarray, class_names: list[str], problems: list[str],
                 unlabelled: Sequence[str] = (), notes: Sequence[str] = ()) -> None:
    """Prints the pixels per class, the classes that never occur, the masks without a labelled pixel, the
    photos read converted and every problem."""
    total = max(int(counts.sum()), 1)
    print(f"images scanned: {num_images} (samples with missing files are listed under problems)")
    print("pixels per class:")
    for index, name in enumerate(class_names):
        print(f"  {index:3d} {name:<24} {int(counts[index]):>14,d} {100 * counts[index] / total:6.2f}%")
    print(f"  {IGNORE_INDEX:3d} {'(ignored)':<24} {int(counts[IGNORE_INDEX]):>14,d} "
          f"{100 * counts[IGNORE_INDEX] / total:6.2f}%")
    absent = [name for index, name in enumerate(class_names) if counts[index] == 0]
    print(f"classes that never occur: {', '.join(absent) if absent else 'none'}")
    # Not a problem (an image may hold nothing to label), but such images add nothing to training: every crop
    # of them is a batch entry without a labelled pixel.
    print(f"images without labelled pixels (every pixel {IGNORE_INDEX}): {len(unlabelled)}")
    for path in unlabelled[:20]:
        print(f"  {path}")
    if len(unlabelled) > 20:
        print(f"  ... and {len(unlabelled) - 20} more")
    if notes:
        print(f"photos converted to 8 bits as they are read: {len(notes)}")
        for note in notes:
            print(f"  {note}")
    print(f"problems: {len(problems)}")
    for problem in problems:
        print(f"  {problem}")


def check_split(name: str, data_path: PathLike, split: str, workers: int,
                save_counts: Optional[PathLike] = None, progress: bool = True) -> int:
    """Scans `split` of the DATASETS entry `name` and prints the report: 0 if it is clean, 1 if any file has a
    problem. With `save_counts`, also writes the per-class pixel counts there as JSON.

    Args:
        name: a DATASETS key.
        data_path: the dataset root.
        split: the split to scan.
        workers: DataLoader worker processes decoding files.
        save_counts: JSON file for the counts (for class-weighted losses), or None.
        progress: show a progress bar.
    """
    spec = dataset_spec(name)
    pairs, problems = spec.pairs(data_path, split)
    class_names = spec.class_names(Path(data_path))
    unlabelled: list[str] = []
    notes: list[str] = []
    counts, bad = np.zeros(256, dtype=np.int64), []
    if pairs:
        counts, bad = scan_dataset(spec.dataset_of(data_path, pairs), workers, progress=progress,
                                   unlabelled=unlabelled, notes=notes)
    problems = problems + bad
    print_report(len(pairs), counts, class_names, problems, unlabelled, notes)
    if save_counts:
        report = {"class_names": class_names, "counts": counts[:len(class_names)].tolist(),
                  "ignored": int(counts[IGNORE_INDEX])}
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(save_counts, lambda f: f.write(text.encode("utf-8")))
        print(f"pixel counts written to {save_counts}")
    return 1 if problems else 0
