"""The names the command line offers, importable without torch or h5py so that ``--help`` is instant;
the modules that implement them import their tables from here."""

BACKBONES = ("resnet18", "resnet50", "resnet101", "efficientnet_lite0", "clip")  # and the prefixed names below
TIMM_PREFIX = "timm:"  # timm:<any timm model>
CLIP_PREFIX = "clip:"  # clip:<open_clip architecture>; clip alone is clip:ViT-B-32
CLIP_DEFAULT = "ViT-B-32"
BACKBONE_NAMES = (f"{', '.join(BACKBONES)}, {CLIP_PREFIX}<open_clip architecture> ({CLIP_PREFIX}RN50, ...; clip is "
                  f"{CLIP_PREFIX}{CLIP_DEFAULT}) or {TIMM_PREFIX}<timm model> ({TIMM_PREFIX}resnet50.tv_in1k, ...)")


def is_backbone(name: object) -> bool:
    """A built-in backbone name, ``timm:<model>`` or ``clip:<architecture>``: one string names a backbone."""
    prefixed = isinstance(name, str) and any(name.startswith(p) and len(name) > len(p)
                                             for p in (TIMM_PREFIX, CLIP_PREFIX))
    return name in BACKBONES or prefixed


def clip_architecture(backbone: str) -> str | None:
    """The open_clip architecture a backbone name runs (``clip``: ViT-B-32), None for other backbones."""
    if backbone == "clip":
        return CLIP_DEFAULT
    return backbone[len(CLIP_PREFIX):] if backbone.startswith(CLIP_PREFIX) else None
DATASETS = ("synthetic", "folder", "webdataset", "imagenet", "cub", "awa2", "sun", "nus_wide", "coco", "tags")
DTYPES = ("float16", "float32")  # feature dtypes a store can hold
MODEL_NAMES = ("eszsl", "joint_gcn", "gcn_regression", "cfzsl", "clip_prompt", "conse", "msdn", "drmn", "sdl")
