"""Cityscapes (fine annotations) in torchvision's layout, with the official labelId -> trainId table.

    <data-path>/leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png
    <data-path>/gtFine/{train,val}/<city>/<id>_gtFine_labelIds.png

The masks hold the 34 raw label ids; the 19 evaluated classes get train ids 0..18 and every other id
(void, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate)
becomes IGNORE_INDEX, as in cityscapesScripts' labels.py.
"""
from pathlib import Path

from core.palette import palette_from_colors

from .io import make_label_map
from .pairs import Pair

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

# (name, raw label id, colour) of each train id 0..18.
CITYSCAPES_CLASSES_TABLE = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)), ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)), ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)), ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)
CITYSCAPES_CLASSES = [name for name, _, _ in CITYSCAPES_CLASSES_TABLE]
CITYSCAPES_PALETTE = palette_from_colors([color for _, _, color in CITYSCAPES_CLASSES_TABLE])
CITYSCAPES_LABEL_MAP = make_label_map({raw: train for train, (_, raw, _) in enumerate(CITYSCAPES_CLASSES_TABLE)})


def _by_id(root: Path, suffix: str) -> dict[str, Path]:
    """<city>/<id> -> file, for every <root>/<city>/<id><suffix>."""
    return {f"{p.parent.name}/{p.name[:-len(suffix)]}": p for p in sorted(root.glob(f"*/*{suffix}"))}


def find_cityscapes_pairs(data_path: Path, split: str) -> tuple[list[Pair], list[str]]:
    """Photos and labelId masks of `split` paired by city and id, and one line per unpaired file."""
    images_root, labels_root = data_path / "leftImg8bit" / split, data_path / "gtFine" / split
    for root, archive in ((images_root, "leftImg8bit_trainvaltest.zip"), (labels_root, "gtFine_trainvaltest.zip")):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} not found: --data-path must be the Cityscapes root holding "
                                    f"leftImg8bit/ and gtFine/ ({archive} unpacked there)")
    images, labels = _by_id(images_root, IMAGE_SUFFIX), _by_id(labels_root, LABEL_SUFFIX)
    if not images:
        raise ValueError(f"no <city>/*{IMAGE_SUFFIX} files in {images_root}")
    pairs = [(images[key], labels[key]) for key in sorted(images.keys() & labels.keys())]
    problems = [f"image {images[key]} has no mask {labels_root / (key + LABEL_SUFFIX)}"
                for key in sorted(images.keys() - labels.keys())]
    problems += [f"mask {labels[key]} has no image {images_root / (key + IMAGE_SUFFIX)}"
                 for key in sorted(labels.keys() - images.keys())]
    return pairs, problems
