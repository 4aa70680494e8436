"""The names the command line offers, importable without torch or h5py so that ``--help`` is instant;
the modules that implement them import their tables from here."""

BACKBONES = ("resnet18", "resnet50", "resnet101", "clip", "efficientnet_lite0")  # and TIMM_PREFIX + any timm model
TIMM_PREFIX = "timm:"
DATASETS = ("synthetic", "folder", "imagenet", "cub", "awa2", "sun", "nus_wide", "coco", "tags")
DTYPES = ("float16", "float32")  # feature dtypes a store can hold
