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


# The longest file name most file systems take, in bytes (NAME_MAX): a class is a folder under data/raw.
MAX_NAME_BYTES = 255


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a class (it becomes a folder under data/raw), or None when it can. One rule for
    every source that names classes: a labels CSV, an array data set's class names."""
    if not name.strip():
        return "a class name may not be empty"
    if name.startswith("."):
        return "a class name may not start with '.' (the folder would be hidden)"
    if any(char in name for char in "/\\\0"):
        return "a class name may not contain '/', '\\' or NUL"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        return f"a class name may take at most {MAX_NAME_BYTES} bytes as a folder name; this one takes {size}"
    return None


def visible_files(root: Path, special: bool = False) -> list[Path]:
    """Every file under ``root``, at any depth, that is not hidden and not inside a hidden folder; sorted.

    ``special``: also what only looks like a file (a FIFO, a dangling link, a link to a device), for callers that
    give each entry its own row and reason instead of opening it blindly (``predict``).
    """
    return sorted(
        path for path in root.rglob("*")
        if (not path.is_dir() if special else path.is_file())
        and not any(is_hidden(part) for part in path.relative_to(root).parts)
    )

# reports/data_quality: what the data-quality report writes (and metrics.json, its counts).
LABEL_ISSUES = "label_issues.csv"
NEAR_DUPLICATES = "near_duplicates.csv"
OUTLIERS = "outliers.csv"
LABEL_ISSUES_FIGURE = "label_issues.png"
OUTLIERS_FIGURE = "outliers.png"
