"""Compatibility shim: models pickled before the move name ``utils.ml.features.EntityRelativeFeatures``.

The features live in :mod:`utils.ml.pipeline.features`; this module re-exports
them so those pickles keep unpickling (``tests/test_pickle_compat.py`` loads
one).  New code imports from :mod:`utils.ml.pipeline.features`.
"""
from utils.ml.pipeline.features import *  # noqa: F401,F403
from utils.ml.pipeline.features import EntityRelativeFeatures, __all__  # noqa: F401
