"""The CIFAR-10 study: transfer learning against two models trained from scratch, as three queued experiments.

    python bench/study.py [--source PATH_OR_URL] [--images 2000] [--offline] [--quick] [--out bench/results/study.json]
    python bench/study.py --print-commands [--source PATH_OR_URL]

The three experiments of :data:`STUDY` (a dense network on the pixels, a small CNN, VGG16 cut at block3_pool
with a dense head), each one ``dvc exp run --queue`` on the same splits, run by ``dvc queue start`` in a fresh
copy of the pipeline; then ``dvc exp show --json`` is read for each one's test accuracy. Prints the table and
writes the record as JSON.

``--source``: the CIFAR-10 python archive (a path, or https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz),
a .npz of arrays, or any other data.source. Without it: a generated data set of ``--images`` 32x32 images of
three shapes, each of a random colour (only the outline tells the class), as Keras lays out its array data sets
(a shipped test split of a fifth). ``--offline``:
VGG16 with random weights instead of ImageNet's (this machine cannot download them). ``--quick``: a few
hundred images of one colour per class, and few epochs (what the test runs).

``--print-commands``: the study as the commands to queue in your own workspace (docs/experiments.md shows them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402 (path first)

from tests.helpers import SHAPES, make_pipeline_repo, pipeline_env, run, shape_image  # noqa: E402

# Every experiment runs at the data set's own 32x32.
COMMON: dict[str, object] = {"image_size": 32}
# The study's three models, as the params each one changes.
STUDY: dict[str, dict[str, object]] = {
    # Three Dense layers on the raw pixels (two hidden and the softmax), plain SGD, 15 epochs.
    "dense": {
        "backbone": "flatten", "weights": "none", "features.mirror": False,
        "head.hidden": [512, 256], "head.dropout": 0.0, "head.optimizer": "sgd", "head.lr": 0.01,
        "head.epochs": 15, "fine_tune.epochs": 0,
    },
    # Conv2D 64 and 128 with max pooling, then Dense 200 and the softmax; every layer trained from scratch by
    # fine-tune with Adam at 1e-3, with flips, rotation 0.1 and zoom 0.1 (the fine-tune defaults are for a
    # pretrained backbone: a low peak lr, warmup, label smoothing, AdamW).
    "small-cnn": {
        "backbone": "small_cnn", "weights": "none", "features.mirror": False,
        "head.hidden": [200], "head.dropout": 0.2,
        "fine_tune.unfreeze": "all", "fine_tune.optimizer": "adam", "fine_tune.schedule": "constant",
        "fine_tune.warmup_epochs": 0, "fine_tune.label_smoothing": 0.0, "fine_tune.lr": 0.001,
        "fine_tune.epochs": 50, "fine_tune.patience": 10,
        "fine_tune.augment.rotation": 0.1, "fine_tune.augment.zoom": 0.1, "fine_tune.augment.contrast": 0.0,
    },
    # VGG16 with ImageNet weights, cut at block3_pool and frozen, under BatchNorm and Dense 400, 256, 256.
    "vgg16-block3": {
        "backbone": "vgg16", "weights": "imagenet", "features.layer": "block3_pool",
        "head.hidden": [400, 256, 256], "head.batchnorm": True, "head.dropout": 0.2, "fine_tune.epochs": 0,
    },
}
# --quick: the same experiments, smaller, in minutes.
QUICK: dict[str, object] = {"head.epochs": 10, "fine_tune.epochs": 2}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _as_set(value: object) -> str:
    """A value as ``-S key=value`` takes it (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(str(item) for item in value) + "]"
    return str(value)


def experiment_params(name: str, offline: bool = False, quick: bool = False) -> dict[str, object]:
    params = {**COMMON, **STUDY[name]}
    if offline and params.get("weights") == "imagenet":
        params["weights"] = "none"
    if quick:
        params.update({key: value for key, value in QUICK.items()
                       if key != "fine_tune.epochs" or params.get("fine_tune.epochs")})
    return params


def queue_commands(source: str, offline: bool = False, quick: bool = False) -> list[list[str]]:
    """One ``dvc exp run --queue`` per experiment of :data:`STUDY`."""
    commands = []
    for name in STUDY:
        command = ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"data.source={source}"]
        for key, value in experiment_params(name, offline, quick).items():
            command += ["-S", f"{key}={_as_set(value)}"]
        commands.append(command)
    return commands


def generated_npz(path: Path, images: int, seed: int = 0, any_colour: bool = False) -> Path:
    """``images`` 32x32 shapes in Keras' array layout, a fifth of them as the shipped test split. Each class has
    its own colour, or (``any_colour``) every shape a random one, which leaves only the outline to learn."""
    rng = np.random.default_rng(seed)
    kinds = list(SHAPES)
    labels = np.arange(images) % len(kinds)
    x = np.stack([np.asarray(shape_image(kinds[label], 32, rng, any_colour)) for label in labels])
    test = images // 5
    np.savez_compressed(path, x_train=x[test:], y_train=labels[test:, None].astype(np.uint8), x_test=x[:test],
                        y_test=labels[:test, None].astype(np.uint8), classes=np.array(kinds))
    return path


def _experiments(show: object) -> dict[str, dict]:
    """Each named experiment's ``data`` in ``dvc exp show --json``, found by name wherever DVC nests it."""
    found: dict[str, dict] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("name") in STUDY and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(show)
    return found


def _metric(data: dict, file: str, key: str) -> float | None:
    value = data.get("metrics", {}).get(file, {}).get("data", {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def run_study(source: str, offline: bool, quick: bool, workdir: Path) -> dict:
    repo = make_pipeline_repo(workdir / "repo", {"data.source": source})
    for command in queue_commands(source, offline, quick):
        run(command, repo)
    start = time.perf_counter()
    # Not captured: the queue's detached workers inherit the pipes, and reading them would wait for the workers.
    subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=repo, env=pipeline_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = ""
    while time.perf_counter() - start < 6 * 3600:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    seconds = time.perf_counter() - start
    found = _experiments(json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout))
    rows = {}
    for name in STUDY:
        data = found.get(name, {})
        rows[name] = {
            "params": experiment_params(name, offline, quick),
            "test_accuracy": _metric(data, "reports/metrics.json", "accuracy"),
            "test_macro_f1": _metric(data, "reports/metrics.json", "macro_f1"),
            "head_test_accuracy": _metric(data, "reports/head/metrics.json", "test_accuracy"),
            "fine_tune_best_epoch": _metric(data, "reports/fine_tune/metrics.json", "best_epoch"),
            "fine_tune_epochs_run": _metric(data, "reports/fine_tune/metrics.json", "epochs_run"),
        }
    table = run(["dvc", "exp", "show", *SHOW_OPTIONS], repo).stdout
    return {"source": source, "offline": offline, "quick": quick, "queue_seconds": round(seconds, 1),
            "queue_status": status, "experiments": rows, "exp_show": table}


# How docs/experiments.md reads the comparison: the experiments only, their backbone and test accuracy.
SHOW_OPTIONS = ["--no-pager", "--hide-workspace", "--drop", ".*", "--keep",
                "Experiment|backbone|features.layer|head.hidden|^accuracy$|macro_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="data.source (default: generated 32x32 shapes)")
    parser.add_argument("--images", type=int, default=2000, help="images in the generated data set")
    parser.add_argument("--offline", action="store_true", help="VGG16 with random weights, not ImageNet's")
    parser.add_argument("--quick", action="store_true", help="few images and epochs (what the test runs)")
    parser.add_argument("--print-commands", action="store_true", help="print the queue commands and stop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "study.json")
    args = parser.parse_args()
    if args.print_commands:
        for command in queue_commands(args.source or CIFAR10_URL, args.offline, args.quick):
            print(shlex.join(command))
        return
    with tempfile.TemporaryDirectory(prefix="study-") as folder:
        workdir = Path(folder)
        source = args.source or str(generated_npz(workdir / "shapes.npz", 300 if args.quick else args.images,
                                                  any_colour=not args.quick))
        result = run_study(source, args.offline, args.quick, workdir)
    if args.source is None:
        result["source"] = (f"generated: {300 if args.quick else args.images} 32x32 shapes "
                            f"({'one colour per class' if args.quick else 'of random colours'}; .npz, test split "
                            "shipped)")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'experiment':<14} {'test accuracy':>13} {'macro F1':>9}")
    for name, row in result["experiments"].items():
        accuracy, f1 = (("-" if value is None else f"{value:.4f}") for value in (row["test_accuracy"],
                                                                              row["test_macro_f1"]))
        print(f"{name:<14} {accuracy:>13} {f1:>9}")
    print(f"queue: {result['queue_seconds']} s\n{result['queue_status']}\n{result['exp_show']}")


if __name__ == "__main__":
    main()
