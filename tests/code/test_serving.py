"""The served photo model's reliance on MLflow (the end-to-end serving is tests/e2e/test_serving.py)."""


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
