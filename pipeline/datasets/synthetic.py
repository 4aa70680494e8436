"""Built-in synthetic zero-shot dataset: procedurally drawn colour x pattern x shape images.

Each class is one factor combination ("red striped circle"); its attributes are the concatenated
one-hot factor values ("colour:red", "pattern:striped", "shape:circle"). Some combinations are
held out as unseen classes, chosen so every attribute value still occurs among the seen (and the
``train``) classes, so a model mapping images to attributes can recognise unseen classes.
Images vary in position, size, rotation, tint, background and noise. Everything is a pure
function of the generation parameters, ``seed`` included.

Multi-label mode (``multilabel=True``): every image shows 1-3 objects of distinct classes, one
per quadrant, and its tags are those classes. Training images (``trainval``) show seen classes
only; ``test`` images show any classes, most of them at least one unseen class, so tag
combinations and tags never seen in training both occur.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError

FACTORS: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow"),
    "pattern": ("solid", "striped", "dotted"),
    "shape": ("circle", "square", "triangle", "star"),
}
RGB = {"red": (0.85, 0.12, 0.12), "green": (0.15, 0.65, 0.2), "blue": (0.15, 0.3, 0.9), "yellow": (0.95, 0.85, 0.15)}
N_UNSEEN = 12  # held-out combinations: test_unseen
N_VAL = 9  # seen classes held out of train as validation classes
TEST_SEEN_FRACTION = 0.2
MULTILABEL_TEST_FRACTION = 0.3  # multi-label mode: share of images in ``test``
MULTILABEL_OBJECTS = (1, 2, 3)  # objects per image ...
MULTILABEL_OBJECT_P = (0.2, 0.4, 0.4)  # ... and how often
GENERATOR_VERSION = 1  # bump when drawing changes, so old roots are regenerated
META_NAME = "synthetic.json"
SUPERSAMPLE = 4  # shape masks are drawn this much larger, then box-filtered (anti-aliasing)
_REQUIRED_KEYS = ("params", "classes", "attribute_names", "class_attributes", "seen_classes",
                  "unseen_classes", "images", "splits")


def _combos() -> list[tuple[str, ...]]:
    """All factor combinations in class order (colour, pattern, shape)."""
    return list(itertools.product(*FACTORS.values()))


def _attribute_names() -> list[str]:
    return [f"{factor}:{value}" for factor, values in FACTORS.items() for value in values]


def _hold_out(rng: np.random.Generator, pool: list[int], n: int) -> list[int]:
    """Draw ``n`` classes from ``pool``, each factor value in at most ceil(n / #values) of them,
    such that the remaining classes still show every factor value."""
    combos = _combos()
    caps = [-(-n // len(values)) for values in FACTORS.values()]
    for _ in range(1000):
        counts: list[dict[str, int]] = [{} for _ in FACTORS]
        picked: list[int] = []
        for c in rng.permutation(pool).tolist():
            if len(picked) < n and all(counts[k].get(v, 0) < caps[k] for k, v in enumerate(combos[c])):
                picked.append(c)
                for k, v in enumerate(combos[c]):
                    counts[k][v] = counts[k].get(v, 0) + 1
        rest = [combos[c] for c in pool if c not in picked]
        if len(picked) == n and all(set(values) == {combo[k] for combo in rest}
                                    for k, values in enumerate(FACTORS.values())):
            return sorted(picked)
    raise PipelineError(f"cannot hold out {n} of {len(pool)} synthetic classes and keep every attribute value")


def _shape_mask(shape: str, cx: float, cy: float, radius: float, theta: float, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` (outer radius ``radius``, rotated by ``theta``)."""
    k = SUPERSAMPLE
    canvas = Image.new("L", (size * k, size * k), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        r = 0.85 * radius * k
        draw.ellipse((cx * k - r, cy * k - r, cx * k + r, cy * k + r), fill=255)
    else:
        n_vertices, radii = {"square": (4, (1.0,)), "triangle": (3, (1.0,)), "star": (10, (1.0, 0.45))}[shape]
        angles = theta + 2 * np.pi * np.arange(n_vertices) / n_vertices
        rho = radius * k * np.resize(radii, n_vertices)
        draw.polygon(list(zip(cx * k + rho * np.cos(angles), cy * k + rho * np.sin(angles))), fill=255)
    return np.asarray(canvas.reduce(k), dtype=np.float64) / 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Tinted grey [size, size, 3] with a linear brightness gradient in a random direction."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    phi = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(phi) + yy * np.sin(phi)) / size
    return rng.uniform(0.1, 0.7) + rng.uniform(-0.05, 0.05, 3) + rng.uniform(-0.15, 0.15) * ramp[..., None]


def _paint(rng: np.random.Generator, image: np.ndarray, colour: str, pattern: str, shape: str,
           cx: float, cy: float, radius: float) -> np.ndarray:
    """``image`` with one object (random rotation, pattern phase and tint) composited at (cx, cy)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    theta = rng.uniform(0, 2 * np.pi)
    alpha = _shape_mask(shape, cx, cy, radius, theta, size)[..., None]
    period = radius / rng.uniform(2.0, 3.0)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / period + rng.uniform(0, 1)
    v = ((yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta)) / period + rng.uniform(0, 1)
    if pattern == "solid":
        ink = np.ones_like(u, dtype=bool)
    elif pattern == "striped":
        ink = u % 1 < 0.5
    else:  # dotted: light dots on a coloured body
        ink = np.hypot(u % 1 - 0.5, v % 1 - 0.5) > 0.3
    tint = np.clip(np.asarray(RGB[colour]) * rng.uniform(0.8, 1.1) + rng.uniform(-0.06, 0.06, 3), 0, 1)
    foreground = np.where(ink[..., None], tint, rng.uniform(0.85, 1.0))
    return image * (1 - alpha) + foreground * alpha


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Pixel noise, then uint8."""
    image = image + rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _render(rng: np.random.Generator, colour: str, pattern: str, shape: str, size: int) -> np.ndarray:
    """One [size, size, 3] uint8 image of the class, with random nuisance variation."""
    image = _background(rng, size)
    radius = rng.uniform(0.25, 0.42) * size  # the object lies fully inside the image
    cx, cy = rng.uniform(radius, size - radius, 2)
    return _finish(rng, _paint(rng, image, colour, pattern, shape, cx, cy, radius))


def _render_scene(rng: np.random.Generator, objects: list[tuple[str, ...]], size: int) -> np.ndarray:
    """One image showing ``objects`` (at most 4), each in its own quadrant, jittered in it."""
    image = _background(rng, size)
    half = size / 2
    for (colour, pattern, shape), cell in zip(objects, rng.permutation(4)):
        radius = rng.uniform(0.32, 0.45) * half
        cx, cy = (cell % 2) * half + rng.uniform(radius, half - radius), (cell // 2) * half + rng.uniform(radius, half - radius)
        image = _paint(rng, image, colour, pattern, shape, cx, cy, radius)
    return _finish(rng, image)


def _fix_hint(root: Path) -> str:
    return f"run: python cli.py synthesize --output {root}"


def _read_meta(root: Path) -> dict[str, Any]:
    """The metadata of a complete synthetic root; PipelineError if missing, broken or incomplete."""
    path = Path(root) / META_NAME
    if not path.is_file():
        raise PipelineError(f"{path}: synthetic dataset missing or incomplete; {_fix_hint(root)}")
    try:
        meta = json.loads(path.read_text())
        missing_keys = [key for key in _REQUIRED_KEYS if key not in meta]
    except (OSError, ValueError, TypeError) as exc:
        raise PipelineError(f"{path}: unreadable synthetic metadata ({exc}); {_fix_hint(root)}") from None
    if missing_keys:
        raise PipelineError(f"{path}: synthetic metadata lacks {', '.join(missing_keys)}; {_fix_hint(root)}")
    missing = sum(not (Path(root) / image["path"]).is_file() for image in meta["images"])
    if missing:
        raise PipelineError(f"{path}: {missing} of {len(meta['images'])} images missing; {_fix_hint(root)}")
    return meta


def generate_synthetic(root: Path, images_per_class: int = 24, image_size: int = 64, seed: int = 0,
                       multilabel: bool = False) -> None:
    """Write the dataset under ``root``: ``images/<class_folder>/<i>.png`` (multi-label:
    ``images/<i>.png``, ``images_per_class`` x 48 images in all) and ``synthetic.json``.

    A no-op when ``root`` already holds a complete dataset with the same parameters; otherwise
    its metadata and ``images/`` are removed and everything is regenerated. The metadata is
    written last and atomically, so an interrupted run leaves a root ``load_synthetic`` rejects.
    """
    if images_per_class < 2:
        raise PipelineError(f"images_per_class must be at least 2 (got {images_per_class})")
    if image_size < 16:
        raise PipelineError(f"image_size must be at least 16 pixels (got {image_size})")
    if seed < 0:
        raise PipelineError(f"seed must be non-negative (got {seed})")
    root = Path(root)
    params = {"images_per_class": images_per_class, "image_size": image_size, "seed": seed,
              "generator_version": GENERATOR_VERSION, **({"multilabel": True} if multilabel else {})}
    try:
        if _read_meta(root)["params"] == params:
            return
    except PipelineError:
        pass
    try:
        _draw(root, params, images_per_class, image_size, seed, multilabel)
    except OSError as e:
        raise PipelineError(f"{root}: cannot write the synthetic dataset ({e.strerror or e}); choose a writable "
                            "folder with room for it") from None


def _draw(root: Path, params: dict, images_per_class: int, image_size: int, seed: int, multilabel: bool) -> None:
    """Draw the dataset under ``root`` (see :func:`generate_synthetic`), its metadata last."""
    meta_path = root / META_NAME
    meta_path.unlink(missing_ok=True)
    if (root / "images").exists():
        shutil.rmtree(root / "images")

    combos = _combos()
    classes = [" ".join(combo) for combo in combos]
    split_rng = np.random.default_rng([seed, 0])
    unseen = _hold_out(split_rng, list(range(len(combos))), N_UNSEEN)
    seen = [c for c in range(len(combos)) if c not in unseen]
    val_classes = _hold_out(split_rng, seen, N_VAL)
    train_classes = [c for c in seen if c not in val_classes]

    if multilabel:
        images, splits = _draw_scenes(root, combos, seen, images_per_class * len(combos), image_size, seed)
    else:
        images, splits = _draw_classes(root, combos, classes, unseen, val_classes, images_per_class, image_size,
                                       seed, split_rng)
    meta = {
        "params": params,
        "factors": FACTORS,
        "classes": classes,
        "attribute_names": _attribute_names(),
        "class_attributes": [[int(combo[k] == value) for k, values in enumerate(FACTORS.values()) for value in values]
                             for combo in combos],
        "seen_classes": [classes[c] for c in seen],
        "unseen_classes": [classes[c] for c in unseen],
        "train_classes": [classes[c] for c in train_classes],
        "val_classes": [classes[c] for c in val_classes],
        "images": images,
        "splits": {name: sorted(rows) for name, rows in splits.items()},
        "multilabel": multilabel,
    }
    tmp = meta_path.with_name(META_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)


def _draw_classes(root: Path, combos: list[tuple[str, ...]], classes: list[str], unseen: list[int],
                  val_classes: list[int], images_per_class: int, image_size: int, seed: int,
                  split_rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Single-label images, one class per folder, and the GBU-style splits."""
    images: list[dict[str, Any]] = []
    splits: dict[str, list[int]] = {name: [] for name in ("trainval", "train", "val", "test_seen", "test_unseen")}
    n_test = max(1, round(TEST_SEEN_FRACTION * images_per_class))
    for c, combo in enumerate(combos):
        folder = root / "images" / classes[c].replace(" ", "_")
        folder.mkdir(parents=True)
        rows = list(range(len(images), len(images) + images_per_class))
        for i in range(images_per_class):
            pixels = _render(np.random.default_rng([seed, 1, c, i]), *combo, image_size)
            Image.fromarray(pixels).save(folder / f"{i}.png")
            images.append({"path": f"images/{folder.name}/{i}.png", "label": c})
        if c in unseen:
            splits["test_unseen"] += rows
            continue
        order = split_rng.permutation(images_per_class)
        splits["test_seen"] += [rows[i] for i in order[:n_test]]
        trainval = [rows[i] for i in order[n_test:]]
        splits["trainval"] += trainval
        splits["val" if c in val_classes else "train"] += trainval
    return images, splits


def _draw_scenes(root: Path, combos: list[tuple[str, ...]], seen: list[int], n_images: int, image_size: int,
                 seed: int) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Multi-label images ``images/<i>.png`` with their tags, and the ``trainval`` / ``test`` splits."""
    rng = np.random.default_rng([seed, 2])
    n_test = round(MULTILABEL_TEST_FRACTION * n_images)
    unseen = [c for c in range(len(combos)) if c not in seen]
    (root / "images").mkdir(parents=True)
    images: list[dict[str, Any]] = []
    splits: dict[str, list[int]] = {"trainval": [], "test": []}
    for i in range(n_images):
        test = i >= n_images - n_test
        n = int(rng.choice(MULTILABEL_OBJECTS, p=MULTILABEL_OBJECT_P))
        if not test:
            tags = rng.choice(seen, n, replace=False)
        elif rng.uniform() < 2 / 3:  # at least one unseen object
            first = rng.choice(unseen)
            others = [c for c in range(len(combos)) if c != first]
            tags = np.concatenate([[first], rng.choice(others, n - 1, replace=False)])
        else:
            tags = rng.choice(len(combos), n, replace=False)
        pixels = _render_scene(np.random.default_rng([seed, 3, i]), [combos[c] for c in tags], image_size)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        images.append({"path": f"images/{i}.png", "tags": sorted(int(c) for c in tags)})
        splits["test" if test else "trainval"].append(i)
    return images, splits


def load_synthetic(root: Path) -> ImageDataset:
    """The generated dataset at ``root`` (PipelineError naming the fix if absent or incomplete)."""
    root = Path(root)
    meta = _read_meta(root)
    splits = {name: np.array(rows, dtype=np.int64) for name, rows in meta["splits"].items()}
    if meta.get("multilabel"):
        classes = list(meta["classes"])
        tags = np.zeros((len(meta["images"]), len(classes)), dtype=bool)
        for i, image in enumerate(meta["images"]):
            tags[i, image["tags"]] = True
        index = {c: i for i, c in enumerate(classes)}
        return ImageDataset(name="synthetic", root=root, image_ids=[image["path"] for image in meta["images"]],
                            labels=np.full(len(tags), -1, dtype=np.int64), classes=classes, splits=splits, tags=tags,
                            unseen_tags=np.array(sorted(index[c] for c in meta["unseen_classes"]), dtype=np.int64))
    return ImageDataset(
        name="synthetic",
        root=root,
        image_ids=[image["path"] for image in meta["images"]],
        labels=np.array([image["label"] for image in meta["images"]], dtype=np.int64),
        classes=list(meta["classes"]),
        splits=splits,
    )


def synthetic_attributes(root: Path) -> tuple[np.ndarray, list[str]]:
    """The [C, A] float32 binary class-attribute matrix and the A attribute names."""
    meta = _read_meta(Path(root))
    return np.asarray(meta["class_attributes"], dtype=np.float32), list(meta["attribute_names"])
