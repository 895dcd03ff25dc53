"""Shared fixtures: a small Pascal VOC tree with generated images and one real VOC photo (imgviz's sample).

Files are written with PIL and imgviz's colormap directly, not with my_dataset's helpers, so the tests of
my_dataset read data that its own writer did not produce.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import imgviz
import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # my_dataset.py, transforms.py and train_utils live at the root

from my_dataset import make_demo_dataset  # noqa: E402

import warm_python  # noqa: E402

# Flags of the tiny CPU trainings of the end-to-end tests.
TINY = ["--pretrained-backbone", "none", "--base-size", "64", "--crop-size", "64", "-b", "2", "-j", "0",
        "--print-freq", "1", "--device", "cpu"]

# The most the suite holds on disk at once (measured: 3.3 GB; the trainings write checkpoints of 100-500 MB, and
# pytest.ini has a passed test's folder removed when it ends).
SUITE_DISK_BYTES = 3584 << 20


def pytest_sessionstart(session):
    """A disk too full for the suite's checkpoints stops it at once with one line, not with a dozen tests
    failing on the trainings' own free-space check."""
    where = Path(session.config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < SUITE_DISK_BYTES:
        pytest.exit(f"{where}: only {free / 2**30:.1f} GiB free, the test suite needs about "
                    f"{SUITE_DISK_BYTES / 2**30:.1f} GiB there; free some space or pass --basetemp DIR", returncode=3)


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory):
    """Every temporary file of the session, its own and its children's (torchrun's rendezvous folders,
    multiprocessing's pymp-*, TorchInductor's cache), goes into one folder under pytest's basetemp that is
    removed at the end, so a run leaves nothing in the system's temporary folder."""
    scratch = tmp_path_factory.mktemp("tmpdir", numbered=False)  # basetemp is resolved from the real TMPDIR first
    saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)
    yield scratch
    warm_python.shutdown()  # its own temporary folder lives here
    tempfile.tempdir = saved_dir
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env
    shutil.rmtree(scratch, ignore_errors=True)


TRAIN_IDS = ["gen_000", "gen_001", "gen_002"]
VAL_IDS = ["gen_003", "voc_sample"]
GENERATED_SIZES = {"gen_000": (64, 64), "gen_001": (48, 64), "gen_002": (64, 40), "gen_003": (56, 56)}
REAL_SIZE = (375, 500)


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    Image.fromarray(rgb).save(path, quality=quality)


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(imgviz.label_colormap().flatten().tolist())
    image.save(path)


def truncate(path: Path) -> None:
    """Keeps the first half of the file's bytes, like an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _grow(band: np.ndarray) -> np.ndarray:
    grown = band.copy()
    grown[1:] |= band[:-1]
    grown[:-1] |= band[1:]
    grown[:, 1:] |= band[:, :-1]
    grown[:, :-1] |= band[:, 1:]
    return grown


def add_ignore_band(label: np.ndarray, width: int = 2) -> np.ndarray:
    """Marks with 255 a band about `width` px wide along every change of label (4-neighbours), like VOC."""
    band = np.zeros(label.shape, dtype=bool)
    across = label[:, 1:] != label[:, :-1]
    band[:, 1:] |= across
    band[:, :-1] |= across
    down = label[1:] != label[:-1]
    band[1:] |= down
    band[:-1] |= down
    for _ in range(width // 2 - 1):
        band = _grow(band)
    out = label.copy()
    out[band] = 255
    return out


def generated_sample(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise photo with two rectangles of random VOC classes and their mask (with a 255 band)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), dtype=np.uint8)
    for cls in rng.choice(np.arange(1, 21), 2, replace=False):
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        label[y:y + height // 3, x:x + width // 3] = cls
        rgb[y:y + height // 3, x:x + width // 3] = (cls * 12, 255 - cls * 12, 128)
    return rgb, add_ignore_band(label)


def real_sample() -> tuple[np.ndarray, np.ndarray]:
    """imgviz's VOC photo (375 x 500) with its instance masks merged into a class mask plus a 255 band."""
    data = imgviz.data.voc()
    label = np.zeros(data["rgb"].shape[:2], dtype=np.uint8)
    for cls, instance in zip(data["labels"], data["masks"]):
        label[instance] = cls
    return data["rgb"], add_ignore_band(label, width=4)


def build_voc_tree(root: Path) -> Path:
    """root/VOCdevkit/VOC2012 with train (3 generated images) and val (1 generated, 1 real photo)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    samples = {i: generated_sample(*GENERATED_SIZES[i], seed=n) for n, i in enumerate(GENERATED_SIZES)}
    samples["voc_sample"] = real_sample()
    for sample_id, (rgb, label) in samples.items():
        write_jpeg(voc / "JPEGImages" / f"{sample_id}.jpg", rgb)
        write_palette_png(voc / "SegmentationClass" / f"{sample_id}.png", label)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(TRAIN_IDS) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VAL_IDS) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """Folder containing VOCdevkit/VOC2012 (see build_voc_tree)."""
    return build_voc_tree(tmp_path / "voc")


@pytest.fixture
def voc2012(voc_root: Path) -> Path:
    """The VOCdevkit/VOC2012 folder inside voc_root."""
    return voc_root / "VOCdevkit" / "VOC2012"


def run(*args, check=True, env=None, timeout=300, cwd=REPO_ROOT):
    """Runs `python *args` from the repository root, as a user would; raises with its output if it fails.

    A script runs in a child of tests/warm_python.py (torch already imported, the project imported fresh);
    anything else (`-m`, `-c`) and any run with its own `env` (which may change what is imported) starts a
    fresh interpreter."""
    argv = list(map(str, args))
    result = None if env else warm_python.run_script(argv, cwd, dict(os.environ), timeout)
    if result is None:
        result = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The synthetic demo dataset: 6 training and 3 validation images of 64 x 64, 5 classes."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=6, num_val=3, size=64)


@pytest.fixture(scope="session")
def trained(demo, tmp_path_factory):
    """One tiny run for the whole session: 2 epochs (3 iterations each, every one printed), evaluated after
    each, with TensorBoard; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("run") / "run"
    run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "2", "--tensorboard", *TINY)
    return out


def named(path: Path) -> str:
    """A pytest.raises pattern matching the path literally."""
    return re.escape(str(path))


def pil_mask(path: Path) -> np.ndarray:
    return np.array(Image.open(path))
