"""Zero-shot recognition on cached image features."""
import os

# Image-decoding workers and torch's OpenMP threads share few cores; OpenMP's default
# spin-waiting then burns the cores the other side needs (measured: extraction 3x, training
# 5-10x slower on 2 cores). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pipeline import compat  # noqa: E402,F401  (must run before torchvision / open_clip / timm import)

__version__ = "0.1.0"
