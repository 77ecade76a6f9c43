"""Where model bytes live and how their metadata is kept.

* :mod:`.base` — the :class:`ModelStore` contract, its errors, the backend registry;
* :mod:`.local` — files in one directory (the only backend here);
* :mod:`.integrity` — size, containment and SHA-256 checks before any unpickle,
  reads retried on transient errors, library versions;
* :mod:`.cache` — the bounded, thread-safe cache of loaded models;
* :mod:`.registry` — metadata queries, the save transaction and *the* activation function;
* :mod:`.retention` — cleanup of old versions, orphan and temporary files;
* :mod:`.legacy` — the BLOB models of the original application;
* :mod:`.catalog` — one version in full and the activation audit trail.

:class:`utils.ml.model_manager.ModelManager` is the facade over all of them.
"""
from __future__ import annotations

from urllib.parse import urlparse

from utils.ml.store import local  # noqa: F401  (registers the "" and "file" schemes)
from utils.ml.store.base import (
    STORE_SCHEMES,
    ModelManagerError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    ModelTooLargeError,
    ModelValidationError,
    StoredFile,
    UnsafePathError,
)
from utils.ml.store.local import LocalModelStore

__all__ = [
    "STORE_SCHEMES", "LocalModelStore", "ModelManagerError", "ModelNotFoundError", "ModelStore", "ModelStoreError",
    "ModelTooLargeError", "ModelValidationError", "StoredFile", "UnsafePathError", "open_store",
]


def open_store(location: str, create: bool = True) -> ModelStore:
    """The store for ``location`` (``ML_MODELS_DIR``): a plain path or ``file://`` URL is local.

    ``create=False`` creates nothing (a dry run).  An unknown scheme raises
    ValueError naming the setting and the schemes there are.
    """
    scheme = urlparse(location).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    try:
        cls = STORE_SCHEMES[scheme]
    except KeyError:
        supported = ", ".join(f"{name}://" for name in sorted(STORE_SCHEMES) if name) or "none"
        raise ValueError(
            f"ML_MODELS_DIR={location!r}: unsupported store scheme {scheme!r} (supported: a path, {supported})"
        ) from None
    return cls.from_url(location, create=create)
