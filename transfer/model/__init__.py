"""Models: the backbone registry and builders, heads, the assembled classifier, the trunk, feature extraction,
training, distribution and calibration. Imports nothing from :mod:`transfer.report` or :mod:`transfer.serve`.
"""
