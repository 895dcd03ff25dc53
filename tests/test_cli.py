"""End to end: the four scripts as a user runs them (subprocesses, CPU, tiny images)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_visualization import assert_resumed_records

from core.checkpoint import Checkpoint, save_checkpoint
from my_dataset import VOC_PALETTE
from src import build_model
from train_utils import class_weights_from_counts

from conftest import TINY, run  # the session's tiny trained run is shared with other test files

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_lines(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def validate_json(demo, weights, tmp_path, *extra):
    path = tmp_path / "val.json"
    run("validation.py", "--data-path", demo, "--weights", weights, "--device", "cpu", "-j", "0",
        "--json", path, "--record", tmp_path / "record_mAP.txt", *extra)
    return json.loads(path.read_text())


def test_run_directory_contents(trained):
    for name in ("config.yaml", "train.log", "last.pth", "best.pth", "results.txt", "metrics.jsonl"):
        assert (trained / name).is_file(), name
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["args"]["epochs"] == 2 and config["args"]["num_classes"] == 5
    assert config["environment"]["torch"] == str(torch.__version__) and config["environment"]["device"] == "cpu"
    results = (trained / "results.txt").read_text()
    assert "[epoch: 0]" in results and "[epoch: 1]" in results and "mean IoU:" in results
    assert [m["epoch"] for m in metrics_lines(trained)] == [0, 1]
    ckpt = torch.load(trained / "last.pth", weights_only=True)
    assert ckpt["format_version"] == 2 and ckpt["model_name"] == "fcn_resnet50"
    assert ckpt["training"]["next_epoch"] == 2 and ckpt["epoch"] == 1 and ckpt["dataset"] == "voc"
    assert ckpt["class_names"][0] == "background" and len(ckpt["training"]["rng"]) == 1


def test_validation_matches_training_eval_and_appends(trained, demo, tmp_path):
    best = max(metrics_lines(trained), key=lambda m: m["mean_iou"])
    first = validate_json(demo, trained / "best.pth", tmp_path)
    assert first["single-scale"]["mean_iou"] == pytest.approx(best["mean_iou"], abs=1e-12)
    assert first["single-scale"]["num_pixels"] == best["num_pixels"]
    validate_json(demo, trained / "best.pth", tmp_path)
    record = (tmp_path / "record_mAP.txt").read_text()
    assert record.count("weights: ") == 2 and record.count("mean IoU:") == 2
    assert "split: val | images: 3" in record and "red_striped_disc" in record


def test_predict_writes_palette_png_at_original_size(trained, demo, tmp_path):
    image = next((demo / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    big = tmp_path / "photo.jpg"
    Image.open(image).resize((83, 71)).convert("L").save(big)  # odd size, grayscale: converted to RGB
    out = tmp_path / "mask.png"
    result = run("predict.py", "--weights", trained / "best.pth", "--image", big, "--output", out, "--overlay",
                 "--probs", "--device", "cpu", "--runs", "2")
    mask = Image.open(out)
    assert mask.mode == "P" and mask.size == (83, 71)
    palette = mask.getpalette()
    assert len(palette) >= 21 * 3 and palette[:len(VOC_PALETTE)] == VOC_PALETTE[:len(palette)]
    assert np.array(mask).max() < 5
    assert (tmp_path / "mask_overlay.png").is_file()
    probs = np.load(tmp_path / "mask_probs.npy")
    assert probs.shape == (5, 71, 83) and np.allclose(probs.sum(0), 1, atol=1e-2)
    assert "median" in result.stderr and "mean" in result.stderr


def test_predict_turns_a_phone_photo_as_a_viewer_shows_it(trained, demo, tmp_path):
    """A photo stored sideways with EXIF orientation 6 (a quarter turn clockwise), as phones save them, and the
    same photo already turned: one mask, of the displayed size, for both."""
    photo = np.array(Image.open(next((demo / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))))[:, :48]
    images = tmp_path / "photos"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(images / "stored.png", exif=exif.tobytes())  # 48 wide, 64 high as stored
    Image.fromarray(np.rot90(photo, k=-1).copy()).save(images / "turned.png")  # 64 wide, 48 high, no EXIF
    run("predict.py", "--weights", trained / "best.pth", "--image", images, "--output", tmp_path / "out",
        "--device", "cpu", "--warmup", "0")
    stored, turned = (np.array(Image.open(tmp_path / "out" / f"{n}.png")) for n in ("stored", "turned"))
    assert stored.shape == (48, 64) and np.array_equal(stored, turned)


def test_predict_folder(trained, demo, tmp_path):
    images = demo / "VOCdevkit" / "VOC2012" / "JPEGImages"
    run("predict.py", "--weights", trained / "last.pth", "--image", images, "--output", tmp_path / "out",
        "--device", "cpu")
    written = sorted(p.stem for p in (tmp_path / "out").glob("*.png"))
    assert written == sorted(p.stem for p in images.glob("*.jpg"))


@pytest.mark.parametrize("flags", [[], ["--amp"]])
def test_predict_writes_the_masks_validation_scores(trained, demo, tmp_path, flags):
    """The same flags give the same runtime in both scripts: the masks predict.py writes, scored here with
    numpy, reproduce validation.py's numbers exactly."""
    voc = demo / "VOCdevkit" / "VOC2012"
    val_ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    images = tmp_path / "images"
    images.mkdir()
    for i in val_ids:
        shutil.copy(voc / "JPEGImages" / f"{i}.jpg", images)
    run("predict.py", "--weights", trained / "best.pth", "--image", images, "--output", tmp_path / "masks",
        "--device", "cpu", *flags)
    matrix = np.zeros((5, 5), dtype=np.int64)
    for i in val_ids:
        gt = np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")).ravel()
        pred = np.array(Image.open(tmp_path / "masks" / f"{i}.png")).ravel()
        keep = gt != 255
        matrix += np.bincount(5 * gt[keep].astype(np.int64) + pred[keep], minlength=25).reshape(5, 5)
    iou = np.diag(matrix) / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))
    scored = validate_json(demo, trained / "best.pth", tmp_path, *flags)["single-scale"]
    assert scored["num_pixels"] == matrix.sum()
    assert scored["pixel_acc"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-12)
    scored_iou = [np.nan if v is None else v for v in scored["iou"]]  # JSON writes NaN (class absent) as null
    assert scored_iou == pytest.approx(iou.tolist(), abs=1e-12, nan_ok=True)


def test_resume_auto_continues(trained, demo, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    run("train.py", "--data-path", demo, "--output-dir", out, "--epochs", "3", "--resume", "auto", "--tensorboard",
        *TINY)
    assert [m["epoch"] for m in metrics_lines(out)] == [0, 1, 2]
    assert "resumed from" in (out / "train.log").read_text()
    assert_resumed_records(out)  # steps.jsonl, TensorBoard, curves.png: tests/test_visual.py


def test_existing_run_is_not_overwritten(trained, demo):
    before = (trained / "last.pth").stat().st_mtime_ns
    result = run("train.py", "--data-path", demo, "--output-dir", trained, "--epochs", "1", *TINY, check=False)
    assert result.returncode != 0 and "already holds a run" in result.stderr
    assert (trained / "last.pth").stat().st_mtime_ns == before


def test_yaml_config_overridden_by_flag_and_single_process_multi_gpu_script(demo, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "lr": 0.5, "aux": False, "eval-every": 1}))
    out = tmp_path / "run"
    out.mkdir()  # records of an earlier run that died before its first checkpoint: a new run replaces them
    (out / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    (out / "results.txt").write_text("[epoch: 0]\ntrain_loss: 9\n[epoch: 1]\ntrain_loss: 9\n")
    result = run("train_multi_GPU.py", "--config", config, "--data-path", demo, "--output-dir", out,
                 "--lr", "0.01", *TINY)
    assert "torchrun --nproc_per_node=N" in result.stderr  # the launch hint
    resolved = yaml.safe_load((out / "config.yaml").read_text())["args"]
    assert resolved["lr"] == 0.01 and resolved["epochs"] == 1 and resolved["aux"] is False
    assert [m["epoch"] for m in metrics_lines(out)] == [0] and "train_loss" in metrics_lines(out)[0]
    assert (out / "results.txt").read_text().count("[epoch:") == 1


def torchrun(*args, **kwargs):
    return run("-m", "torch.distributed.run", *args, **kwargs)


def test_torchrun_two_processes_match_single_process_validation(demo, tmp_path):
    """Also with the backbone frozen for epoch 0: DDP is rebuilt at the unfreeze, and a backbone whose gradients
    were not all-reduced would leave the ranks with different models, failing the comparison below."""
    out, init = tmp_path / "ddp", tmp_path / "init.pth"
    torch.manual_seed(0)
    start = build_model("fcn_resnet50", 5, aux=True).state_dict()
    save_checkpoint(Checkpoint(start, model_name="fcn_resnet50", num_classes=5), init)
    torchrun("--standalone", "--nproc_per_node=2", "train_multi_GPU.py", "--data-path", demo, "--output-dir", out,
             "--epochs", "2", "--class-weights", "median", "--weights", init, "--freeze-backbone", "1",
             *TINY)
    trained_weights = torch.load(out / "last.pth", weights_only=True)["model"]
    assert not torch.equal(trained_weights["backbone.conv1.weight"], start["backbone.conv1.weight"])
    epoch = metrics_lines(out)[-1]
    # Each rank counted half of the masks; the sum must be the whole split's.
    voc = demo / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    counts = sum(np.bincount(np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")).ravel(), minlength=256)
                 for i in ids)
    expected = [round(w, 3) for w in class_weights_from_counts(counts[:5], "median").tolist()]
    assert f"class weights (median): {expected}" in (out / "train.log").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["environment"]["world_size"] == 2
    single = validate_json(demo, out / "last.pth", tmp_path)["single-scale"]
    assert single["num_pixels"] == epoch["num_pixels"]
    assert single["mean_iou"] == pytest.approx(epoch["mean_iou"], abs=1e-12)
    assert single["iou"] == epoch["iou"]


def test_two_node_launch_on_one_machine(demo, tmp_path):
    out, port = tmp_path / "nodes", free_port()
    common = ["-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--master_addr=127.0.0.1",
              f"--master_port={port}"]
    script = ["train_multi_GPU.py", "--data-path", demo, "--output-dir", out, "--epochs", "1", *TINY]
    procs = [subprocess.Popen([sys.executable, *common, f"--node_rank={rank}", *map(str, script)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for rank in (0, 1)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert yaml.safe_load((out / "config.yaml").read_text())["environment"]["world_size"] == 2
    assert len(metrics_lines(out)) == 1


# User errors of every script (missing data path, missing weights, wrong --model for a checkpoint, an image that
# is not an image, ...) each end in one clear line: tests/test_bad_input.py, one test per row of the README table.


def test_validation_under_torchrun_equals_one_process(trained, demo, tmp_path):
    single = validate_json(demo, trained / "best.pth", tmp_path)["single-scale"]
    out = tmp_path / "ddp.json"
    torchrun("--standalone", "--nproc_per_node=2", "validation.py", "--data-path", demo,
             "--weights", trained / "best.pth", "--device", "cpu", "-j", "0", "--json", out,
             "--record", tmp_path / "ddp_record.txt")
    ddp = json.loads(out.read_text())["single-scale"]
    assert ddp["num_pixels"] == single["num_pixels"] and ddp["iou"] == single["iou"]  # null for NaN: exact
    assert (tmp_path / "ddp_record.txt").read_text().count("mean IoU:") == 1  # written once, by rank 0
