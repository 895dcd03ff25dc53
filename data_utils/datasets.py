"""Segmentation datasets over (image, mask) file pairs: any list of pairs, a VOC split, two folders.

Items are (tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask uint8 (H, W)). Nothing is normalised or turned
into floats here: uint8 moves 4x fewer bytes through the loader, and normalisation happens on the device.
"""
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from core.palette import (
    VOC_CLASSES_FILE,
    VOC_PALETTE,
    ClassNames,
    Palette,
    PathLike,
    check_class_names,
    check_palette,
    resolve_class_names,
)

from .io import check_label_map, check_mask_values, image_size, read_image, read_mask
from .pairs import Pair, folder_pairs, missing_files, raise_if_missing, voc_pairs

Sample = tuple[tv_tensors.Image, tv_tensors.Mask]
Transforms = Callable[[tv_tensors.Image, tv_tensors.Mask], Sample]


def own_class_file(data_path: PathLike) -> Path:
    """The dataset's own classes.json (next to VOCdevkit, or next to a folder dataset's splits: the demo data
    and custom data declare their classes there), else the 21 VOC classes."""
    own = Path(data_path) / "classes.json"
    if own.is_file():
        return own
    if own.exists() or own.is_symlink():  # a class file that cannot be read must not mean "the VOC classes"
        what = "a folder" if own.is_dir() else "a link to a missing file or a loop of links"
        raise ValueError(f"{own} is {what}, not a class file; make it a JSON file like "
                         f'{{"background": 0, "cat": 1}}, or remove it to use the 21 VOC classes')
    return VOC_CLASSES_FILE


class SegmentationDataset(Dataset):
    """(image, mask) file pairs; items are (tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask uint8 (H, W)).

    Args:
        pairs: (image path, mask path) of each sample.
        class_names: name of each class index; mask values must be below their count or be IGNORE_INDEX.
        transforms: joint transform called as transforms(image, mask), e.g. SegmentationPresetTrain.
        label_map: optional (256,) uint8 table, raw mask value -> train id (IGNORE_INDEX = ignore), applied
            as each mask is read, before its values are checked.
        palette: colours of the 256 mask values, for saving masks and predictions of this dataset.

    `decoder` ("torchvision" or "pil", see data_utils.io.read_image) picks who decodes the files.
    """

    decoder = "torchvision"

    def __init__(self, pairs: Sequence[tuple[PathLike, PathLike]], class_names: Sequence[str],
                 transforms: Optional[Transforms] = None, label_map: Optional[np.ndarray] = None,
                 palette: Palette = VOC_PALETTE) -> None:
        if not pairs:
            raise ValueError("the dataset has no (image, mask) pairs")
        self.pairs: list[Pair] = [(Path(image), Path(mask)) for image, mask in pairs]
        self.class_names = check_class_names(class_names, "the class_names argument")
        self.transforms = transforms
        self.label_map = None if label_map is None else check_label_map(label_map, "the label_map argument")
        self.palette = check_palette(palette, "the palette argument")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_mask(self, index: int) -> np.ndarray:
        """Mask `index` as (H, W) uint8 train ids (label map applied), not checked."""
        return read_mask(self.pairs[index][1], self.label_map, self.decoder)

    def load(self, index: int) -> Sample:
        """Sample `index` before transforms, checked: same image and mask size, valid mask values."""
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path, self.decoder), self.load_mask(index)
        if tuple(image.shape[1:]) != mask.shape:
            raise ValueError(f"image {image_path} is {image.shape[1]}x{image.shape[2]} (HxW) but its mask "
                             f"{mask_path} is {mask.shape[0]}x{mask.shape[1]}; a mask must have its image's size")
        check_mask_values(mask, self.num_classes, mask_path)
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask))

    def __getitem__(self, index: int) -> Sample:
        image, mask = self.load(index)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image `index` as displayed, from the file header alone (no decoding)."""
        return image_size(self.pairs[index][0])

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, e.g. for batching equal sizes together in evaluation."""
        return [self.image_size(i) for i in range(len(self))]


class VOCSegmentation(SegmentationDataset):
    """A Pascal VOC segmentation split: VOCdevkit/VOC`year`/{JPEGImages, SegmentationClass, ImageSets}.

    Args:
        voc_root: folder that contains VOCdevkit.
        year: VOC release, e.g. "2012".
        split: "train", "val", "trainval", or "trainaug" (SBD-augmented, made by tools/prepare_sbd.py).
        transforms: joint transform called as transforms(image, mask).
        class_names: list or JSON file; default `voc_root`/classes.json if it exists, else the 21 VOC classes.
        label_map: optional raw mask value -> train id table (see SegmentationDataset).
        palette: colours of the mask values.
    """

    def __init__(self, voc_root: PathLike, year: str = "2012", split: str = "train",
                 transforms: Optional[Transforms] = None, class_names: ClassNames = None,
                 label_map: Optional[np.ndarray] = None, palette: Palette = VOC_PALETTE) -> None:
        pairs, split_file = voc_pairs(voc_root, year, split)
        raise_if_missing(missing_files(pairs), split_file)
        names = resolve_class_names(class_names, own_class_file(voc_root))
        super().__init__(pairs, names, transforms, label_map, palette)
        self.split = split


class SegmentationFolder(SegmentationDataset):
    """Images and masks in two folders, paired by file stem (images/cat.jpg <-> masks/cat.png).

    Args:
        images_dir: photos (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, .ppm).
        masks_dir: palette or grayscale .png masks of class indices.
        transforms: joint transform called as transforms(image, mask).
        class_names: list, or JSON file like pascal_voc_classes.json (the default).
        label_map: optional raw mask value -> train id table (see SegmentationDataset).
        palette: colours of the mask values.
    """

    def __init__(self, images_dir: PathLike, masks_dir: PathLike, transforms: Optional[Transforms] = None,
                 class_names: ClassNames = None, label_map: Optional[np.ndarray] = None,
                 palette: Palette = VOC_PALETTE) -> None:
        pairs, problems = folder_pairs(images_dir, masks_dir)
        if problems:
            raise FileNotFoundError(f"{len(problems)} unpaired files: {'; '.join(problems[:5])}"
                                    f"{'; ...' if len(problems) > 5 else ''}. Add the missing files or remove "
                                    f"the unpaired ones")
        super().__init__(pairs, resolve_class_names(class_names), transforms, label_map, palette)
