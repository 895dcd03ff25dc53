"""The dataset registry: one DatasetSpec per --dataset name, read by build_dataset and by `check`.

Adding a dataset (COCO, Cityscapes, ADE20K) is one DATASETS entry plus the function that lists its
(image, mask) pairs for a split; its class names, palette and label map (raw ids -> train ids) are fields of
the entry, and the default builder makes a SegmentationDataset of the pairs.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from core.palette import VOC_PALETTE, Palette, PathLike, check_palette, load_class_names
from .datasets import SegmentationDataset, SegmentationFolder, Transforms, VOCSegmentation, own_class_file
from .io import check_label_map
from .pairs import Pair, complete_pairs, folder_pairs, missing_files, voc_pairs

# (data_path, split on disk) -> (pairs whose files both exist, one line per missing or unpaired file).
FindPairs = Callable[[Path, str], tuple[list[Pair], list[str]]]
Build = Callable[["DatasetSpec", Path, str, Optional[Transforms]], SegmentationDataset]


def own_class_names(data_path: Path) -> list[str]:
    """The classes of the dataset's own classes.json, else the 21 VOC classes (see own_class_file)."""
    return load_class_names(own_class_file(data_path))


def build_from_pairs(spec: "DatasetSpec", data_path: Path, split: str,
                     transforms: Optional[Transforms]) -> SegmentationDataset:
    """A SegmentationDataset of the pairs spec.find_pairs lists; any missing or unpaired file is an error."""
    pairs, problems = spec.find_pairs(data_path, split)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise FileNotFoundError(f"{len(problems)} files of the {spec.name} split {split} in {data_path} are "
                                f"missing or unpaired: {shown}. Restore them or drop those samples "
                                f"(`python my_dataset.py check --dataset {spec.name}` lists them all)")
    return SegmentationDataset(pairs, spec.class_names(data_path), transforms, spec.label_map, spec.palette)


@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """One --dataset entry.

    Args:
        name: the --dataset value.
        description: one line for --help.
        splits: the splits the layout has by convention (a VOC tree may hold more ImageSets files).
        find_pairs: (data_path, split) -> (complete pairs, problems). It raises only when the layout itself
            is absent (no VOCdevkit, no split file, no folder), so `check` can list every bad file.
        build: (spec, data_path, split, transforms) -> dataset; build_from_pairs unless the layout has its
            own dataset class.
        class_names: data_path -> the class names, ordered by train id.
        palette: colours of the 256 mask values, for saved masks and predictions.
        label_map: (256,) uint8 table, raw mask value -> train id (IGNORE_INDEX = ignore), applied as masks
            are read; None when the masks already hold train ids.
        split_names: requested split -> the split on disk, where they differ.
    """

    name: str
    description: str
    splits: tuple[str, ...]
    find_pairs: FindPairs
    build: Build = build_from_pairs
    class_names: Callable[[Path], list[str]] = own_class_names
    palette: Palette = field(default_factory=lambda: list(VOC_PALETTE))
    label_map: Optional[np.ndarray] = None
    split_names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_palette(self.palette, f"dataset {self.name}")
        if self.label_map is not None:
            check_label_map(self.label_map, f"dataset {self.name}")

    def split_on_disk(self, split: str) -> str:
        return self.split_names.get(split, split)

    def pairs(self, data_path: PathLike, split: str) -> tuple[list[Pair], list[str]]:
        """Complete pairs and problems of `split`, without raising for missing files (for `check`)."""
        return self.find_pairs(Path(data_path), self.split_on_disk(split))

    def dataset(self, data_path: PathLike, split: str,
                transforms: Optional[Transforms] = None) -> SegmentationDataset:
        """The dataset of `split`; raises if any of its files is missing."""
        return self.build(self, Path(data_path), self.split_on_disk(split), transforms)


def find_voc_pairs(data_path: Path, split: str) -> tuple[list[Pair], list[str]]:
    """The pairs of VOCdevkit/VOC2012's `split` whose files exist, and one line per missing file."""
    pairs, _ = voc_pairs(data_path, "2012", split)
    return complete_pairs(pairs), missing_files(pairs)


def find_folder_pairs(data_path: Path, split: str) -> tuple[list[Pair], list[str]]:
    """data_path/split/images and data_path/split/masks paired by stem, and the unpaired files."""
    return folder_pairs(data_path / split / "images", data_path / split / "masks")


def build_voc(spec: DatasetSpec, data_path: Path, split: str, transforms: Optional[Transforms]) -> VOCSegmentation:
    return VOCSegmentation(data_path, "2012", split, transforms, spec.class_names(data_path), spec.label_map,
                           spec.palette)


def build_folder(spec: DatasetSpec, data_path: Path, split: str,
                 transforms: Optional[Transforms]) -> SegmentationFolder:
    root = data_path / split
    return SegmentationFolder(root / "images", root / "masks", transforms, spec.class_names(data_path),
                              spec.label_map, spec.palette)


# Every layout reads its class names from --data-path/classes.json when there is one, else the 21 VOC classes.
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("voc", "Pascal VOC 2012: VOCdevkit/VOC2012 in --data-path, splits from ImageSets/Segmentation",
                ("train", "val", "trainval"), find_voc_pairs, build_voc),
    # Trains on the SBD-augmented list and validates on VOC val as usual.
    DatasetSpec("voc-aug", "VOC 2012 with SBD's masks: train is trainaug (tools/prepare_sbd.py), val is VOC val",
                ("train", "val"), find_voc_pairs, build_voc, split_names={"train": "trainaug"}),
    DatasetSpec("folder", "SPLIT/images and SPLIT/masks in --data-path, paired by file stem",
                ("train", "val"), find_folder_pairs, build_folder),
)}


def dataset_spec(name: str) -> DatasetSpec:
    """The DATASETS entry `name`, or a ValueError listing the names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def build_dataset(name: str, data_path: PathLike, split: str,
                  transforms: Optional[Transforms] = None) -> SegmentationDataset:
    """The dataset `name` (a DATASETS key: "voc", "voc-aug", "folder") for `split`.

    "voc": `data_path` contains VOCdevkit/VOC2012; `split` is a file in ImageSets/Segmentation.
    "voc-aug": as "voc", but split "train" reads trainaug.txt and SegmentationClassAug (tools/prepare_sbd.py).
    "folder": one folder per split, masks named like their images, optional classes.json
    (default: the 21 VOC classes)::

        data_path/
            classes.json            {"background": 0, "cat": 1, ...}
            train/images/a.jpg      any of .jpg .jpeg .png .bmp .tif .tiff .webp .ppm
            train/masks/a.png       palette or grayscale PNG of class indices, 255 = ignore
            val/images/...
            val/masks/...

    Args:
        name: a DATASETS key.
        data_path: dataset root, as above.
        split: "train", "val", ...
        transforms: joint transform called as transforms(image, mask).
    """
    return dataset_spec(name).dataset(data_path, split, transforms)
