"""Model keys, object keys and ``s3://`` URLs of an ``S3ModelStore``: a part of it.

A mixin over the store's ``bucket``, ``prefix``, ``client`` and ``cache`` (see
:mod:`utils.ml.store.s3`).  The contract: a model key is the local store's
file name, stored as ``<prefix>/<key>``; a key that is empty, holds control
characters, starts with '/', has an empty, '.' or '..' segment, or makes an
object key over 1024 bytes raises ``UnsafePathError``; ``locate`` and
``key_for`` are inverses; ``location_info`` never shows credentials.  No
network call is made here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from utils.ml.store.base import UnsafePathError


class S3Keys:
    """``_object_key`` / ``_relative`` / ``locate`` / ``key_for`` / ``location_info`` under ``s3://bucket/prefix``."""

    bucket: str
    prefix: str
    client: Any
    cache: Any

    # -- names -----------------------------------------------------------------
    def _object_key(self, key: str) -> str:
        if not isinstance(key, str) or not key or any(ord(c) < 32 or c == "\x7f" for c in key):
            raise UnsafePathError(f"model key {key!r} is empty or contains control characters")
        if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
            raise UnsafePathError(f"model key {key!r} has a leading '/' or an empty, '.' or '..' segment")
        full = f"{self.prefix}/{key}" if self.prefix else key
        if len(full.encode()) > 1024:
            raise UnsafePathError(f"model key {key!r} makes an object key over 1024 bytes")
        return full

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def locate(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def key_for(self, path: str | Path) -> str:
        """The key of ``s3://bucket/prefix/key`` (what :meth:`locate` gives); ValueError if not in this store."""
        base = f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"
        text = str(path)
        if not text.startswith(base) or len(text) == len(base):
            raise ValueError(f"{text!r} is not an object of {base}")
        key = text[len(base):]
        self._object_key(key)
        return key

    def location_info(self, key: Optional[str] = None) -> dict[str, Any]:
        """Backend, bucket, prefix, endpoint and region, and the object's key and URL: never credentials."""
        endpoint = self.client.meta.endpoint_url
        parsed = urlsplit(endpoint)
        if parsed.username or parsed.password:  # never echo userinfo someone put into AWS_ENDPOINT_URL
            endpoint = urlunsplit(parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")))
        info: dict[str, Any] = {"backend": "s3", "bucket": self.bucket, "prefix": self.prefix,
                                "endpoint": endpoint, "region": self.client.meta.region_name,
                                "cache_dir": str(self.cache.root)}
        if key is not None:
            info["key"] = key
            try:
                info.update(object_key=self._object_key(key), url=self.locate(key))
            except UnsafePathError:  # a legacy row's absolute path: not an object of this store
                pass
        return info
