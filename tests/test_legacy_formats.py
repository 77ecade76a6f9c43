"""The minibar app's model bytes, and bytes pretending to be them: loaded under the allow-list or refused.

On both databases: the BLOB of a row, a FILE_BASED row's joblib file, a marker
with no path.  A booby-trapped pickle (its ``__reduce__`` would create a
marker file) is refused before anything runs, the migration reports it and
exits 1, and every other row is still migrated or adopted.
"""
from __future__ import annotations

import zlib

import pytest
from sqlalchemy import insert, select

from tests.legacy import formats
from tests.ml_helpers import booby_pickle
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.ml.store.safe_load import UnsafePickleError, restricted_loads
from utils.ml.store.signature import compatible, of_object
from utils.models import MLModel

LIMIT = 10 << 20


def test_the_apps_formats_load_and_say_what_they_expect(tmp_path):
    blob = restricted_loads(formats.blob_forest(1), LIMIT)
    package = restricted_loads(formats.write_file_model(tmp_path, "a.pkl", 2, 19).read_bytes(), LIMIT)
    fallback = restricted_loads(formats.fallback_blob(3, 27), LIMIT)
    assert of_object(blob) == {"kind": "raw_value"} and compatible(of_object(blob))
    assert (of_object(package)["kind"], of_object(package)["n_features"], len(of_object(package)["features"])) \
        == ("aggregate_features", 19, 19)
    assert of_object(fallback) == {"kind": "aggregate_features", "n_features": 27, "features": None}
    assert not compatible(of_object(package)) and not compatible(of_object(fallback))


@pytest.mark.parametrize("wrap", [lambda b: b, zlib.compress], ids=["pickle", "joblib_zlib"])
def test_a_booby_trapped_stream_is_refused_before_it_runs(tmp_path, wrap):
    marker = tmp_path / "ran"
    with pytest.raises(UnsafePickleError, match="refused global"):
        restricted_loads(wrap(booby_pickle(marker)), LIMIT)
    assert not marker.exists()


def test_the_marker_and_a_bomb_are_not_models():
    with pytest.raises(Exception, match="FILE_BASED marker is not a model"):
        restricted_loads(formats.FILE_BASED, LIMIT)
    with pytest.raises(Exception, match="expands past"):
        restricted_loads(zlib.compress(b"\x80" + b"\0" * 5_000_000), 1000)


def _row(**values):
    db.session.execute(insert(MLModel).values(model_type="isolation_forest", is_active=False, **values))


def test_migrate_adopts_and_refuses_row_by_row(app, runner, tmp_path, models_dir):
    marker = tmp_path / "ran"
    volume = tmp_path / "volume"
    volume.mkdir()
    good = formats.write_file_model(volume, "isolation_forest_dolum_sure_20251113_120000.pkl", 4, 21)
    trap = volume / "isolation_forest_stok_seviye_20251113_120000.pkl"
    trap.write_bytes(zlib.compress(booby_pickle(marker)))
    with app.app_context():
        _row(metric_type="dolum_sure", model_data=formats.FILE_BASED, model_path=str(good))
        _row(metric_type="stok_seviye", model_data=formats.FILE_BASED, model_path=str(trap))
        _row(metric_type="tuketim_miktar", model_data=formats.FILE_BASED)  # the marker without a path
        _row(metric_type="zimmet_fire", model_data=booby_pickle(marker))
        _row(metric_type="dolum_sure", model_data=formats.fallback_blob(5, 24))
        db.session.commit()

    result = runner.invoke(args=["ml", "migrate"])
    assert result.exit_code == 1, result.output
    assert "Migrated: 1 models" in result.output and "Adopted: 1 files" in result.output
    assert "Failed: 3 models" in result.output and "refused global" in result.output
    assert "FILE_BASED marker without a model_path" in result.output
    assert not marker.exists()
    with app.app_context():
        adopted = db.session.execute(select(MLModel).where(MLModel.legacy_path == str(good))).scalar_one()
        assert adopted.model_path == get_model_manager().store.key_for(models_dir / adopted.model_path)
        assert (models_dir / adopted.model_path).read_bytes() == good.read_bytes()
        assert adopted.input_signature["n_features"] == 21 and adopted.size_bytes == good.stat().st_size
        db.session.remove()
    assert trap.exists() and good.exists()  # the app's files stay where it wrote them
    again = runner.invoke(args=["ml", "migrate"])
    assert "Migrated: 0 models" in again.output and "Adopted: 0 files" in again.output
    assert "Failed: 3 models" in again.output and not marker.exists()

    purged = runner.invoke(args=["ml", "migrate", "--purge-blobs"])
    assert "Purged: 1 BLOBs" in purged.output and "Failed: 3 models" in purged.output, purged.output
    with app.app_context():
        assert db.session.execute(select(MLModel.model_data).where(MLModel.legacy_path == str(good))).scalar_one() \
            == formats.FILE_BASED
