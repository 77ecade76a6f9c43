"""Detection quality on realistic data: simulator, walk-forward evaluation, baselines, the new detector.

Pure numpy / scipy / scikit-learn: no database, no Flask.  See
``/work/notes/detect.md`` and ``python -m utils.ml.evaluation --help``.
"""
