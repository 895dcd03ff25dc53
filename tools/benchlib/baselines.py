"""What ours is compared with, written out here (and only here).

torchvision's reference recipe (references/segmentation: train.py, utils.py, transforms.py, presets.py) for
training, evaluation, inference and its PIL data pipeline; and one-at-a-time folder prediction, the loop
predict.py ran before folder prediction went through a DataLoader.
"""
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF1
from torchvision.transforms.v2 import functional as TF

from core.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from core.runtime import Runtime
from data_utils import read_image
from inference.folder import Prediction, predict_images
from src import REGISTRY

# torchvision's builder of each model that has one (the registry's `torchvision` field).
TV_BUILDERS = {name: spec.torchvision for name, spec in REGISTRY.items() if spec.torchvision is not None}
LR = 0.02  # the reference recipe's; the value does not change the speed


def has_aux(model: nn.Module) -> bool:
    return getattr(model, "aux_classifier", None) is not None


def num_classes_of(model: nn.Module) -> int:
    """Output channels of ours or torchvision's model: the registry's classifier key (both use the same keys)."""
    state = model.state_dict()
    for spec in REGISTRY.values():
        if spec.classes_key in state:
            return state[spec.classes_key].shape[0]
    raise ValueError(f"{type(model).__name__}: no classifier weights of a registered model")


def tv_normalize(images: torch.Tensor) -> torch.Tensor:
    """torchvision's presets on the host: uint8 -> float in [0, 1] (ToDtype scale=True), then Normalize."""
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked on CUDA (what a pin_memory DataLoader hands over), as is on the CPU."""
    return t.pin_memory() if device.type == "cuda" else t


def tv_criterion(outputs: Dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """torchvision's reference criterion: CE(out) + 0.5 CE(aux), ignore 255."""
    losses = {name: F.cross_entropy(x, target, ignore_index=IGNORE_INDEX) for name, x in outputs.items()}
    return losses["out"] if len(losses) == 1 else losses["out"] + 0.5 * losses["aux"]


class TVTrain:
    """One step of torchvision's train_one_epoch (the baseline), fp32, contiguous.

    TV's param groups (backbone, classifier, aux head at 10x lr), torch.optim.SGD with its default
    implementation, PolynomialLR(power 0.9) stepped every iteration. The input is what TV's loader yields:
    a float32 normalised batch and int64 masks, here pinned and sent with non_blocking=True.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, device: torch.device,
                 total_steps: int) -> None:
        self.model, self.device = model.to(device).train(), device
        groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad]},
                  {"params": [p for p in model.classifier.parameters() if p.requires_grad]}]
        if has_aux(model):
            groups.append({"params": [p for p in model.aux_classifier.parameters() if p.requires_grad],
                           "lr": LR * 10})
        self.optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=total_steps, power=0.9)
        self.images, self.targets = pinned(tv_normalize(images), device), pinned(masks.long(), device)
        self.loss = torch.zeros(())

    def __call__(self) -> None:
        image = self.images.to(self.device, non_blocking=True)
        target = self.targets.to(self.device, non_blocking=True)
        output = self.model(image)
        loss = tv_criterion(output, target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.loss = loss.detach()  # TV also calls loss.item() here, a host sync per step: left out

    def report(self) -> Dict[str, Any]:
        return {"final_loss": float(self.loss)}


class TVEval:
    """torchvision's evaluate() (the baseline): one image at a time, fp32, a float32 host-normalised image and
    int64 mask per step (blocking .to()), aux head computed as built, and TV's ConfusionMatrix (below)."""

    def __init__(self, model: nn.Module, images: List[torch.Tensor], masks: List[torch.Tensor],
                 device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device
        self.num_classes = num_classes_of(model)
        self.samples = [(tv_normalize(i[None]), m[None].long()) for i, m in zip(images, masks)]
        self.mat: Optional[torch.Tensor] = None

    @torch.inference_mode()
    def __call__(self) -> None:
        n = self.num_classes
        self.mat = torch.zeros((n, n), dtype=torch.int64, device=self.device)
        for image, target in self.samples:
            image, target = image.to(self.device), target.to(self.device)
            output = self.model(image)["out"]
            self.update(target.flatten(), output.argmax(1).flatten())

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """torchvision references/segmentation/utils.py ConfusionMatrix.update. Boolean-mask indexing and
        bincount each make the host wait for the device."""
        n = self.num_classes
        k = (a >= 0) & (a < n)
        inds = n * a[k].to(torch.int64) + b[k]
        self.mat += torch.bincount(inds, minlength=n ** 2).reshape(n, n)

    def matrix(self) -> torch.Tensor:
        return self.mat.cpu()


class TVInfer:
    """The baseline: the torchvision model as built (aux head included), eval, fp32, under inference_mode; a
    float32 host-normalised image sent to the device, the argmax taken there."""

    def __init__(self, model: nn.Module, image: torch.Tensor, device: torch.device) -> None:
        self.model, self.device, self.image = model.to(device).eval(), device, image[None]
        self.labels: Optional[torch.Tensor] = None

    @torch.inference_mode()
    def __call__(self) -> None:
        self.labels = self.model(tv_normalize(self.image).to(self.device))["out"].argmax(1)


# ------------------------------------------------------------------------- torchvision's training pipeline

class TVPresetTrain:
    """torchvision's SegmentationPresetTrain with its default PIL backend: RandomResize of the short side to
    randint(0.5, 2.0 x base), horizontal flip, RandomCrop (image padded with 0, mask with 255), PILToTensor
    (mask as int64), ToDtype(float32, scale=True), Normalize. Randomness from Python's `random` and torch's
    generator, as there."""

    def __init__(self, base_size: int, crop_size: int, hflip_prob: float = 0.5) -> None:
        self.min_size, self.max_size = int(0.5 * base_size), int(2.0 * base_size)
        self.crop_size, self.hflip_prob = crop_size, hflip_prob

    def __call__(self, image: Image.Image, target: Image.Image) -> Tuple[torch.Tensor, torch.Tensor]:
        size = random.randint(self.min_size, self.max_size)
        image = TF1.resize(image, size, antialias=True)
        target = TF1.resize(target, size, interpolation=InterpolationMode.NEAREST)
        if random.random() < self.hflip_prob:
            image, target = TF1.hflip(image), TF1.hflip(target)
        image, target = self._pad(image, 0), self._pad(target, IGNORE_INDEX)
        top, left, height, width = _crop_params(image, self.crop_size)
        image = TF1.crop(image, top, left, height, width)
        target = TF1.crop(target, top, left, height, width)
        tensor = TF1.normalize(TF1.convert_image_dtype(TF1.pil_to_tensor(image), torch.float32),
                               list(IMAGENET_MEAN), list(IMAGENET_STD))
        return tensor, torch.as_tensor(np.array(target), dtype=torch.int64)

    def _pad(self, img: Image.Image, fill: int) -> Image.Image:
        """references/segmentation/transforms.py pad_if_smaller."""
        width, height = img.size
        if min(width, height) >= self.crop_size:
            return img
        return TF1.pad(img, [0, 0, max(self.crop_size - width, 0), max(self.crop_size - height, 0)], fill=fill)


def _crop_params(img: Image.Image, size: int) -> Tuple[int, int, int, int]:
    """torchvision.transforms.RandomCrop.get_params for a square crop."""
    width, height = img.size
    top = int(torch.randint(0, height - size + 1, size=(1,)).item())
    left = int(torch.randint(0, width - size + 1, size=(1,)).item())
    return top, left, size, size


class TVFolderDataset(Dataset):
    """torchvision.datasets.VOCSegmentation's item over (image, mask) files: PIL decode, the photo converted to
    RGB, then the joint transforms."""

    def __init__(self, pairs: Sequence[Tuple[Path, Path]], transforms: Callable) -> None:
        self.pairs, self.transforms = list(pairs), transforms

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        return self.transforms(Image.open(image_path).convert("RGB"), Image.open(mask_path))


def _cat_list(tensors: Sequence[torch.Tensor], fill_value: int) -> torch.Tensor:
    """references/segmentation/utils.py cat_list: pads to the largest size at the bottom and right."""
    max_size = tuple(max(s) for s in zip(*[t.shape for t in tensors]))
    batched = tensors[0].new_full((len(tensors),) + max_size, fill_value)
    for t, pad in zip(tensors, batched):
        pad[..., :t.shape[-2], :t.shape[-1]].copy_(t)
    return batched


def tv_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    images, targets = zip(*batch)
    return _cat_list(images, 0), _cat_list(targets, IGNORE_INDEX)


def tv_loader(dataset: Dataset, batch_size: int, workers: int, seed: int) -> DataLoader:
    """references/segmentation/train.py's training loader: RandomSampler, drop_last, its collate_fn, torch's
    defaults otherwise (no pinned memory, no persistent workers, prefetch 2)."""
    sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=tv_collate,
                      drop_last=True)


# -------------------------------------------------------------------------- one-at-a-time folder prediction

def one_at_a_time(model: nn.Module, paths: Sequence[Path], runtime: Runtime,
                  write: Callable[[Prediction], None]) -> None:
    """predict.py's folder loop before the DataLoader: read a photo, predict it, write it, then the next one,
    all in one thread (the library's read_image and predict_images; the same `write` as ours)."""
    for index, path in enumerate(paths):
        image = read_image(path)
        mask = predict_images(model, image[None], runtime)[0].argmax(0).to(torch.uint8).cpu().numpy()
        write(Prediction(index, image, mask))
