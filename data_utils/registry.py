"""The dataset registry: one DatasetSpec per --dataset name, read by build_dataset and by `check`.

Adding a dataset is one DATASETS entry plus the function that lists its (image, mask) pairs for a split; its
class names, palette and label map (raw ids -> train ids) are fields of the entry, and the default builder
makes a SegmentationDataset of the pairs (COCO, whose masks come from annotations, has its own).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from core.palette import VOC_CLASSES_FILE, VOC_PALETTE, Palette, PathLike, check_palette, load_class_names

from .ade20k import ADE20K_CLASSES, ADE20K_LABEL_MAP, ADE20K_PALETTE, find_ade20k_pairs
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_MAP, CITYSCAPES_PALETTE, find_cityscapes_pairs
from .coco import coco_dataset, find_coco_pairs
from .datasets import SegmentationDataset, SegmentationFolder, Transforms, VOCSegmentation, own_class_file
from .demo import DEMO_PALETTE
from .io import check_label_map
from .pairs import Pair, complete_pairs, folder_pairs, missing_files, voc_pairs

# (data_path, split on disk) -> (pairs whose files both exist, one line per missing or unpaired file).
FindPairs = Callable[[Path, str], tuple[list[Pair], list[str]]]
Build = Callable[["DatasetSpec", Path, str, Optional[Transforms]], SegmentationDataset]
# (spec, data_path, pairs, transforms) -> the dataset of those pairs.
OfPairs = Callable[["DatasetSpec", Path, list[Pair], Optional[Transforms]], SegmentationDataset]


def own_class_names(data_path: Path) -> list[str]:
    """The classes of the dataset's own classes.json, else the 21 VOC classes (see own_class_file)."""
    return load_class_names(own_class_file(data_path))


def dataset_of_pairs(spec: "DatasetSpec", data_path: Path, pairs: list[Pair],
                     transforms: Optional[Transforms]) -> SegmentationDataset:
    """A SegmentationDataset reading the pairs' mask files with the entry's classes, label map and palette."""
    return SegmentationDataset(pairs, spec.class_names(data_path), transforms, spec.label_map, spec.palette)


def build_from_pairs(spec: "DatasetSpec", data_path: Path, split: str,
                     transforms: Optional[Transforms]) -> SegmentationDataset:
    """A SegmentationDataset of the pairs spec.find_pairs lists; any missing or unpaired file is an error."""
    pairs, problems = spec.find_pairs(data_path, split)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise FileNotFoundError(f"{len(problems)} files of the {spec.name} split {split} in {data_path} are "
                                f"missing or unpaired: {shown}. Restore them or drop those samples "
                                f"(`python my_dataset.py check --dataset {spec.name}` lists them all)")
    return spec.of_pairs(spec, data_path, pairs, transforms)


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
        of_pairs: (spec, data_path, pairs, transforms) -> the dataset of those pairs (for build_from_pairs
            and `check`); dataset_of_pairs unless masks are not files of class indices.
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
    of_pairs: OfPairs = dataset_of_pairs

    def __post_init__(self) -> None:
        check_palette(self.palette, f"dataset {self.name}")
        if self.label_map is not None:
            check_label_map(self.label_map, f"dataset {self.name}")

    def split_on_disk(self, split: str) -> str:
        return self.split_names.get(split, split)

    def pairs(self, data_path: PathLike, split: str) -> tuple[list[Pair], list[str]]:
        """Complete pairs and problems of `split`, without raising for missing files (for `check`)."""
        return self.find_pairs(Path(data_path), self.split_on_disk(split))

    def dataset_of(self, data_path: PathLike, pairs: list[Pair],
                   transforms: Optional[Transforms] = None) -> SegmentationDataset:
        """The dataset of `pairs` (as `pairs` lists them), for scanning them."""
        return self.of_pairs(self, Path(data_path), pairs, transforms)

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


def voc_class_names(_: Path) -> list[str]:
    return load_class_names(VOC_CLASSES_FILE)


def cityscapes_class_names(_: Path) -> list[str]:
    return list(CITYSCAPES_CLASSES)


def ade20k_class_names(_: Path) -> list[str]:
    return list(ADE20K_CLASSES)


def coco_of_pairs(spec: DatasetSpec, data_path: Path, pairs: list[Pair],
                  transforms: Optional[Transforms]) -> SegmentationDataset:
    return coco_dataset(pairs, spec.class_names(data_path), transforms, spec.palette)


# voc, voc-aug and folder read their class names from --data-path/classes.json when there is one, else the
# 21 VOC classes; coco, cityscapes and ade20k have their own fixed classes, palettes and label maps.
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("voc", "Pascal VOC 2012: VOCdevkit/VOC2012 in --data-path, splits from ImageSets/Segmentation",
                ("train", "val", "trainval"), find_voc_pairs, build_voc),
    # Trains on the SBD-augmented list and validates on VOC val as usual.
    DatasetSpec("voc-aug", "VOC 2012 with SBD's masks: train is trainaug (tools/prepare_sbd.py), val is VOC val",
                ("train", "val"), find_voc_pairs, build_voc, split_names={"train": "trainaug"}),
    DatasetSpec("demo", "the synthetic demo dataset (python my_dataset.py demo): the VOC layout, its 5 classes "
                "drawn in the colours their names say", ("train", "val"), find_voc_pairs, build_voc,
                palette=DEMO_PALETTE),
    DatasetSpec("folder", "SPLIT/images and SPLIT/masks in --data-path, paired by file stem",
                ("train", "val"), find_folder_pairs, build_folder),
    DatasetSpec("coco", "COCO 2017 with the 21 VOC classes: train2017/, val2017/, annotations/ in --data-path "
                "(masks decoded with pycocotools, or prepared by tools/prepare_coco.py)",
                ("train", "val"), find_coco_pairs, class_names=voc_class_names, of_pairs=coco_of_pairs,
                split_names={"train": "train2017", "val": "val2017"}),
    DatasetSpec("cityscapes", "Cityscapes fine: leftImg8bit/ and gtFine/ in --data-path, 19 classes (labelIds "
                "mapped to trainIds)", ("train", "val"), find_cityscapes_pairs,
                class_names=cityscapes_class_names, palette=CITYSCAPES_PALETTE,
                label_map=CITYSCAPES_LABEL_MAP),
    DatasetSpec("ade20k", "ADE20K SceneParsing: ADEChallengeData2016/ in --data-path, 150 classes (0 = other is "
                "ignored)", ("train", "val"), find_ade20k_pairs, class_names=ade20k_class_names,
                palette=ADE20K_PALETTE, label_map=ADE20K_LABEL_MAP,
                split_names={"train": "training", "val": "validation"}),
)}


def dataset_spec(name: str) -> DatasetSpec:
    """The DATASETS entry `name`, or a ValueError listing the names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def build_dataset(name: str, data_path: PathLike, split: str,
                  transforms: Optional[Transforms] = None) -> SegmentationDataset:
    """The dataset `name` (a DATASETS key: "voc", "voc-aug", "folder", "coco", "cityscapes", "ade20k").

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

    "coco", "cityscapes", "ade20k": the layouts the datasets ship in (data_utils.coco, .cityscapes, .ade20k).

    Args:
        name: a DATASETS key.
        data_path: dataset root, as above.
        split: "train", "val", ...
        transforms: joint transform called as transforms(image, mask).
    """
    return dataset_spec(name).dataset(data_path, split, transforms)
