"""The photo-serving MLflow model, through MLflow's real scoring server: image bytes in, class names out."""

import base64
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.helpers import (
    bomb_png,
    free_port,
    make_shapes_dataset,
    native_noise,
    pipeline_env,
    tiny_classifier,
    wait_for_http,
)
from transfer.io import read_csv
from transfer.model.classifier import save_model
from transfer.serve.predict import predict_to_csv

# One pytest-xdist worker runs this whole module (tests/conftest.py, ONE_WORKER_MODULES): its module-scoped
# pipeline run is built once, not once per worker.
pytestmark = pytest.mark.slow

CLASSES = ["circle", "square", "triangle"]


def _post_strict(url: str, payload: dict) -> dict:
    """POST JSON and parse the answer as strict JSON clients do (JavaScript's JSON.parse): NaN is an error."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read(), parse_constant=_not_json)


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    import mlflow

    from transfer.serve.serving import log_photo_model

    folder = tmp_path_factory.mktemp("serving")
    save_model(tiny_classifier(mirror=True), folder / "model.keras", CLASSES)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # A SQL store's default artifact root is ./mlruns under the working directory: keep it in the temporary folder.
    experiment = mlflow.create_experiment("serving", artifact_location=(folder / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_photo_model(folder / "model.keras", CLASSES)
    return folder, uri, run.info.run_id


def test_served_photos_come_back_as_predict_writes_them(logged, tmp_path):
    folder, uri, run_id = logged
    shapes = make_shapes_dataset(tmp_path / "shapes", per_class=2, size=40)
    jpeg, png = sorted(shapes.rglob("*.jpg"))[0], sorted(shapes.rglob("*.png"))[0]
    big = tmp_path / "big.png"
    Image.open(png).resize((97, 61)).save(big)  # another size than the model's and than the JPEG's
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg.read_bytes()[:200])
    files = [jpeg, big, broken]
    # The decode gate's bypass: a 20000x20000 PNG of a few bytes whose broken text chunk Pillow refuses.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/photo_model",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=pipeline_env({"MLFLOW_TRACKING_URI": uri}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, 240)
        payload = {"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(path.read_bytes()).decode()] for path in files]}}
        answer = _post_strict(f"http://127.0.0.1:{port}/invocations", payload)["predictions"]
        # Each bad cell its own row: bad base64, a number, an empty cell, the bomb; the JPEG is still answered.
        mixed = {"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(jpeg.read_bytes()).decode()], ["this is not base64!"], [7], [""],
            [base64.b64encode(bomb.read_bytes()).decode()]]}}
        rows = _post_strict(f"http://127.0.0.1:{port}/invocations", mixed)["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    served_log = server.stdout.read().decode(errors="replace")
    assert not native_noise(served_log), served_log

    predict_to_csv(folder / "model.keras", [str(path) for path in files], tmp_path / "predictions.csv", 8, 3)
    expected = read_csv(tmp_path / "predictions.csv")
    assert len(answer) == 3
    for served, written in zip(answer[:2], expected[:2], strict=True):
        assert served["label"] == written["predicted"] and served["error"] == ""
        np.testing.assert_allclose([served[name] for name in CLASSES], [float(written[name]) for name in CLASSES],
                                   atol=1e-5)
        assert served["confidence"] == pytest.approx(max(served[name] for name in CLASSES))
    assert answer[2]["label"] == "" and answer[2]["error"] == expected[2]["error"] != ""
    assert answer[2]["confidence"] is None and answer[2][CLASSES[0]] is None, "null, never NaN"
    assert len(rows) == 5 and rows[0]["label"] == answer[0]["label"] and rows[0]["error"] == ""
    assert "not valid base64" in rows[1]["error"] and "int (7), not an image" in rows[2]["error"]
    assert rows[3]["error"].startswith("empty cell") and "over the 100-megapixel bound" in rows[4]["error"]
    assert all(row["label"] == "" and row["confidence"] is None for row in rows[1:])


def test_the_photo_model_loads_and_answers_in_process(logged, shapes_folder):
    import mlflow
    import pandas as pd

    _, uri, run_id = logged
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/photo_model")
    images = [path.read_bytes() for path in sorted(shapes_folder.rglob("*.*"))[:4]] + [b"not an image"]
    answer = model.predict(pd.DataFrame({"image": images}))
    assert list(answer.columns) == ["label", "confidence", "error", *CLASSES]
    assert set(answer["label"][:4]) <= set(CLASSES) and answer["error"][4].startswith("cannot be decoded")


def test_a_class_named_like_an_answer_column_keeps_the_photo_model(tmp_path, shapes_folder):
    """A class called label, confidence or error used to remove the served model; now every probability column
    is named probability/<class>, and the model is logged and answers."""
    import mlflow
    import pandas as pd

    from transfer.serve.serving import log_photo_model

    classes = ["label", "error", "triangle"]
    save_model(tiny_classifier(mirror=False), tmp_path / "model.keras", classes)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("collide", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_photo_model(tmp_path / "model.keras", classes)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/photo_model")
    photos = sorted(shapes_folder.rglob("*.png"))[:2]
    answer = model.predict(pd.DataFrame({"image": [path.read_bytes() for path in photos]}))
    assert list(answer.columns) == ["label", "confidence", "error", "probability/label", "probability/error",
                                    "probability/triangle"]
    assert set(answer["label"]) <= set(classes) and list(answer["error"]) == ["", ""]
