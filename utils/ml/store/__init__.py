"""Where model bytes live and how their metadata is kept.

* :mod:`.base` — the :class:`ModelStore` contract, its errors, the backend registry;
* :mod:`.local` — files in one directory;
* :mod:`.s3` — objects in an S3-compatible bucket read through a bounded local
  cache (``ML_STORE_URL=s3://...``; imported only when such a store is opened);
* :mod:`.setup` — which store the settings select, and the cached readiness probe;
* :mod:`.transfer` — ``flask ml migrate-store``: copy every model object to another store;
* :mod:`.integrity` — size, containment and SHA-256 checks before any unpickle,
  reads retried on transient errors, library versions;
* :mod:`.cache` — the bounded, thread-safe cache of loaded models;
* :mod:`.registry` — the save transaction and *the* activation function (re-exports the reads);
* :mod:`.queries` — metadata reads: the active version's row, describe, list, model_info;
* :mod:`.retention` — cleanup of old versions, orphan and temporary files;
* :mod:`.legacy` — the BLOB models of the original application;
* :mod:`.catalog` — one version in full and the activation audit trail.

:class:`utils.ml.model_manager.ModelManager` is the facade over all of them.
"""
from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlparse

from utils.ml.store import local  # noqa: F401  (registers the "" and "file" schemes)
from utils.ml.store.base import (
    STORE_SCHEMES,
    ChecksumMismatchError,
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
    "STORE_SCHEMES", "ChecksumMismatchError", "LocalModelStore", "ModelManagerError", "ModelNotFoundError", "ModelStore", "ModelStoreError",
    "ModelTooLargeError", "ModelValidationError", "StoredFile", "UnsafePathError", "open_store",
]


# Backends imported on first use: boto3 alone costs ~260 ms, which a process
# that keeps its models in a local directory should never pay.
LAZY_SCHEMES = {"s3": "utils.ml.store.s3"}


def open_store(location: str, create: bool = True, **options: Any) -> ModelStore:
    """The store at ``location``: a plain path or ``file://`` URL is local, ``s3://bucket/prefix`` is S3.

    ``create=False`` creates nothing (a dry run).  ``options`` go to the
    backend (S3: ``cache_dir``, ``cache_max_bytes``...).  An unknown scheme
    raises ValueError naming the schemes there are.
    """
    scheme = urlparse(location).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    if scheme not in STORE_SCHEMES and scheme in LAZY_SCHEMES:
        importlib.import_module(LAZY_SCHEMES[scheme])  # registers the scheme
    try:
        cls = STORE_SCHEMES[scheme]
    except KeyError:
        known = sorted(set(STORE_SCHEMES) | set(LAZY_SCHEMES))
        supported = ", ".join(f"{name}://" for name in known if name) or "none"
        raise ValueError(
            f"model store {location!r}: unsupported store scheme {scheme!r} (supported: a path, {supported})"
        ) from None
    return cls.from_url(location, create=create, **options)
