"""Joint image/mask transforms for segmentation, built on torchvision.transforms.v2.

v2 dispatches on tv_tensors types: a tv_tensors.Mask is always resized with NEAREST (labels are never blended
into values that are no class) and padded with its own fill, so one call moves image and mask together.
Outputs stay uint8; normalisation happens on the device. Randomness comes from torch's global generator, so
seeding it per sample (train_utils.sampler.SeededDataset) makes every crop, flip, rotation and colour change
reproducible.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from core.constants import IGNORE_INDEX

Sample = tuple[tv_tensors.Image, tv_tensors.Mask]


def _as_tv_tensors(image: torch.Tensor, mask: torch.Tensor) -> Sample:
    # Plain tensors would be treated as images (or passed through untouched), so tag both explicitly.
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


@dataclass(frozen=True)
class Augmentation:
    """Augmentation on top of the reference preset; the defaults (all 0) leave the reference recipe unchanged.

    Args:
        color_jitter: (brightness, contrast, saturation, hue) of v2.ColorJitter; image only.
        rotate: rotation by a uniform angle in [-rotate, rotate] degrees, the image bilinear, the mask nearest;
            corners that leave the image are 0 in the image and IGNORE_INDEX in the mask.
        vflip: probability of a vertical flip (off by default: most photos have a sky and a ground).
        gaussian_blur: probability of a Gaussian blur (sigma uniform in [0.1, 2]); image only.
    """

    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    rotate: float = 0.0
    vflip: float = 0.0
    gaussian_blur: float = 0.0

    def check(self) -> None:
        """Raises a ValueError naming the flag whose value cannot work."""
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            raise ValueError(f"--color-jitter takes 4 values B C S H with B, C, S >= 0 and 0 <= H <= 0.5, got "
                             f"{list(self.color_jitter)}")
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"--rotate must be in [0, 180] degrees, got {self.rotate:g}")
        for flag, p in (("--vflip", self.vflip), ("--gaussian-blur", self.gaussian_blur)):
            if not 0 <= p <= 1:
                raise ValueError(f"{flag} is a probability in [0, 1], got {p:g}")

    def rotation(self) -> list[v2.Transform]:
        """The random rotation (image and mask together), if any."""
        if self.rotate == 0:
            return []
        # v2 rotates a Mask with NEAREST whatever `interpolation` says, so labels are never blended.
        return [v2.RandomRotation(self.rotate, interpolation=v2.InterpolationMode.BILINEAR,
                                  fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})]

    def photometric(self) -> list[v2.Transform]:
        """Steps that change colours only: v2 passes a Mask through them untouched."""
        steps: list[v2.Transform] = []
        if any(self.color_jitter):
            steps.append(v2.ColorJitter(*self.color_jitter))
        if self.gaussian_blur > 0:
            # Kernel 9 covers +-2 sigma of the widest blur.
            steps.append(v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=self.gaussian_blur))
        return steps


def _check_train_args(base_size: int, crop_size: int, hflip_prob: float, scale_range: tuple[float, float]) -> None:
    if base_size <= 0 or crop_size <= 0:
        raise ValueError(f"--base-size and --crop-size must be positive, got {base_size} and {crop_size}")
    low, high = scale_range
    if not 0 < low <= high or int(low * base_size) < 1:
        raise ValueError(f"scale range must satisfy 0 < min <= max and min * --base-size >= 1, got {scale_range}")
    if not 0.0 <= hflip_prob <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {hflip_prob}")
    if crop_size > base_size * high:
        raise ValueError(f"--crop-size {crop_size} exceeds the largest resized short side, --base-size {base_size} "
                         f"x {high} = {base_size * high:g}, so no crop could ever be filled with image; lower "
                         f"--crop-size or raise --base-size")


class SegmentationPresetTrain:
    """Random scale, horizontal flip and random crop, as in torchvision's segmentation reference, plus the
    optional `augment` steps: rotation before the scaling, vertical flip after the horizontal one, colour
    jitter and blur after the crop (on the fewest pixels).

    Args:
        base_size: the short side is resized to a random int in [scale_range[0], scale_range[1]] * base_size.
        crop_size: height (and, without crop_width, width) of the random crop; images smaller than it are
            padded with 0 and their masks with IGNORE_INDEX, so padding carries no label.
        hflip_prob: probability of a horizontal flip.
        scale_range: (min, max) factors of base_size.
        crop_width: width of the crop when it is not square (Cityscapes recipes crop 512x1024).
        augment: the extra augmentation (none by default).
    """

    def __init__(self, base_size: int = 520, crop_size: int = 480, hflip_prob: float = 0.5,
                 scale_range: tuple[float, float] = (0.5, 2.0), crop_width: Optional[int] = None,
                 augment: Augmentation = Augmentation()) -> None:
        _check_train_args(base_size, crop_size, hflip_prob, scale_range)
        if crop_width is not None and crop_width <= 0:
            raise ValueError(f"--crop-width must be positive, got {crop_width}")
        augment.check()
        min_size, max_size = int(scale_range[0] * base_size), int(scale_range[1] * base_size)
        # Added steps draw random numbers only when enabled: the default recipe's draws stay the reference's.
        # Rotating first, at the file's resolution, costs a fraction of rotating the image resized up to 2x.
        steps = augment.rotation()
        # v2.RandomResize draws from [min_size, max_size); the +1 makes the upper end reachable.
        steps.append(v2.RandomResize(min_size, max_size + 1, antialias=True))
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if augment.vflip > 0:
            steps.append(v2.RandomVerticalFlip(augment.vflip))
        steps.append(v2.RandomCrop((crop_size, crop_width or crop_size), pad_if_needed=True,
                                   fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}))
        steps += augment.photometric()
        self.transforms = v2.Compose(steps)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        return self.transforms(*_as_tv_tensors(image, mask))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


class SegmentationPresetEval:
    """Evaluation preprocessing: by default none, so metrics are computed at the original label resolution.

    Args:
        size: if given, the image's short side is resized to it (antialiased); the model's output is then
            resized back to the mask, which keeps its original size.
        resize_mask: also resize the mask (NEAREST), the older reference protocol that scores at `size`.
    """

    def __init__(self, size: Optional[int] = None, resize_mask: bool = False) -> None:
        if size is not None and size <= 0:
            raise ValueError(f"evaluation resize size must be positive, got {size}")
        self.size, self.resize_mask = size, resize_mask
        self.resize = v2.Resize(size, antialias=True) if size is not None else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Sample:
        image, mask = _as_tv_tensors(image, mask)
        if self.resize is None:
            return image, mask
        if self.resize_mask:
            return self.resize(image, mask)
        return self.resize(image), mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, resize_mask={self.resize_mask})"
