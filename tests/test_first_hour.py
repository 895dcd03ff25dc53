"""What a new user meets in the first hour: the demo's data and colours, the CPU-only install, the pictures'
numbering, labels and legends, and the workflow traps (--resume with a config's --weights, labelme with few
files, the default -j). Figures are checked on their data and labels, pictures decoded pixel by pixel."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

import my_dataset
from core.cli import UsageError
from core.palette import VOC_PALETTE
from data_utils import DATASETS, DEMO_CLASSES, DEMO_PALETTE, make_demo_dataset, make_demo_sample
from recording.history import RunHistory
from train_utils import options
from train_utils.options import check_args, get_args_parser, parse_training_args
from visualization import pictures

from conftest import REPO_ROOT
from dataset_trees import labelme_folder

# ------------------------------------------------------------------------------------------------ the demo


def test_my_dataset_demo_writes_the_dataset_make_demo_trains_on(tmp_path):
    assert my_dataset.main(my_dataset.parse_args(["demo", "--out", str(tmp_path / "cli")])) == 0
    make_demo_dataset(tmp_path / "demo")  # what tools/demo.py calls
    files = sorted(p.relative_to(tmp_path / "demo") for p in (tmp_path / "demo").rglob("*") if p.is_file())
    assert len(files) == 2 * (120 + 30) + 3  # photos and masks, classes.json, train.txt, val.txt
    for f in files:
        assert (tmp_path / "cli" / f).read_bytes() == (tmp_path / "demo" / f).read_bytes(), f
    config = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    assert config["dataset"] == "demo" and config["base-size"] == 64  # the images' side: whole images seen


def test_the_demo_palette_draws_each_class_in_the_colour_its_name_says():
    colours = np.array(DATASETS["demo"].palette).reshape(-1, 3)[:len(DEMO_CLASSES)].astype(int)
    for name, (r, g, b) in zip(DEMO_CLASSES, colours):
        if name.startswith("red"):
            assert r > 150 and g < 80 and b < 80, name
        elif name.startswith("blue"):
            assert b > 150 and r < 80 and g < 120, name
        elif name.startswith("green"):
            assert g > 120 and r < 80 and b < 100, name
        elif name.startswith("yellow"):
            assert r > 180 and g > 160 and b < 80, name
    assert DATASETS["demo"].palette[3 * 255:] == VOC_PALETTE[3 * 255:]  # the ignore band keeps its cream


def test_make_takes_the_cpu_torch_index_through_a_variable(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    plain = subprocess.run(["make", "-n", "demo", f"VENV={venv}"], cwd=REPO_ROOT, capture_output=True, text=True)
    cpu = subprocess.run(["make", "-n", "test", f"VENV={venv}", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert plain.returncode == cpu.returncode == 0
    assert "--index-url" not in plain.stdout  # default behaviour unchanged
    first = [ln for ln in cpu.stdout.splitlines() if "pip install" in ln][0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in first and "torch" in first


# ----------------------------------------------------------------------------------------------- curves.png

def history(tmp_path: Path) -> RunHistory:
    """4 epochs of 2 print intervals, evaluated after epochs 1 and 3; the first validation loss is huge."""
    steps = [{"epoch": e, "step": s, "global_step": 2 * e + s, "steps_per_epoch": 2, "loss": 1.0 / (e + 1),
              "interval_loss": 1.0 / (e + 1), "lr": 0.01} for e in range(4) for s in (1, 2)]
    epochs = [{"epoch": e, "train_loss": 1.0 / (e + 1), "lr": 0.01} for e in range(4)]
    epochs[1].update(val_loss=9.8, mean_iou=0.5, pixel_acc=0.8, mean_acc=0.6, iou=[0.9, 0.1])
    epochs[3].update(val_loss=0.2, mean_iou=0.7, pixel_acc=0.9, mean_acc=0.8, iou=[0.95, 0.45])
    palette = list(VOC_PALETTE)
    palette[3:6] = [10, 200, 30]
    return RunHistory(tmp_path / "lr0.02", steps, epochs, ["background", "thing"], palette,
                      {"loss": "ce+dice", "dice_weight": 1.0, "aux": None, "aux_weight": 0.5,
                       "model": "fcn_resnet50"})


def lines(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def test_curves_number_epochs_as_the_log_and_say_what_each_loss_is(tmp_path):
    pytest.importorskip("matplotlib")
    from visualization.plots import curves_figure

    fig = curves_figure([history(tmp_path)])
    loss_ax, metric_ax, _ = fig.axes[:3]
    drawn = lines(loss_ax)
    train_label = "train loss (ce + 1 x dice + 0.5 x aux head)"
    val = drawn["validation loss (ce + 1 x dice, main head)"]
    assert list(val.get_xdata()) == [1, 3]  # the epochs the log names, not one higher
    assert list(drawn[f"{train_label}, epoch mean"].get_xdata()) == [0, 1, 2, 3]
    # Each epoch's last print interval ends on its epoch's point.
    assert list(drawn[f"{train_label}, per print interval"].get_xdata())[1::2] == [0, 1, 2, 3]
    assert loss_ax.get_yscale() == "log"  # 9.8 then 0.2: a linear axis would flatten everything after it
    best = lines(metric_ax)["best: mIoU 70.0 at epoch 3"]
    assert list(best.get_xdata()) == [3]
    assert list(lines(metric_ax)["mIoU"].get_xdata()) == [1, 3]
    assert "from 0, as in train.log" in loss_ax.get_xlabel()


def test_several_runs_get_short_labels_legends_outside_and_palette_colours(tmp_path):
    pytest.importorskip("matplotlib")
    from visualization.plots import curves_figure, per_class_iou_figure

    runs = [history(tmp_path), history(tmp_path / "other")]
    runs[1].run_dir = tmp_path / "deep" / "path" / "lr0.01"
    fig = curves_figure(runs)
    fig.canvas.draw()
    for ax in fig.axes[:3]:
        legend = ax.get_legend()
        assert legend.get_window_extent().y1 <= ax.get_window_extent().y0 + 1  # below the panel, not on it
        texts = [t.get_text() for t in legend.get_texts()]
        assert all(t.startswith(("lr0.02: ", "lr0.01: ")) for t in texts) and str(tmp_path) not in "".join(texts)
    per_class = per_class_iou_figure(runs)
    ax = per_class.axes[0]
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert tuple(colours["thing"]) == pytest.approx((10 / 255, 200 / 255, 30 / 255))  # the mask colour
    assert tuple(colours["background"]) == (0.0, 0.0, 0.0)
    assert ax.get_title().endswith("lr0.02")


def test_plot_curves_labels_runs_by_their_folder_name(tmp_path):
    pytest.importorskip("matplotlib")
    from visualization.plots import run_labels

    runs = [history(tmp_path / "a"), history(tmp_path / "b"), history(tmp_path / "c")]
    runs[0].run_dir, runs[1].run_dir, runs[2].run_dir = (tmp_path / "x" / "run", tmp_path / "y" / "run",
                                                        tmp_path / "fast")
    assert run_labels(runs) == ["x/run", "y/run", "fast"]


# -------------------------------------------------------------------------------------------- PIL pictures

def sample(seed: int):
    image, target = make_demo_sample(64, np.random.default_rng(seed))
    pred = np.where(target == 255, 0, target).astype(np.uint8)
    pred[:8, :8] = 2
    return image, target, pred


def test_grids_are_captioned_enlarged_and_carry_a_legend_of_the_classes_present():
    samples = [sample(1), sample(2)]
    rows = [pictures.sample_panels(*s, palette=DEMO_PALETTE) for s in samples]
    legend = pictures.class_legend([m for _, t, p in samples for m in (t, p)], DEMO_CLASSES, DEMO_PALETTE)
    picture = pictures.grid(rows, pictures.GRID_TITLES, captions=["a", "b"], heading="after epoch 3",
                            legend=legend)
    k = pictures.MIN_PANEL // 64  # 64-px panels become 192 px, each pixel a 3 x 3 block
    cell = 64 * k
    colours = np.array(DEMO_PALETTE, np.uint8).reshape(-1, 3)
    for r, (image, target, pred) in enumerate(samples):
        top = 2 * pictures.TEXT_H + r * (pictures.TEXT_H + cell + pictures.GAP) + pictures.TEXT_H
        for c, expected in enumerate((image, colours[target], colours[pred])):
            left = c * (cell + pictures.GAP)
            block = picture[top:top + cell, left:left + cell]
            assert np.array_equal(block[::k, ::k], expected) and np.array_equal(block[k - 1::k, k - 1::k], expected)
    present = sorted(set(np.unique(samples[0][1])) | set(np.unique(samples[1][1])) | {2})
    names = [text for _, text in legend]
    assert names[:-1] == [DEMO_CLASSES[v] for v in present if v != 255]
    assert "no label (255)" in names[-1] and "not scored" in names[-1]
    assert [colour for colour, _ in legend[:-1]] == [tuple(colours[v]) for v in present if v != 255]
    assert picture.shape[0] > 2 * pictures.TEXT_H + 2 * (pictures.TEXT_H + cell) + pictures.GAP  # legend below


def test_tiles_explain_the_error_panel_colours():
    image, target, pred = sample(3)
    names = [text for _, text in pictures.class_legend([target, pred], DEMO_CLASSES, DEMO_PALETTE, errors=True)]
    assert names[-2:] == ["errors: wrong class", "errors: no label"]
    tile = pictures.tile(image, target, pred, DEMO_PALETTE, DEMO_CLASSES, "val_0003 | image mean IoU 50.0")
    assert tile.shape[1] == 4 * 192 + 3 * pictures.GAP


def test_overlay_contours_legend_share_and_font_scale():
    photo = np.full((600, 800, 3), 20, np.uint8)  # a dark photo: VOC's dark colours would vanish on it
    photo[:, 400:] = 230  # and a light half
    mask = np.zeros((600, 800), np.uint8)
    mask[100:300, 100:300] = 1  # on the dark half
    mask[100:300, 500:700] = 2  # on the light half
    mask[0, :100] = 3  # 100 pixels: 0.02 %, under the legend's share
    names = ["background", "a", "b", "c"]
    drawn = np.asarray(pictures.overlay(photo, mask, names, 0.5))[:600, :800]
    assert np.all(drawn[200, 100] == 255) and np.all(drawn[200, 500] == 0)  # white on dark, black on light
    assert not np.all(drawn[200, 200] == 255) and not np.all(drawn[200, 600] == 0)  # region insides blended
    edges = pictures.class_edges(mask, [1, 2, 3])
    assert edges[200, 100] and edges[100, 200] and not edges[200, 200] and not edges[50, 50]
    assert pictures.legend_classes(mask, [1, 2, 3]) == [1, 2]  # background is never listed: not painted
    assert pictures.legend_font_size(1400, 1050) > 2.5 * pictures.legend_font_size(64, 64)  # not a fixed 11 px
    assert pictures.contour_width(3000, 4000) > pictures.contour_width(600, 800) == 2


# ------------------------------------------------------------------------------------------ workflow traps

def config_with_weights(tmp_path: Path) -> Path:
    config = tmp_path / "recipe.yaml"
    config.write_text("weights: coco.pth\nepochs: 2\n")
    return config


def test_resume_ignores_a_config_weights_with_a_note_but_not_a_typed_one(tmp_path, capsys):
    config, out = config_with_weights(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"a checkpoint")
    parser = get_args_parser("train")
    args = parse_training_args(parser, ["--config", str(config), "--output-dir", str(out), "--resume", "auto"])
    assert args.weights is None and args.resume == "auto"
    check_args(args)
    assert "the config's weights: coco.pth is not used" in capsys.readouterr().err
    typed = parse_training_args(get_args_parser("train"), ["--config", str(config), "--resume", "auto",
                                                            "--output-dir", str(out), "--weights", "coco.pth"])
    with pytest.raises(UsageError, match="--resume and --weights together"):
        check_args(typed)
    # --resume auto on a folder without a run is a new run: it starts from the config's weights.
    fresh = parse_training_args(get_args_parser("train"), ["--config", str(config), "--resume", "auto",
                                                            "--output-dir", str(tmp_path / "new")])
    assert fresh.weights == "coco.pth" and fresh.resume is None
    check_args(fresh)


def test_default_workers_fit_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(options, "usable_cpu_count", lambda: 2)
    assert get_args_parser("train").parse_args([]).workers == 2
    monkeypatch.setattr(options, "usable_cpu_count", lambda: 64)
    assert get_args_parser("train").parse_args([]).workers == 4


@pytest.mark.parametrize("count", [2, 3])
def test_import_labelme_with_few_files_gives_a_val_image(tmp_path, count):
    src = labelme_folder(tmp_path / "src")
    for extra in sorted(p for p in src.glob("*.json") if p.name != "classes.json")[count:]:
        extra.unlink()
    out = tmp_path / "data"
    code = my_dataset.main(my_dataset.parse_args(["import-labelme", str(src), "--out", str(out), "--classes",
                                                  str(src / "classes.json"), "--val-fraction", "0.2"]))
    assert code == 0 and len(list((out / "val" / "images").iterdir())) == 1
    assert json.loads((out / "classes.json").read_text())


def test_import_labelme_with_one_file_says_how_to_get_a_val_split(tmp_path, capsys):
    src = labelme_folder(tmp_path / "src")
    for extra in sorted(p for p in src.glob("*.json") if p.name != "classes.json")[1:]:
        extra.unlink()
    out = tmp_path / "data"
    assert my_dataset.main(my_dataset.parse_args(["import-labelme", str(src), "--out", str(out), "--classes",
                                                  str(src / "classes.json")])) == 0
    err = capsys.readouterr().err
    assert "no val split" in err and f"cp -r {out}/train {out}/val" in err
