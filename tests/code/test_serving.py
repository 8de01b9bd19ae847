"""The served photo model's reliance on MLflow and its scoring (the end-to-end serving is tests/e2e/test_serving.py)."""


def test_mlflow_still_honours_the_served_models_type_hint_switch():
    """serving.PhotoClassifier sets MLflow's private _skip_type_hint_validation: its signature is given when it is
    logged, and the check would only warn at every import. Pinned both ways: honoured, and still meaningful."""
    import warnings

    from transfer.serve.serving import PhotoClassifier

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class Served(PhotoClassifier):
            pass

        class Checked(PhotoClassifier):
            _skip_type_hint_validation = False

            def predict(self, context, model_input, params=None):
                return model_input

    hints = [str(warning.message) for warning in caught if "type hints" in str(warning.message)]
    assert len(hints) == 1, hints  # Checked's; none for the served model


def test_requests_to_one_served_model_share_one_trace_and_score_as_the_model(shapes_folder):
    """Each request is scored through the model's traced forward pass, traced once as the model loads (requests of
    any size trace nothing more); the answers are the model's own probabilities for the decoded, resized images."""
    import numpy as np

    from tests.helpers import tiny_classifier
    from transfer.data.pipeline import load_image
    from transfer.serve.serving import classify_bytes, warmed_forward

    model, classes = tiny_classifier(seed=3), ["triangle", "circle", "square"]
    photos = sorted((shapes_folder / "square").glob("*.png"))[:3]
    forward = warmed_forward(model, (32, 32))  # what loading the served model does
    assert forward.experimental_get_tracing_count() == 1
    first = classify_bytes(forward, classes, (32, 32), [photos[0].read_bytes()])
    second = classify_bytes(forward, classes, (32, 32), [path.read_bytes() for path in photos] + [b"not an image"])
    assert forward.experimental_get_tracing_count() == 1
    expected = model.predict(np.stack([load_image(str(path), (32, 32)).numpy() for path in photos]), verbose=0)
    np.testing.assert_allclose(second[classes].iloc[:3].to_numpy(dtype=float), expected, atol=1e-5)
    np.testing.assert_allclose(first[classes].iloc[0].to_numpy(dtype=float), expected[0], atol=1e-5)
    assert list(second["label"][:3]) == [classes[i] for i in expected.argmax(axis=1)]
    assert second["error"][3] != "" and second["label"][3] == ""
