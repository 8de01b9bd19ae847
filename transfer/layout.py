"""Where each stage reads and writes, relative to the repository root; ``dvc.yaml`` declares the same paths."""

from pathlib import Path

RAW = Path("data/raw")
# The files of data/raw that came from the test split an array data set ships (CIFAR-10, MNIST...).
SHIPPED_TEST_PREFIX = "test-"
SPLITS = Path("data/splits")
FEATURES = Path("data/features")
HEAD_MODEL = Path("models/head.keras")
MODEL = Path("models/model.keras")

REPORTS = Path("reports")
DOWNLOAD_REPORT = REPORTS / "download.json"  # the source's layout, and labels CSV rows that gave no image
DATA_REPORT = REPORTS / "data.json"
HEAD_REPORTS = REPORTS / "head"
FINE_TUNE_REPORTS = REPORTS / "fine_tune"
EVALUATE_REPORTS = REPORTS / "evaluate"
DATA_QUALITY_REPORTS = REPORTS / "data_quality"  # the report on the data: label suspects, leaks, outliers
TEST_METRICS = REPORTS / "metrics.json"
TIMINGS = REPORTS / "timings"  # <stage>.json: wall seconds of each stage
TRACKING_RECORD = REPORTS / "tracking.json"  # the MLflow run evaluate logged

# Each training stage leaves these three in its own report folder.
HISTORY = "history.csv"
STAGE_METRICS = "metrics.json"
CURVES = "curves.png"
SEARCH = "search.csv"  # reports/head: every head.search trial


def is_hidden(name: str) -> bool:
    """Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``) and macOS ``__MACOSX`` are never data."""
    return name.startswith(".") or name == "__MACOSX"


def visible_files(root: Path) -> list[Path]:
    """Every file under ``root``, at any depth, that is not hidden and not inside a hidden folder; sorted."""
    return sorted(
        path for path in root.rglob("*")
        if path.is_file() and not any(is_hidden(part) for part in path.relative_to(root).parts)
    )

# reports/data_quality: what the data-quality report writes (and metrics.json, its counts).
LABEL_ISSUES = "label_issues.csv"
NEAR_DUPLICATES = "near_duplicates.csv"
OUTLIERS = "outliers.csv"
LABEL_ISSUES_FIGURE = "label_issues.png"
OUTLIERS_FIGURE = "outliers.png"
