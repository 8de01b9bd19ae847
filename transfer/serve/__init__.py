"""Using a trained model: predictions on new photos, exported formats, and the MLflow photo model.
Imports nothing from :mod:`transfer.report`.
"""
