"""Zero-shot recognition on cached image features."""
from pipeline import compat  # noqa: F401  (must run before torchvision / open_clip / timm import)

__version__ = "0.1.0"
