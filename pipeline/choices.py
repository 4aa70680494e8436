"""The names the command line offers, importable without torch or h5py so that ``--help`` is instant;
the modules that implement them import their tables from here."""

BACKBONES = ("resnet18", "resnet50", "resnet101", "clip", "efficientnet_lite0")  # and TIMM_PREFIX + any timm model
TIMM_PREFIX = "timm:"


def is_backbone(name: object) -> bool:
    """A built-in backbone name, or ``timm:<model>``."""
    timm = isinstance(name, str) and name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)
    return name in BACKBONES or timm
DATASETS = ("synthetic", "folder", "webdataset", "imagenet", "cub", "awa2", "sun", "nus_wide", "coco", "tags")
DTYPES = ("float16", "float32")  # feature dtypes a store can hold
MODEL_NAMES = ("eszsl", "joint_gcn", "gcn_regression", "cfzsl", "clip_prompt", "conse", "msdn", "drmn", "sdl")
