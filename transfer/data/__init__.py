"""Getting photos in and checking them: sources, array and labels-CSV data sets, image files, the split,
``tf.data`` input, and the data-quality report. Imports nothing from :mod:`transfer.model`, ``report`` or ``serve``.
"""
