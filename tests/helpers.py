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


PIPELINE_FILES = ("dvc.yaml", "params.yaml", "stages", "transfer", ".dvcignore", ".gitignore")


def set_param(tree: dict, dotted: str, value) -> None:
    """Set a dotted key in a params tree."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        tree = tree[section]
    tree[leaf] = value


def make_pipeline_repo(root: Path, overrides: dict) -> Path:
    """A fresh git + DVC repository holding this project's pipeline, with params overridden; committed."""
    import shutil

    import yaml

    root.mkdir(parents=True)
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides.items():
        set_param(params, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    # DVC commits experiments itself; give the repository an identity so no global git config is needed.
    run(["git", "config", "user.name", "test"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "pipeline"], root)
    return root


def run(command: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None):
    """Run a command with this interpreter's environment first on PATH; returns the completed process.

    ``MLFLOW_TRACKING_URI`` is passed on only through ``env``: ``mlflow.set_tracking_uri`` in the test
    process exports it, and it must not redirect the pipeline's own default store.
    """
    import os
    import subprocess
    import sys

    extra = env or {}
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
        DVC_NO_ANALYTICS="1",
    )
    env.update(extra)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(result) -> list[str]:
    """The names of the stages a dvc repro / exp run actually ran, from its output."""
    import re

    return re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)
