"""Backbones: random weights, local checkpoints, the packaged EfficientNet-Lite0, offline errors."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pipeline  # noqa: F401
from pipeline.backbones import BUILDERS, lite0_package_weights, load_backbone, torchvision_preprocess
from pipeline.choices import BACKBONES
from pipeline.datasets.folder import load_folder
from pipeline.errors import PipelineError
from pipeline.extract import extract

# Features of two IN200 photos extracted (float32) before the ResNets and Lite0 ran through timm's
# ``forward_intermediates`` (they were hand-unrolled forward passes); Lite0's grid keeps regions 0, 8, ..., 48.
BEFORE_TIMM = Path(__file__).parent / "data" / "backbone_outputs.npz"
PHOTOS = ("n01443537_11099_goldfish.jpg", "n00007846_147031_person.jpg")


def test_builtin_backbones_extract_the_features_they_did_before_timm_ran_them(shared_data: Path, tmp_path: Path):
    root = tmp_path / "photos"
    for photo in PHOTOS:
        folder = root / photo.rsplit("_", 1)[1].removesuffix(".jpg")
        folder.mkdir(parents=True)
        shutil.copy(shared_data / "imagen200" / "images" / photo, folder)
    before = np.load(BEFORE_TIMM)
    for name, backbone, pretrained, size in [("resnet18", "resnet18", "none", 96),
                                             ("lite0", "efficientnet_lite0", "imagenet", 224)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resnet18: random weights, seeded
            net = load_backbone(backbone, pretrained, size)
        extract(load_folder(root), net, tmp_path / f"{name}.h5", dtype="float32", grid=True, mid_grid=True)
        with h5py.File(tmp_path / f"{name}.h5", "r") as f:
            grid = f["grid"][:, ::8] if name == "lite0" else f["grid"][:]
            for part, now in [("pooled", f["features"][:]), ("grid", grid), ("grid_mid", f["grid_mid"][:])]:
                np.testing.assert_allclose(now, before[f"{name}_{part}"], rtol=1e-5, atol=1e-5, err_msg=part)


def test_torchvision_weights_bring_their_own_resize():
    import torchvision

    weights = torchvision.models.get_model_weights("resnet50")
    assert torchvision_preprocess(weights.IMAGENET1K_V2, 224).resize_size == 232  # V2 was evaluated so
    assert torchvision_preprocess(weights.IMAGENET1K_V1, 224).resize_size == 256
    assert torchvision_preprocess(weights.IMAGENET1K_V2, 448).resize_size == 464
    none = torchvision_preprocess(None, 224)
    assert (none.resize_size, none.interpolation, none.mean) == (256, "bilinear", (0.485, 0.456, 0.406))


def test_random_weights_warn_and_are_reproducible():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = load_backbone("resnet18", "none", 64)
    with pytest.warns(UserWarning):
        b = load_backbone("resnet18", "none", 64)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    assert a.provenance["pretrained"] == "none" and a.feature_dim == 512 and a.grid_shape == (4, 512)
    assert a.head is None  # random weights: no classifier worth recording


def test_resnet_from_local_checkpoint_matches_torchvision(tmp_path: Path):
    import torchvision

    net = torchvision.models.resnet50().eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "r50.pth")
    backbone = load_backbone("resnet50", str(tmp_path / "r50.pth"), 96)
    x = torch.rand(2, 3, 96, 96)
    pooled, grid, mid = backbone(x)
    with torch.no_grad():
        want = torch.nn.Sequential(*list(net.children())[:-1])(x).flatten(1)
        layer3 = torch.nn.Sequential(*list(net.children())[:-3])(x)  # [2, 1024, 6, 6]
    torch.testing.assert_close(pooled, want, rtol=1e-4, atol=1e-4)
    assert grid.shape == (2, 9, 2048) and mid.shape == (2, 9, 1024) and backbone.mid_grid_shape == (9, 1024)
    torch.testing.assert_close(grid.mean(1), pooled, rtol=1e-4, atol=1e-4)
    # region 0 of the mid grid: the mean of layer3's top-left 2x2 block (6x6 pooled to 3x3)
    torch.testing.assert_close(mid[:, 0], layer3[:, :, :2, :2].mean(dim=(2, 3)), rtol=1e-4, atol=1e-4)
    assert backbone.provenance["pretrained"] == str(tmp_path / "r50.pth")
    assert backbone.provenance["resize_size"] == round(96 / 0.875)
    head = backbone.head  # torchvision's fc, its outputs the ILSVRC-2012 wnids in sorted order
    assert head is not None and len(head.classes) == 1000 and head.classes == sorted(head.classes)
    np.testing.assert_array_equal(head.weight, net.fc.weight.detach().numpy())
    torch.testing.assert_close(torch.as_tensor(head.logits(pooled.numpy())), net(x), rtol=1e-4, atol=1e-4)


def test_checkpoint_of_wrong_architecture_is_a_clear_error(tmp_path: Path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PipelineError, match="r18.pth: checkpoint does not fit"):
        load_backbone("resnet50", str(tmp_path / "r18.pth"), 64)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="junk.pth: cannot read checkpoint"):
        load_backbone("resnet18", str(tmp_path / "junk.pth"), 64)


def test_clip_from_local_checkpoint_gives_image_embeddings(tmp_path: Path):
    import open_clip

    torch.manual_seed(5)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    backbone = load_backbone("clip:ViT-B-32", str(tmp_path / "clip.pt"), None)
    assert backbone.provenance["options"]["backbone"] == "clip:ViT-B-32"
    x = torch.rand(2, 3, 224, 224)
    pooled, tokens, mid = backbone(x)
    with torch.no_grad():
        torch.testing.assert_close(pooled, model.encode_image(x), rtol=1e-4, atol=1e-4)
        eighth = model.visual.forward_intermediates(x, indices=[7], intermediates_only=True, output_fmt="NLC")
    assert pooled.shape == (2, 512) and tokens.shape == (2, 49, 768) and mid.shape == (2, 49, 768)
    torch.testing.assert_close(mid, eighth["image_intermediates"][0], rtol=1e-4, atol=1e-4)
    pre = backbone.preprocess
    assert pre.interpolation == "bicubic" and pre.resize_size == 224
    assert pre.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_clip_random_weights_and_wrong_image_size():
    with pytest.warns(UserWarning, match="RANDOM"):
        backbone = load_backbone("clip:RN50", "none", None)
    assert backbone.feature_dim == 1024 and backbone.grid_shape == (49, 2048) and backbone.mid_grid_shape == (49, 1024)
    assert backbone.provenance["backbone"] == "clip:RN50" and backbone.provenance["model"] == "RN50"
    with pytest.raises(PipelineError, match="clip:ViT-B-32 takes 224 px"), pytest.warns(UserWarning, match="RANDOM"):
        load_backbone("clip", "none", 448)  # clip alone: ViT-B-32
    with pytest.raises(PipelineError, match="not a file nor a known tag"):
        load_backbone("clip:ViT-B-32", "no-such-tag", None)
    with pytest.raises(PipelineError, match="unknown model"):
        load_backbone("clip:ViT-Z-99", "none", None)


def test_packaged_efficientnet_lite0_weights_are_loaded():
    backbone = load_backbone("efficientnet_lite0", "imagenet", 224)
    package = torch.load(lite0_package_weights(), map_location="cpu", weights_only=True)
    net = backbone.body.net
    torch.testing.assert_close(net.conv_stem.weight, package["_conv_stem.weight"])
    torch.testing.assert_close(net.blocks[6][0].conv_pwl.weight, package["_blocks.15._project_conv.weight"])
    torch.testing.assert_close(net.classifier.weight, package["_fc.weight"])
    assert backbone.feature_dim == 1280 and backbone.grid_shape == (49, 1280) and backbone.mid_grid_shape == (49, 112)
    # as the weights were trained: TF "same" padding, bicubic, (x - 127) / 128
    assert type(net.conv_stem).__name__ == "Conv2dSame" and backbone.provenance["model"] == "tf_efficientnet_lite0"
    pre = backbone.preprocess
    assert pre.interpolation == "bicubic" and pre.mean == (127 / 255,) * 3 and pre.std == (128 / 255,) * 3
    assert backbone.head is not None and backbone.head.classes[:2] == ["n01440764", "n01443537"]
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        _, grid, _ = backbone(x)
        torch.testing.assert_close(grid, net.forward_features(x).flatten(2).transpose(1, 2))


def test_offline_tag_is_a_clear_error_that_names_the_local_file_option():
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    if cached.exists():
        pytest.skip(f"{cached} is cached, so nothing is downloaded")
    with pytest.raises(PipelineError, match="--pretrained /path/to/that.pth") as err:
        load_backbone("resnet18", "imagenet", 64)
    assert "\n" not in str(err.value)


def test_unknown_names_are_errors():
    assert (*BUILDERS, "clip") == BACKBONES  # what the command line offers is what load_backbone builds
    for name in ("vgg16", "timm:", "clip:"):
        with pytest.raises(PipelineError, match="unknown backbone"):
            load_backbone(name, "none", 64)
    with pytest.raises(PipelineError, match="--pretrained 'IMAGENET9K' is not a file nor a known tag"):
        load_backbone("resnet18", "IMAGENET9K", 64)


def test_timm_backbone_gives_what_its_classifier_reads_and_its_stages(tmp_path: Path):
    with pytest.warns(UserWarning, match="RANDOM"):
        backbone = load_backbone("timm:resnet18", "none", 64)
    net = backbone.body.net
    assert backbone.feature_dim == 512 and backbone.grid_shape == (4, 512) and backbone.mid_grid_shape == (4, 256)
    assert backbone.head is None and backbone.provenance["backbone"] == "timm:resnet18"
    assert backbone.preprocess.interpolation == "bicubic" and backbone.preprocess.resize_size == round(64 / 0.95)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        pooled, grid, _ = backbone(x)
        torch.testing.assert_close(pooled, net.forward_head(net.forward_features(x), pre_logits=True))
        torch.testing.assert_close(grid, net.forward_features(x).flatten(2).transpose(1, 2))


def test_timm_backbone_from_a_local_file_matches_the_builtin_lite0(tmp_path: Path):
    builtin = load_backbone("efficientnet_lite0", "imagenet", 224)
    weights = tmp_path / "lite0.pth"
    torch.save(builtin.body.net.state_dict(), weights)  # timm's names: a file timm users have
    backbone = load_backbone("timm:tf_efficientnet_lite0", str(weights), None)
    assert backbone.provenance["pretrained"] == str(weights) and backbone.head is not None
    np.testing.assert_array_equal(backbone.head.weight, builtin.head.weight)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        for ours, theirs in zip(backbone(x), builtin(x)):
            torch.testing.assert_close(ours, theirs)  # same architecture, same weights: same three outputs
    with pytest.raises(PipelineError, match="timm: unknown model 'resnet5000'; similar: "):
        load_backbone("timm:resnet5000", "none", 64)
