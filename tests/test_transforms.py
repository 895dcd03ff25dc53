"""Tests of transforms.py: shapes, dtypes, image/mask alignment, and that mask values are never invented."""
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from core.constants import IGNORE_INDEX
from my_dataset import VOCSegmentation, collate_fn
from transforms import Augmentation, SegmentationPresetEval, SegmentationPresetTrain


def random_sample(height: int, width: int, num_values: int, seed: int, step: int = 1):
    """Random image and mask; the mask takes the values 0, step, ..., (num_values - 1) * step."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    mask = torch.randint(0, num_values, (height, width), dtype=torch.uint8, generator=g) * step
    return image, mask


def blocky_sample(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of 8x8 blocks of classes 0..19 and an image whose every channel is 10 * class: alignment is visible."""
    rows = torch.arange(height)[:, None] // 8
    cols = torch.arange(width)[None, :] // 8
    mask = ((rows * 7 + cols) % 20).to(torch.uint8)
    return (mask * 10).expand(3, height, width).clone(), mask


def values(t: torch.Tensor) -> set[int]:
    return set(torch.unique(t).tolist())


@pytest.mark.parametrize("seed", range(8))
def test_train_preset_never_invents_mask_values(seed):
    torch.manual_seed(seed)
    # Values 40 apart: any blending of neighbouring labels (a non-nearest resize) makes values between them.
    image, mask = random_sample(40, 56, num_values=6, seed=seed, step=40)
    out_image, out_mask = SegmentationPresetTrain(base_size=48, crop_size=64, scale_range=(0.5, 2.0))(image, mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    assert out_image.dtype == torch.uint8 and out_mask.dtype == torch.uint8
    assert type(out_image) is tv_tensors.Image and type(out_mask) is tv_tensors.Mask
    assert values(out_mask) <= values(mask) | {IGNORE_INDEX}


def test_train_preset_resize_is_nearest_for_masks():
    # Upscaling 2x with NEAREST repeats each label in a 2x2 block; any interpolation would break that.
    torch.manual_seed(0)
    image, mask = random_sample(20, 20, num_values=250, seed=1)
    _, out = SegmentationPresetTrain(base_size=40, crop_size=40, hflip_prob=0.0, scale_range=(1.0, 1.0))(image, mask)
    assert out.shape == (40, 40)
    assert values(out) <= values(mask)
    blocks = out.unfold(0, 2, 2).unfold(1, 2, 2)  # (20, 20, 2, 2)
    assert (blocks == blocks[..., :1, :1]).all()


@pytest.mark.parametrize("seed", range(6))
def test_train_preset_keeps_image_and_mask_aligned(seed):
    # Scale fixed at 1 (short side already base_size): only the flip and the crop act, both exact on pixels.
    torch.manual_seed(seed)
    image, mask = blocky_sample(48, 80)
    out_image, out_mask = SegmentationPresetTrain(base_size=48, crop_size=48, scale_range=(1.0, 1.0))(image, mask)
    assert torch.equal(out_image[0], out_mask * 10)


def test_train_preset_rectangular_crop_is_a_window_of_the_sample():
    # Scale fixed at 1 and no flip: a 16x40 crop (Cityscapes-style, wider than high) must be the window of
    # the input at some offset, for image and mask alike.
    image, mask = blocky_sample(48, 80)
    preset = SegmentationPresetTrain(base_size=48, crop_size=16, hflip_prob=0.0, scale_range=(1.0, 1.0),
                                     crop_width=40)
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_mask = preset(image, mask)
        assert out_mask.shape == (16, 40) and out_image.shape == (3, 16, 40)
        windows = [(y, x) for y in range(48 - 16 + 1) for x in range(80 - 40 + 1)
                   if torch.equal(mask[y:y + 16, x:x + 40], out_mask)]
        assert windows and all(torch.equal(image[:, y:y + 16, x:x + 40], out_image) for y, x in windows)


def test_train_preset_pads_image_with_zero_and_mask_with_ignore():
    image = torch.full((3, 20, 20), 200, dtype=torch.uint8)
    mask = torch.full((20, 20), 3, dtype=torch.uint8)
    preset = SegmentationPresetTrain(base_size=20, crop_size=30, scale_range=(1.0, 1.5))
    padded = 0
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = preset(image, mask)  # short side 20..30, so mostly smaller than the crop
        padding = out_mask == IGNORE_INDEX
        assert (out_mask[~padding] == 3).all()
        assert (out_image[:, padding] == 0).all() and (out_image[:, ~padding] == 200).all()
        padded += int(padding.any())
    assert padded > 0


def test_train_preset_scale_range_reaches_both_ends():
    sizes = set()
    preset = SegmentationPresetTrain(base_size=10, crop_size=5, hflip_prob=0.0, scale_range=(0.5, 1.0))
    image, mask = random_sample(10, 20, num_values=3, seed=0)
    resize = preset.transforms.transforms[0]
    for seed in range(200):
        torch.manual_seed(seed)
        sizes.add(resize(tv_tensors.Image(image)).shape[-2])
    assert sizes == {5, 6, 7, 8, 9, 10}


@pytest.mark.parametrize("augment", [Augmentation(), Augmentation((0.4, 0.4, 0.4, 0.1), 30, 0.5, 0.5)],
                         ids=["reference", "every-augmentation"])
def test_train_preset_is_reproducible_under_seed(augment):
    image, mask = random_sample(50, 60, num_values=21, seed=3)
    preset = SegmentationPresetTrain(base_size=50, crop_size=40, augment=augment)
    torch.manual_seed(123)
    first = preset(image, mask)
    torch.manual_seed(123)
    second = preset(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("kwargs, flag", [
    (dict(base_size=100, crop_size=250), "--crop-size"),
    (dict(base_size=0, crop_size=10), "--base-size"),
    (dict(base_size=100, crop_size=0), "--crop-size"),
    (dict(base_size=100, crop_size=50, scale_range=(2.0, 1.0)), "scale range"),
    (dict(base_size=100, crop_size=50, hflip_prob=1.5), "flip probability"),
    (dict(augment=Augmentation(color_jitter=(0.4, 0.4, 0.4, 0.7))), "--color-jitter"),
    (dict(augment=Augmentation(color_jitter=(0.4, -1, 0.4, 0.1))), "--color-jitter"),
    (dict(augment=Augmentation(rotate=200)), "--rotate"),
    (dict(augment=Augmentation(vflip=1.5)), "--vflip"),
    (dict(augment=Augmentation(gaussian_blur=-0.1)), "--gaussian-blur"),
])
def test_train_preset_rejects_bad_arguments(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        SegmentationPresetTrain(**kwargs)


def coordinate_sample(size: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask = y * size + x (each pixel's own coordinates, all below 255); image R = 17 x, G = 17 y (linear ramps,
    which bilinear interpolation reproduces exactly) and B = 255 (content: it blends with the fill 0 at edges)."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack([17 * x, 17 * y, torch.full_like(x, 255)]).to(torch.uint8)
    return image, (y * size + x).to(torch.uint8)


@pytest.mark.parametrize("seed", range(12))
def test_rotation_and_flips_keep_mask_aligned_and_ignore_only_what_left_the_image(seed):
    image, mask = coordinate_sample()
    preset = SegmentationPresetTrain(base_size=15, crop_size=15, scale_range=(1.0, 1.0),
                                     augment=Augmentation(rotate=45, vflip=0.5))
    torch.manual_seed(seed)
    out_image, out_mask = preset(image, mask)
    r, g, b = out_image.double()
    ignored = out_mask == IGNORE_INDEX
    assert values(out_mask) <= values(mask) | {IGNORE_INDEX}  # nearest: no label is invented
    # Where the image has all its content, its colour names the point it was sampled from; the mask's label is
    # the pixel nearest to that point, so both agree to half a pixel (plus uint8 rounding of the ramps).
    full = b >= 254
    src_y, src_x = out_mask.long() // 15, out_mask.long() % 15
    assert full.sum() > 100 and not ignored[full].any()
    assert ((r / 17 - src_x)[full].abs() <= 0.55).all() and ((g / 17 - src_y)[full].abs() <= 0.55).all()
    # 255 only where the sampled point left the image: then less than half the content remains (bilinear
    # weight <= 0.5 along the axis it left by), and where nothing of the image is left, the mask is 255.
    assert (b[ignored] <= 128).all() and ignored[b == 0].all()


def test_rotation_fills_corners_with_ignore_and_zero():
    image, mask = torch.full((3, 30, 30), 200, dtype=torch.uint8), torch.full((30, 30), 3, dtype=torch.uint8)
    preset = SegmentationPresetTrain(base_size=30, crop_size=30, hflip_prob=0.0, scale_range=(1.0, 1.0),
                                     augment=Augmentation(rotate=45))
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_mask = preset(image, mask)
        if (out_mask == IGNORE_INDEX).any():
            break
    corner = out_mask == IGNORE_INDEX
    assert corner[0, 0] or corner[0, -1] or corner[-1, 0] or corner[-1, -1]
    assert (out_image[:, corner] <= 100).all() and not corner[10:20, 10:20].any()
    assert values(out_mask) == {3, IGNORE_INDEX}


@pytest.mark.parametrize("seed", range(4))
def test_colour_and_blur_change_the_image_only(seed):
    image, mask = random_sample(40, 48, num_values=21, seed=seed)
    geometric = SegmentationPresetTrain(base_size=40, crop_size=32, augment=Augmentation(rotate=20, vflip=0.5))
    everything = SegmentationPresetTrain(base_size=40, crop_size=32,
                                         augment=Augmentation((0.4, 0.4, 0.4, 0.1), 20, 0.5, 1.0))
    torch.manual_seed(seed)
    plain_image, plain_mask = geometric(image, mask)
    torch.manual_seed(seed)
    out_image, out_mask = everything(image, mask)
    # Colour steps come after the crop, so the geometry drew the same random numbers: the same mask.
    assert torch.equal(out_mask, plain_mask) and not torch.equal(out_image, plain_image)
    assert out_image.dtype == torch.uint8 and type(out_mask) is tv_tensors.Mask


def test_default_augmentation_adds_no_step():
    reference = SegmentationPresetTrain(base_size=50, crop_size=40)
    assert [type(t) for t in reference.transforms.transforms] == [v2.RandomResize, v2.RandomHorizontalFlip,
                                                                   v2.RandomCrop]


def test_eval_preset_default_is_identity():
    image, mask = random_sample(33, 47, num_values=21, seed=0)
    out_image, out_mask = SegmentationPresetEval()(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    assert type(out_image) is tv_tensors.Image and type(out_mask) is tv_tensors.Mask


def test_eval_preset_resizes_image_only():
    image, mask = random_sample(40, 60, num_values=21, seed=0)
    out_image, out_mask = SegmentationPresetEval(size=20)(image, mask)
    assert out_image.shape == (3, 20, 30) and out_image.dtype == torch.uint8
    assert torch.equal(out_mask, mask)


def test_eval_preset_resize_mask_is_nearest():
    image, mask = random_sample(40, 60, num_values=250, seed=0)
    out_image, out_mask = SegmentationPresetEval(size=20, resize_mask=True)(image, mask)
    assert out_image.shape == (3, 20, 30)
    assert torch.equal(out_mask, mask[::2, ::2])  # NEAREST halving picks every other pixel


def test_eval_preset_rejects_bad_size():
    with pytest.raises(ValueError, match="positive"):
        SegmentationPresetEval(size=0)


def test_presets_in_a_loader(voc_root):
    dataset = VOCSegmentation(voc_root, transforms=SegmentationPresetTrain(base_size=48, crop_size=32))
    images, masks = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_fn)))
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 32, 32)
    assert images.dtype == torch.uint8 and masks.dtype == torch.uint8
    assert values(masks) <= set(range(21)) | {IGNORE_INDEX}
    val = VOCSegmentation(voc_root, split="val", transforms=SegmentationPresetEval(size=24))
    image, mask = val[1]  # the real photo: image resized, mask kept at label resolution
    assert image.shape == (3, 24, 32) and mask.shape == (375, 500)
