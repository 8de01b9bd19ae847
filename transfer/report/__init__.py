"""What a run leaves to read: test metrics, figures, Grad-CAM and MLflow tracking (which logs the served photo
model, so it sits above :mod:`transfer.serve`).
"""
