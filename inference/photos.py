"""Photos for prediction at loader speed: decoded in DataLoader workers and batched by size (photos of one size
only, so nothing is padded). A photo that cannot be read comes back as its problem, so that one bad photo does
not stop the others.

    loader = photo_loader(paths, batch_size=8, workers=4, pin_memory=True)
"""
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from core.platform import ignore_signals_in_worker
from data_utils import image_size, read_image


class PhotoFolder(Dataset):
    """Photos by path; item i is (i, uint8 (3, H, W) photo as displayed, "") or (i, None, problem) when the file
    cannot be read, so that one bad photo does not stop the others."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], str]:
        try:
            return index, read_image(self.paths[index]), ""
        except (FileNotFoundError, ValueError) as e:
            return index, None, str(e)


@dataclass
class PhotoBatch:
    """One batch of the loader: `groups` of (indices, uint8 (n, 3, H, W)) photos of one size (one group unless a
    photo decodes to another size than its header said), and the problems [(index, message)] of the photos
    that could not be read."""

    groups: List[Tuple[List[int], torch.Tensor]]
    problems: List[Tuple[int, str]]

    def pin_memory(self) -> "PhotoBatch":  # called by a pin_memory DataLoader
        self.groups = [(indices, images.pin_memory()) for indices, images in self.groups]
        return self

    def __len__(self) -> int:
        return sum(len(indices) for indices, _ in self.groups) + len(self.problems)


def collate_photos(items: Sequence[Tuple[int, Optional[torch.Tensor], str]]) -> PhotoBatch:
    by_shape: Dict[Tuple[int, ...], List[Tuple[int, torch.Tensor]]] = defaultdict(list)
    for index, image, _ in items:
        if image is not None:
            by_shape[tuple(image.shape)].append((index, image))
    groups = [([i for i, _ in group], torch.stack([image for _, image in group])) for group in by_shape.values()]
    return PhotoBatch(groups, [(index, problem) for index, image, problem in items if image is None])


def size_batches(paths: Sequence[Path], batch_size: int) -> List[List[int]]:
    """Indices in batches of photos of equal displayed size (read from the headers, no decoding), in the order
    of each size's first photo. A photo whose header cannot be read goes alone: its worker reports why."""
    groups: Dict[Tuple[int, ...], List[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        try:
            groups[image_size(path)].append(i)
        except (FileNotFoundError, ValueError):
            groups[(-1, i)].append(i)
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


def photo_loader(paths: Sequence[Path], batch_size: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader of PhotoBatch: photos decoded in `workers` processes (0: in this one), batched by size.

    Args:
        paths: photo files.
        batch_size: at most this many photos (of one size) per batch.
        workers: DataLoader worker processes.
        pin_memory: page-locked batches, for asynchronous copies to a GPU.
    """
    kwargs = {"prefetch_factor": 4, "worker_init_fn": ignore_signals_in_worker} if workers > 0 else {}
    return DataLoader(PhotoFolder(paths), batch_sampler=size_batches(paths, batch_size), num_workers=workers,
                      collate_fn=collate_photos, pin_memory=pin_memory, **kwargs)
