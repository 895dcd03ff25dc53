"""my_dataset.py: the demo dataset and the commands (check, demo; import-labelme and convert-colors are in
test_dataset_formats.py)."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import my_dataset
from core.constants import IGNORE_INDEX
from my_dataset import DEMO_CLASSES, VOCSegmentation, make_demo_dataset

from conftest import GENERATED_SIZES, REPO_ROOT, VAL_IDS, pil_mask, run, truncate, write_palette_png
from dataset_trees import make_folder_split


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run(REPO_ROOT / "my_dataset.py", *args, check=False, timeout=120)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- demo data

def test_demo_is_deterministic(tmp_path):
    first = tree_bytes(make_demo_dataset(tmp_path / "a", num_train=6, num_val=3, size=64, seed=0))
    second = tree_bytes(make_demo_dataset(tmp_path / "b", num_train=6, num_val=3, size=64, seed=0))
    other = tree_bytes(make_demo_dataset(tmp_path / "c", num_train=6, num_val=3, size=64, seed=1))
    assert first == second
    assert first.keys() == other.keys() and first != other
    assert len([k for k in first if k.endswith(".jpg")]) == 9


def test_demo_layout_and_classes(tmp_path):
    root = make_demo_dataset(tmp_path, num_train=5, num_val=2, size=64)
    assert json.loads((root / "classes.json").read_text()) == {n: i for i, n in enumerate(DEMO_CLASSES)}
    assert len(DEMO_CLASSES) == 5 and DEMO_CLASSES[0] == "background"
    train, val = VOCSegmentation(root, split="train"), VOCSegmentation(root, split="val")
    assert (len(train), len(val)) == (5, 2)
    assert train.class_names == list(DEMO_CLASSES)
    image, mask = val[1]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)


def test_demo_masks_have_ignore_bands_and_every_class(tmp_path):
    root = make_demo_dataset(tmp_path, num_train=20, num_val=1, size=64)
    seen = set()
    for path in sorted((root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("train_*.png")):
        mask = pil_mask(path)
        assert Image.open(path).mode == "P" and (mask == IGNORE_INDEX).any()
        # The band separates regions: no two labelled 4-neighbours carry different classes.
        for a, b in [(mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])]:
            labelled = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not (labelled & (a != b)).any(), path
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3, 4, IGNORE_INDEX}


def test_demo_classes_have_distinct_colours(tmp_path):
    root = make_demo_dataset(tmp_path, num_train=20, num_val=1, size=64)
    dataset = VOCSegmentation(root)
    pixels = {c: [] for c in range(5)}
    for image, mask in (dataset[i] for i in range(len(dataset))):
        for c in pixels:
            pixels[c].append(image[:, mask == c].float())
    r, g, b = zip(*(torch.cat(pixels[c], dim=1).mean(dim=1).tolist() for c in range(1, 5)))
    assert r[0] > 1.8 * g[0] and r[0] > 1.8 * b[0]        # red disc
    assert b[1] > 1.8 * r[1] and b[1] > 1.4 * g[1]        # blue square
    assert g[2] > 1.8 * r[2] and g[2] > 1.8 * b[2]        # green triangle
    assert min(r[3], g[3]) > 2 * b[3]                     # yellow diamond
    background = torch.cat(pixels[0], dim=1).mean(dim=1)
    assert float(background.max() - background.min()) < 40  # muted, not one of the object colours


def test_demo_is_fast(tmp_path):
    import time
    start = time.perf_counter()
    make_demo_dataset(tmp_path, num_train=80, num_val=20, size=96)
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------------------------------- CLI

def test_cli_demo_then_check_passes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = my_dataset.parse_args(["demo", "--out", str(out), "--num-train", "4", "--num-val", "3", "--size", "64"])
    assert my_dataset.main(args) == 0
    assert str(out) in capsys.readouterr().out
    result = run_cli("check", "--data-path", str(out), "--split", "val", "--workers", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "images scanned: 3" in result.stdout and "problems: 0" in result.stdout
    assert "red_striped_disc" in result.stdout


def test_cli_check_lists_bad_files(voc_root, voc2012):
    truncated = voc2012 / "JPEGImages" / "gen_000.jpg"
    truncate(truncated)
    missing = voc2012 / "SegmentationClass" / "gen_001.png"
    missing.unlink()
    bad_values = voc2012 / "SegmentationClass" / "gen_002.png"
    write_palette_png(bad_values, np.full(GENERATED_SIZES["gen_002"], 40, np.uint8))
    result = run_cli("check", "--data-path", str(voc_root), "--workers", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    for path in (truncated, missing, bad_values):
        assert str(path) in result.stdout
    assert "problems: 3" in result.stdout


def test_check_counts_pixels_per_class(voc_root, voc2012, tmp_path, capsys):
    counts_file = tmp_path / "counts.json"
    args = my_dataset.parse_args(["check", "--data-path", str(voc_root), "--split", "val", "--workers", "0",
                                  "--save-counts", str(counts_file)])
    assert my_dataset.main(args) == 0
    expected = sum(np.bincount(pil_mask(voc2012 / "SegmentationClass" / f"{i}.png").ravel(), minlength=256)
                   for i in VAL_IDS)
    report = json.loads(counts_file.read_text())
    assert report["counts"] == expected[:21].tolist() and report["ignored"] == expected[IGNORE_INDEX]
    out = capsys.readouterr().out
    absent = [name for i, name in enumerate(report["class_names"]) if expected[i] == 0]
    assert f"classes that never occur: {', '.join(absent)}" in out
    assert f"{expected[15]:,d}" in out  # the real photo's person pixels


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert my_dataset.main(my_dataset.parse_args(["check", "--data-path", str(tmp_path)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "VOCdevkit" in err
    assert my_dataset.main(my_dataset.parse_args(["demo", "--out", str(tmp_path), "--size", "8"])) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_check_folder_dataset_reports_unpaired(tmp_path, capsys):
    images, masks = make_folder_split(tmp_path / "train")
    (masks / "a.png").unlink()
    args = my_dataset.parse_args(["check", "--data-path", str(tmp_path), "--dataset", "folder", "--workers", "0"])
    assert my_dataset.main(args) == 1
    out = capsys.readouterr().out
    assert "images scanned: 2" in out and str(images / "a.jpg") in out


def test_check_refuses_an_unwritable_counts_file_before_scanning(voc_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(my_dataset, "check_split", lambda *a: pytest.fail("scanned before checking"))
    args = my_dataset.parse_args(["check", "--data-path", str(voc_root), "--workers", "0", "--save-counts",
                                  str(tmp_path)])
    assert my_dataset.main(args) == 2
    assert capsys.readouterr().err.strip() == f"error: --save-counts {tmp_path} is a folder; give a file name"
