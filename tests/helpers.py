"""Test data made on the spot: small photo-like datasets of coloured shapes, and paths to shared assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
FLOWERS_ARCHIVE = ASSETS / "flower_photos_mini.tgz"
MOBILENETV2_035_WEIGHTS = ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

SHAPES = {"circle": (220, 40, 40), "square": (40, 200, 60), "triangle": (50, 70, 230)}


def shape_image(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image: a noisy background with a coloured shape at a random place and scale."""
    background = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    side = int(rng.integers(size // 3, size - 4))
    x, y = (int(v) for v in rng.integers(0, size - side, size=2))
    colour = tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in SHAPES[kind])
    box = (x, y, x + side, y + side)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=colour)
    return image


def make_shapes_dataset(root: Path, per_class: int = 20, size: int = 48, seed: int = 0) -> Path:
    """Write ``root/<shape>/<n>.jpg|png``: JPEGs and PNGs alternate. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = shape_image(kind, size, rng)
            suffix = "jpg" if i % 2 == 0 else "png"
            image.save(root / kind / f"{kind}_{i:03d}.{suffix}")
    return root
