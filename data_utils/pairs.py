"""Finding the (image, mask) file pairs of a split on disk: the VOC layout and the two-folder layout."""
from pathlib import Path
from typing import Sequence

from core.palette import PathLike

from .io import IMAGE_EXTENSIONS

Pair = tuple[Path, Path]


def missing_files(pairs: Sequence[Pair]) -> list[str]:
    """One line per missing image or mask file, naming its sample id (the image's stem) and the path."""
    return [f"id {image.stem}: missing {path}" for image, mask in pairs
            for path in (image, mask) if not path.is_file()]


def complete_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs whose image and mask files both exist."""
    return [(image, mask) for image, mask in pairs if image.is_file() and mask.is_file()]


def raise_if_missing(problems: Sequence[str], source: PathLike) -> None:
    """FileNotFoundError listing the first `problems` (missing files) of the split `source` lists."""
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise FileNotFoundError(f"{len(problems)} files listed by {source} are missing: {shown}. Restore them "
                                f"or drop those samples (`python my_dataset.py check` lists them all)")


def voc_dir(voc_root: PathLike, year: str = "2012") -> Path:
    """`voc_root`/VOCdevkit/VOC`year`, checked to exist."""
    path = Path(voc_root) / "VOCdevkit" / f"VOC{year}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: voc_root ({voc_root}) must be the folder that contains "
                                f"VOCdevkit")
    return path


def read_split_ids(split_file: Path) -> list[str]:
    """Sample ids, one per line, from a VOC ImageSets file (blank lines skipped)."""
    if split_file.is_dir():
        raise ValueError(f"split file {split_file} is a folder; it must be a text file of image ids, one per line")
    if not split_file.is_file():
        available = sorted(p.stem for p in split_file.parent.glob("*.txt"))
        hint = ("create it with tools/prepare_sbd.py" if split_file.stem == "trainaug"
                else f"splits found there: {available or 'none'}")
        raise FileNotFoundError(f"split file {split_file} not found; {hint}")
    try:
        text = split_file.read_text(encoding="utf-8-sig")  # -sig: the BOM Windows Notepad writes
    except UnicodeDecodeError as e:
        raise ValueError(f"split file {split_file} is not UTF-8 text (byte {e.start}); it must list one image id "
                         f"per line") from None
    except OSError as e:  # unreadable: permissions, an I/O error
        raise ValueError(f"cannot read split file {split_file} ({e.strerror or e}); fix its permissions") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {split_file} is empty; it must list one image id per line")
    return ids


def voc_pairs(voc_root: PathLike, year: str, split: str) -> tuple[list[Pair], Path]:
    """(image, mask) paths of a VOC split (not checked to exist) and the split file that lists them.

    Args:
        voc_root: folder that contains VOCdevkit.
        year: "2012", "2007", ...
        split: name of a file in ImageSets/Segmentation; "trainaug" takes masks from SegmentationClassAug.
    """
    root = voc_dir(voc_root, year)
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    mask_dir = root / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
    pairs = [(root / "JPEGImages" / f"{i}.jpg", mask_dir / f"{i}.png") for i in read_split_ids(split_file)]
    return pairs, split_file


def _files_by_stem(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in extensions:
            continue
        if path.stem in files:
            raise ValueError(f"{files[path.stem]} and {path} have the same name stem, so neither can be paired "
                             f"with its mask; rename or remove one")
        files[path.stem] = path
    return files


def folder_pairs(images_dir: PathLike, masks_dir: PathLike) -> tuple[list[Pair], list[str]]:
    """Image and mask files paired by stem, and one line per image without mask or mask without image.

    Args:
        images_dir: photos (any of IMAGE_EXTENSIONS: .jpg .jpeg .png .bmp .tif .tiff .webp .ppm).
        masks_dir: .png masks named like their images (cat.jpg -> cat.png).
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    images = _files_by_stem(images_dir, IMAGE_EXTENSIONS)
    masks = _files_by_stem(masks_dir, (".png",))
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    pairs = [(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
    problems = [f"image {images[s]} has no mask {masks_dir / (s + '.png')}"
                for s in sorted(images.keys() - masks.keys())]
    problems += [f"mask {masks[s]} has no image {s}.* in {images_dir}"
                 for s in sorted(masks.keys() - images.keys())]
    return pairs, problems
