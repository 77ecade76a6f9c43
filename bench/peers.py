"""Section "peers": where the same model loads from, and what a user would pick instead, side by side.

One 100-tree ``IsolationForest`` (the load section's), loaded round-robin,
the same number of times each:

* ``ours_local_cold`` — ``ModelManager`` on a local directory, model cache cleared;
* ``ours_s3_cold`` — ``ModelManager`` on ``ML_STORE_URL=s3://...``, model cache
  *and* disk cache cleared: a GET of the object, SHA-256, cache insert,
  unpickle (what a new host pays once per model);
* ``ours_s3_disk_cache`` — the same with the disk cache kept: what every later
  cold load on that host pays;
* ``mlflow_registry`` — ``mlflow.sklearn.load_model("models:/name@champion")``,
  SQLite backend store in a temp dir, MLflow's default serialization off
  Databricks (skops, with the model's types trusted), no network;
* ``mlflow_registry_cloudpickle`` — the same registry, the model logged with
  ``serialization_format="cloudpickle"`` (MLflow's other common setting);
* ``skops_load`` — ``skops.io.load`` of a ``skops.io.dump`` file, trusted types given.

The S3 server is nanio on loopback: a pure-Python server (starlette/uvicorn),
slower per request than MinIO or AWS, so ``ours_s3_cold`` is an upper bound
of the server's share.  MLflow and skops are bench-only dependencies
(``requirements-bench.txt``, installed by ``make bench``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bench.fixtures import LOAD_MODEL_TYPE, train_model
from bench.stats import summarize_ns, time_interleaved

S3_SERVER = "nanio 0.1.7, a pure-Python S3 server (starlette + uvicorn), on loopback, SigV4 verified"


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _mlflow(model: Any, workdir: Path) -> dict[str, Any]:
    """Log ``model`` twice into a fresh SQLite-backed registry; return loaders of ``@champion``."""
    import mlflow
    import mlflow.sklearn
    import skops.io
    from mlflow import MlflowClient

    probe = workdir / "probe.skops"
    skops.io.dump(model, probe)
    trusted = skops.io.get_untrusted_types(file=str(probe))  # the forest's tree type: our own model
    experiment = mlflow.create_experiment("bench", artifact_location=(workdir / "artifacts").as_uri())
    client = MlflowClient()
    names = {"mlflow_registry": ("bench_forest", {"skops_trusted_types": trusted}),
             "mlflow_registry_cloudpickle": ("bench_forest_cloudpickle", {"serialization_format": "cloudpickle"})}
    for name, options in names.values():
        with mlflow.start_run(experiment_id=experiment):
            # Requirements given: no pip inference subprocess.
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                            pip_requirements=["scikit-learn"], **options)
        client.set_registered_model_alias(name, "champion", info.registered_model_version)
    return {variant: (lambda n=name: mlflow.sklearn.load_model(f"models:/{n}@champion"))
            for variant, (name, _) in names.items()}


def run(env: Any, sizes: Any, load_data: dict[str, Any]) -> dict[str, Any]:
    from tests.s3server import running_server
    from utils.extensions import db
    from utils.ml.model_manager import ModelManager

    try:
        import mlflow
        import skops
        import skops.io
    except ImportError as exc:
        return {"status": "not_run", "reason": f"{exc}: install requirements-bench.txt (make bench does)"}

    model = load_data.get("model") or train_model(sizes.train_rows, sizes.trees, seed=1)
    work = env.workdir / "peers"
    work.mkdir()
    skops_file = work / "model.skops"
    skops.io.dump(model, skops_file)
    skops_trusted = skops.io.get_untrusted_types(file=str(skops_file))

    with running_server(work / "s3") as server, _environ(
            **server.env(), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
            MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true"):
        bucket = server.create_bucket()
        local = ModelManager(db, models_dir=str(env.models_dir))
        local.save_model(model, LOAD_MODEL_TYPE, "peer_local", actor="bench")
        s3 = ModelManager(db, models_dir=str(work / "s3-host-cache"), store_url=f"s3://{bucket}/models")
        row = s3.save_model(model, LOAD_MODEL_TYPE, "peer_s3", actor="bench")
        db.session.rollback()
        mlflow_loaders = _mlflow(model, work)

        def checked(manager: Any, metric: str, source: str) -> Any:
            outcome = manager.load_active(LOAD_MODEL_TYPE, metric)
            if outcome.source != source:
                raise RuntimeError(f"{metric}: expected a load from {source}, got {outcome}")
            return outcome.model

        def s3_cold_reset() -> None:
            s3.clear_cache()
            s3.store.cache.discard(row.model_path)

        variants = {
            "ours_local_cold": lambda: checked(local, "peer_local", "file"),
            "ours_s3_cold": lambda: checked(s3, "peer_s3", "file"),
            "ours_s3_disk_cache": lambda: checked(s3, "peer_s3", "file"),
            **mlflow_loaders,
            "skops_load": lambda: skops.io.load(skops_file, trusted=skops_trusted),
        }
        before = {"ours_local_cold": local.clear_cache, "ours_s3_cold": s3_cold_reset,
                  "ours_s3_disk_cache": s3.clear_cache}
        samples = time_interleaved(variants, sizes.load_repetitions, before=before)
        db.session.rollback()

    results = {name: summarize_ns(values) for name, values in samples.items()}
    local_median = results["ours_local_cold"]["median"]
    return {
        "status": "ok",
        "repetitions": sizes.load_repetitions,
        "model": {"estimator": "IsolationForest", "n_estimators": sizes.trees, "training_rows": sizes.train_rows,
                  "pickle_bytes": row.size_bytes, "skops_bytes": skops_file.stat().st_size},
        "s3_server": S3_SERVER,
        "versions": {"mlflow": mlflow.__version__, "skops": skops.__version__},
        "variants": results,
        "ratios_over_ours_local_cold": {name: round(s["median"] / local_median, 2) for name, s in results.items()},
    }
