"""The causal per-entity Isolation Forest detector (feature version 2).

``model`` trains a :class:`~utils.ml.detector.model.TrainedDetector` per
metric type and scores observations against each entity's own causal
baseline; ``state`` and ``causal`` hold the per-entity state and the causal
features (``day_view`` and ``counts`` two of them), ``calibration`` the
per-entity limits, ``forest`` the reading of the forest at those limits,
``scores`` what a scored batch returns and ``fallback`` the per-entity
robust Z-score used without a model.  Pickled detectors refer to these module paths: keep them stable
(or leave aliases), as ``utils.ml.features`` is kept for feature version 1.
"""
