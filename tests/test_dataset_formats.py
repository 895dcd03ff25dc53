"""COCO (VOC classes), Cityscapes, ADE20K, labelme files and colour masks: masks checked pixel by pixel against
independent computations (pycocotools' annToMask, the published Cityscapes label table, plain numpy
geometry), a 1-epoch training and a validation run on each, and the bad inputs of each."""
import base64
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

import data_utils.coco
import my_dataset
import predict
import train
import validation
from data_utils import DATASETS, build_dataset, class_pixel_counts, convert_colors, import_labelme, read_image
from train_utils.options import get_args_parser
from train_utils.trainer import run_training

from conftest import REPO_ROOT
from dataset_trees import (
    ADE20K_FILES,
    CITYSCAPES_COLORS,
    CITYSCAPES_FILES,
    CITYSCAPES_LABELS,
    COCO_IMAGES,
    COCO_TO_VOC,
    LABELME_CLASSES,
    ade20k_tree,
    cityscapes_tree,
    coco_tree,
    labelme_folder,
    labelme_shapes,
    uncompressed_rle,
)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def one_line_error(capsys) -> str:
    """The error line (the last on stderr, after any progress bar), checked to be the only message."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("error: ") == 1, err
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err
    return last


# ------------------------------------------------------------------------------------------------- COCO

@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return coco_tree(tmp_path_factory.mktemp("coco") / "coco")


def expected_coco_mask(root: Path, split: str, name: str) -> np.ndarray:
    """pycocotools' annToMask per kept annotation; max of class x mask, 255 where two or more overlap; then
    turned by the photo's EXIF orientation with numpy."""
    api = COCO(str(root / "annotations" / f"instances_{split}.json"))
    image = next(i for i in api.dataset["images"] if i["file_name"] == name)
    target = np.zeros((image["height"], image["width"]), np.uint8)
    cover = np.zeros_like(target, dtype=np.int32)
    for ann in api.loadAnns(api.getAnnIds(imgIds=image["id"], iscrowd=None)):
        if ann["category_id"] in COCO_TO_VOC:
            mask = api.annToMask(ann)
            target = np.maximum(target, mask * COCO_TO_VOC[ann["category_id"]])
            cover += mask
    target[cover > 1] = 255
    orientation = COCO_IMAGES[name][3]
    return np.rot90(target, k=-1) if orientation == 6 else target  # 6: a quarter turn clockwise


def test_coco_uncompressed_rle_helper_matches_pycocotools():
    mask = (np.random.default_rng(0).random((7, 9)) < 0.4).astype(np.uint8)
    assert np.array_equal(coco_mask.decode(coco_mask.frPyObjects(uncompressed_rle(mask), 7, 9)), mask)


def test_coco_masks_match_annToMask_and_the_reference_filter(coco):
    train_set, val_set = build_dataset("coco", coco, "train"), build_dataset("coco", coco, "val")
    # Image 2's only VOC annotation covers 400 px and image 3 has none: the reference drops both from train.
    assert [image.name for image, _ in train_set.pairs] == ["000000000001.jpg"]
    assert [image.name for image, _ in val_set.pairs] == ["000000000004.jpg", "000000000005.jpg",
                                                          "000000000006.jpg"]
    voc = json.loads((REPO_ROOT / "pascal_voc_classes.json").read_text())
    assert train_set.class_names == sorted(voc, key=voc.get) and train_set.palette == my_dataset.VOC_PALETTE
    for dataset, split in ((train_set, "train2017"), (val_set, "val2017")):
        for index, (image_path, _) in enumerate(dataset.pairs):
            image, mask = dataset[index]
            expected = expected_coco_mask(coco, split, image_path.name)
            assert np.array_equal(mask.numpy(), expected), image_path.name
            with Image.open(image_path) as photo:
                shown = np.array(photo.transpose(Image.Transpose.ROTATE_270)) if COCO_IMAGES[image_path.name][3] == 6 \
                    else np.array(photo)
            assert np.array_equal(image.permute(1, 2, 0).numpy(), shown)
    first = expected_coco_mask(coco, "train2017", "000000000001.jpg")
    assert {8, 15, 7, 12, 255} <= set(np.unique(first).tolist())  # cat, person, crowd car, dog, overlap
    assert (expected_coco_mask(coco, "val2017", "000000000006.jpg") == 0).all()
    # Class weights count the same masks.
    counts = class_pixel_counts(val_set, range(len(val_set)), progress=False)
    expected = sum(np.bincount(expected_coco_mask(coco, "val2017", n).ravel(), minlength=256)
                   for n in ("000000000004.jpg", "000000000005.jpg", "000000000006.jpg"))
    assert np.array_equal(counts, expected)


def test_coco_prepared_masks_equal_the_decoded_ones(coco, tmp_path, monkeypatch, capsys):
    root = tmp_path / "coco"
    shutil.copytree(coco, root)
    spec = importlib.util.spec_from_file_location("prepare_coco", REPO_ROOT / "tools" / "prepare_coco.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    photo = root / "val2017" / "000000000004.jpg"
    photo.rename(photo.with_suffix(".bak"))
    assert tool.main(tool.parse_args(["--data-path", str(root), "--workers", "0"])) == 2
    assert "000000000004.jpg" in capsys.readouterr().err and not (root / "voc_masks" / "val2017.json").exists()
    photo.with_suffix(".bak").rename(photo)
    assert tool.main(tool.parse_args(["--data-path", str(root), "--workers", "0"])) == 0
    monkeypatch.setattr(data_utils.coco, "coco_mask", None)  # prepared masks need no pycocotools
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        dataset = build_dataset("coco", root, split)
        assert all(mask.suffix == ".png" for _, mask in dataset.pairs)
        for index, (image_path, _) in enumerate(dataset.pairs):
            assert np.array_equal(dataset[index][1].numpy(), expected_coco_mask(coco, folder, image_path.name))
    with open(root / "annotations" / "instances_val2017.json", "a") as f:
        f.write(" ")  # another version of the annotations
    with pytest.raises(ValueError, match="another version"):
        build_dataset("coco", root, "val")


def test_coco_bad_inputs_are_one_clear_line(coco, tmp_path, monkeypatch):
    monkeypatch.setattr(data_utils.coco, "coco_mask", None)
    with pytest.raises(ValueError, match="pip install pycocotools"):
        build_dataset("coco", coco, "val")
    monkeypatch.undo()
    root = tmp_path / "coco"
    shutil.copytree(coco, root)
    (root / "val2017" / "000000000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000005.jpg"):
        build_dataset("coco", root, "val")
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [{"id": 1}], "annotations": []}')
    with pytest.raises(ValueError, match="not a COCO instances file"):
        build_dataset("coco", root, "val")
    (root / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        build_dataset("coco", root, "train")
    with pytest.raises(FileNotFoundError, match="COCO root"):
        build_dataset("coco", tmp_path / "nowhere", "val")


# ------------------------------------------------------------------------------------ Cityscapes, ADE20K

@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    return cityscapes_tree(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture(scope="module")
def ade20k(tmp_path_factory) -> Path:
    return ade20k_tree(tmp_path_factory.mktemp("ade"))


def cityscapes_train_ids(raw: np.ndarray) -> np.ndarray:
    table = {label_id: train_id for _, label_id, train_id in CITYSCAPES_LABELS}
    return np.vectorize(lambda v: table.get(int(v), 255), otypes=[np.uint8])(raw)


def test_cityscapes_masks_follow_the_published_label_table(cityscapes, capsys):
    for split, files in CITYSCAPES_FILES.items():
        dataset = build_dataset("cityscapes", cityscapes, split)
        assert len(dataset) == len(files)  # instanceIds and color PNGs are not taken for masks
        for index, (city, stem) in enumerate(sorted(files)):
            raw = pixels(cityscapes / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            assert np.array_equal(dataset[index][1].numpy(), cityscapes_train_ids(raw))
    names = [name for name, _, train_id in sorted(CITYSCAPES_LABELS, key=lambda r: r[2]) if train_id != 255]
    assert dataset.class_names == names
    assert dataset.palette[:57] == [c for color in CITYSCAPES_COLORS for c in color]
    assert my_dataset.main(my_dataset.parse_args(["check", "--dataset", "cityscapes", "--data-path",
                                                  str(cityscapes), "--split", "val", "--workers", "0"])) == 0
    out = capsys.readouterr().out
    raw = pixels(next((cityscapes / "gtFine" / "val").glob("*/*_labelIds.png")))
    road = int((cityscapes_train_ids(raw) == 0).sum())
    assert f"road {road:>14,d}".replace(" ", "") in out.replace(" ", "")


def test_cityscapes_unpaired_and_missing_folders(cityscapes, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(cityscapes, root)
    label = next((root / "gtFine" / "train").glob("*/*_labelIds.png"))
    label.unlink()
    with pytest.raises(FileNotFoundError, match=str(label.name)):
        build_dataset("cityscapes", root, "train")
    shutil.rmtree(root / "gtFine")
    with pytest.raises(FileNotFoundError, match="gtFine_trainvaltest.zip"):
        build_dataset("cityscapes", root, "val")


def test_ade20k_reduces_the_zero_label(ade20k):
    for split, root in (("train", ade20k), ("val", ade20k / "ADEChallengeData2016")):  # either folder works
        dataset = build_dataset("ade20k", root, split)
        folder = "training" if split == "train" else "validation"
        assert len(dataset) == len(ADE20K_FILES[folder]) and dataset.num_classes == 150
        for index, stem in enumerate(ADE20K_FILES[folder]):
            raw = pixels(ade20k / "ADEChallengeData2016" / "annotations" / folder / f"{stem}.png").astype(int)
            assert np.array_equal(dataset[index][1].numpy(), np.where(raw == 0, 255, raw - 1))
    assert dataset.class_names[0] == "wall" and dataset.class_names[149] == "flag"
    assert dataset.palette[:6] == [120, 120, 120, 180, 120, 120]
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        build_dataset("ade20k", ade20k / "ADEChallengeData2016" / "images", "train")


# ---------------------------------------------------------------------------------------------- labelme

@pytest.fixture(scope="module")
def labelme_data(tmp_path_factory) -> tuple[Path, Path]:
    """(labelme folder, the dataset import-labelme made of it with a third of the files in val)."""
    root = tmp_path_factory.mktemp("labelme")
    src = labelme_folder(root / "src")
    out = root / "data"
    assert import_labelme(src, out, src / "classes.json", val_fraction=0.34, progress=False) == \
        {"train": 2, "val": 1}
    return src, out


def segment_distance(y: np.ndarray, x: np.ndarray, a, b) -> np.ndarray:
    """Distance of pixel centres (x, y) to the segment a-b."""
    (ax, ay), (bx, by) = a, b
    t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / max((bx - ax) ** 2 + (by - ay) ** 2, 1e-9), 0, 1)
    return np.hypot(x - (ax + t * (bx - ax)), y - (ay + t * (by - ay)))


def band(y: np.ndarray, x: np.ndarray, a, b, half: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside, near the outline) of the width-2*half band along a-b with flat ends, as PIL draws wide lines."""
    (ax, ay), (bx, by) = a, b
    length = math.dist(a, b)
    along = ((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / length
    across = np.abs((x - ax) * (by - ay) - (y - ay) * (bx - ax)) / length
    inside = (along >= 0) & (along <= length) & (across <= half)
    near = ((np.abs(across - half) < 1.5) & (along > -1.5) & (along < length + 1.5)) | \
           (((np.abs(along) < 1.5) | (np.abs(along - length) < 1.5)) & (across < half + 1.5))
    return inside, near


def inside_polygon(y: np.ndarray, x: np.ndarray, points) -> np.ndarray:
    """Even-odd rule on pixel centres."""
    inside = np.zeros(y.shape, bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside ^= crosses & (x < (x1 - x0) * (y - y0) / (y1 - y0) + x0)
    return inside


def expected_labelme(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(expected mask, pixels that decide it: farther than 1.5 px from every shape's outline). Rectangles, whose
    integer corners PIL fills inclusively, are exact everywhere."""
    y, x = np.mgrid[:64, :64].astype(float)
    mask, sure = np.zeros((64, 64), np.uint8), np.ones((64, 64), bool)
    index = {n: i for i, n in enumerate(LABELME_CLASSES)}
    for shape in labelme_shapes()[name]:
        value = 255 if shape["label"] == "__ignore__" else index[shape["label"]]
        kind, pts = shape.get("shape_type", "polygon"), [tuple(p) for p in shape["points"]]
        if kind == "rectangle":
            (x0, y0), (x1, y1) = pts
            region = (x >= min(x0, x1)) & (x <= max(x0, x1)) & (y >= min(y0, y1)) & (y <= max(y0, y1))
            edge = np.zeros_like(region)
        elif kind in ("circle", "point"):
            r = math.dist(pts[0], pts[1]) if kind == "circle" else 5
            distance = np.hypot(x - pts[0][0], y - pts[0][1])
            region, edge = distance <= r, np.abs(distance - r) < 1.5
        elif kind in ("line", "linestrip"):  # 10 px wide
            bands = [band(y, x, a, b, 5) for a, b in zip(pts, pts[1:])]
            region, edge = np.any([b[0] for b in bands], axis=0), np.any([b[1] for b in bands], axis=0)
        else:
            distance = np.min([segment_distance(y, x, a, b) for a, b in zip(pts, pts[1:] + pts[:1])], axis=0)
            region, edge = inside_polygon(y, x, pts) | (distance < 0.5), distance < 1.5
        mask[region] = value
        sure[region] = True  # painted over: earlier outlines no longer matter here
        sure &= ~edge
    return mask, sure


def test_labelme_import_draws_each_shape_type(labelme_data):
    src, out = labelme_data
    assert json.loads((out / "classes.json").read_text()) == {n: i for i, n in enumerate(LABELME_CLASSES)}
    masks = {p.stem: p for p in out.glob("*/masks/*.png")}
    assert sorted(masks) == ["embedded", "old_format", "referenced"]
    for name, path in masks.items():
        got = pixels(path)
        expected, sure = expected_labelme(name)
        assert sure.mean() > 0.7
        assert np.array_equal(got[sure], expected[sure]), name
        assert set(np.unique(got).tolist()) == set(np.unique(expected).tolist())
    # Photos: the embedded PNG's bytes, the referenced JPEG unchanged, the Windows-path PNG found.
    photos = {p.stem: p for p in out.glob("*/images/*")}
    embedded = json.loads((src / "embedded.json").read_text())["imageData"]
    assert photos["embedded"].read_bytes() == base64.b64decode(embedded)
    assert photos["referenced"].read_bytes() == (src / "referenced.jpg").read_bytes()
    assert np.array_equal(read_image(photos["old_format"]).permute(1, 2, 0).numpy(),
                          pixels(src / "photos" / "old.png"))
    assert len(build_dataset("folder", out, "train")) == 2 and len(build_dataset("folder", out, "val")) == 1


def write_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


LABELME_BAD = {
    "unknown-label": (lambda src: write_json(src / "referenced.json", lambda d: d["shapes"][0].update(label="cow")),
                      ["referenced.json", "'cow'"]),
    "missing-image": (lambda src: (src / "referenced.jpg").unlink(), ["referenced.json", "referenced.jpg"]),
    "bad-shape": (lambda src: write_json(src / "embedded.json", lambda d: d["shapes"][2].update(points=[[1, 1]])),
                  ["embedded.json", "circle needs 2 points"]),
    "bad-type": (lambda src: write_json(src / "embedded.json", lambda d: d["shapes"][0].update(shape_type="mask")),
                 ["embedded.json", "'mask'"]),
    "size": (lambda src: write_json(src / "embedded.json", lambda d: d.update(imageHeight=50)),
             ["embedded.json", "50x64"]),
    "not-json": (lambda src: (src / "broken.json").write_text("{"), ["broken.json", "not valid JSON"]),
}


@pytest.mark.parametrize("case", LABELME_BAD)
def test_labelme_bad_inputs_name_the_file_and_write_nothing(case, tmp_path, capsys):
    src = labelme_folder(tmp_path / "src")
    breaker, needles = LABELME_BAD[case]
    breaker(src)
    out = tmp_path / "data"
    args = my_dataset.parse_args(["import-labelme", str(src), "--out", str(out), "--classes",
                                  str(src / "classes.json")])
    assert my_dataset.main(args) == 2
    err = one_line_error(capsys)
    assert all(n in err for n in needles), err
    assert list(tmp_path.iterdir()) == [src]  # no output, no staging folder left behind


def test_labelme_never_writes_into_a_folder_that_holds_something(tmp_path, capsys):
    src = labelme_folder(tmp_path / "src")
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = my_dataset.parse_args(["import-labelme", str(src), "--out", str(out), "--classes",
                                  str(src / "classes.json")])
    assert my_dataset.main(args) == 2 and "not empty" in one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------------------- colour masks

COLORS = {"background": [0, 0, 0], "road": [128, 64, 128], "car": [[0, 0, 142], [0, 0, 143]],
          "__ignore__": [255, 255, 255]}


def color_masks(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    choices = np.array([[0, 0, 0], [128, 64, 128], [0, 0, 142], [0, 0, 143], [255, 255, 255]], np.uint8)
    folder.mkdir(parents=True)
    masks = {}
    for name in ("a", "b"):
        masks[name] = choices[rng.integers(0, 5, (20, 30))]
        Image.fromarray(masks[name]).save(folder / f"{name}.png")
    return masks


def test_convert_colors_maps_every_colour(tmp_path):
    masks = color_masks(tmp_path / "colour")
    (tmp_path / "colors.json").write_text(json.dumps(COLORS))
    assert convert_colors(tmp_path / "colour", tmp_path / "colors.json", tmp_path / "out", progress=False) == 2
    lookup = {(0, 0, 0): 0, (128, 64, 128): 1, (0, 0, 142): 2, (0, 0, 143): 2, (255, 255, 255): 255}
    for name, rgb in masks.items():
        expected = np.array([[lookup[tuple(int(v) for v in px)] for px in row] for row in rgb], np.uint8)
        assert np.array_equal(pixels(tmp_path / "out" / f"{name}.png"), expected)
    with Image.open(tmp_path / "out" / "a.png") as image:
        assert image.getpalette()[:9] == [0, 0, 0, 128, 64, 128, 0, 0, 142]
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == {"background": 0, "road": 1, "car": 2}


def test_convert_colors_unknown_colour_names_file_colour_and_count(tmp_path, capsys):
    masks = color_masks(tmp_path / "colour")
    rgb = masks["b"].copy()
    rgb[:3, :4] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "colour" / "b.png")
    (tmp_path / "colors.json").write_text(json.dumps(COLORS))
    args = my_dataset.parse_args(["convert-colors", str(tmp_path / "colour"), "--colors",
                                  str(tmp_path / "colors.json"), "--out", str(tmp_path / "out")])
    assert my_dataset.main(args) == 2
    err = one_line_error(capsys)
    assert "b.png" in err and "(10, 20, 30) on 12 pixels" in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["colors.json",
                                                                                              "colour"]


# ----------------------------------------------------------------------------- training and validation

# One step per run: the batch is the whole training split (COCO keeps one image, the others have two).
TINY = ["--pretrained-backbone", "none", "--base-size", "32", "--crop-size", "32", "-j", "0", "--print-freq", "1",
        "--device", "cpu", "--epochs", "1", "--no-aux", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def trees(coco, cityscapes, ade20k, labelme_data) -> dict[str, Path]:
    return {"coco": coco, "cityscapes": cityscapes, "ade20k": ade20k, "folder": labelme_data[1]}


@pytest.fixture
def one_thread():
    """One intra-op thread for these tiny in-process runs: on a shared 2-core machine two spinning OpenMP
    threads made a step about 8x slower (the thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def valid_pixels(dataset) -> int:
    return sum(int((dataset.load_mask(i) != 255).sum()) for i in range(len(dataset)))


@pytest.mark.parametrize("name", ["coco", "cityscapes", "ade20k", "folder"])
def test_one_epoch_training_and_validation(name, trees, tmp_path, one_thread):
    data, out = trees[name], tmp_path / "run"
    batch = "1" if name == "coco" else "2"
    args = train.parse_args(["--dataset", name, "--data-path", str(data), "--output-dir", str(out), "-b", batch,
                             *TINY])
    assert run_training(args) == 0
    spec, val_set = DATASETS[name], build_dataset(name, data, "val")
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["dataset"] == name and ckpt["class_names"] == spec.class_names(data)
    assert ckpt["palette"] == spec.palette and ckpt["num_classes"] == len(spec.class_names(data))
    report = tmp_path / "val.json"
    validation.main(validation.parse_args(["--dataset", name, "--data-path", str(data), "--weights",
                                           str(out / "best.pth"), "--device", "cpu", "-j", "0", "--json",
                                           str(report), "--record", str(tmp_path / "record.txt")]))
    result = json.loads(report.read_text())
    assert result["images"] == len(val_set) and result["single-scale"]["class_names"] == spec.class_names(data)
    assert result["single-scale"]["num_pixels"] == valid_pixels(val_set)
    if name == "cityscapes":  # predictions of a Cityscapes model are drawn in Cityscapes colours
        photo = val_set.pairs[0][0]
        predict.main(predict.parse_args(["--weights", str(out / "best.pth"), "--image", str(photo), "--output",
                                         str(tmp_path / "pred.png"), "--device", "cpu", "--overlay"]))
        with Image.open(tmp_path / "pred.png") as image:
            index, rgb = np.array(image), np.array(image.convert("RGB"))
        colors = np.array(CITYSCAPES_COLORS, np.uint8)
        assert index.max() < 19 and np.array_equal(rgb, colors[index])
        assert (tmp_path / "pred_overlay.png").is_file()


# ---------------------------------------------------------------------------------------------- configs

# The published recipe each config follows: (dataset, crop (h, w), base size, lr, batch per process).
RECIPES = {"voc": ("voc", (480, 480), 520, 1e-4, 4), "voc_aug": ("voc-aug", (512, 512), 512, 0.01, 4),
           "coco": ("coco", (480, 480), 520, 0.02, 4), "cityscapes": ("cityscapes", (512, 1024), 1024, 0.01, 2),
           "ade20k": ("ade20k", (512, 512), 512, 0.01, 4)}


@pytest.mark.parametrize("name", RECIPES)
def test_configs_hold_the_published_recipes(name):
    path = REPO_ROOT / "configs" / f"{name}.yaml"
    args = train.parse_args(["--config", str(path)])
    dataset, (crop_h, crop_w), base, lr, batch = RECIPES[name]
    assert (args.dataset, args.crop_size, args.crop_width or args.crop_size) == (dataset, crop_h, crop_w)
    assert (args.base_size, args.lr, args.batch_size) == (base, lr, batch)
    assert "published" in path.read_text().lower()
    assert set(yaml.safe_load(path.read_text())) <= {a.dest.replace("_", "-") for a in get_args_parser("x")._actions}
