"""Tests of tools/prepare_sbd.py on a tiny fake SBD tree (benchmark_RELEASE/dataset/{cls, train.txt, val.txt})."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from my_dataset import VOC_PALETTE, VOCSegmentation

from conftest import GENERATED_SIZES, REPO_ROOT, run, write_jpeg

TOOL = REPO_ROOT / "tools" / "prepare_sbd.py"


def load_tool():
    """tools/ is not a package: load the script as a module to call its main() in-process."""
    spec = importlib.util.spec_from_file_location("prepare_sbd", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """A .mat laid out like SBD's cls files: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    categories = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": segmentation, "Boundaries": np.zeros((1, 1), object),
                                      "CategoriesPresent": categories}})


def make_sbd(root: Path, voc2012: Path) -> Path:
    """SBD ids: gen_000 (also VOC train), gen_003 (VOC val: must be dropped), sbd_a and sbd_b (new images),
    sbd_nojpeg (no JPEG in VOC: skipped)."""
    dataset = root / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for sample_id in ["gen_000", "gen_003", "sbd_a", "sbd_b", "sbd_nojpeg"]:
        height, width = GENERATED_SIZES.get(sample_id, (30, 40))
        write_sbd_mat(dataset / "cls" / f"{sample_id}.mat", rng.integers(0, 21, (height, width)).astype(np.uint8))
        if sample_id.startswith("sbd_") and sample_id != "sbd_nojpeg":
            write_jpeg(voc2012 / "JPEGImages" / f"{sample_id}.jpg", np.zeros((height, width, 3), np.uint8))
    (dataset / "train.txt").write_text("sbd_a\ngen_000\ngen_003\n")
    (dataset / "val.txt").write_text("sbd_b\nsbd_nojpeg\n")
    return root / "benchmark_RELEASE"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return run(TOOL, *args, check=False, timeout=120)


def test_prepare_sbd(tmp_path, voc_root, voc2012):
    sbd_root = make_sbd(tmp_path / "sbd", voc2012)
    result = run_tool("--sbd-root", str(sbd_root), "--voc-root", str(voc_root))
    assert result.returncode == 0, result.stderr

    trainaug = (voc2012 / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split()
    # (VOC train {gen_000..002} | SBD train | SBD val) - VOC val {gen_003, voc_sample}, minus the id without JPEG.
    assert trainaug == ["gen_000", "gen_001", "gen_002", "sbd_a", "sbd_b"]
    assert "trainaug: 5 ids" in result.stdout and "1 ids skipped" in result.stdout

    aug = voc2012 / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == trainaug
    # VOC's own mask wins over SBD's for an id in both: the file is copied byte for byte.
    assert (aug / "gen_000.png").read_bytes() == (voc2012 / "SegmentationClass" / "gen_000.png").read_bytes()
    # SBD masks become VOC palette PNGs holding the .mat's class map.
    converted = Image.open(aug / "sbd_a.png")
    assert converted.mode == "P" and converted.getpalette()[:768] == VOC_PALETTE
    expected = scipy.io.loadmat(sbd_root / "dataset" / "cls" / "sbd_a.mat")["GTcls"]["Segmentation"][0, 0]
    assert np.array_equal(np.array(converted), expected)

    dataset = VOCSegmentation(voc_root, split="trainaug")
    assert len(dataset) == 5 and dataset[3][1].shape == (30, 40)


def test_prepare_sbd_wrong_root(tmp_path, voc_root, capsys):
    tool = load_tool()
    assert tool.main(tool.parse_args(["--sbd-root", str(tmp_path), "--voc-root", str(voc_root)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "benchmark_RELEASE" in err and err.count("\n") == 1
    assert tool.main(tool.parse_args(["--sbd-root", str(tmp_path), "--voc-root", str(tmp_path)])) == 2


def test_prepare_sbd_without_scipy(tmp_path, voc_root, capsys, monkeypatch):
    tool = load_tool()
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import loadmat` fail
    assert tool.main(tool.parse_args(["--sbd-root", str(tmp_path), "--voc-root", str(voc_root)])) == 2
    assert "pip install scipy" in capsys.readouterr().err


def test_prepare_sbd_damaged_mat_names_the_file(tmp_path, voc_root, voc2012, capsys):
    sbd_root = make_sbd(tmp_path / "sbd", voc2012)
    damaged = sbd_root / "dataset" / "cls" / "sbd_a.mat"
    damaged.write_bytes(damaged.read_bytes()[:200])
    tool = load_tool()
    assert tool.main(tool.parse_args(["--sbd-root", str(sbd_root), "--voc-root", str(voc_root)])) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: cannot read ") and str(damaged) in errors[0]
