"""The model registry: what each entry says, that nothing else needs to know a model's name, and every new
family through train (+ resume), validation, predict and export."""
import contextlib
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import predict
import train
import validation
from core.cli import UsageError
from my_dataset import make_demo_dataset
from src import (
    REGISTRY,
    ModelSpec,
    build_model,
    get_spec,
    guess_architecture,
    model_from_checkpoint,
    param_groups,
    register,
    unregister,
)
from src.registry import has_keys
from tools import export as export_tool
from tools.benchlib.baselines import TV_BUILDERS, num_classes_of
from train_utils.lr import get_params_groups
from train_utils.options import get_args_parser

TORCHVISION_MODELS = {"fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                      "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"}


@pytest.fixture
def one_thread():
    """One intra-op thread for the in-process runs: two spinning OpenMP threads on a shared 2-core machine
    make tiny steps several times slower (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def meta_state(name: str) -> dict:
    with torch.device("meta"):
        return build_model(name, num_classes=7).state_dict()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_state_dict_is_recognised_as_its_model(name):
    state = meta_state(name)
    look_alikes = {"fcn8s": {"fcn8s", "fcn8s_atonce"}, "fcn8s_atonce": {"fcn8s", "fcn8s_atonce"}}
    assert set(guess_architecture(state)) == look_alikes.get(name, {name})
    assert state[get_spec(name).classes_key].shape[0] == 7


def test_entries_carry_what_the_code_needs():
    assert set(TV_BUILDERS) == TORCHVISION_MODELS
    assert TV_BUILDERS["lraspp_mobilenet_v3_large"] is torchvision.models.segmentation.lraspp_mobilenet_v3_large
    files = {name: spec.backbone_file for name, spec in REGISTRY.items()}
    assert files["deeplabv3_mobilenet_v3_large"] == files["lraspp_mobilenet_v3_large"] == "mobilenet_v3_large-8738ca79.pth"
    assert files["pspnet_resnet101"] == files["deeplabv3_resnet101"] == "resnet101-63fe2227.pth"
    assert files["fcn8s"] == "vgg16-397923af.pth" and files["unet"] is None and files["unet_deconv"] is None
    assert {n for n, s in REGISTRY.items() if s.aux_site} == {
        "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
        "pspnet_resnet50", "pspnet_resnet101"}  # torchvision's aux heads, and the FCN head of MMSEG's PSPNet
    help_text = get_args_parser("train").format_help()
    assert all(name in help_text for name in REGISTRY)


def test_parameter_rules():
    unet = build_model("unet", num_classes=3)
    groups = get_params_groups(unet, 0.1, 1e-4)
    # A U-Net starts from scratch: one group, biases and BN included, at the run's lr and weight decay.
    assert len(groups) == 1 and groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == 1e-4
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in unet.parameters())
    deeplab = build_model("deeplabv3_mobilenet_v3_large", num_classes=3)
    groups = get_params_groups(deeplab, 0.1, 1e-4)
    assert [g["lr"] for g in groups] == [0.1, 0.1, pytest.approx(1.0)]
    assert groups[2]["params"] == list(deeplab.aux_classifier.parameters())
    lraspp = get_params_groups(build_model("lraspp_mobilenet_v3_large", num_classes=3), 0.1, 1e-4)
    assert len(lraspp) == 2
    caffe = get_params_groups(build_model("fcn32s", num_classes=3), 0.1, 1e-4)
    assert caffe[1]["lr"] == pytest.approx(0.2) and caffe[1]["weight_decay"] == 0.0


def test_raw_torchvision_files_are_recognised(tmp_path, capsys):
    for name, aux in (("lraspp_mobilenet_v3_large", {}), ("deeplabv3_mobilenet_v3_large", {"aux_loss": True})):
        reference = TV_BUILDERS[name](weights=None, weights_backbone=None, num_classes=4, **aux)
        path = tmp_path / f"{name}.pth"
        torch.save(reference.state_dict(), path)  # a raw state dict, like torchvision's COCO-VOC files
        loaded = model_from_checkpoint(path)
        assert (loaded.name, loaded.num_classes) == (name, 4)
        assert (getattr(loaded.model, "aux_classifier", None) is not None) == bool(aux)
        assert num_classes_of(loaded.model) == num_classes_of(reference) == 4
    from tools import inspect_checkpoint

    capsys.readouterr()
    inspect_checkpoint.main(inspect_checkpoint.parse_args([str(path)]))
    assert "layout: deeplabv3_mobilenet_v3_large, 4 classes, auxiliary head" in capsys.readouterr().out


def test_benchmark_refuses_a_model_without_a_torchvision_counterpart():
    from tools import benchmark

    with pytest.raises(UsageError, match="--model unet: .*lraspp_mobilenet_v3_large"):
        benchmark.resolve_args(benchmark.parse_args(["--mode", "infer", "--model", "unet", "--device", "cpu"]))


# ------------------------------------------------------------------------------- a model from one entry

class ToyNet(nn.Module):
    """Two convolutions: the smallest model that returns what the training loop expects."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.toy_head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict:
        return {"out": self.toy_head(self.stem(x))}


def toy_net(num_classes: int = 21, aux: bool = False, pretrained_backbone=None) -> ToyNet:
    return ToyNet(num_classes)


@pytest.fixture
def toy_entry():
    register("toy_net", ModelSpec(toy_net, ToyNet, "two convolutions", has_keys("toy_head.weight"),
                                  "toy_head.weight", param_rule=param_groups.plain, bn_stride=1))
    yield "toy_net"
    unregister("toy_net")


def test_a_model_added_by_one_entry_trains(toy_entry, tiny_data, tmp_path, one_thread):
    out = tmp_path / "run"
    args = train.parse_args(["--data-path", str(tiny_data), "--output-dir", str(out), "--model", toy_entry,
                             "--epochs", "1", "--pretrained-backbone", "none", "--base-size", "32",
                             "--crop-size", "32", "-b", "2", "-j", "0", "--device", "cpu"])
    assert train.main(args) == 0
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["model_name"] == "toy_net" and ckpt["num_classes"] == 5
    loaded = model_from_checkpoint(out / "last.pth")
    assert isinstance(loaded.model, ToyNet) and loaded.name == "toy_net"
    raw = tmp_path / "raw.pth"
    torch.save(ckpt["model"], raw)
    assert model_from_checkpoint(raw).name == "toy_net"  # recognised by its fingerprint


# ------------------------------------------------------------------------------ every path, per family

FAMILIES = ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "unet", "pspnet_resnet50"]
TINY = ["--pretrained-backbone", "none", "--base-size", "64", "--crop-size", "64", "-b", "2", "-j", "0",
        "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """2 training and 1 validation image of 64 x 64 (5 classes): one step per epoch."""
    return make_demo_dataset(tmp_path_factory.mktemp("tiny"), num_train=2, num_val=1, size=64)


@contextlib.contextmanager
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", params=FAMILIES)
def family_run(request, tiny_data, tmp_path_factory):
    """One tiny run per family, in this process: 1 epoch, then resumed for a second one."""
    name, out = request.param, tmp_path_factory.mktemp(request.param) / "run"
    common = ["--data-path", str(tiny_data), "--output-dir", str(out), "--model", name, *TINY]
    with single_thread():
        assert train.main(train.parse_args([*common, "--epochs", "1"])) == 0
        assert train.main(train.parse_args([*common, "--epochs", "2", "--resume", "auto"])) == 0
    return name, out


def test_family_trains_resumes_validates_predicts_exports(family_run, tiny_data, tmp_path, one_thread, capsys):
    name, out = family_run
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["model_name"] == name and any(k.startswith("aux_classifier.") for k in ckpt["model"]) == (
        get_spec(name).aux_default)
    weights = ["--weights", str(out / "best.pth"), "--device", "cpu"]
    assert validation.main(validation.parse_args(["--data-path", str(tiny_data), *weights, "-j", "0"])) == 0
    assert "mean IoU" in (out / "record_mAP.txt").read_text()
    images, masks = tiny_data / "VOCdevkit" / "VOC2012" / "JPEGImages", tmp_path / "masks"
    assert predict.main(predict.parse_args([*weights, "--image", str(images), "--output", str(masks), "--mode",
                                            "slide", "--window", "48", "--stride", "32", "--flip"])) == 0
    assert len(list(masks.glob("*.png"))) == 3
    capsys.readouterr()
    assert export_tool.main(export_tool.parse_args([*weights[:2], "--output-dir", str(tmp_path / "export"),
                                                    "--size", "64", "--format", "torchscript"])) == 0
    printed = capsys.readouterr().out
    assert "torchscript: max abs diff" in printed and " ok" in printed


@pytest.mark.parametrize("flags, message", [
    (["--model", "unet", "--aux"], "unet has no auxiliary head"),
    (["--model", "lraspp_mobilenet_v3_large", "--aux"], "lraspp_mobilenet_v3_large has no auxiliary head"),
    (["--model", "unet", "--freeze-backbone", "2"], "unet trains from scratch"),
    (["--model", "deeplabv3_mobilenet_v3_large", "-b", "1"], "global-pooling branch ends in BatchNorm"),
    (["--model", "unet", "-b", "1", "--crop-size", "16"], "1/16-resolution features are 1x1"),
])
def test_what_an_entry_rules_out_is_refused_before_any_work(tiny_data, flags, message):
    from train_utils.options import check_args

    args = train.parse_args(["--data-path", str(tiny_data), "--base-size", "64", "--crop-size", "64", *flags])
    with pytest.raises(UsageError, match=message):
        check_args(args)
    check_args(train.parse_args(["--data-path", str(tiny_data), "--base-size", "64", "--model", "unet", "-b", "1",
                                 "--crop-size", "17"]))
