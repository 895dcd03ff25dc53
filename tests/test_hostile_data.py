"""Hostile data files: empty files, decompression bombs, link loops, malformed COCO annotations, unreadable class
files, duplicated YAML keys, interrupted converters. Each ends in one error naming the file (or is skipped and
listed where a folder is read), never in a traceback, a hang or a silently wrong result.

The files are written byte by byte here (PNG chunks with zlib's CRC, JSON by hand), not by the code under test.
"""
import base64
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

import my_dataset
import predict
import train as train_script
import validation
from core.checkpoint import Checkpoint, save_checkpoint
from core.cli import UsageError, load_config_defaults, one_line
from core.palette import load_class_names
from core.platform import FileLock
from data_utils import (
    build_dataset,
    check_split,
    image_size,
    import_labelme,
    load_annotations,
    make_demo_dataset,
    read_image,
    read_mask,
)
from data_utils.labelme import read_labelme
from src import build_model
from tools import check_large_image, prepare_coco
from tools import demo as tools_demo
from train_utils.options import get_args_parser as train_parser

from conftest import REPO_ROOT
from dataset_trees import ADE20K_FILES, CITYSCAPES_FILES, ade20k_tree, cityscapes_tree

CLASSES = ["background", "a", "b", "c", "d"]  # as many as the demo data's


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_header(width: int = 20000, height: int = 20000, color_type: int = 2) -> bytes:
    """A 45-byte PNG: signature, an IHDR claiming width x height 8-bit pixels, IEND (no pixel data at all)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")  # 8 + 25 + 12 bytes


@pytest.fixture
def hostile(tmp_path) -> Path:
    """A folder of one good photo and the hostile ones: empty JPEG and PNG, a bomb header, a link loop, a folder
    and a FIFO named like photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(folder / "good.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "empty.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(bomb_header())
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    (folder / "folder.jpg").mkdir()
    os.mkfifo(folder / "pipe.jpg")  # opening it would wait for a writer forever
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("fcn_resnet50", len(CLASSES), aux=False, pretrained_backbone=None)
    path = tmp_path_factory.mktemp("weights") / "net.pth"
    save_checkpoint(Checkpoint(model.state_dict(), model_name="fcn_resnet50", num_classes=len(CLASSES),
                               class_names=CLASSES, aux=False), path)
    return path


@pytest.mark.parametrize("name", ["empty.jpg", "empty.png", "bomb.png", "loop_a.jpg"])
@pytest.mark.parametrize("reader", [read_image, read_mask, image_size])
def test_every_reader_gives_one_error_naming_the_file(hostile, name, reader):
    with pytest.raises(ValueError, match=name) as caught:
        reader(hostile / name)
    text = str(caught.value)
    assert {"empty.jpg": "empty (0 bytes)", "empty.png": "empty (0 bytes)", "bomb.png": "20000x20000",
            "loop_a.jpg": "loop"}[name] in text


def jpeg_bomb_header(width: int = 60000, height: int = 60000) -> bytes:
    """A 144-byte baseline JPEG: quantisation and Huffman tables, a frame header claiming width x height gray
    pixels, a scan header and no image data."""
    def segment(marker: int, body: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body
    sof = segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0]))
    tables = segment(0xDB, bytes(1) + bytes([1] * 64)) + b"".join(
        segment(0xC4, bytes([table]) + bytes([1] + [0] * 15) + bytes(1)) for table in (0x00, 0x10))
    return b"\xff\xd8" + tables + sof + segment(0xDA, bytes([1, 1, 0, 0, 63, 0])) + bytes(4) + b"\xff\xd9"


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_a_jpeg_bomb_is_refused_before_either_decoder_allocates(tmp_path, decoder):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_bomb_header())
    with pytest.raises(ValueError, match=r"bomb.jpg is 60000x60000 \(WxH\), 3,600,000,000 pixels"):
        read_image(path, decoder)


def test_the_bomb_message_says_how_to_allow_it(hostile):
    with pytest.raises(ValueError, match="--max-image-pixels 400000000"):
        read_image(hostile / "bomb.png")


def test_the_pixel_limit_applies_to_torchvision_and_pil_decoding(hostile, monkeypatch):
    monkeypatch.setenv("FCN_MAX_IMAGE_PIXELS", "1000")  # what --max-image-pixels 1000 sets
    for decoder in ("torchvision", "pil"):
        with pytest.raises(ValueError, match=r"32x32 \(WxH\), 1,024 pixels"):
            read_image(hostile / "good.jpg", decoder)
    monkeypatch.setenv("FCN_MAX_IMAGE_PIXELS", "0")
    assert read_image(hostile / "good.jpg").shape == (3, 32, 32)
    monkeypatch.setenv("FCN_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="FCN_MAX_IMAGE_PIXELS='lots'"):
        read_image(hostile / "good.jpg")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_predict_folder_skips_and_lists_empty_bomb_and_looping_photos(hostile, weights, tmp_path, capsys,
                                                                      workers):
    args = predict.parse_args(["--weights", str(weights), "--image", str(hostile), "--output", str(tmp_path / "o"),
                               "--device", "cpu", "-j", workers, "--warmup", "0"])
    assert predict.main(args) == 1
    err = capsys.readouterr().err
    assert "skipped 7 of 8 images" in err, err
    for name in ("empty.jpg", "empty.png", "bomb.png", "loop_a.jpg", "loop_b.jpg", "folder.jpg: it is a folder",
                 "pipe.jpg: it is a special file"):
        assert name in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.png"]


@pytest.mark.parametrize("name", ["empty.png", "bomb.png"])
def test_predict_one_hostile_photo_is_one_line(hostile, weights, tmp_path, name):
    args = predict.parse_args(["--weights", str(weights), "--image", str(hostile / name), "--output",
                               str(tmp_path / "o.png"), "--device", "cpu"])
    with pytest.raises(ValueError, match=name):
        predict.main(args)
    assert not (tmp_path / "o.png").exists()


def test_predict_max_image_pixels_flag(hostile, weights, tmp_path, capsys):
    base = ["--weights", str(weights), "--image", str(hostile / "good.jpg"), "--device", "cpu", "--output",
            str(tmp_path / "o.png")]
    try:
        with pytest.raises(ValueError, match="--max-image-pixels 1024"):
            predict.main(predict.parse_args(base + ["--max-image-pixels", "1000"]))
        assert predict.main(predict.parse_args(base + ["--max-image-pixels", "1024"])) == 0
    finally:
        os.environ.pop("FCN_MAX_IMAGE_PIXELS", None)
    with pytest.raises(SystemExit):
        predict.parse_args(base + ["--max-image-pixels", "-1"])
    assert "must be zero (no limit)" in capsys.readouterr().err


# ------------------------------------------------------------------------------ zero-byte files in datasets

def _empty_voc_mask(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    stem = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    return voc / "SegmentationClass" / f"{stem}.png"


def _empty_voc_photo(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    stem = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    return voc / "JPEGImages" / f"{stem}.jpg"


def _empty_cityscapes_labels(root: Path) -> Path:
    city, stem = CITYSCAPES_FILES["train"][0]
    return root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png"


def _empty_ade20k_annotation(root: Path) -> Path:
    return root / "ADEChallengeData2016" / "annotations" / "training" / f"{ADE20K_FILES['training'][0]}.png"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("name,tree,emptied", [
    ("voc", lambda root: make_demo_dataset(root, num_train=2, num_val=1, size=32), _empty_voc_mask),
    ("voc", lambda root: make_demo_dataset(root, num_train=2, num_val=1, size=32), _empty_voc_photo),
    ("cityscapes", cityscapes_tree, _empty_cityscapes_labels),
    ("ade20k", ade20k_tree, _empty_ade20k_annotation),
], ids=["voc-mask", "voc-photo", "cityscapes-labelIds", "ade20k-annotation"])
def test_check_and_loading_name_a_zero_byte_file(tmp_path, capsys, name, tree, emptied, workers):
    root = tree(tmp_path / "data")
    empty = emptied(root)
    empty.write_bytes(b"")
    assert check_split(name, root, "train", workers, progress=False) == 1
    out = capsys.readouterr().out
    assert "problems: 1" in out and f"{empty}: the file is empty (0 bytes)" in out, out
    dataset = build_dataset(name, root, "train")  # what train.py and validation.py load (in their workers too)
    with pytest.raises(ValueError, match="the file is empty") as caught:
        [dataset[i] for i in range(len(dataset))]
    assert str(empty) in str(caught.value)


# ---------------------------------------------------------------------------------- an unreadable classes.json

@pytest.mark.parametrize("kind", ["folder", "dangling-link", "unreadable"])
def test_a_class_file_that_cannot_be_read_is_an_error_not_the_voc_classes(tmp_path, monkeypatch, kind):
    root = make_demo_dataset(tmp_path / "data", num_train=2, num_val=1, size=32)
    classes = root / "classes.json"
    classes.unlink()
    if kind == "folder":
        classes.mkdir()
    elif kind == "dangling-link":
        os.symlink("nowhere.json", classes)
    else:
        classes.write_text('{"background": 0, "disc": 1}')
        real_read_text = Path.read_text

        def denied(self, *args, **kwargs):  # chmod 000 does not stop root, who runs these tests in CI
            if self.name == "classes.json":
                raise PermissionError(13, "Permission denied", str(self))
            return real_read_text(self, *args, **kwargs)
        monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ValueError, match="classes.json") as caught:
        build_dataset("voc", root, "train")
    assert {"folder": "is a folder", "dangling-link": "missing file", "unreadable": "Permission denied"}[kind] \
        in str(caught.value)


# ------------------------------------------------------------------------------------- a YAML key given twice

@pytest.mark.parametrize("text,needle", [
    ("epochs: 1\nlr: 0.1\nepochs: 5\n", "'epochs' is given twice (lines 1 and 3)"),
    ("{epochs: 1, epochs: 5}\n", "'epochs' is given twice (lines 1 and 1)"),
])
def test_a_yaml_key_given_twice_is_refused(tmp_path, text, needle):
    config = tmp_path / "my.yaml"
    config.write_text(text)
    with pytest.raises(UsageError, match=re.escape(needle)):
        load_config_defaults(train_parser("test"), str(config))


def test_yaml_merge_keys_are_not_keys_given_twice(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("scale-range: &r [0.5, 2.0]\nepochs: 3\n")
    assert load_config_defaults(train_parser("test"), str(config))["epochs"] == 3


# ------------------------------------------------------------------------- demo --out over an existing dataset

def test_demo_refuses_a_folder_that_holds_files_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "classes.json").write_text('{"background": 0, "road": 1}')
    argv = ["demo", "--out", str(out), "--num-train", "1", "--num-val", "1", "--size", "32"]
    assert my_dataset.main(my_dataset.parse_args(argv)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "classes.json").read_text()) == {"background": 0, "road": 1}
    assert sorted(p.name for p in out.iterdir()) == ["classes.json"]
    assert my_dataset.main(my_dataset.parse_args(argv + ["--overwrite"])) == 0
    assert "road" not in (out / "classes.json").read_text()


def test_tools_demo_still_fills_its_own_half_written_folder(tmp_path, monkeypatch):
    data = tmp_path / "data" / "demo"
    (data / "VOCdevkit").mkdir(parents=True)  # an earlier demo interrupted before its split files
    made = {}
    monkeypatch.setattr(tools_demo, "make_demo_dataset", lambda root, **kw: made.update(kw, root=root))
    monkeypatch.setattr(tools_demo, "ROOT", tmp_path)
    config = tmp_path / "demo.yaml"
    config.write_text("data-path: data/demo\noutput-dir: runs/demo\nmodel: fcn_resnet50\n")
    monkeypatch.setattr(sys, "argv", ["demo.py", "--config", str(config)])
    with pytest.raises(FileNotFoundError, match="classes.json"):  # the stub wrote nothing: it stops there
        tools_demo.run_demo(tools_demo.parse_args())
    assert made["overwrite"] is True and made["root"] == data


# ------------------------------------------------------------------------------------ malformed COCO annotations

def coco_root(tmp_path: Path, annotations: list, images: list = None) -> Path:
    """A COCO root with val2017/a.jpg and b.jpg (64x64) and the given annotations (JSON written by hand)."""
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "val2017" / name)
    images = images or [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64},
                        {"id": 2, "file_name": "b.jpg", "height": 64, "width": 64}]
    text = json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 17, "name": "cat"}]})
    (root / "annotations" / "instances_val2017.json").write_text(text.replace('"NAN"', "NaN"))
    return root


def cat(ann_id: int, segmentation, **fields) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 17, "segmentation": segmentation, "iscrowd": 0,
            "area": 100.0, **fields}


SQUARE = [10, 10, 40, 10, 40, 40, 10, 40]


@pytest.mark.parametrize("annotation,needle", [
    (cat(7, [[10, 10, "NAN", 20, 30, 30]]), "finite numbers"),
    (cat(7, [[10, 10, 20]]), "(x, y) pairs, got 3 numbers"),
    (cat(7, {"size": [64, 64], "counts": [10, -5, 4091]}, iscrowd=1), "non-negative integers"),
    (cat(7, {"size": [64, 64], "counts": [10, 20]}, iscrowd=1), "cover 30 pixels, but the image has 64 x 64 = 4096"),
    (cat(7, {"size": [32, 64], "counts": [2048]}, iscrowd=1), "is not the image's [height, width] [64, 64]"),
    (cat(7, {"size": [64, 64], "counts": "0"}, iscrowd=1), "cover 0 pixels"),
    (cat(7, {"size": [64, 64], "counts": "\x7f\x7f"}, iscrowd=1), "not a valid RLE string"),
], ids=["nan", "odd", "negative-count", "short-counts", "other-size", "short-string", "bad-string"])
def test_a_bad_segmentation_is_one_line_naming_annotation_and_image(tmp_path, annotation, needle):
    dataset = build_dataset("coco", coco_root(tmp_path, [annotation]), "val")
    with pytest.raises(ValueError) as caught:
        dataset[0]
    text = str(caught.value)
    assert "annotation 7" in text and "a.jpg" in text and needle in text, text


@pytest.mark.parametrize("annotations,images,needle", [
    ([cat(7, [SQUARE], category_id="17")], None, "annotation 7 (image a.jpg): category_id '17' is not an integer"),
    ([cat(7, [SQUARE], area="big")], None, "area 'big' is not a non-negative number"),
    ([{"id": 7, "image_id": 1, "category_id": 17}], None, "annotation 7 (image a.jpg): it has no segmentation"),
    ([cat(7, [SQUARE], image_id=9)], None, "image_id 9 is not the id of an image"),
    ([], [{"id": 1, "file_name": "a.jpg", "height": 1e400, "width": 64}], "height inf is not a positive integer"),
    ([cat(7, [SQUARE]), cat(8, [SQUARE], image_id=2)],
     [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64},
      {"id": 2, "file_name": "a.jpg", "height": 64, "width": 64}], "images 1 and 2 have the same file_name a.jpg"),
], ids=["string-category", "string-area", "no-segmentation", "unknown-image", "inf-height", "same-file-name"])
def test_annotations_that_would_be_dropped_or_crash_are_refused_on_load(tmp_path, capsys, annotations, images,
                                                                        needle):
    root = coco_root(tmp_path, annotations, images)
    with pytest.raises(ValueError, match=re.escape(needle)):
        build_dataset("coco", root, "val")
    assert my_dataset.main(my_dataset.parse_args(["check", "--dataset", "coco", "--data-path", str(root),
                                                  "--split", "val", "--workers", "0"])) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("far", [1e8, 1e9])
def test_polygons_far_outside_the_image_are_clipped_not_a_hang(tmp_path, far):
    # The square from (10, 10) to (far, far) covers, inside the 64x64 image, what the square to (65, 65) covers.
    dataset = build_dataset("coco", coco_root(tmp_path, [cat(7, [[10, 10, far, 10, far, far, 10, far]])]), "val")
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([[10, 10, 65, 10, 65, 65, 10, 65]], 64, 64)))
    assert np.array_equal(dataset[0][1].numpy(), expected * 8)  # COCO cat = VOC class 8


def test_polygons_of_fewer_than_three_points_cover_nothing(tmp_path):
    dataset = build_dataset("coco", coco_root(tmp_path, [cat(7, [[]]), cat(8, [[5, 5]]), cat(9, [[5, 5, 9, 9]])]),
                            "val")
    assert not dataset[0][1].numpy().any()


def test_check_lists_a_bad_segmentation(tmp_path, capsys):
    root = coco_root(tmp_path, [cat(7, {"size": [64, 64], "counts": [10, 20]}, iscrowd=1)])
    assert check_split("coco", root, "val", 0, progress=False) == 1
    out = capsys.readouterr().out
    assert "problems: 1" in out and "annotation 7: its RLE counts cover 30 pixels" in out


def test_prepared_coco_masks_are_stale_after_an_edit_that_keeps_the_size(tmp_path):
    root = coco_root(tmp_path, [cat(7, [SQUARE])])
    assert prepare_coco.main(prepare_coco.parse_args(["--data-path", str(root), "--splits", "val",
                                                      "--workers", "0"])) == 0
    assert build_dataset("coco", root, "val").pairs[0][1].suffix == ".png"  # the prepared masks are used
    ann_file = root / "annotations" / "instances_val2017.json"
    text = ann_file.read_text()
    edited = text.replace('"category_id": 17', '"category_id": 18')  # cat -> dog, same number of bytes
    assert len(edited) == len(text) and edited != text
    ann_file.write_text(edited)
    with pytest.raises(ValueError, match="another version"):
        build_dataset("coco", root, "val")


# ------------------------------------------------------------------------------------ the converters' files

def one_error_line(err: str) -> bool:
    """stderr ends in one `error: ...` line (progress bars may come before it) and holds no traceback."""
    return "Traceback" not in err and [line for line in err.splitlines() if "error:" in line] == [
        err.strip().splitlines()[-1]]


def labelme_doc(folder: Path, name: str, image_data: bytes = None, image_path: str = None) -> None:
    doc = {"version": "5.4.1", "flags": {}, "imagePath": image_path or f"{name}.jpg",
           "imageData": base64.b64encode(image_data).decode() if image_data is not None else None,
           "shapes": [{"label": "a", "points": [[2, 2], [20, 2], [2, 20]], "shape_type": "polygon"}]}
    (folder / f"{name}.json").write_text(json.dumps(doc))


def labelme_src(tmp_path: Path) -> Path:
    src = tmp_path / "labelme"
    src.mkdir()
    (src / "classes.json").write_text(json.dumps({n: i for i, n in enumerate(CLASSES)}))
    return src


def test_import_labelme_reads_a_camera_mpo_as_the_jpeg_it_is(tmp_path):
    src = labelme_src(tmp_path)
    first, preview = (Image.fromarray(np.full((32, 48, 3), v, np.uint8)) for v in (50, 200))
    first.save(src / "cam.jpg", format="MPO", save_all=True, append_images=[preview])  # two frames
    with Image.open(src / "cam.jpg") as check:
        assert check.format == "MPO"
    labelme_doc(src, "cam")
    counts = import_labelme(src, tmp_path / "out", src / "classes.json", val_fraction=0.0, progress=False)
    assert counts == {"train": 1, "val": 0}
    photo = tmp_path / "out" / "train" / "images" / "cam.jpg"
    assert photo.read_bytes() == (src / "cam.jpg").read_bytes()  # the bytes unchanged
    assert read_image(photo).shape == (3, 32, 48)


@pytest.mark.parametrize("embedded", [True, False])
def test_import_labelme_refuses_a_bomb_in_one_line_naming_it(tmp_path, capsys, embedded):
    src = labelme_src(tmp_path)
    if embedded:
        labelme_doc(src, "big", image_data=bomb_header())
    else:
        (src / "big.png").write_bytes(bomb_header())
        labelme_doc(src, "big", image_path="big.png")
    argv = ["import-labelme", str(src), "--out", str(tmp_path / "out"), "--classes", str(src / "classes.json")]
    assert my_dataset.main(my_dataset.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "20000x20000" in err and "--max-image-pixels" in err, err
    assert ("imageData" if embedded else "big.png") in err
    assert not (tmp_path / "out").exists()


def color_masks(tmp_path: Path) -> tuple[Path, Path]:
    masks = tmp_path / "color"
    masks.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(masks / "a.png")
    colors = tmp_path / "colors.json"
    colors.write_text('{"background": [0, 0, 0], "road": [128, 64, 128]}')
    return masks, colors


@pytest.mark.parametrize("hostile_file", ["bomb", "empty"])
def test_convert_colors_names_a_bomb_or_empty_mask(tmp_path, capsys, hostile_file):
    masks, colors = color_masks(tmp_path)
    (masks / "b.png").write_bytes(bomb_header() if hostile_file == "bomb" else b"")
    argv = ["convert-colors", str(masks), "--colors", str(colors), "--out", str(tmp_path / "out")]
    assert my_dataset.main(my_dataset.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "b.png" in err
    assert ("--max-image-pixels 400000000" if hostile_file == "bomb" else "empty (0 bytes)") in err
    if hostile_file == "bomb":
        assert my_dataset.main(my_dataset.parse_args(argv + ["--max-image-pixels", "1"])) == 2
        assert "a.png is 8x8" in capsys.readouterr().err  # the flag sets the limit, here below every mask
        os.environ.pop("FCN_MAX_IMAGE_PIXELS", None)


def test_a_killed_conversion_leaves_a_staging_folder_the_next_run_removes(tmp_path, capsys):
    masks, colors = color_masks(tmp_path)
    out = tmp_path / "out"
    # data_utils/staging.py alone (its package imports torch, which takes seconds to load)
    code = ("import importlib.util, os, sys; sys.path.insert(0, sys.argv[2])\n"
            "spec = importlib.util.spec_from_file_location('staging', sys.argv[2] + '/data_utils/staging.py')\n"
            "staging = importlib.util.module_from_spec(spec); spec.loader.exec_module(staging)\n"
            "with staging.staged_folder(sys.argv[1]) as root:\n"
            "    (root / 'half.png').write_bytes(b'x'); os.kill(os.getpid(), 9)")
    killed = subprocess.run([sys.executable, "-c", code, str(out), str(REPO_ROOT)], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    left = [p for p in tmp_path.glob(".out.partial-*") if p.is_dir()]
    assert len(left) == 1 and (left[0] / "half.png").exists()
    busy = tmp_path / ".out.partial-0000busy"  # another conversion, running now: kept
    busy.mkdir()
    holder = FileLock(tmp_path / ".out.partial-0000busy.lock")
    assert holder.acquire(blocking=False)
    try:
        argv = ["convert-colors", str(masks), "--colors", str(colors), "--out", str(out)]
        assert my_dataset.main(my_dataset.parse_args(argv)) == 0
    finally:
        holder.release()
    assert f"removed {left[0]}" in capsys.readouterr().err
    assert not left[0].exists() and busy.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [
        ".out.partial-0000busy", ".out.partial-0000busy.lock"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "classes.json"]


# ---------------------------------------------------------------------------------- tools/check_large_image.py

def test_check_large_image_refuses_before_allocating_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(check_large_image, "available_memory", lambda: 8 * 2**30)
    monkeypatch.setattr(check_large_image, "build_model", None)  # refused before the model is even built
    monkeypatch.setattr(check_large_image.torch, "randn", None)
    args = check_large_image.parse_args(["--height", "30000", "--width", "40000"])
    with pytest.raises(ValueError, match=r"needs at least 107.3 GiB .* only 8.0 GiB is available"):
        check_large_image.main(args)


# ------------------------------------------------------------------- the audit: other readers of user files

DEEP = "[" * 100_000 + "]" * 100_000  # JSON nested deeper than Python's recursion limit


@pytest.mark.parametrize("reader", ["classes", "labelme", "coco"])
def test_json_nested_too_deeply_is_one_error_naming_the_file(tmp_path, reader):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    read = {"classes": load_class_names, "labelme": read_labelme, "coco": load_annotations}[reader]
    with pytest.raises(ValueError, match="deep.json is nested too deeply"):
        read(path)


@pytest.mark.parametrize("fields,needle", [
    ({"imageHeight": 1e400, "imageWidth": 64}, "imageHeight and imageWidth must be integers"),
    ({"shapes": [{"label": "a", "points": [[10, 10], [1e9, 10]], "shape_type": "circle"}]}, "within 10,000,000"),
])
def test_labelme_fields_pil_cannot_draw_are_refused(tmp_path, fields, needle):
    doc = {"shapes": [], "imagePath": "x.jpg", **fields}
    (tmp_path / "x.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=needle):
        read_labelme(tmp_path / "x.json")


def test_a_split_file_that_is_a_folder_is_named(tmp_path):
    root = make_demo_dataset(tmp_path / "data", num_train=1, num_val=1, size=32)
    split = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    split.unlink()
    split.mkdir()
    with pytest.raises(ValueError, match="train.txt is a folder"):
        build_dataset("voc", root, "train")


def test_a_coco_manifest_of_non_names_is_damaged_not_a_traceback(tmp_path):
    root = coco_root(tmp_path, [cat(7, [SQUARE])])
    (root / "voc_masks").mkdir()
    ann = root / "annotations" / "instances_val2017.json"
    (root / "voc_masks" / "val2017.json").write_text(json.dumps(
        {"annotations": ann.name, "annotation_bytes": ann.stat().st_size, "annotation_sha256": "0", "images": [5]}))
    with pytest.raises(ValueError, match="is damaged"):
        build_dataset("coco", root, "val")


def test_prepare_coco_names_a_bad_annotation_and_writes_no_list(tmp_path, capsys):
    root = coco_root(tmp_path, [cat(7, [[10, 10, "NAN", 20, 30, 30]])])
    assert prepare_coco.main(prepare_coco.parse_args(["--data-path", str(root), "--splits", "val",
                                                      "--workers", "0"])) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "annotation 7" in err and "a.jpg" in err and "finite numbers" in err
    assert not (root / "voc_masks" / "val2017.json").exists()


def test_split_and_class_files_saved_with_a_bom_read_as_without(tmp_path):
    root = make_demo_dataset(tmp_path / "data", num_train=2, num_val=1, size=32)
    split = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    for path in (split, root / "classes.json"):  # as Windows Notepad saves "UTF-8"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    dataset = build_dataset("voc", root, "train")
    assert len(dataset) == 2 and dataset.class_names[0] == "background"


@pytest.mark.parametrize("script", ["train", "validation"])
def test_train_and_validation_name_a_zero_byte_mask(tmp_path, weights, script):
    # -j 0: a loader whose worker raised takes torch 10 s to shut down when collected in this process (the
    # worker path is test_bad_input's truncated JPEG with -j 2; the message is the same ValueError).
    root = make_demo_dataset(tmp_path / "data", num_train=2, num_val=2, size=32)
    voc = root / "VOCdevkit" / "VOC2012"
    split = "train" if script == "train" else "val"
    empty = voc / "SegmentationClass" / f"{(voc / 'ImageSets' / 'Segmentation' / f'{split}.txt').read_text().split()[0]}.png"
    empty.write_bytes(b"")
    common = ["--data-path", str(root), "--device", "cpu", "-j", "0"]
    if script == "train":
        args = train_script.parse_args(common + ["--output-dir", str(tmp_path / "run"), "--epochs", "1", "-b", "2",
                                                 "--pretrained-backbone", "none", "--no-aux", "--base-size", "32",
                                                 "--crop-size", "32"])
        run = train_script.main
    else:
        args = validation.parse_args(common + ["--weights", str(weights), "--record", str(tmp_path / "r.txt")])
        run = validation.main
    with pytest.raises(ValueError) as caught:
        run(args)
    assert f"cannot read {empty}: the file is empty (0 bytes)" in one_line(caught.value)
