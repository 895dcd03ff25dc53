"""Models: output contract, parity with torchvision, the Caffe FCN geometry, and every weight-loading path."""
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation import fcn_resnet50 as tv_fcn_resnet50
from torchvision.models.segmentation import fcn_resnet101 as tv_fcn_resnet101

from src import (
    AUX_MODELS,
    MODELS,
    FCN8s,
    bilinear_kernel,
    build_model,
    fcn8s,
    fcn8s_atonce,
    fcn16s,
    fcn32s,
    fcn_resnet50,
    fcn_resnet101,
    load_model_weights,
    model_from_checkpoint,
)

VGG_MODELS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")


@pytest.fixture(scope="module")
def resnet50_aux():
    torch.manual_seed(0)
    return build_model("fcn_resnet50", num_classes=5, aux=True)


def test_builder_table_and_exports():
    assert set(MODELS) == {"fcn_resnet50", "fcn_resnet101", *VGG_MODELS, "deeplabv3_resnet50", "deeplabv3_resnet101",
                           "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "unet", "unet_deconv",
                           "pspnet_resnet50", "pspnet_resnet101"}
    assert MODELS["fcn8s"] is fcn8s and MODELS["fcn_resnet101"] is fcn_resnet101
    with pytest.raises(ValueError, match="unknown model"):
        build_model("deeplabv3")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("fcn_resnet50", num_classes=0)


@pytest.mark.parametrize("name", VGG_MODELS)
def test_vgg_models_refuse_aux(name):
    with pytest.raises(ValueError, match="no auxiliary head"):
        build_model(name, aux=True)
    assert not hasattr(build_model(name), "aux_classifier")


@pytest.mark.parametrize("train", [True, False])
def test_resnet_output_shapes_and_backward(resnet50_aux, train):
    model = resnet50_aux.train(train)
    x = torch.randn(2, 3, 37, 53, requires_grad=True)
    out = model(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 5, 37, 53)
    if train:
        (out["out"].mean() + out["aux"].mean()).backward()
        assert x.grad is not None and model.classifier[4].weight.grad is not None


def test_resnet_without_aux_has_only_out():
    model = build_model("fcn_resnet50", num_classes=3, aux=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 17))
    assert list(out) == ["out"] and out["out"].shape == (1, 3, 33, 17)


@pytest.mark.parametrize("ours,theirs", [(fcn_resnet50, tv_fcn_resnet50), (fcn_resnet101, tv_fcn_resnet101)])
@pytest.mark.parametrize("aux", [True, False])
def test_resnet_parity_with_torchvision(ours, theirs, aux):
    torch.manual_seed(1)
    reference = theirs(weights=None, weights_backbone=None, aux_loss=aux, num_classes=21).eval()
    model = ours(num_classes=21, aux=aux).eval()
    ref_sd, our_sd = reference.state_dict(), model.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    model.load_state_dict(ref_sd, strict=True)
    # Non-trivial BN statistics, so that eval-mode BN is exercised too.
    for module_ours, module_ref in zip(model.modules(), reference.modules()):
        if isinstance(module_ref, torch.nn.BatchNorm2d):
            stats = torch.rand_like(module_ref.running_var) + 0.5
            module_ref.running_var.copy_(stats)
            module_ours.running_var.copy_(stats)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("fcn_resnet50", aux=True)) == 35_322_218
    assert count(build_model("fcn_resnet50", aux=False)) == 32_957_013


# The Caffe FCN layer names, written out from the published prototxt (the VGG16 trunk plus each head).
TRUNK_LAYERS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
                "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "score_fr"]
HEADS = {
    "fcn32s": ["upscore"],
    "fcn16s": ["score_pool4", "upscore2", "upscore16"],
    "fcn8s": ["score_pool3", "score_pool4", "upscore2", "upscore_pool4", "upscore8"],
    "fcn8s_atonce": ["score_pool3", "score_pool4", "upscore2", "upscore_pool4", "upscore8"],
}
DECONVS = {"upscore": (64, 32), "upscore2": (4, 2), "upscore16": (32, 16), "upscore_pool4": (4, 2),
           "upscore8": (16, 8)}


@pytest.mark.parametrize("name", VGG_MODELS)
def test_vgg_parameter_names_and_initialisation(name):
    model = build_model(name, num_classes=4)
    keys = set(model.state_dict())
    expected = set()
    for layer in TRUNK_LAYERS + HEADS[name]:
        expected.add(f"{layer}.weight")
        if not layer.startswith("upscore"):
            expected.add(f"{layer}.bias")
    assert keys == expected
    assert model.conv1_1.padding == (100, 100)
    assert model.fc6.kernel_size == (7, 7) and model.fc6.padding == (0, 0)
    assert all(m.ceil_mode for m in model.modules() if isinstance(m, torch.nn.MaxPool2d))
    for layer in HEADS[name] + ["score_fr"]:
        module = getattr(model, layer)
        if layer.startswith("score"):
            assert torch.count_nonzero(module.weight) == 0 and torch.count_nonzero(module.bias) == 0
        else:
            assert (module.kernel_size[0], module.stride[0]) == DECONVS[layer]
            assert not module.weight.requires_grad and module.bias is None


def test_bilinear_kernel_values():
    # Hand-computed 1-D profiles: k=4 (stride 2) is [1, 3, 3, 1] / 4, k=3 is [1, 2, 1] / 2.
    k4 = bilinear_kernel(2, 4)
    torch.testing.assert_close(k4[0, 0], torch.outer(*[torch.tensor([0.25, 0.75, 0.75, 0.25])] * 2))
    assert torch.count_nonzero(k4[0, 1]) == 0 and torch.count_nonzero(k4[1, 0]) == 0
    torch.testing.assert_close(bilinear_kernel(1, 3)[0, 0], torch.outer(*[torch.tensor([0.5, 1.0, 0.5])] * 2))


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_frozen_deconvolution_is_bilinear_interpolation(factor):
    # A stride-s deconvolution with the 2s bilinear kernel, cropped by s/2, equals bilinear resizing
    # (align_corners=False) away from the borders.
    x = torch.randn(1, 3, 6, 7)
    deconv = torch.nn.ConvTranspose2d(3, 3, 2 * factor, stride=factor, bias=False)
    deconv.weight.data.copy_(bilinear_kernel(3, 2 * factor))
    with torch.no_grad():
        up = deconv(x)[:, :, factor // 2: factor // 2 + 6 * factor, factor // 2: factor // 2 + 7 * factor]
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    inner = slice(factor, -factor)
    torch.testing.assert_close(up[..., inner, inner], ref[..., inner, inner], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", VGG_MODELS)
def test_vgg_output_size_sweep(name):
    # Shapes only depend on the geometry: sweep every size 1..640 on the meta device (no arithmetic).
    with torch.device("meta"):
        model = build_model(name, num_classes=3)
        for size in range(1, 641):
            out = model(torch.empty(1, 3, size, 641 - size))["out"]
            assert out.shape == (1, 3, size, 641 - size), size


@pytest.mark.parametrize("name", VGG_MODELS)
def test_vgg_real_forward_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3)
    for module in model.modules():  # non-zero scores, so the skip paths carry signal
        if isinstance(module, torch.nn.Conv2d) and module.out_channels == 3:
            torch.nn.init.normal_(module.weight, std=0.01)
    x = torch.randn(1, 3, 45, 29)
    out = model(x)["out"]
    assert out.shape == (1, 3, 45, 29) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert model.score_fr.weight.grad is not None and model.conv1_1.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("upscore"))


def test_atonce_scales_the_skips():
    # Scoring pool4 * 0.01 with W equals scoring pool4 with 0.01 W (and pool3 with 1e-4 W): so the at-once
    # model must equal a staged FCN-8s whose skip score weights are scaled that way.
    torch.manual_seed(0)
    atonce = fcn8s_atonce(num_classes=3).eval()
    for module in (atonce.score_fr, atonce.score_pool3, atonce.score_pool4):
        torch.nn.init.normal_(module.weight)
        torch.nn.init.normal_(module.bias)
    staged = FCN8s(3).eval()
    state = atonce.state_dict()
    state["score_pool4.weight"] = state["score_pool4.weight"] * 0.01
    state["score_pool3.weight"] = state["score_pool3.weight"] * 0.0001
    staged.load_state_dict(state)
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(atonce(x)["out"], staged(x)["out"], rtol=1e-4, atol=1e-4)
        plain = FCN8s(3).eval()
        plain.load_state_dict(atonce.state_dict())
        assert not torch.allclose(plain(x)["out"], atonce(x)["out"], atol=1e-3)


# ---------------------------------------------------------------------------------------- weight loading

def test_resnet_backbone_from_local_file(tmp_path):
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("fcn_resnet50", pretrained_backbone=str(path))
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[key], value), key


def test_vgg16_backbone_mapping(tmp_path):
    vgg = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg.state_dict(), path)
    model = fcn32s(pretrained_backbone=str(path)).eval()
    assert torch.equal(model.conv1_1.weight, vgg.features[0].weight)
    assert torch.equal(model.conv5_3.bias, vgg.features[28].bias)
    # fc6 as a 7x7 convolution on pool5 equals VGG's first Linear layer on the flattened pool5.
    pool5 = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(model.fc6(pool5).flatten(), vgg.classifier[0](pool5.flatten(1)).flatten(),
                                   rtol=1e-4, atol=1e-4)
        h = torch.randn(1, 4096)
        torch.testing.assert_close(model.fc7(h[:, :, None, None]).flatten(), vgg.classifier[3](h).flatten(),
                                   rtol=1e-4, atol=1e-4)


def test_backbone_wrong_file_is_an_error(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="not torchvision vgg16"):
        fcn8s(pretrained_backbone=str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        fcn_resnet50(pretrained_backbone=str(tmp_path / "missing.pth"))


def test_backbone_auto_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache, so a download would be attempted

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ValueError, match="pass its path.*or pass 'none'"):
        build_model("fcn_resnet50", pretrained_backbone="auto")


def test_backbone_auto_uses_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = torchvision.models.resnet101(weights=None)
    torch.save(reference.state_dict(), cache / "resnet101-63fe2227.pth")
    model = build_model("fcn_resnet101", pretrained_backbone="auto")
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_whole_model_raw_state_dict_strict(tmp_path):
    reference = tv_fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    path = tmp_path / "fcn_resnet50_coco-1167a1af.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("fcn_resnet50")
    report = load_model_weights(model, path, strict=True)
    assert report.exact
    assert torch.equal(model.classifier[4].weight, reference.classifier[4].weight)


def test_whole_model_other_num_classes_drops_heads(tmp_path):
    path = tmp_path / "coco.pth"
    torch.save(tv_fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True).state_dict(), path)
    model = build_model("fcn_resnet50", num_classes=5)
    before = model.classifier[4].weight.clone()
    report = load_model_weights(model, path)
    dropped = sorted(d.split()[0] for d in report.dropped)
    assert dropped == ["aux_classifier.4.bias", "aux_classifier.4.weight", "classifier.4.bias",
                       "classifier.4.weight"]
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.classifier[4].weight, before)
    with pytest.raises(ValueError, match="does not match the model exactly"):
        load_model_weights(build_model("fcn_resnet50", num_classes=5), path, strict=True)


def test_whole_model_our_checkpoint_and_ddp_prefix(tmp_path):
    source = build_model("fcn8s", num_classes=3)
    path = tmp_path / "best.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    model = build_model("fcn8s", num_classes=3)
    assert load_model_weights(model, path, strict=True).exact


def test_fcn32s_weights_into_fcn16s_reports_missing_skip_layers(tmp_path):
    path = tmp_path / "fcn32s.pth"
    torch.save(fcn32s(num_classes=21).state_dict(), path)
    model = fcn16s(num_classes=21)
    report = load_model_weights(model, path)
    assert set(report.missing) == {"score_pool4.weight", "score_pool4.bias", "upscore2.weight",
                                   "upscore16.weight"}
    assert report.unexpected == ["upscore.weight"]
    # Missing deconvolutions keep their bilinear initialisation.
    assert torch.equal(model.upscore16.weight, bilinear_kernel(21, 32))


def test_wrong_architecture_is_an_error(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(fcn32s(num_classes=21).state_dict(), path)
    with pytest.raises(ValueError, match="none of its tensor names match"):
        load_model_weights(build_model("fcn_resnet50"), path)


def test_checkpoint_without_a_classifier_needs_num_classes(tmp_path):
    path = tmp_path / "headless.pth"
    state = build_model("fcn_resnet50", 5, aux=False).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("classifier.4.")}, path)
    with pytest.raises(ValueError, match="headless.pth: cannot tell the number of classes.*--num-classes"):
        model_from_checkpoint(path)


@pytest.mark.parametrize("content", ["truncated", "random", "not_a_state_dict", "empty"])
def test_bad_checkpoint_files(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save(build_model("fcn32s", num_classes=2).state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "random":
        path.write_bytes(os.urandom(4096))
    elif content == "not_a_state_dict":
        torch.save({"epoch": 3, "note": "no tensors"}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="bad.pth"):
        load_model_weights(build_model("fcn32s", num_classes=2), path)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": {"x": torch.zeros(1)}, "payload": _Exploit()}, f, pickle_module=pickle)
    with pytest.raises(ValueError, match="evil.pth: refused by weights_only=True"):
        load_model_weights(build_model("fcn32s", num_classes=2), path)
    assert not marker.exists()


def test_aux_models_constant():
    assert AUX_MODELS == ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                          "deeplabv3_mobilenet_v3_large", "pspnet_resnet50", "pspnet_resnet101")


def test_fold_batchnorm_keeps_the_function():
    from src.fuse import fold_batchnorm, prepare_for_inference

    torch.manual_seed(0)
    model = build_model("fcn_resnet50", num_classes=4).eval()
    for module in model.modules():  # non-trivial statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        expected = model(x)["out"]
        with pytest.raises(ValueError, match="eval mode"):
            fold_batchnorm(build_model("fcn_resnet50", num_classes=4).train())
        fast = prepare_for_inference(model, torch.device("cpu"), channels_last=True)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert list(got) == ["out"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    torch.testing.assert_close(got["out"], expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ DeepLabV3, LR-ASPP, U-Net, PSPNet

@pytest.fixture
def one_thread():
    """One intra-op thread: two spinning OpenMP threads on a shared 2-core machine make small models several
    times slower (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_bn_statistics(*models: torch.nn.Module) -> None:
    """The same non-trivial running statistics in every model, so that eval-mode BN is exercised."""
    bns = [[m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] for model in models]
    for group in zip(*bns):
        mean, var = torch.rand_like(group[0].running_mean) * 0.2 - 0.1, torch.rand_like(group[0].running_var) + 0.5
        for bn in group:
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)


TV_PARITY = [("deeplabv3_resnet50", True), ("deeplabv3_resnet50", False),
             ("deeplabv3_mobilenet_v3_large", True), ("deeplabv3_mobilenet_v3_large", False),
             ("lraspp_mobilenet_v3_large", False)]


@pytest.mark.parametrize("name,aux", TV_PARITY)
@pytest.mark.usefixtures("one_thread")
def test_torchvision_parity_of_the_new_models(name, aux):
    """torchvision's state dict loads strictly, and the outputs are torchvision's (fp32, CPU)."""
    torch.manual_seed(2)
    theirs = getattr(torchvision.models.segmentation, name)
    reference = theirs(weights=None, weights_backbone=None, num_classes=21, **({"aux_loss": True} if aux else {}))
    model = build_model(name, num_classes=21, aux=aux)
    ref_sd = reference.state_dict()
    assert list(model.state_dict()) == list(ref_sd)
    model.load_state_dict(ref_sd, strict=True)
    model.eval(), reference.eval()
    _random_bn_statistics(model, reference)
    x = torch.randn(1, 3, 49, 35)
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert list(got) == list(want) == (["out", "aux"] if aux else ["out"])
    for key in want:
        assert got[key].shape == (1, 21, 49, 35)
        assert (got[key] - want[key]).abs().max() <= 1e-5


def test_deeplabv3_resnet101_state_dict_is_torchvisions():
    with torch.device("meta"):
        reference = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                                       aux_loss=True)
        model = build_model("deeplabv3_resnet101")
    ref_sd, our_sd = reference.state_dict(), model.state_dict()
    assert list(our_sd) == list(ref_sd) and all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    assert sum(p.numel() for p in model.parameters()) == 60_996_202  # torchvision's weights metadata


@pytest.mark.usefixtures("one_thread")
def test_aspp_rates_and_lraspp_features():
    model = build_model("deeplabv3_resnet50", num_classes=3)
    assert [m[0].dilation for m in model.classifier[0].convs[1:4]] == [(12, 12), (24, 24), (36, 36)]
    lraspp = build_model("lraspp_mobilenet_v3_large", num_classes=3).eval()
    with torch.no_grad():
        features = lraspp.backbone(torch.randn(1, 3, 64, 96))
    assert features["low"].shape == (1, 40, 8, 12) and features["high"].shape == (1, 960, 4, 6)
    with pytest.raises(ValueError, match="no auxiliary head"):
        build_model("lraspp_mobilenet_v3_large", aux=True)


def test_pspnet_head_is_mmsegmentations():
    model = build_model("pspnet_resnet101", num_classes=4)
    head = model.classifier
    assert [branch[0].output_size for branch in head.psp_modules] == [1, 2, 3, 6]
    assert all(branch[1].out_channels == 512 for branch in head.psp_modules)
    assert head.bottleneck[0].in_channels == 2048 + 4 * 512 and head.bottleneck[0].kernel_size == (3, 3)
    assert model.aux_classifier[0].in_channels == 1024  # the FCN head on layer3


@pytest.mark.parametrize("length", [1, 5, 7, 8, 13, 60])
@pytest.mark.parametrize("scale", [1, 2, 3, 6])
def test_pspnet_pooling_is_adaptive_average_pooling(scale, length):
    from src.pspnet import AdaptiveAvgPool

    x = torch.randn(2, 3, length, 11)
    torch.testing.assert_close(AdaptiveAvgPool(scale)(x), F.adaptive_avg_pool2d(x, scale), rtol=0, atol=1e-6)


def _one_training_step(model: torch.nn.Module, size: tuple) -> None:
    """One SGD step on a batch of 2: a finite loss, a gradient for every parameter, every parameter moved."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.randint(0, 3, (2, *size))
    before = [p.detach().clone() for p in model.parameters()]
    loss = sum(F.cross_entropy(v, target) for v in model.train()(torch.randn(2, 3, *size)).values())
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.usefixtures("one_thread")
def test_unet_odd_sizes_and_a_training_step(bilinear):
    from src.unet import UNet

    torch.manual_seed(0)
    model = UNet(3, base_channels=8, bilinear=bilinear)  # the architecture of `unet`, narrower: fast
    for height, width in [(37, 53), (5, 7), (16, 33), (1, 1)]:
        out = model(torch.randn(2, 3, height, width))
        assert list(out) == ["out"] and out["out"].shape == (2, 3, height, width)
    _one_training_step(model, (29, 19))


@pytest.mark.usefixtures("one_thread")
def test_pspnet_odd_sizes_and_a_training_step():
    torch.manual_seed(0)
    model = build_model("pspnet_resnet50", num_classes=3)
    with torch.no_grad():
        for height, width in [(37, 53), (17, 9)]:
            out = model.eval()(torch.randn(1, 3, height, width))
            assert list(out) == ["out", "aux"] and all(v.shape == (1, 3, height, width) for v in out.values())
    _one_training_step(model, (25, 33))


def test_unet_upsampling_choice():
    bilinear, deconv = build_model("unet", num_classes=2), build_model("unet_deconv", num_classes=2)
    assert isinstance(bilinear.up1.up, torch.nn.Upsample) and isinstance(deconv.up1.up, torch.nn.ConvTranspose2d)
    assert bilinear.in_conv[0].out_channels == deconv.in_conv[0].out_channels == 64
    assert deconv.down4[1][0].out_channels == 1024 and bilinear.down4[1][0].out_channels == 512
    with pytest.raises(ValueError, match="trains from scratch"):
        build_model("unet", pretrained_backbone="resnet50-0676ba61.pth")


@pytest.mark.usefixtures("one_thread")
def test_mobilenet_backbone_from_local_file(tmp_path):
    reference = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet_v3_large-8738ca79.pth"
    torch.save(reference.state_dict(), path)
    for name in ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"):
        model = build_model(name, pretrained_backbone=str(path))
        ours = model.backbone.state_dict()
        for key, value in reference.features.state_dict().items():
            assert torch.equal(ours[key], value), key
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match="not torchvision mobilenet_v3_large"):
        build_model("lraspp_mobilenet_v3_large", pretrained_backbone=str(tmp_path / "resnet18.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("deeplabv3_mobilenet_v3_large", pretrained_backbone=str(tmp_path / "missing.pth"))
