"""Model metadata writes in ``ml_models``: the save transaction and *the* activation function.

Every change of the active version, whoever asks for it (the API, the CLI,
the dashboard, a training's save), goes through :func:`switch_active`: it
serialises activations of one (model_type, metric_type), writes the audit row
with the version it replaces, and does nothing at all when the version is
already the active one.  The reads (active_meta, describe, list_models,
model_info) live in :mod:`.queries`.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from utils.ml.store.base import (
    ModelManagerError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    ModelValidationError,
)
from utils.ml import events
from utils.ml.store.integrity import library_versions, sha256_hex, verify_file
from utils.ml.store.queries import meta_query
from utils.ml.validation import MAX_ROW_ID, check_whole_number
from utils.models import MLModel, ModelActivation
from utils.time import utcnow

logger = logging.getLogger(__name__)

# Advisory-lock class id of "activate a model of this type" (PostgreSQL).
ACTIVATION_LOCK_CLASS = 7301


def rollback_quietly(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:
        pass


def generate_filename(model_type: str, metric_type: str, suffix: str = ".pkl") -> str:
    """``{model_type}_{metric_type}_{YYYYMMDD_HHMMSS}_{microseconds}{random}.pkl``.

    The microseconds and 16 random bits keep two saves in the same second
    apart; the store's no-clobber rename makes a collision a retry, not a loss.
    """
    now = utcnow()
    return f"{model_type}_{metric_type}_{now:%Y%m%d_%H%M%S}_{now:%f}{secrets.token_hex(2)}{suffix}"


# --------------------------------------------------------------- activation
def _lock_type(session: Session, model_type: str, metric_type: str) -> None:
    """Serialise activations of one (model_type, metric_type) until commit.

    PostgreSQL: a transaction-scoped advisory lock.  SQLite: the UPDATE that
    follows takes the database write lock, which already serialises writers.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:cls, hashtext(:key))"),
            {"cls": ACTIVATION_LOCK_CLASS, "key": f"{model_type}/{metric_type}"},
        )


@dataclass(frozen=True)
class Switch:
    """What :func:`switch_active` did: ``changed`` is False when the version was already active."""

    changed: bool
    from_model_id: Optional[int]


def switch_active(session: Session, model_id: int, model_type: str, metric_type: str, actor: str,
                  reason: str) -> Switch:
    """Make row ``model_id`` the active version of its type, in the caller's transaction (not committed).

    The one place an activation happens: under the type's lock, the current
    active row is read; if it is ``model_id`` nothing is written
    (``changed=False``); otherwise it is deactivated, ``model_id`` activated
    and one ``ml_model_activations`` row records ``from_model_id`` (the
    replaced version, None for the first), ``actor`` and ``reason``.  Raises
    ModelManagerError when ``model_id`` disappeared meanwhile.
    """
    _lock_type(session, model_type, metric_type)
    current = session.execute(
        select(MLModel.id).where(MLModel.model_type == model_type, MLModel.metric_type == metric_type,
                                 MLModel.is_active.is_(True))
    ).scalars().all()
    if current == [model_id]:
        return Switch(False, model_id)
    previous = list(session.execute(
        update(MLModel)
        .where(MLModel.model_type == model_type, MLModel.metric_type == metric_type,
               MLModel.is_active.is_(True), MLModel.id != model_id)
        .values(is_active=False).returning(MLModel.id).execution_options(synchronize_session=False)
    ).scalars())
    switched = session.execute(
        update(MLModel).where(MLModel.id == model_id).values(is_active=True)
        .execution_options(synchronize_session=False)
    ).rowcount
    if switched != 1:
        # Deleted (cleanup) since it was read: do not leave the type without an active model.
        raise ModelManagerError(f"model {model_id} was deleted while it was being activated")
    from_id = previous[0] if previous else None
    session.add(ModelActivation(model_type=model_type, metric_type=metric_type, from_model_id=from_id,
                                to_model_id=model_id, actor=actor, reason=reason))
    return Switch(True, from_id)


def activate_version(session: Session, store: ModelStore, model_id: int, actor: str, reason: Optional[str],
                     max_bytes: int) -> dict[str, Any]:
    """Make the kept version ``model_id`` the active one (promotion or rollback), committed.

    Its file is verified first (size, containment, checksum; a legacy row
    must still have its BLOB), even when it is already the active version.
    Activating the version that is already active then changes nothing and
    writes no audit row (``changed`` False).  Returns
    ``model_id``, ``model_type``, ``metric_type``, ``from_model_id``,
    ``actor``, ``reason`` and ``changed``.  Raises ModelValidationError,
    ModelNotFoundError, or ModelManagerError when the version cannot be activated.
    """
    check_whole_number("model_id", model_id, 1, error=ModelValidationError)
    if not isinstance(actor, str) or not 1 <= len(actor.strip()) <= 100:
        raise ModelValidationError("actor", f"must be a non-empty string of at most 100 characters (got {actor!r})")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
        raise ModelValidationError("reason", "must be a string of at most 200 characters or null")
    # ml_models.id is a 32-bit INTEGER; PostgreSQL rejects larger ids instead of finding nothing.
    row = session.execute(meta_query().where(MLModel.id == model_id)).scalar_one_or_none() \
        if model_id <= MAX_ROW_ID else None
    if row is None:
        raise ModelNotFoundError(model_id)
    result = {"model_id": model_id, "model_type": row.model_type, "metric_type": row.metric_type,
              "from_model_id": model_id, "actor": actor, "reason": reason, "changed": False}
    try:
        # Verified even when it is the active version already: a damaged file is said so, never "fine".
        if row.model_path:
            _, problem = verify_file(store, row.model_path, row.checksum_sha256, max_bytes)
            if problem:
                raise ModelManagerError(f"model {model_id} cannot be activated: {problem}")
        elif not session.execute(select(MLModel.model_data.is_not(None)).where(MLModel.id == model_id)).scalar():
            raise ModelManagerError(f"model {model_id} has neither a file nor a BLOB")
        if row.is_active:
            return result
        switch = switch_active(session, model_id, row.model_type, row.metric_type, actor, reason or "activated")
        if switch.changed:
            session.commit()
        result.update(from_model_id=switch.from_model_id, changed=switch.changed)
        return result
    finally:
        rollback_quietly(session)  # ends the transaction: nothing, after a commit


def save_version(session: Session, store: ModelStore, data: bytes, suffix: str, *, actor: str, activate: bool,
                 **values: Any) -> MLModel:
    """Write ``data`` under a fresh name, then commit its row (``values``: the row's metadata) and,
    with ``activate``, make it the active version.  Returns the committed row.

    On any failure nothing is left behind: the file is removed if the row
    could not be committed (unless a row turned out to use it), and the
    previous active version stays active.
    """
    model_type, metric_type = values["model_type"], values["metric_type"]
    try:
        key = store.write_new(lambda: generate_filename(model_type, metric_type, suffix), data)
    except (OSError, ModelStoreError) as exc:
        events.emit("model_save_failed", f"Model file write failed: {exc}",
                    model_type=model_type, metric_type=metric_type, error=str(exc))
        raise
    row = MLModel(**values, model_data=None, model_path=key, is_active=False, checksum_sha256=sha256_hex(data),
                  size_bytes=len(data), **library_versions())
    try:
        return commit_new_row(session, row, actor=actor, activate=activate)
    except BaseException as exc:
        rollback_quietly(session)
        # The row is not there, so the file must not be either.
        removed = discard_if_unreferenced(session, store, key)
        events.emit("model_save_failed", f"Model row commit failed, file {'removed' if removed else 'kept'}: {exc}",
                    model_type=model_type, metric_type=metric_type, key=key, error=str(exc))
        raise


def commit_new_row(session: Session, row: MLModel, actor: str, activate: bool) -> MLModel:
    """Insert ``row`` and (``activate``) make it the active version, in one committed transaction."""
    attempts = 3
    for attempt in range(attempts):
        try:
            session.add(row)
            session.flush()
            if activate:
                switch_active(session, row.id, row.model_type, row.metric_type, actor, "new version saved")
                set_committed_value(row, "is_active", True)  # written by switch_active's UPDATE
            session.commit()
            return row
        except IntegrityError:
            # Only reachable without the advisory lock (another writer won
            # the race for the active slot): retry the whole transaction.
            session.rollback()
            if attempt == attempts - 1:
                raise
            row = MLModel(**{c.key: getattr(row, c.key) for c in MLModel.__table__.columns
                             if c.key not in ("id", "is_active")}, is_active=False)
    raise AssertionError("unreachable")


def discard_if_unreferenced(session: Session, store: ModelStore, key: str) -> bool:
    """After a failed commit, delete ``key``'s file unless a row turned out to use it.

    A commit can reach the server and still raise (the connection drops
    before the acknowledgement): deleting the file then would leave a row
    pointing at nothing.  So ask again; if even that fails, keep the file:
    the orphan sweep of cleanup removes it after the grace period if no row
    ever references it.  Returns True when deleted.
    """
    try:
        referenced = session.execute(
            select(func.count()).select_from(MLModel).where(MLModel.model_path == key)
        ).scalar_one()
        session.rollback()
    except SQLAlchemyError as exc:
        rollback_quietly(session)
        logger.error("kept %s after a failed commit: cannot tell whether a row uses it (%s)", key, exc)
        return False
    if referenced:
        logger.warning("kept %s: the failed commit did reach the database", key)
        return False
    try:
        store.delete(key)
    except (OSError, ModelStoreError) as exc:
        logger.error("could not remove %s after a failed commit: %s", key, exc)
        return False
    return True
