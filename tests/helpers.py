"""Test data made on the spot: small photo-like datasets of coloured shapes, and paths to shared assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from transfer.model.backbones import MIRROR_LAYER

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
FLOWERS_ARCHIVE = ASSETS / "flower_photos_mini.tgz"
MOBILENETV2_035_WEIGHTS = ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

SHAPES = {"circle": (220, 40, 40), "square": (40, 200, 60), "triangle": (50, 70, 230)}


def shape_image(kind: str, size: int, rng: np.random.Generator, any_colour: bool = False) -> Image.Image:
    """One image: a noisy background with a coloured shape at a random place and scale. Each kind has its own
    colour, or (``any_colour``) a random one, which leaves only the outline to tell the kind."""
    background = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    side = int(rng.integers(size // 3, size - 4))
    x, y = (int(v) for v in rng.integers(0, size - side, size=2))
    if any_colour:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    else:
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


PIPELINE_FILES = ("dvc.yaml", "stages", "transfer", "curation", "inputs", ".dvcignore", ".gitignore")


def committed_params_text() -> str:
    """The project's default params: ``params.yaml`` as the project's own latest commit left it, never the
    workspace's copy, which a user's ``dvc exp run -S ...`` leaves changed, nor a user's commit of it (a baseline
    committed before queueing experiments touches params.yaml and dvc.lock, never the code or its tests).
    Outside a git checkout, the file itself."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        project = git("log", "-1", "--format=%H", "--", "transfer", "stages", "tests", "dvc.yaml").strip()
        return git("show", f"{project or 'HEAD'}:params.yaml")
    except (OSError, subprocess.SubprocessError):
        return (REPO / "params.yaml").read_text()


def default_params_tree() -> dict:
    """:func:`committed_params_text`, parsed as the stages and DVC parse it."""
    from transfer.params import parse_params_text

    return parse_params_text(committed_params_text())


def set_param(tree: dict, dotted: str, value) -> None:
    """Set a dotted key in a params tree."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        tree = tree[section]
    tree[leaf] = value


def make_pipeline_repo(root: Path, overrides: dict) -> Path:
    """A fresh git + DVC repository holding this project's pipeline, with params overridden; committed.

    A ``weights`` override naming a file is copied into ``inputs/weights/`` (where the pipeline takes weights
    files from, as a user would put it) and the param names the copy; the copy is not committed.
    """
    import shutil

    import yaml

    root.mkdir(parents=True)
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    weights = overrides.get("weights")
    if weights is not None and str(weights).lower() not in ("imagenet", "none"):
        overrides = {**overrides, "weights": install_weights(root, Path(weights))}
    params = default_params_tree()
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


def install_weights(repo: Path, weights: Path) -> str:
    """Copy a weights file into ``repo``'s ``inputs/weights/``; returns the ``weights`` param naming it."""
    import shutil

    target = repo / "inputs" / "weights" / weights.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, target)
    return target.relative_to(repo).as_posix()


def pipeline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment pipeline commands run in: this interpreter's tools first on PATH, a git identity.

    ``MLFLOW_TRACKING_URI`` is passed on only through ``extra``: ``mlflow.set_tracking_uri`` in the test
    process exports it, and it must not redirect the pipeline's own default store.
    """
    import os
    import sys

    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
        DVC_NO_ANALYTICS="1",
    )
    env.update(extra or {})
    return env


def run(command: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None):
    """Run a command in :func:`pipeline_env` (plus ``env``); returns the completed process."""
    import subprocess

    result = subprocess.run(command, cwd=cwd, env=pipeline_env(env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(result) -> list[str]:
    """The names of the stages a dvc repro / exp run actually ran, from its output."""
    import re

    return re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)


def add_dirty_files(root: Path) -> dict[str, str]:
    """Add to a shapes dataset every kind of file real photo sets hold; returns {path: reason} for the bad ones.

    Good but awkward: a PNG named .jpg, CMYK, grayscale and 16-bit images, an RGBA PNG, a duplicate within a
    class. Bad: a truncated JPEG, an empty file, text named .jpg, a TIFF, an image filed under two classes.
    Ignored: a .ipynb_checkpoints folder and a .DS_Store file.
    """
    import io

    rng = np.random.default_rng(1)

    def encoded(image: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        return buffer.getvalue()

    circle = shape_image("circle", 48, rng)
    square = shape_image("square", 48, rng)
    (root / "circle" / "png_named.jpg").write_bytes(encoded(circle, "PNG"))
    (root / "circle" / "cmyk.jpg").write_bytes(encoded(shape_image("circle", 48, rng).convert("CMYK"), "JPEG"))
    (root / "circle" / "gray.jpg").write_bytes(encoded(shape_image("circle", 48, rng).convert("L"), "JPEG"))
    (root / "square" / "rgba.png").write_bytes(encoded(square.convert("RGBA"), "PNG"))
    deep = np.asarray(shape_image("square", 48, rng).convert("L"), dtype=np.uint16) * 257
    (root / "square" / "gray16.png").write_bytes(encoded(Image.fromarray(deep), "PNG"))
    (root / "square" / "copy_of_rgba.png").write_bytes((root / "square" / "rgba.png").read_bytes())
    good = encoded(shape_image("triangle", 48, rng), "JPEG")
    bad = {
        "triangle/truncated.jpg": (good[: len(good) // 2], "cannot be decoded"),
        "triangle/empty.jpg": (b"", "empty file"),
        "circle/notes.jpg": (b"shot on a sunny day\n", "cannot be decoded"),
        "square/scan.jpg": (encoded(square, "TIFF"), "TIFF is not supported"),
        "circle/both.jpg": (encoded(shape_image("triangle", 48, rng), "PNG"), "labelled circle, triangle"),
        "triangle/both.jpg": (None, "labelled circle, triangle"),
    }
    for path, (data, _) in bad.items():
        (root / path).write_bytes(data if data is not None else (root / "circle" / "both.jpg").read_bytes())
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "untitled.jpg").write_bytes(good)
    (root / "circle" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return {path: reason for path, (_, reason) in bad.items()}


def png_chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk, its checksum right unless ``crc`` says otherwise."""
    import struct
    import zlib

    checksum = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", checksum)


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG of a few dozen bytes that decodes to ``width`` x ``height`` 1-bit pixels, with a broken checksum on
    a text chunk: Pillow's header parser gives up on it, TensorFlow's decoder reads every pixel."""
    import struct
    import zlib

    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    text = png_chunk(b"tEXt", b"comment\0hello", crc=0)
    pixels = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + header + text + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def tiny_classifier(num_classes: int = 3, size: int = 32, seed: int = 0, mirror: bool = False):
    """A small classifier laid out like the pipeline's (resize, preprocessing, ``backbone``, ``head``).

    Its random convolutions still tell images apart, unlike a randomly initialised MobileNet, and it exports
    in seconds; the predict, export and Grad-CAM code sees the same structure as in a real model. With
    ``mirror``, the backbone's features are averaged with its mirror's, as ``features.mirror`` builds it.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inner = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inner)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(x)
    backbone = keras.Model(inner, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    features = keras.Input((8,))
    head = keras.Model(features, keras.layers.Dense(num_classes, activation="softmax")(features), name="head")
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(size, size, name="resize")(image)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    features = backbone(x, training=False)
    if mirror:
        mirrored = backbone(keras.ops.flip(x, axis=2), training=False)
        features = keras.layers.Average(name=MIRROR_LAYER)([features, mirrored])
    return keras.Model(image, head(features), name="classifier")


def local_cluster(count: int) -> list[str]:
    """``TF_CONFIG`` values for a cluster of ``count`` workers on this host, worker 0 first.

    Each worker gets a localhost port that nothing listens on now.
    """
    import json
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("localhost", 0))
    workers = [f"localhost:{each.getsockname()[1]}" for each in sockets]
    for each in sockets:
        each.close()
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            for index in range(count)]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, server, seconds: float) -> None:
    """Poll ``url`` until it answers. If the ``server`` process exits first, or ``seconds`` pass, stop it and
    fail with the end of its output (when it was started with ``stdout=PIPE``)."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:  # refused, reset, or an HTTP error while the server starts
            if server.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
                continue
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        output = server.stdout.read().decode(errors="replace")[-3000:] if server.stdout else ""
        raise AssertionError(f"{url} did not answer within {seconds} s (server exit code {server.returncode}):\n"
                             f"{output}")


def native_noise(output: str) -> list[str]:
    """The lines of ``output`` that TensorFlow's C++ logging or absl wrote (any level): none should reach a user."""
    import re

    return [line for line in output.splitlines()
            if re.match(r"\s*[IWEF]\d{4} \d\d:\d\d:\d\d", line) or "absl::" in line or "cuInit" in line]


def transfer_imports(path: Path) -> set[str]:
    """The ``transfer`` modules a file imports, at its top or inside a function, by dotted name (a submodule
    imported by ``from package import module`` counted as itself)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "transfer":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (REPO / node.module.replace(".", "/") / f"{alias.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "transfer")
    return found
