"""Zero-shot recognition on cached image features.

Importing the package is cheap (no torch): it sets the OpenMP and OpenBLAS wait policies and arranges for the
torchvision fix of :mod:`pipeline.compat` to run before anything imports torchvision (open_clip and
timm do), whether our modules or yours import it (:mod:`zsl_torchvision_hook`, which the installed
package also runs at Python's start-up, so that the order of imports does not matter).
"""
import os

import zsl_torchvision_hook  # noqa: F401  (installs the finder, once)

# Image-decoding workers and torch's OpenMP threads share few cores; OpenMP's default
# spin-waiting then burns the cores the other side needs (measured: extraction 3x, training
# 5-10x slower on 2 cores). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's and scipy's OpenBLAS threads spin ~0.1 s after each call by default, holding the core that
# torch's next parallel op waits for: on 2 cores, selection of gcn_regression on IN200 ran 3x and
# ESZSL's 2x slower. Idle OpenBLAS threads sleep at once instead. Read when numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"

