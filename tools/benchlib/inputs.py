"""Synthetic inputs: photo-like images and blocky masks, in memory or written as files."""
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image

from core.constants import IGNORE_INDEX
from data_utils import save_mask

Size = Tuple[int, int]
# VOC has few distinct image sizes; these three (height x width) cover most of it.
VOC_SIZES: Tuple[Size, ...] = ((375, 500), (333, 500), (500, 375))
JPEG_QUALITY = 90


def smooth_images(n: int, size: Size, gen: torch.Generator) -> torch.Tensor:
    """uint8 (n, 3, H, W) photo-like images: random colours on a coarse grid, upsampled, with mild noise."""
    height, width = size
    coarse = torch.rand(n, 3, max(height // 64, 2), max(width // 64, 2), generator=gen) * 255
    images = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    images = images + 8 * torch.randn(n, 3, height, width, generator=gen)
    return images.clamp(0, 255).round().to(torch.uint8)


def random_masks(n: int, size: Size, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 (n, H, W) blocky class maps with about 5% ignore pixels (VOC marks object boundaries so)."""
    height, width = size
    coarse = torch.randint(0, num_classes, (n, 1, max(height // 32, 1), max(width // 32, 1)), generator=gen)
    masks = F.interpolate(coarse.float(), size=size, mode="nearest")[:, 0].to(torch.uint8)
    masks[torch.rand(n, height, width, generator=gen) < 0.05] = IGNORE_INDEX
    return masks


def image_set(num_images: int, sizes: Sequence[Size], num_classes: int,
              seed: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """`num_images` uint8 images (3, H, W) and masks (H, W), their sizes taken from `sizes` in turn."""
    gen = torch.Generator().manual_seed(seed)
    chosen = [sizes[i % len(sizes)] for i in range(num_images)]
    images = [smooth_images(1, s, gen)[0] for s in chosen]
    return images, [random_masks(1, s, num_classes, gen)[0] for s in chosen]


def write_jpeg(image: torch.Tensor, path: Path) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=JPEG_QUALITY)


def write_folder_dataset(root: Path, images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> Path:
    """JPEGs and palette PNG masks in build_dataset's "folder" layout: root/train/{images, masks}."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(images, masks)):
        write_jpeg(image, root / "train" / "images" / f"{i:05d}.jpg")
        save_mask(mask, root / "train" / "masks" / f"{i:05d}.png")
    return root


def write_photos(folder: Path, images: Sequence[torch.Tensor]) -> List[Path]:
    """The images as JPEGs in `folder`, for folder prediction."""
    folder.mkdir(parents=True)
    paths = [folder / f"{i:05d}.jpg" for i in range(len(images))]
    for image, path in zip(images, paths):
        write_jpeg(image, path)
    return paths
