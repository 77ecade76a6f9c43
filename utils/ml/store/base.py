"""The contract of a model artifact store, its errors, and the registry of backends.

Rows in ``ml_models`` keep a *storage key* (a file name relative to the store),
never an absolute path, so a volume can be mounted elsewhere without touching
the database.  A backend is a :class:`ModelStore` subclass registered in
:data:`STORE_SCHEMES` under the URL scheme it serves; :func:`utils.ml.store.open_store`
picks one by the scheme of ``ML_MODELS_DIR``.  Nothing outside a backend
knows which backend it talks to: the cross-process change signal
(:meth:`ModelStore.signal_change` / :meth:`ModelStore.change_token`) is part
of this contract too.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Optional

from utils.ml.validation import InvalidInput


class ModelStoreError(Exception):
    """Base class of store failures; the message names the key and the rule."""


class UnsafePathError(ModelStoreError):
    """A key resolves outside the store (path traversal, symlink escape)."""


class ModelTooLargeError(ModelStoreError):
    """A model exceeds the configured maximum size."""


class ChecksumMismatchError(ModelStoreError):
    """Bytes a store holds do not match the SHA-256 the caller expects: refused, not cached, never unpickled."""


class ModelManagerError(Exception):
    """A model operation was refused; the message says which rule."""


class ModelValidationError(ModelManagerError, InvalidInput):
    """Bad input to a ModelManager method: names the field and the rule."""


class ModelNotFoundError(ModelManagerError, LookupError):
    """No ``ml_models`` row has this id."""

    def __init__(self, model_id: object) -> None:
        super().__init__(f"model {model_id} does not exist")
        self.model_id = model_id


@dataclass(frozen=True)
class StoredFile:
    key: str
    size_bytes: int
    modified_at: float  # POSIX timestamp


class ModelStore(ABC):
    """Contract of a model artifact store."""

    @classmethod
    def from_url(cls, url: str, create: bool = True, **options: Any) -> "ModelStore":
        """The store at ``url``; ``create=False`` creates nothing (dry runs); ``options`` are the backend's."""
        return cls(url, create=create, **options)  # type: ignore[call-arg]

    @abstractmethod
    def write_new(self, name_factory: Callable[[], str], data: bytes) -> str:
        """Store ``data`` under a fresh name from ``name_factory`` and return its key.

        Atomic: no reader ever sees a partial object under the final name, and
        an existing object is never overwritten (a taken name is retried).
        """

    @abstractmethod
    def read(self, key: str, max_bytes: int, *, expected_sha256: Optional[str] = None) -> bytes:
        """Return the bytes of ``key``; refuse more than ``max_bytes``.

        ``expected_sha256`` is the checksum the database records for ``key``:
        a caching backend may answer from a local copy only while it matches.
        It is a hint, not a verification; callers still check the bytes.
        """

    @abstractmethod
    def delete(self, key: str) -> Optional[int]:
        """Delete ``key``; return the bytes really freed, or None when it was already gone
        (so a caller counts only what it deleted)."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    @abstractmethod
    def iter_files(self) -> Iterator[StoredFile]:
        """Every model object in the store (not temporary files)."""

    @abstractmethod
    def iter_temp_files(self) -> Iterator[StoredFile]:
        """Leftovers of interrupted writes."""

    @abstractmethod
    def locate(self, key: str) -> str:
        """Where ``key`` lives, for people (an absolute path or a URL)."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise ``ModelStoreError`` unless a new object could be written now."""

    def disk_usage(self) -> dict[str, float] | None:
        """Capacity figures (total_gb, used_gb, free_gb, percent) when the backend has them."""
        return None

    @property
    def local_root(self) -> Optional[Path]:
        """The directory holding the files, for a backend that is a local directory; else None."""
        return None

    def location_info(self, key: Optional[str] = None) -> dict[str, Any]:
        """Where this store (and ``key`` in it) lives, for people: backend and location, never credentials."""
        return {"backend": type(self).__name__}

    def key_for(self, path: str | Path) -> str:
        """The key of ``path`` (a location returned by :meth:`locate`); ValueError if not in this store."""
        return str(path)

    def signal_change(self) -> None:
        """Tell every process using this store that an active version changed.

        The default does nothing: processes then notice within
        ``ML_CACHE_TTL_SECONDS``, when their cache re-validates against the database.
        """

    def change_token(self) -> Optional[Hashable]:
        """A cheap value that changes on every :meth:`signal_change` (None: no signal available)."""
        return None


STORE_SCHEMES: dict[str, type[ModelStore]] = {}


def register_scheme(*schemes: str) -> Callable[[type[ModelStore]], type[ModelStore]]:
    """Class decorator: ``open_store`` serves URLs of ``schemes`` with this backend."""

    def decorator(cls: type[ModelStore]) -> type[ModelStore]:
        for scheme in schemes:
            STORE_SCHEMES[scheme] = cls
        return cls

    return decorator
