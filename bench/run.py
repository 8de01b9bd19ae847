"""The speed promises of the pipeline, as ratios of two things measured side by side in one run.

    python bench/run.py [--quick] [--generated] [--out bench/results/speed.json]

Uses the shared flowers archive and MobileNetV2 0.35 weights from ../shared/assets when present, generated
shapes (ResNet50, random weights, 32 px) otherwise or with --generated. Prints a table and writes the
results as JSON. Absolute timings on a shared machine are noise; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import (  # noqa: E402 (the repository root goes on the path first)
    FLOWERS_ARCHIVE,
    MOBILENETV2_035_WEIGHTS,
    make_pipeline_repo,
    make_shapes_dataset,
    run,
)
from transfer.process import quiet_native_logs  # noqa: E402

# name: (comparison, target); None: reported only.
TARGETS = {
    "extract_vs_forward": (">=", 0.90),
    "head_exp_vs_full_run": ("<=", 0.10),
    # A head experiment re-runs three stages, each a Python process that imports TensorFlow and Keras: three
    # imports are about 3.5 of these on their own, before DVC's share.
    "head_exp_vs_tf_import": ("<=", 4.0),
    "cached_vs_in_graph_epoch": ("<=", 0.02),
    "accuracy_gap_points": ("<=", 2.0),
    "rss_growth_4x": ("<=", 1.2),
    "noop_repro_s": ("<=", 3.0),
    "finetune_epoch_vs_forward": None,
    # fine_tune.trunk_cache: an epoch trains the top from the trunk's cached output (issue target: <= 0.5).
    "finetune_epoch_vs_forward_cached_trunk": ("<=", 0.5),
    # Extracting the training images with the trunk cache (both views, their pooled features too): the cache's
    # share of extract-features.
    "trunk_cache_vs_forward": None,
    # Default params (the model's default size, fine-tune on, from the trunk cache): an experiment on the head,
    # and one on fine-tuning, each against one TensorFlow import; fine-tune's peak memory with 4 times the photos.
    "head_exp_default_vs_tf_import": ("<=", 8.0),
    "finetune_exp_vs_tf_import": ("<=", 6.0),
    "finetune_rss_4x_vs_1x": ("<=", 1.2),
    "extract_vs_forward_efficientnetb0": None,  # the same ratio on a backbone 8x costlier per image
    # The experiments above run their stages in forks of a warm server (transfer/warm.py), as a user's do from
    # the second TensorFlow stage they run in 15 minutes; the same two experiments with TRANSFER_WARM=0, each
    # stage a process importing TensorFlow itself, as every stage ran before the server.
    "head_exp_cold_vs_tf_import": None,
    "finetune_exp_cold_vs_tf_import": None,
}


def dataset(work: Path, generated: bool) -> tuple[str, dict]:
    """The images to measure on and the pipeline params for them: the shared flowers, or generated shapes."""
    if not generated and FLOWERS_ARCHIVE.is_file() and MOBILENETV2_035_WEIGHTS.is_file():
        with tarfile.open(FLOWERS_ARCHIVE) as bundle:
            bundle.extractall(work / "photos", filter="data")
        return "flowers 500 (shared assets)", {
            "data.source": str(work / "photos"), "backbone": "mobilenetv2_0.35",
            # 224, not the 288 image_size null now gives MobileNetV2: the ratios stay comparable across sessions.
            "weights": str(MOBILENETV2_035_WEIGHTS), "image_size": 224,
        }
    make_shapes_dataset(work / "photos", per_class=60, size=64)
    return "generated shapes 180", {
        "data.source": str(work / "photos"), "backbone": "resnet50", "weights": "none", "image_size": 32,
    }


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    run(command, cwd, env=env)
    return time.perf_counter() - start


def reproduced(repo: Path) -> dict:
    """Wall times of a first full ``dvc repro`` and, once its results are committed, a no-op one."""
    full = timed(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline"], repo)
    return {"full_run_s": full, "noop_repro_s": timed(["dvc", "repro"], repo)}


def experiment(repo: Path, name: str, overrides: list[str], stages: tuple[str, ...], warm: bool = True) -> dict:
    """Wall time of ``dvc exp run -S ...`` and of each stage it re-ran, as the stage records it (from its params
    check to its last write; TensorFlow's import included where the stage is not ``warm``, and stages import it
    lazily); the rest is DVC's own work and the start of each Python process."""
    seconds = timed(["dvc", "exp", "run", *(part for override in overrides for part in ("-S", override))], repo,
                    env=None if warm else {"TRANSFER_WARM": "0"})
    return {f"{name}_s": seconds, **{f"{name}_{key}": value for key, value in _stage_seconds(repo, stages).items()}}


def tf_import_s(repo: Path, tries: int) -> float:
    """The yardstick, timed in this run beside the experiments: the best of ``tries`` bare imports."""
    return min(timed([sys.executable, "-c", "import tensorflow"], repo) for _ in range(tries))


HEAD_STAGES = ("train-head", "fine-tune", "evaluate")


def pipeline_ratios(repo: Path) -> dict:
    """Wall times of a first full ``dvc repro``, a no-op one, and a head-only experiment."""
    return {**reproduced(repo), **experiment(repo, "head_exp", ["head.lr=0.002"], HEAD_STAGES),
            **experiment(repo, "head_exp_cold", ["head.lr=0.003"], HEAD_STAGES, warm=False)}


def default_repo(work: Path, settings: dict, generated: bool, quick: bool = False) -> Path:
    """A pipeline with default params: only the source, backbone and weights set (generated images keep their
    small size). ``quick``: two fine-tune epochs, not the default's (a check that every step runs)."""
    chosen = {key: value for key, value in settings.items() if key != "image_size" or generated}
    if quick:
        chosen["fine_tune.epochs"] = 2
    return make_pipeline_repo(work / "default", chosen)


def default_pipeline_ratios(work: Path, repo: Path, probe_epochs: int = 2) -> dict:
    """On a reproduced, committed default pipeline: wall times of a head experiment and then a fine-tune
    experiment, and fine-tune's peak memory over ``probe_epochs``."""
    raw = {**experiment(repo, "default_head_exp", ["head.lr=0.002"], HEAD_STAGES),
           **experiment(repo, "finetune_exp", ["fine_tune.lr=0.0002"], ("fine-tune", "evaluate")),
           **experiment(repo, "finetune_exp_cold", ["fine_tune.lr=0.0001"], ("fine-tune", "evaluate"), warm=False)}
    return {**raw, **{f"finetune_rss_{times}x_kib": finetune_peak_rss_kib(repo, work / f"cache{times}x", times,
                                                                          probe_epochs)
                      for times in (1, 4)}}


def quick_pipeline_ratios(work: Path, settings: dict, generated: bool) -> tuple[Path, dict]:
    """--quick: every pipeline ratio from the one default pipeline (two fine-tune epochs), a check that every step
    runs; its ratios mean little (one epoch in the memory probes). The head-only figures are the head
    experiment's, fine-tune epochs included: a third experiment would re-run the same three stages."""
    repo = default_repo(work, settings, generated, quick=True)
    raw = {**reproduced(repo), **default_pipeline_ratios(work, repo, probe_epochs=1),
           **experiment(repo, "head_exp_cold", ["head.lr=0.003"], HEAD_STAGES, warm=False)}
    head_only = {key.replace("default_head_exp", "head_exp", 1): value for key, value in raw.items()
                 if key.startswith("default_head_exp")}
    return repo, {**raw, **head_only}


def _stage_seconds(repo: Path, stages: tuple[str, ...]) -> dict[str, float]:
    """Each stage's own wall time, as it records it."""
    timings = repo / "reports/timings"
    return {f"{stage.replace('-', '_')}_s": json.loads((timings / f"{stage}.json").read_text())["seconds"]
            for stage in stages}


FINETUNE_RSS_SCRIPT = """
import resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from transfer.model.backbones import build_views
from transfer.model.classifier import assemble_classifier, backbone_of, unfreeze_top
from transfer.model.heads import build_head
from transfer.model.registry import resolve
from transfer.model.training import compile_with, fit
from transfer.model.trunk import TrunkCache, boundary_layer, classifiers, split_backbone
from transfer.params import Params
from transfer.schema import read_backbone, read_fine_tune
params = Params.load(Path(sys.argv[2]) / "params.yaml")
choice, tune = resolve(read_backbone(params)), read_fine_tune(params)
cache = TrunkCache(Path(sys.argv[3]))
labels = np.load(Path(sys.argv[3]) / "train_labels.npy")
classes = int(labels.max()) + 1
extractor, single = build_views(choice, True)
head = build_head(int(extractor.output_shape[-1]), classes, (), 0.5, False)
model = assemble_classifier(extractor, head)
unfreeze_top(model, tune.unfreeze)
cut = split_backbone(backbone_of(single), boundary_layer(backbone_of(model), tune.unfreeze))
trained, scorer = classifiers(cut, head, mirror=True)
training = tune.training.__class__(**{**tune.training.__dict__, "epochs": int(sys.argv[4])})
compile_with(trained, training, len(labels))
compile_with(scorer, training, len(labels))
hot = np.eye(classes, dtype="float32")
fit(trained, cache.training(hot[labels], training.batch_size, 0, True),
    cache.validation(hot[np.load(Path(sys.argv[3]) / "val_labels.npy")], training.batch_size, True), training, None,
    scorer=scorer)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def finetune_peak_rss_kib(repo: Path, folder: Path, times: int, epochs: int = 2) -> int:
    """Peak resident memory of a fresh process fine-tuning (``epochs``, as the stage trains) from the repository's
    trunk cache with its training images repeated ``times`` over (each view's rows tiled)."""
    import numpy as np

    from transfer.model.rows import RowFile

    features = repo / "data/features"
    (folder / "trunk").mkdir(parents=True)
    meta = json.loads((features / "trunk/meta.json").read_text())
    count, views = meta["counts"]["train"], 2 + meta["copies"]
    with RowFile.open(features / "trunk/train.npy") as rows, \
            RowFile.create(folder / "trunk/train.npy", (views * count * times, *rows.row_shape), meta["dtype"]) as out:
        for view in range(views):
            block = rows.read_range(view * count, (view + 1) * count)
            for copy in range(times):
                out.write(np.arange(count) + (view * times + copy) * count, block)
    (folder / "trunk/val.npy").write_bytes((features / "trunk/val.npy").read_bytes())
    (folder / "trunk/meta.json").write_text(json.dumps({**meta, "counts": {**meta["counts"], "train": count * times}}))
    np.save(folder / "train_labels.npy", np.tile(np.load(features / "train_labels.npy"), times))
    np.save(folder / "val_labels.npy", np.load(features / "val_labels.npy"))
    # In the repository: its params name the weights file by a path relative to it (inputs/weights/...).
    result = subprocess.run([sys.executable, "-c", FINETUNE_RSS_SCRIPT, str(ROOT), str(repo), str(folder), str(epochs)],
                            capture_output=True, text=True, cwd=repo)
    if result.returncode != 0:
        raise SystemExit(f"error: the fine-tune memory probe failed:\n{result.stderr[-3000:]}")
    return int(result.stdout.strip().splitlines()[-1])


RSS_SCRIPT = """
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from transfer.model.backbones import build_feature_extractor
from transfer.model.features import extract_features
from transfer.model.registry import resolve
from transfer.schema import BackboneParams
paths = json.loads(Path(sys.argv[2]).read_text()) * int(sys.argv[3])
choice = resolve(BackboneParams(sys.argv[4], sys.argv[5], json.loads(sys.argv[6])))
extractor = build_feature_extractor(choice)
with tempfile.TemporaryDirectory() as out:
    extract_features(extractor, choice.image_size, {"all": (paths, np.zeros(len(paths), np.int32))},
                     Path(out) / "features", 32, "float16", {})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kib(paths_file: Path, repeat: int, settings: dict) -> int:
    """Peak resident memory of a fresh process extracting ``repeat`` copies of the image list."""
    size = json.dumps(settings["image_size"] and [settings["image_size"]] * 2)
    result = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(ROOT), str(paths_file), str(repeat), settings["backbone"],
         settings["weights"], size],
        capture_output=True, text=True, check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


class _EpochTimer:
    def __init__(self):
        import keras

        outer = self
        self.seconds: list[float] = []

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.seconds.append(time.perf_counter() - outer._start)

        self.callback = Callback()

    def steady(self) -> float:
        """The median epoch time after the first (which also traces and compiles)."""
        return statistics.median(self.seconds[1:] or self.seconds)


def extraction_pace(extractor, image_size: tuple[int, int], paths: list[str], rounds: int) -> dict:
    """Extraction (decode, resize, preprocess, forward, write) against the bare forward pass over the same
    images already in memory, same batch size: images per second of each, and their ratio.

    Both are traced first (extraction reports its set-up apart). The rounds alternate the two, and the ratio
    is the median of each round's own ratio: a slow spell of a shared machine then weighs on both sides of
    one round instead of on one side of the comparison.
    """
    import numpy as np

    from transfer.data.pipeline import image_dataset
    from transfer.model.features import compiled_forward, extract_features

    # In memory, the last batch padded to the full size as extraction pads it: the same work, one shape.
    batches = [batch for batch in image_dataset(paths, image_size, 32)]
    batches[-1] = np.concatenate([batches[-1], np.zeros((32 - len(batches[-1]), *batches[-1].shape[1:]), "float32")])
    forward = compiled_forward(extractor, image_size)
    forward(batches[0]).numpy()
    extract_rounds, forward_rounds, trace_rounds = [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as out:
            stats = extract_features(extractor, image_size, {"all": (paths, np.zeros(len(paths), np.int32))},
                                     Path(out) / "features", 32, "float16", {})
        extract_rounds.append(stats["images_per_second"])
        trace_rounds.append(stats["trace_seconds"])
        start = time.perf_counter()
        for batch in batches:
            forward(batch).numpy()
        forward_rounds.append(round(len(paths) / (time.perf_counter() - start), 1))
    return {
        "extract_images_per_s": statistics.median(extract_rounds),
        "extract_trace_s": statistics.median(trace_rounds),
        "forward_images_per_s": statistics.median(forward_rounds),
        "extract_vs_forward_rounds": [round(e / f, 3) for e, f in zip(extract_rounds, forward_rounds, strict=True)],
        "extract_rounds_images_per_s": extract_rounds,
        "forward_rounds_images_per_s": forward_rounds,
    }


def in_process_ratios(repo: Path, epochs: int, quick: bool) -> dict:
    """Extraction vs bare forward, cached-feature vs in-graph head epochs, fine-tune epoch vs forward."""
    import numpy as np

    os.chdir(repo)
    from transfer.data.pipeline import array_dataset, image_dataset
    from transfer.data.splits import read_classes, read_split
    from transfer.layout import FEATURES, RAW, SPLITS
    from transfer.model.backbones import build_feature_extractor
    from transfer.model.classifier import assemble_classifier, unfreeze_top
    from transfer.model.features import FeatureStore, extract_features
    from transfer.model.heads import build_head
    from transfer.model.registry import resolve
    from transfer.model.training import compile_for_training, set_determinism
    from transfer.params import Params
    from transfer.schema import BackboneParams, read_backbone

    choice = resolve(read_backbone(Params.load()))
    classes = read_classes(SPLITS)
    train_paths, train_labels = read_split(SPLITS, "train", RAW, classes)
    test_paths, test_labels = read_split(SPLITS, "test", RAW, classes)
    extractor = build_feature_extractor(choice)

    # 1. Extraction against the bare forward pass (see extraction_pace), on every photo of the set.
    paths = [*train_paths, *test_paths, *read_split(SPLITS, "val", RAW, classes)[0]]
    rounds = 1 if quick else 5
    pace = extraction_pace(extractor, choice.image_size, paths, rounds)
    forward_s = len(train_paths) / pace["forward_images_per_s"]  # one forward pass over the training images
    # The same measurement with a backbone 8x costlier per image (its speed does not depend on its weights,
    # so random ones do): how the ratio moves when decoding is a smaller share of the work.
    other = resolve(BackboneParams("efficientnetb0", "none", None))
    heavy = extraction_pace(build_feature_extractor(other), other.image_size, train_paths[: 32 if quick else None],
                            rounds)
    pace.update({f"efficientnetb0_{key}": value for key, value in heavy.items()})

    # 2. One head epoch on cached features against one the tutorial way (frozen backbone inside fit).
    store = FeatureStore(FEATURES)
    features, labels = store.load("train")
    test_features, _ = store.load("test")
    hot = np.eye(len(classes), dtype=np.float32)
    set_determinism(0)
    head = build_head(features.shape[1], len(classes), (), 0.2, False)
    compile_for_training(head, 1e-3, 0.0)
    cached = _EpochTimer()
    # Fed as train-head feeds it (transfer.model.training.fit): in-memory arrays through tf.data.
    head.fit(array_dataset((np.asarray(features, np.float32), hot[labels]), 32, shuffle_seed=0), epochs=epochs,
             verbose=0, callbacks=[cached.callback], shuffle=False)
    cached_accuracy = float((head.predict(np.asarray(test_features, np.float32), verbose=0).argmax(1)
                             == test_labels).mean())
    set_determinism(0)
    frozen = assemble_classifier(extractor, build_head(features.shape[1], len(classes), (), 0.2, False))
    extractor.trainable = False
    compile_for_training(frozen, 1e-3, 0.0)
    in_graph = _EpochTimer()
    frozen.fit(image_dataset(train_paths, choice.image_size, 32, train_labels, len(classes), shuffle_seed=0),
               epochs=epochs, verbose=0, callbacks=[in_graph.callback])
    in_graph_accuracy = float((frozen.predict(image_dataset(test_paths, choice.image_size, 64), verbose=0)
                               .argmax(1) == test_labels).mean())

    # 3. One fine-tune epoch (top 20 layers, BatchNorm frozen) against the forward pass over the same images.
    set_determinism(0)
    tuned = assemble_classifier(build_feature_extractor(choice),
                                build_head(features.shape[1], len(classes), (), 0.2, False))
    unfreeze_top(tuned, 20)
    compile_for_training(tuned, 1e-5, 0.0)
    fine = _EpochTimer()
    tuned.fit(image_dataset(train_paths, choice.image_size, 32, train_labels, len(classes), shuffle_seed=0),
              epochs=2, verbose=0, callbacks=[fine.callback])

    # 4. The same fine-tune from the trunk cache: extraction writes the trunk's output (both views of every
    # training image) in its pass, then the epochs train the top alone, streamed from that cache on disk.
    from transfer.model.backbones import build_views
    from transfer.model.classifier import backbone_of
    from transfer.model.trunk import TrunkCache, classifiers, plan_trunk, split_backbone

    set_determinism(0)
    views, single = build_views(choice, True)
    head = build_head(features.shape[1], len(classes), (), 0.2, False)
    plan, _ = plan_trunk(single, choice.spec.preprocessing, 20, True, 0, None, 0, {})
    cut = split_backbone(backbone_of(single), plan.facts["first_layer"])
    trained, _ = classifiers(cut, head, mirror=True)
    compile_for_training(trained, 1e-5, 0.0)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        extract_features(views, choice.image_size, {"train": (train_paths, train_labels)}, Path(out) / "features",
                         32, "float16", {}, trunk=plan)
        trunk_cache_s = time.perf_counter() - start
        top_only = _EpochTimer()
        trained.fit(TrunkCache(Path(out) / "features").training(hot[train_labels], 32, seed=0, flip=True), epochs=3,
                    verbose=0, callbacks=[top_only.callback])
    return {
        "images": len(paths),
        **pace,
        "forward_s": forward_s,
        "cached_epoch_s": cached.steady(),
        "in_graph_epoch_s": in_graph.steady(),
        "cached_accuracy": cached_accuracy,
        "in_graph_accuracy": in_graph_accuracy,
        "finetune_epoch_s": fine.steady(),
        "cached_trunk_epoch_s": top_only.steady(),
        "trunk_cache_s": trunk_cache_s,
    }


def ratios(raw: dict, rss_1x: int, rss_4x: int) -> dict[str, float]:
    return {
        "extract_vs_forward": statistics.median(raw["extract_vs_forward_rounds"]),
        "head_exp_vs_full_run": raw["head_exp_s"] / raw["full_run_s"],
        "head_exp_vs_tf_import": raw["head_exp_s"] / raw["tf_import_s"],
        "cached_vs_in_graph_epoch": raw["cached_epoch_s"] / raw["in_graph_epoch_s"],
        "accuracy_gap_points": abs(raw["cached_accuracy"] - raw["in_graph_accuracy"]) * 100,
        "rss_growth_4x": rss_4x / rss_1x,
        "noop_repro_s": raw["noop_repro_s"],
        "finetune_epoch_vs_forward": raw["finetune_epoch_s"] / raw["forward_s"],
        "finetune_epoch_vs_forward_cached_trunk": raw["cached_trunk_epoch_s"] / raw["forward_s"],
        "trunk_cache_vs_forward": raw["trunk_cache_s"] / raw["forward_s"],
        "extract_vs_forward_efficientnetb0": statistics.median(raw["efficientnetb0_extract_vs_forward_rounds"]),
        "head_exp_default_vs_tf_import": raw["default_head_exp_s"] / raw["tf_import_s"],
        "finetune_exp_vs_tf_import": raw["finetune_exp_s"] / raw["tf_import_s"],
        "finetune_rss_4x_vs_1x": raw["finetune_rss_4x_kib"] / raw["finetune_rss_1x_kib"],
        "head_exp_cold_vs_tf_import": raw["head_exp_cold_s"] / raw["tf_import_s"],
        "finetune_exp_cold_vs_tf_import": raw["finetune_exp_cold_s"] / raw["tf_import_s"],
    }


def verdicts(values: dict[str, float]) -> dict[str, dict]:
    table = {}
    for name, value in values.items():
        target = TARGETS[name]
        met = None if target is None else (value >= target[1] if target[0] == ">=" else value <= target[1])
        table[name] = {"value": round(value, 4), "target": None if target is None else f"{target[0]} {target[1]}",
                       "met": met}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one pipeline, fewer epochs and images: about 5 minutes on 2 cores")
    parser.add_argument("--generated", action="store_true", help="generated images even if shared assets exist")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json", help="where to write")
    args = parser.parse_args(argv)
    # The in-process part imports TensorFlow here: the same filter as the stages', so its start-up chatter (and
    # tf.data's harmless NodeDef line) does not read as an error in the bench's output.
    quiet_native_logs()
    epochs = 3 if args.quick else 6
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = Path(scratch)
        # The bench's own warm stage servers, stopped at its end (DVC passes the variables on to the stages).
        os.environ["TRANSFER_WARM_DIR"] = str(work / "warm")
        os.environ.pop("TRANSFER_WARM", None)
        name, settings = dataset(work, args.generated)
        if args.quick:
            repo, raw = quick_pipeline_ratios(work, settings, args.generated)
        else:
            repo = make_pipeline_repo(work / "repo", {**settings, "fine_tune.epochs": 0, "head.epochs": 30})
            raw = pipeline_ratios(repo)
            default = default_repo(work, settings, args.generated)
            reproduced(default)
            raw.update(default_pipeline_ratios(work, default))
        raw["head_exp_inside_stages_s"] = sum(raw[f"head_exp_{stage.replace('-', '_')}_s"] for stage in HEAD_STAGES)
        # One import is enough for --quick, whose ratios mean little.
        raw["tf_import_s"] = tf_import_s(repo, tries=1 if args.quick else 3)
        raw.update(in_process_ratios(repo, epochs, quick=args.quick))
        paths_file = work / "paths.json"
        paths = sorted(str(path) for path in (repo / "data/raw").rglob("*") if path.is_file())
        paths_file.write_text(json.dumps(paths))
        rss_1x, rss_4x = peak_rss_kib(paths_file, 1, settings), peak_rss_kib(paths_file, 4, settings)
        raw.update(rss_1x_kib=rss_1x, rss_4x_kib=rss_4x)
        os.chdir(ROOT)  # in_process_ratios worked inside the temporary repository
        run([sys.executable, "-m", "transfer.warm", "stop"], ROOT)
    table = verdicts(ratios(raw, rss_1x, rss_4x))
    measured = {key: round(value, 4) if isinstance(value, float) else value for key, value in raw.items()}
    results = {"dataset": name, "backbone": settings["backbone"], "quick": args.quick,
               "cpu_count": os.cpu_count(), "ratios": table, "measured": measured}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{name}, {settings['backbone']}, {os.cpu_count()} CPUs" + (" (quick)" if args.quick else ""))
    print(f"{'ratio':40} {'value':>10} {'target':>10}  met")
    for key, row in table.items():
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        print(f"{key:40} {row['value']:>10.4f} {row['target'] or 'report':>10}  {met}")
    print(f"wrote {args.out}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
