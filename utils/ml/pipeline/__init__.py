"""The anomaly pipeline: observations in, models trained, observations scored, alerts out.

* :mod:`.observations` — validating and writing what the hotel app measures;
* :mod:`.csv_import` — the same from a CSV file (``flask ml import-metrics``);
* :mod:`.features` — the model's features (``utils.ml.features`` re-exports them for old pickles);
* :mod:`.batch` — detection input as arrays;
* :mod:`.scoring` — a model (or the robust Z-score) plus observations -> scores, for training and detection;
* :mod:`.detection` — the fallback chain file -> database BLOB -> Z-score;
* :mod:`.scan` — scoring what arrived since the last scan, one alert per anomaly;
* :mod:`.alerts` — listing alerts, marking them read or false positive;
* :mod:`.demo_data` — a realistic demo hotel with labelled anomalies;
* :mod:`.training_window`, :mod:`.training_data`, :mod:`.training_record` — the trainer's window read from
  the database, as arrays, and what a training run records about its model (evaluation, parameters).

Training is :mod:`utils.ml.model_trainer`, on-demand detection :mod:`utils.ml.anomaly_detector`.
"""
