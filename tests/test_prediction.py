"""Folder prediction (train_utils.prediction, predict.py): batched and decoded in workers, the masks equal a
plain-torch forward of each photo; unreadable photos skipped and listed; inputs and same-stem outputs never
overwritten.

Expected masks come from PIL + numpy normalisation + the model called directly, not from the code under test.
"""
import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import predict
from core.checkpoint import Checkpoint, save_checkpoint
from core.cli import run_main
from core.constants import IMAGENET_MEAN, IMAGENET_STD
from core.runtime import Runtime
from inference import output_stems, photo_loader, predict_folder, refuse_overwriting_inputs
from src import build_model

CLASSES = ["background", "a", "b", "c", "d"]


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A random-weight fcn_resnet50 (5 classes, no aux head) saved as our checkpoint, and the model itself."""
    torch.manual_seed(0)
    model = build_model("fcn_resnet50", len(CLASSES), aux=False, pretrained_backbone=None).eval()
    path = tmp_path_factory.mktemp("weights") / "net.pth"
    save_checkpoint(Checkpoint(model.state_dict(), model_name="fcn_resnet50", num_classes=len(CLASSES),
                               class_names=CLASSES, aux=False), path)
    return path, model


def photo(path: Path, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@torch.inference_mode()
def expected_mask(model: nn.Module, path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    x = (rgb - np.float32(255) * np.array(IMAGENET_MEAN, np.float32)) / (np.float32(255) * np.array(IMAGENET_STD,
                                                                                                    np.float32))
    return model(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous())["out"][0].argmax(0).numpy()


def predict_args(*argv) -> argparse.Namespace:
    return predict.parse_args([*map(str, argv), "--device", "cpu", "--warmup", "0"])


def test_batched_folder_with_workers_gives_each_photo_its_own_mask(net, tmp_path, capsys):
    weights, model = net
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"p0.jpg": (48, 64), "p1.jpg": (48, 64), "p2.jpg": (48, 64), "p3.jpg": (64, 48), "same.jpg": (48, 64),
             "same.png": (48, 64)}  # same.jpg and same.png share a stem
    for seed, (name, (h, w)) in enumerate(sizes.items()):
        photo(photos / name, h, w, seed)
    out = tmp_path / "masks"
    assert predict.main(predict_args("--weights", weights, "--image", photos, "--output", out, "-b", "2", "-j", "1",
                                     "--probs")) == 0
    written = {"p0": "p0.jpg", "p1": "p1.jpg", "p2": "p2.jpg", "p3": "p3.jpg", "same_jpg": "same.jpg",
               "same_png": "same.png"}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{stem}.png" for stem in written)
    for stem, name in written.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == sizes[name][::-1]
        assert np.array_equal(np.array(mask), expected_mask(model, photos / name)), name
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (len(CLASSES), *sizes[name]) and np.allclose(probs.sum(0), 1, atol=1e-2)
    assert not np.array_equal(np.array(Image.open(out / "same_jpg.png")), np.array(Image.open(out / "same_png.png")))
    assert "wrote 6 masks" in capsys.readouterr().out


def test_unreadable_photos_are_skipped_listed_and_fail_the_run(net, tmp_path, capsys):
    weights, model = net
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "good.jpg", 40, 40, 0)
    photo(photos / "cut.jpg", 40, 40, 1)
    data = (photos / "cut.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(data[:len(data) // 2])  # an interrupted download
    (photos / "notes.png").write_text("not a picture")
    with pytest.raises(SystemExit) as exit_info:
        run_main(predict.main, predict_args("--weights", weights, "--image", photos, "--output", tmp_path / "out",
                                            "-b", "2", "-j", "0"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "skipped 2 of 3 images" in err and "cut.jpg" in err and "notes.png" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]
    good = np.array(Image.open(tmp_path / "out" / "good.png"))
    assert np.array_equal(good, expected_mask(model, photos / "good.jpg"))


def test_outputs_never_replace_inputs(net, tmp_path, capsys):
    weights, _ = net
    photos, others = tmp_path / "photos", tmp_path / "others"
    photos.mkdir()
    others.mkdir()
    photo(photos / "cat.png", 40, 40, 0)
    photo(others / "dog.jpg", 40, 40, 1)
    photo(others / "dog_overlay.png", 40, 40, 2)  # the overlay of dog.jpg would land here; its own mask
    photo(others / "dog_overlay.jpg", 40, 40, 3)  # does not, as it shares its stem with this photo
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.*")}
    for argv, culprit in ((["--image", photos, "--output", photos], "cat.png"),
                          (["--image", others, "--output", others, "--overlay"], "dog_overlay.png"),
                          (["--image", photos / "cat.png", "--output", photos / "cat.png"], "cat.png")):
        with pytest.raises(SystemExit) as exit_info:
            run_main(predict.main, predict_args("--weights", weights, *argv))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and "--output" in err
        assert f"overwrite the input photo {culprit}" in err.replace(f"{tmp_path}/photos/", "").replace(
            f"{tmp_path}/others/", "")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.*")} == before


def test_output_files_are_distinct_case_insensitively():
    paths = [Path(p) for p in ("a.jpg", "A.png", "a_jpg.bmp", "b.JPG", "b.jpg", "c.jpg", "c_overlay.jpg")]
    endings = (".png", "_overlay.png", "_probs.npy")
    stems = output_stems(paths, endings)
    files = [(stem + ending).casefold() for stem in stems for ending in endings]
    assert len(set(files)) == len(files)
    assert stems[:3] == ["a_jpg", "A_png", "a_jpg_2"] and stems[5] == "c"  # c_overlay.jpg yields c.jpg's overlay
    assert stems[6] == "c_overlay_2"


def test_refuses_an_output_that_is_a_link_to_an_input(tmp_path):
    photo(tmp_path / "cat.png", 8, 8, 0)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cat.png").symlink_to(tmp_path / "cat.png")
    with pytest.raises(ValueError, match="cat.png"):
        refuse_overwriting_inputs([tmp_path / "cat.png"], [tmp_path / "out" / "cat.png"])


class Pointwise(nn.Module):
    """Class scores from a 1x1 convolution: each pixel's mask depends on that pixel alone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.batches: list = []

    def forward(self, x: torch.Tensor) -> dict:
        self.batches.append(tuple(x.shape))
        return {"out": self.conv(x)}


def test_batches_hold_one_size_and_a_failing_write_stops_the_run(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(8, 12), (12, 8), (8, 12), (8, 12)]):
        paths.append(tmp_path / f"{i}.png")
        photo(paths[-1], h, w, i)
    model = Pointwise().eval()
    got = {}
    predict_folder(model, photo_loader(paths, batch_size=2), Runtime(torch.device("cpu")),
                   lambda p: got.__setitem__(p.index, p.mask), progress=False)
    assert sorted(model.batches) == [(1, 3, 8, 12), (1, 3, 12, 8), (2, 3, 8, 12)]
    assert sorted(got) == [0, 1, 2, 3]

    def fail(prediction):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        predict_folder(model, photo_loader(paths, batch_size=1), Runtime(torch.device("cpu")), fail, progress=False)
