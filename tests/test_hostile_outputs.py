"""Outputs that would replace inputs, damaged weights, huge photos and half-started process groups: each ends
in one line naming the problem and its fix, before any work, and nothing is damaged.
"""
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core import platform
from core.checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from core.cli import UsageError
from core.platform import append_text
from core.rendezvous import connect, rendezvous_timeout
from inference import check_output_files, memory, normalize, output_target, slide_inference, slide_masks, whole_image
from inference.memory import whole_image_bytes
from src import build_model
from src.weights import load_model_weights
from train_utils.checkpoint import RunState
from train_utils.early_stop import EarlyStopping
from train_utils.trainer import fit

from conftest import run


def error_line(result) -> str:
    """The one `error:` line of a failed run (and proof that there is no traceback)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An untrained 5-class fcn_resnet50 checkpoint (the demo data's classes): no training needed to check
    what happens around a run."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    save_checkpoint(Checkpoint(build_model("fcn_resnet50", 5, aux=False).state_dict(), model_name="fcn_resnet50",
                               num_classes=5, aux=False), path)
    return path


@pytest.fixture(scope="module")
def nan_weights(weights, tmp_path_factory) -> Path:
    """`weights` with one BatchNorm running variance set to NaN."""
    ckpt = read_checkpoint(weights)
    name = next(k for k in ckpt["model"] if k.endswith("running_var"))
    ckpt["model"][name][0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pth"
    torch.save(ckpt, path)
    return path


def validate(demo, weights, *flags, check=False):
    return run("validation.py", "--data-path", demo, "--weights", weights, "--device", "cpu", "-b", "4", "-j", "0",
               *flags, check=check)


# ------------------------------------------------------------------------------------- non-finite weights

def test_checkpoint_with_nan_is_refused_by_validation_and_predict(nan_weights, demo, tmp_path):
    name = next(k for k in torch.load(nan_weights, weights_only=True)["model"] if k.endswith("running_var"))
    line = error_line(run("validation.py", "--data-path", demo, "--weights", nan_weights, "--device", "cpu",
                          "--record", tmp_path / "record.txt", check=False))
    assert name in line and "NaN" in line and str(nan_weights) in line
    assert not (tmp_path / "record.txt").exists()
    photo = next((demo / "VOCdevkit" / "VOC2012" / "JPEGImages").iterdir())
    line = error_line(run("predict.py", "--weights", nan_weights, "--image", photo, "--output",
                          tmp_path / "mask.png", "--device", "cpu", check=False))
    assert name in line and not (tmp_path / "mask.png").exists()


def test_checkpoint_with_inf_is_refused_for_resume_weights_and_inspect(weights, tmp_path):
    ckpt = read_checkpoint(weights)
    first_float = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][first_float].view(-1)[-1] = float("-inf")
    path = tmp_path / "inf.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=f"tensor '{first_float}' holds non-finite values \\(0 NaN, 1 inf"):
        load_checkpoint(path)  # train --resume, tools/inspect_checkpoint.py, validation, predict, export
    model = build_model("fcn_resnet50", 5, aux=False)
    with pytest.raises(ValueError, match=first_float):
        load_model_weights(model, path)  # train --weights
    line = error_line(run("tools/inspect_checkpoint.py", path, check=False))
    assert first_float in line


# ------------------------------------------------------------------------------- outputs that are inputs

def test_validation_output_that_is_an_input_or_another_kind_of_file_is_refused(weights, demo, tmp_path):
    before = digest(weights)
    line = error_line(validate(demo, weights, "--json", weights, "--record", tmp_path / "r.txt"))
    assert "--json" in line and "an input of this run" in line
    assert digest(weights) == before
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(photo)
    line = error_line(validate(demo, weights, "--record", photo))
    assert "--record" in line and "PNG picture, not a text file" in line
    line = error_line(validate(demo, weights, "--record", tmp_path / "r.txt", "--json", tmp_path / "r.txt"))
    assert "is also --record" in line
    assert not (tmp_path / "r.txt").exists()


def test_save_dir_inside_or_holding_the_dataset_is_refused(weights, demo, tmp_path):
    masks = demo / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    before = {p.name: digest(p) for p in masks.iterdir()}
    for save_dir in (masks.parent, demo.parent):
        line = error_line(validate(demo, weights, "--save-dir", save_dir, "--record", tmp_path / "r.txt"))
        assert "--save-dir" in line and ("lies inside" in line or "holds" in line)
    assert {p.name: digest(p) for p in masks.iterdir()} == before
    assert not (masks.parent / "tiles").exists() and not (tmp_path / "r.txt").exists()


def test_save_dir_file_of_another_kind_is_refused_and_leftovers_removed(weights, demo, tmp_path):
    save_dir = tmp_path / "pictures"
    stem = (demo / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (save_dir / "masks").mkdir(parents=True)
    notes = save_dir / "masks" / f"{stem}.png"
    notes.write_text("my notes, not a picture\n")
    leftover = save_dir / ".confusion.png.k3j2h1.tmp"  # what a kill during atomic_write leaves
    leftover.write_bytes(b"half a figure")
    result = validate(demo, weights, "--save-dir", save_dir, "--record", tmp_path / "r.txt")
    assert "text file, not a PNG picture" in error_line(result)
    assert notes.read_text() == "my notes, not a picture\n"
    assert "removed 1 temporary file" in result.stderr and not leftover.exists()


def test_record_that_is_a_symlink_is_appended_through(weights, demo, tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "log.txt"
    shared.parent.mkdir()
    shared.write_text("earlier block\n")
    link = tmp_path / "record.txt"
    link.symlink_to(shared)
    validate(demo, weights, "--record", link, check=True)
    assert link.is_symlink() and link.resolve() == shared.resolve()
    text = shared.read_text()
    assert text.startswith("earlier block\n") and "mean IoU" in text
    def no_file_beside(*_):  # a log one may write but not create files beside: appended in place
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(platform, "atomic_write", no_file_beside)
    append_text(link, "second block\n")
    assert link.is_symlink() and shared.read_text() == text + "second block\n"


# ------------------------------------------------------------------------- what a run says it wrote

def test_resume_of_a_finished_run_says_nothing_is_trained_or_written(tmp_path, caplog):
    out = tmp_path / "new_run"
    out.mkdir()
    training = SimpleNamespace(args=SimpleNamespace(epochs=2, resume=str(tmp_path / "old" / "last.pth")),
                               info=None, state=RunState(next_epoch=2), early_stop=EarlyStopping())
    log = logging.getLogger("finished-run")
    with caplog.at_level(logging.INFO, logger="finished-run"):
        assert fit(training, None, None, None, None, out, log, None, None) == 0
    assert "has completed all 2 epochs" in caplog.text and f"no checkpoint is written to {out}" in caplog.text
    assert "checkpoints in" not in caplog.text and not any(out.iterdir())


def test_predict_output_file_name(weights, demo, tmp_path):
    photo = sorted((demo / "VOCdevkit" / "VOC2012" / "JPEGImages").iterdir())[0]
    line = error_line(run("predict.py", "--weights", weights, "--image", photo, "--output", tmp_path / "o.jpg",
                          "--device", "cpu", check=False))
    assert "masks are written as PNG" in line and str(tmp_path / "o.png") in line
    assert not (tmp_path / "o.jpg").exists()
    with pytest.raises(UsageError, match="--image is a folder"):
        output_target(str(tmp_path / "o.png"), single=False)  # not a folder named o.png
    (tmp_path / "o.png").write_bytes(photo.read_bytes())  # a JPEG under a .png name: not a mask to replace
    with pytest.raises(UsageError, match="JPEG photo, not a PNG picture"):
        check_output_files([tmp_path / "o.png"])
    with pytest.raises(UsageError, match="an input of this run"):
        check_output_files([tmp_path / "o.png"], [tmp_path / "o.png"])
    (tmp_path / "o.png").unlink()
    run("predict.py", "--weights", weights, "--image", photo, "--output", tmp_path / "o.png", "--device", "cpu")
    assert (tmp_path / "o.png").is_file() and Image.open(tmp_path / "o.png").size == Image.open(photo).size


# ------------------------------------------------------------------------------ a half-started process group

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_rank_ends_the_wait_with_the_ranks_named(weights, demo, tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "FCN_RENDEZVOUS_TIMEOUT": "30"}
    start = time.monotonic()
    result = run("validation.py", "--data-path", demo, "--weights", weights, "--device", "cpu", "--record",
                 tmp_path / "r.txt", "--rendezvous-timeout", "1.5", env=env, check=False)  # the flag wins
    line = error_line(result)
    assert time.monotonic() - start < 25
    assert "rank 0 of 2 waited 1.5 s" in line and "rank(s) 1 never joined" in line and "torchrun" in line
    assert not (tmp_path / "r.txt").exists()


def test_rank_without_rank_zero_and_bad_timeouts(monkeypatch):
    monkeypatch.setenv("FCN_RENDEZVOUS_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="FCN_RENDEZVOUS_TIMEOUT='soon' is not a number"):
        rendezvous_timeout()
    assert rendezvous_timeout(2.0) == 2.0
    monkeypatch.delenv("FCN_RENDEZVOUS_TIMEOUT")
    assert rendezvous_timeout() == 600
    with pytest.raises(UsageError, match="positive finite"):
        rendezvous_timeout(float("inf"))
    port = free_port()  # nobody serves it: rank 1 finds no rank 0
    with pytest.raises(UsageError, match=f"rank 1 of 2: no rank 0 answered at .*127.0.0.1:{port} within 1 s"):
        connect("127.0.0.1", port, 2, False, 1, 1.0, 60.0)


# ------------------------------------------------------------------------------------------- huge photos

class Tiny(nn.Module):
    """FCN-shaped: strided features, 1x1 classifier, bilinear upsampling to the input."""

    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.classifier = nn.Conv2d(32, classes, 1)

    def forward(self, x):
        out = self.classifier(self.relu(self.features(x)))
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def test_whole_image_pass_that_cannot_fit_is_refused_with_the_slide_advice(monkeypatch):
    torch.manual_seed(0)
    model = Tiny().eval()
    images = torch.zeros(1, 3, 2100, 2100)
    # features conv: 3 + 32/4 channels in and out, relu 2 x 32/4, classifier 32/4 + 21/4, output 21 (float32)
    expected = (2 * 32 / 4 + 21) * 2100 * 2100 * 4
    with torch.inference_mode():
        assert whole_image_bytes(model, images) == pytest.approx(expected, rel=0.02)
        monkeypatch.setattr(memory, "available_bytes", lambda device: 200 << 20)
        with pytest.raises(UsageError, match=r"needs about 0\.\d GiB, but 0\.2 GiB is available .* --mode slide"):
            whole_image(model, images)
        assert whole_image(model, images[..., :2048, :2048]).shape[1] == 21  # small photos are not checked


def test_slide_masks_equal_slide_logits_argmax_and_show_progress(capsys):
    torch.manual_seed(0)
    model = Tiny(5).eval()
    images = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8)
    with torch.inference_mode():
        expected = slide_inference(model, normalize(images), window=16, stride=11).argmax(1).to(torch.uint8)
        masks = slide_masks(model, images, window=16, stride=11, chunk=3)
    assert torch.equal(masks, expected)
    assert "windows" in capsys.readouterr().err  # 2 x 7 x 8 windows: a progress bar


SLIDE_MASK_MEMORY = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)  # each intra-op thread has its own scratch: one thread makes the peak repeatable
    sys.path.insert(0, sys.argv[2])
    from test_hostile_outputs import Tiny
    from inference.modes import slide_masks
    torch.manual_seed(0)
    model = Tiny(21).eval()
    images = torch.randint(0, 256, (1, 3, 4000, 600), dtype=torch.uint8)
    def status_kb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    with torch.inference_mode():
        out = slide_masks(model, images, window=512, stride=341, chunk=1)
    print(json.dumps({"peak_mb": (status_kb("VmHWM") - before) / 1024, "shape": list(out.shape)}))
""")


def test_slide_mask_memory_is_bounded_by_the_window():
    # A tall photo, 4000 x 600 (HxW): the band of logits depends on the width only. What grows with the photo:
    # the uint8 mask, 2.3 MB. The band is 21 classes x 512 rows x 600 columns float32 = 25 MB, the argmax of
    # its finished rows (int64) 2 MB; a window runs 3 + 32/4 x 2 (conv, relu) + 21/4 + 21 channels at 512 x 512
    # float32 = 47 MB. With 64 MB for torch's runtime and the allocator: 140 MB (119 MB measured). The
    # photo-sized logits that slide_inference returns are 21 x 4000 x 600 x 4 = 192 MB alone.
    bound_mb = 2.3 + 25 + 2 + 47 + 64
    assert bound_mb < 21 * 4000 * 600 * 4 / 2**20
    tests = Path(__file__).resolve().parent
    result = subprocess.run([sys.executable, "-c", SLIDE_MASK_MEMORY, "masks", str(tests.parent)], cwd=tests,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tests)})
    assert result.returncode == 0, result.stderr
    masks = json.loads(result.stdout.strip().splitlines()[-1])
    assert masks["shape"] == [1, 4000, 600]
    assert masks["peak_mb"] < bound_mb, f"slide masks grew RSS by {masks['peak_mb']:.0f} MB > {bound_mb:.0f} MB"


def test_every_output_flag_refuses_inputs_and_other_kinds(weights, demo, tmp_path):
    import tools.benchmark
    import tools.export
    import tools.plot_curves

    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_text("deployment notes\n")
    with pytest.raises(UsageError, match="model.onnx exists and is a text file, not a ONNX model"):
        tools.export.main(tools.export.parse_args(["--weights", str(weights), "--output-dir", str(out)]))
    shutil.copy(weights, tmp_path / "model.torchscript.pt")  # a checkpoint under that name: the kind matches,
    with pytest.raises(UsageError, match="an input of this run"):  # but it is the input itself
        tools.export.main(tools.export.parse_args(["--weights", str(tmp_path / "model.torchscript.pt"),
                                                   "--output-dir", str(tmp_path), "--format", "torchscript"]))
    (tmp_path / "curves_per_class.png").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    with pytest.raises(UsageError, match="curves_per_class.png exists and is a JPEG photo"):
        tools.plot_curves.main(tools.plot_curves.parse_args([str(tmp_path), "--output", str(tmp_path / "curves.png")]))
    with pytest.raises(UsageError, match="--json .* an input of this run"):
        tools.benchmark.main(tools.benchmark.parse_args(["--weights", str(weights), "--json", str(weights),
                                                         "--device", "cpu"]))
    classes = demo / "classes.json"
    before = digest(classes)
    line = error_line(run("my_dataset.py", "check", "--data-path", demo, "--dataset", "voc", "--split", "val",
                          "--save-counts", classes, check=False))
    assert "--save-counts" in line and "an input of this run" in line and digest(classes) == before
