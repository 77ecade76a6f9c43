"""ModelManager's contract methods and return keys, on PostgreSQL and SQLite, with real files."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import sklearn
from sqlalchemy import event, select

from tests.ml_helpers import make_model, model_files, new_manager, recorded_events, scores, temp_files
from utils.extensions import db
from utils.ml.model_manager import ModelManagerError, ModelValidationError, get_model_manager
from utils.ml.store import ModelTooLargeError
from utils.models import MLModel, ModelActivation

NAME = re.compile(r"^isolation_forest_stok_seviye_\d{8}_\d{6}_[0-9a-f]{10}\.pkl$")


@pytest.fixture
def mm(app_ctx):
    return get_model_manager(app_ctx)


def _row(model_id: int) -> MLModel:
    db.session.expire_all()
    return db.session.get(MLModel, model_id)


def _legacy_row(model, metric_type="stok_seviye", active=True) -> int:
    """A BLOB-only row as the legacy code wrote it."""
    row = MLModel(model_type="isolation_forest", metric_type=metric_type, model_data=pickle.dumps(model),
                  parameters={}, is_active=active)
    db.session.add(row)
    db.session.commit()
    return row.id


def test_save_model_to_file_writes_a_verified_file_and_an_active_row(mm, models_dir):
    path = mm.save_model_to_file(make_model(1), "isolation_forest", "stok_seviye", 0.9, 0.8, 0.7)

    file = Path(path)
    assert file.parent == models_dir.resolve() and NAME.match(file.name), path
    row = db.session.execute(select(MLModel).where(MLModel.model_path == file.name)).scalar_one()
    data = file.read_bytes()
    assert row.checksum_sha256 == hashlib.sha256(data).hexdigest()
    assert row.size_bytes == len(data)
    assert row.is_active is True
    assert (row.accuracy, row.precision, row.recall) == (0.9, 0.8, 0.7)
    assert row.sklearn_version == sklearn.__version__ and row.numpy_version == np.__version__
    assert row.python_version
    assert db.session.execute(select(MLModel.model_data).where(MLModel.id == row.id)).scalar_one() is None
    audit = db.session.execute(select(ModelActivation)).scalars().all()
    assert [(a.to_model_id, a.from_model_id, a.actor) for a in audit] == [(row.id, None, "trainer")]


def test_load_model_from_file_predicts_exactly_like_the_saved_model(mm):
    model = make_model(2)
    mm.save_model_to_file(model, "isolation_forest", "stok_seviye", None, None, None)
    mm.clear_cache()

    loaded = mm.load_model_from_file("isolation_forest", "stok_seviye")
    assert loaded is not model
    assert np.array_equal(scores(loaded), scores(model))


def test_a_new_save_replaces_the_active_version(mm):
    first = mm.save_model(make_model(1), "isolation_forest", "stok_seviye")
    second = mm.save_model(make_model(2), "isolation_forest", "stok_seviye")

    active = db.session.execute(select(MLModel.id).where(MLModel.is_active.is_(True))).scalars().all()
    assert active == [second.id]
    outcome = mm.load_active("isolation_forest", "stok_seviye")
    assert (outcome.model_id, outcome.source) == (second.id, "file")
    audit = db.session.execute(select(ModelActivation).order_by(ModelActivation.id)).scalars().all()
    assert [(a.from_model_id, a.to_model_id) for a in audit] == [(None, first.id), (first.id, second.id)]


def test_load_says_why_when_there_is_nothing_to_load(mm):
    outcome = mm.load_active("isolation_forest", "stok_seviye")
    assert (outcome.model, outcome.source, outcome.reason) == (None, "none", "no_active_model")
    assert mm.load_model_from_file("isolation_forest", "stok_seviye") is None

    legacy_model = make_model(3)
    legacy_id = _legacy_row(legacy_model)
    outcome = mm.load_active("isolation_forest", "stok_seviye")
    assert (outcome.model_id, outcome.reason) == (legacy_id, "no_model_file")
    # The legacy BLOB path still serves it (the seed's backward compatibility).
    from_db = mm.load_model_from_database("isolation_forest", "stok_seviye")
    assert (from_db.source, from_db.model_id) == ("database", legacy_id)
    assert np.array_equal(scores(from_db.model), scores(legacy_model))


def test_list_available_models_has_the_contract_keys_newest_first_and_only_files(mm):
    _legacy_row(make_model(0), metric_type="dolum_sure")
    saved = [mm.save_model(make_model(i), "isolation_forest", metric, accuracy=0.5 + i / 10)
             for i, metric in enumerate(["stok_seviye", "tuketim_miktar", "stok_seviye"])]

    listed = mm.list_available_models()
    assert [m["id"] for m in listed] == [r.id for r in reversed(saved)]
    for item in listed:
        assert {"model_type", "metric_type", "path", "size_kb", "created_at", "accuracy"} <= set(item)
        assert Path(item["path"]).is_file()
        assert item["size_kb"] == round(Path(item["path"]).stat().st_size / 1024, 2)
        assert item["created_at"].tzinfo is not None
    assert listed[0]["accuracy"] == pytest.approx(0.7)
    # list_models shows the legacy row too.
    assert {m["storage"] for m in mm.list_models()} == {"file", "database"}
    assert [m["id"] for m in mm.list_models(active=True, metric_type="stok_seviye")] == [saved[2].id]


def test_get_model_info_has_the_contract_keys(mm):
    assert mm.get_model_info("isolation_forest", "stok_seviye") is None
    old = mm.save_model(make_model(1), "isolation_forest", "stok_seviye", accuracy=0.8)
    mm.save_model(make_model(2), "isolation_forest", "stok_seviye", accuracy=0.9)
    mm.activate_model(old.id, actor="test", reason="rollback")

    info = mm.get_model_info("isolation_forest", "stok_seviye")
    assert {"path", "size_kb", "accuracy", "training_date", "is_active"} <= set(info)
    assert (info["id"], info["is_active"], info["accuracy"]) == (old.id, True, 0.8)
    assert Path(info["path"]).is_file() and info["training_date"].tzinfo is not None


@pytest.mark.parametrize("kwargs, field", [
    ({"model_type": "Isolation-Forest"}, "model_type"),
    ({"metric_type": "9lives"}, "metric_type"),
    ({"metric_type": "x" * 51}, "metric_type"),
    ({"accuracy": 1.5}, "accuracy"),
    ({"precision": "high"}, "precision"),
    ({"model": None}, "model"),
    ({"model": lambda x: x}, "model"),
])
def test_bad_input_names_the_field_and_changes_nothing(mm, models_dir, kwargs, field):
    args = {"model": make_model(0), "model_type": "isolation_forest", "metric_type": "stok_seviye", **kwargs}
    with pytest.raises(ModelValidationError) as caught:
        mm.save_model_to_file(**args)
    assert caught.value.field == field and field in str(caught.value)
    assert db.session.execute(select(MLModel.id)).all() == []
    assert model_files(models_dir) == set() and temp_files(models_dir) == set()


def test_a_model_over_ml_max_model_mb_is_refused_before_writing(app_ctx, models_dir):
    small = new_manager(app_ctx, max_model_mb=0.001)
    with pytest.raises(ModelTooLargeError, match="ML_MAX_MODEL_MB"):
        small.save_model_to_file(make_model(0), "isolation_forest", "stok_seviye")
    assert db.session.execute(select(MLModel.id)).all() == []
    assert model_files(models_dir) == set() and temp_files(models_dir) == set()


def test_activate_model_rolls_back_and_promotes_with_an_audit_trail(mm):
    a = mm.save_model(make_model(1), "isolation_forest", "stok_seviye")
    b = mm.save_model(make_model(2), "isolation_forest", "stok_seviye")
    assert mm.load_active("isolation_forest", "stok_seviye").model_id == b.id

    result = mm.activate_model(a.id, actor="ops", reason="b misbehaves")
    assert result == {"model_id": a.id, "model_type": "isolation_forest", "metric_type": "stok_seviye",
                      "from_model_id": b.id, "actor": "ops", "reason": "b misbehaves", "changed": True}
    assert mm.load_active("isolation_forest", "stok_seviye").model_id == a.id
    last = db.session.execute(select(ModelActivation).order_by(ModelActivation.id.desc())).scalars().first()
    assert (last.from_model_id, last.to_model_id, last.actor, last.reason) == (b.id, a.id, "ops", "b misbehaves")

    # The active version again: nothing changes, nothing is audited.
    audited = len(db.session.execute(select(ModelActivation.id)).all())
    again = mm.activate_model(a.id, actor="ops", reason="twice")
    assert (again["changed"], again["from_model_id"]) == (False, a.id)
    assert len(db.session.execute(select(ModelActivation.id)).all()) == audited

    with pytest.raises(ModelManagerError, match="does not exist"):
        mm.activate_model(999999, actor="ops")
    with pytest.raises(ModelValidationError, match="actor"):
        mm.activate_model(b.id, actor="  ")
    with pytest.raises(ModelValidationError, match="model_id"):
        mm.activate_model("2", actor="ops")
    assert _row(a.id).is_active and not _row(b.id).is_active


def test_compressed_models_are_saved_as_pkl_gz_and_load(app_ctx):
    gz = new_manager(app_ctx, compress=True)
    model = make_model(4)
    path = gz.save_model_to_file(model, "isolation_forest", "stok_seviye")
    assert path.endswith(".pkl.gz")
    assert np.array_equal(scores(gz.load_model_from_file("isolation_forest", "stok_seviye")), scores(model))


def test_file_names_are_distinct_even_within_one_second(mm, models_dir):
    names = {mm._generate_filename("isolation_forest", "stok_seviye") for _ in range(2000)}
    assert len(names) == 2000 and all(NAME.match(n) for n in names)

    started = time.time()
    paths = [mm.save_model_to_file(make_model(0), "isolation_forest", "stok_seviye") for _ in range(8)]
    assert len(set(paths)) == 8 and len(model_files(models_dir)) == 8
    stamps = {Path(p).name.split("_")[3] + Path(p).name.split("_")[4] for p in paths}
    # Several saves shared a second (the names still differ): the case we guard against.
    assert len(stamps) < 8 or time.time() - started > 8


def test_files_are_644_and_a_created_directory_755_whatever_the_umask(app_ctx, tmp_path):
    old_umask = os.umask(0o077)
    try:
        manager = new_manager(app_ctx)
        fresh = tmp_path / "created" / "ml_models"
        from utils.ml.model_manager import ModelManager

        created = ModelManager(db, models_dir=str(fresh))
        path = created.save_model_to_file(make_model(0), "isolation_forest", "stok_seviye")
        other = manager.save_model_to_file(make_model(1), "isolation_forest", "tuketim_miktar")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o755
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o644


def test_validate_model_file_and_file_size(mm, tmp_path):
    path = Path(mm.save_model_to_file(make_model(0), "isolation_forest", "stok_seviye"))
    assert mm._validate_model_file(path) is True
    assert mm._get_file_size_kb(path) == round(path.stat().st_size / 1024, 2)
    outside = tmp_path / "elsewhere.pkl"
    outside.write_bytes(path.read_bytes())
    assert mm._validate_model_file(outside) is False
    with open(path, "ab") as handle:
        handle.write(b"x")
    assert mm._validate_model_file(path) is False


def test_check_disk_space_reports_and_warns_past_the_threshold(app_ctx):
    usage = new_manager(app_ctx)._check_disk_space()
    assert set(usage) == {"total_gb", "used_gb", "free_gb", "percent"}
    assert usage["total_gb"] > 0 and 0 <= usage["percent"] <= 100
    with recorded_events() as log:
        new_manager(app_ctx, disk_warn_percent=0.0)._check_disk_space()
    assert log.of("disk_space_low") and log.of("disk_space_low")[0]["threshold"] == 0.0


def _capture_sql(engine):
    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return statements, lambda: event.remove(engine, "before_cursor_execute", before)


def test_metadata_queries_never_fetch_model_data(mm):
    for i in range(5):
        _legacy_row(make_model(i), metric_type=f"legacy_{i}")
    saved = [mm.save_model(make_model(i), "isolation_forest", "stok_seviye") for i in range(3)]
    db.session.expire_all()

    statements, stop = _capture_sql(db.engine)
    try:
        mm.list_available_models()
        mm.list_models()
        mm.get_model_info("isolation_forest", "stok_seviye")
        mm.get_model_info("isolation_forest", "legacy_0")
        mm.activate_model(saved[0].id, actor="test")
        mm.cleanup_old_models(keep_versions=10)
        mm.clear_cache()
        mm.load_active("isolation_forest", "stok_seviye")
    finally:
        stop()
    assert statements, "no SQL captured"
    for statement in statements:
        # The only mention allowed is a NULL test (does a BLOB exist?), never the column's bytes.
        assert "model_data" not in re.sub(r"ml_models\.model_data IS (NOT )?NULL", "", statement), statement


def test_cleanup_keeps_the_newest_n_per_type_and_always_the_active_one(mm, models_dir):
    stok = [mm.save_model(make_model(i), "isolation_forest", "stok_seviye") for i in range(5)]
    tuketim = [mm.save_model(make_model(i), "isolation_forest", "tuketim_miktar") for i in range(2)]
    mm.activate_model(stok[0].id, actor="test", reason="the oldest is the good one")
    keys = {r.id: r.model_path for r in stok + tuketim}
    doomed = [stok[1].id, stok[2].id]
    # Freed space is what the disk gets back: allocated blocks, not apparent sizes.
    doomed_bytes = sum((models_dir / keys[i]).stat().st_blocks * 512 for i in doomed)

    result = mm.cleanup_old_models(keep_versions=2)

    assert result["deleted_count"] == 2
    assert result["freed_space_mb"] == round(doomed_bytes / (1024 * 1024), 3)
    assert sorted(result["kept_models"]) == sorted(keys[i] for i in keys if i not in doomed)
    assert result["errors"] == []
    remaining = set(db.session.execute(select(MLModel.id)).scalars())
    assert remaining == set(keys) - set(doomed)
    assert model_files(models_dir) == {keys[i] for i in remaining}
    assert mm.load_active("isolation_forest", "stok_seviye").model_id == stok[0].id
    # Nothing more to do the second time.
    assert mm.cleanup_old_models(keep_versions=2)["deleted_count"] == 0


def test_cleanup_removes_old_orphans_and_temp_files_and_leaves_young_ones(app_ctx, models_dir):
    manager = new_manager(app_ctx, orphan_grace_seconds=3600)
    kept = manager.save_model(make_model(0), "isolation_forest", "stok_seviye")
    old = time.time() - 7200
    for name in ("isolation_forest_stok_seviye_20200101_000000_000000abcd.pkl", ".tmp-dead.part"):
        (models_dir / name).write_bytes(b"x" * 1000)
        os.utime(models_dir / name, (old, old))
    (models_dir / "isolation_forest_stok_seviye_20990101_000000_000000abcd.pkl").write_bytes(b"young")
    (models_dir / ".tmp-young.part").write_bytes(b"young")
    (models_dir / "README.md").write_text("not a model")
    os.utime(models_dir / "README.md", (old, old))
    allocated = sum((models_dir / name).stat().st_blocks * 512
                    for name in ("isolation_forest_stok_seviye_20200101_000000_000000abcd.pkl", ".tmp-dead.part"))

    result = manager.cleanup_old_models(keep_versions=3)

    assert (result["orphans_deleted"], result["temp_files_deleted"], result["deleted_count"]) == (1, 1, 0)
    assert result["freed_space_mb"] == round(allocated / (1024 * 1024), 3)
    assert sorted(p.name for p in models_dir.iterdir() if not p.name.startswith(".active")) == sorted([
        ".tmp-young.part", "README.md", kept.model_path,
        "isolation_forest_stok_seviye_20990101_000000_000000abcd.pkl",
    ])


def test_cleanup_rejects_a_bad_keep_versions(mm):
    for bad in (0, -1, True, "3"):
        with pytest.raises(ModelValidationError, match="keep_versions"):
            mm.cleanup_old_models(keep_versions=bad)


def test_purge_blobs_drops_only_blobs_whose_file_verifies(mm, models_dir):
    ids = [_legacy_row(make_model(i), metric_type=metric) for i, metric in enumerate(["stok_seviye", "dolum_sure"])]
    assert mm.migrate_from_database()["migrated"] == 2
    key = db.session.execute(select(MLModel.model_path).where(MLModel.id == ids[0])).scalar_one()
    (models_dir / key).write_bytes(b"tampered")

    dry = mm.migrate_from_database(dry_run=True, purge_blobs=True)
    assert (dry["purged"], dry["failed"], dry["skipped"]) == (1, 1, 0)
    assert [m["status"] for m in dry["models"]] == ["failed", "would_purge"]
    result = mm.migrate_from_database(purge_blobs=True)
    assert (result["purged"], result["failed"]) == (1, 1)
    assert "BLOB kept" in result["errors"][0] and "checksum" in result["errors"][0]
    blobs = dict(db.session.execute(select(MLModel.id, MLModel.model_data.is_not(None))).all())
    assert blobs == {ids[0]: True, ids[1]: False}
    # The damaged file's model still has its fallback.
    assert mm.load_model_from_database("isolation_forest", "stok_seviye").source == "database"


def test_cleanup_counts_only_files_it_deleted_and_the_blocks_it_freed(mm, models_dir):
    rows = [mm.save_model(make_model(i), "isolation_forest", "stok_seviye") for i in range(4)]
    # The oldest version's file is already gone (deleted by hand); the next is a 20 GB sparse file.
    (models_dir / rows[0].model_path).unlink()
    sparse = models_dir / rows[1].model_path
    with open(sparse, "r+b") as handle:
        handle.truncate(20 * 1024 ** 3)
    assert sparse.stat().st_size == 20 * 1024 ** 3 and sparse.stat().st_blocks * 512 < 1024 ** 2
    allocated = sparse.stat().st_blocks * 512

    result = mm.cleanup_old_models(keep_versions=2)

    assert result["deleted_count"] == 2  # both rows go
    assert result["files_deleted"] == 1  # but only one file was there to delete
    assert result["freed_space_mb"] == round(allocated / (1024 * 1024), 3)  # not 20480 MB
    assert result["freed_space_mb"] < 1
