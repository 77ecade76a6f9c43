"""``S3ModelStore``: model objects on any S3-compatible server, read through a bounded local cache.

Selected by ``ML_STORE_URL=s3://bucket/prefix``; credentials, endpoint and
region come from the standard ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION`` (constructor arguments override
them); ``ML_MODELS_DIR`` is then only the local cache.

The contract, beyond ``ModelStore``'s:

* keys are the local store's file names, stored as ``<prefix>/<key>``;
* publishing is one PUT carrying Content-MD5 and x-amz-checksum-sha256 (the
  server stores the whole body or nothing) and ``If-None-Match: *`` where the
  server honours it (detected once); where it does not, a HEAD first, with
  names that carry microseconds and random bits (see /work/notes/s3.md);
* reads go through ``VerifiedDiskCache``; with ``expected_sha256`` a cached
  copy is used only while it matches, and a download that does not match is
  refused (``ChecksumMismatchError``) and never cached;
* throttling, 5xx and connection errors are retried with full-jitter
  exponential backoff, a bounded number of times; every call has connect and
  read timeouts; failures become the store's errors, with the URL and the rule.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Optional

from utils.ml.store.base import (
    STORE_SCHEMES,
    ModelStore,
    ModelStoreError,
    ModelTooLargeError,
    UnsafePathError,
)
from utils.ml.store.local import TEMP_PREFIX, LocalModelStore
from utils.ml.store.s3_cache import RateLimitedLog, VerifiedDiskCache
from utils.ml.store.s3_keys import S3Keys
from utils.ml.store.s3_listing import UPLOAD_SEPARATOR, S3Listing
from utils.ml.store.s3_client import (  # noqa: F401 - the errors are part of this module's API
    ChecksumMismatchError,
    NameTaken,
    RetryPolicy,
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3UnavailableError,
    call,
    make_client,
    parse_s3_url,
)

logger = logging.getLogger(__name__)

MARKER_NAME = ".active-generation"  # the same name as the local store's activation marker
DEFAULT_CACHE_MAX_BYTES = 256 * 1024 * 1024


class S3ModelStore(S3Keys, S3Listing, ModelStore):
    """Model objects under ``s3://bucket/prefix``, read through a verified, bounded local cache."""

    def __init__(
        self,
        location: str,
        create: bool = True,
        *,
        cache_dir: Optional[str | os.PathLike[str]] = None,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        access_key: Optional[str] = None,
        secret_key: Optional[str] = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_cap: float = 4.0,
        token_ttl: float = 2.0,
        page_size: int = 1000,
        conditional_writes: Optional[bool] = None,
    ) -> None:
        """``cache_dir`` defaults to ``$ML_MODELS_DIR`` (the contract); ``create=False`` (a dry
        run) creates no directory.  ``conditional_writes=None`` detects If-None-Match support
        at the first write."""
        self.bucket, self.prefix = parse_s3_url(location)
        if max_attempts < 1 or not 1 <= page_size <= 1000:
            raise ValueError("max_attempts must be >= 1 and page_size between 1 and 1000")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.retry = RetryPolicy(max_attempts, backoff_base, backoff_cap)
        self.token_ttl, self.page_size = token_ttl, page_size
        self.client = make_client(self.endpoint_url, region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                                  access_key, secret_key, connect_timeout, read_timeout)
        root = Path(cache_dir if cache_dir is not None else os.environ.get("ML_MODELS_DIR", "./ml_models"))
        tag = hashlib.sha256(f"{self.endpoint_url}|{self.bucket}|{self.prefix}".encode()).hexdigest()[:12]
        self.cache = VerifiedDiskCache(root.expanduser().resolve() / "s3-cache" / f"{self.bucket}-{tag}",
                                       cache_max_bytes, create=create)
        self._conditional = conditional_writes
        self._conditional_lock = threading.Lock()
        self._token: Any = None
        self._token_at = float("-inf")
        self._token_lock = threading.Lock()
        self._warn = RateLimitedLog(logger)

    # -- calls -----------------------------------------------------------------
    def _call(self, what: str, key: Optional[str], fn: Callable[[], Any], attempts: Optional[int] = None) -> Any:
        """Run one S3 call with bounded retries; raise the store's errors (FileNotFoundError for a missing object)."""
        url = f"s3://{self.bucket}/{self._object_key(key)}" if key else f"s3://{self.bucket}/{self.prefix}"
        policy = self.retry if attempts is None else RetryPolicy(attempts, self.retry.base, self.retry.cap)
        return call(fn, what, url, self.bucket, self.endpoint_url, policy, self._warn)

    def _head(self, key: str, attempts: Optional[int] = None) -> Optional[dict[str, Any]]:
        try:
            return self._call("head", key, lambda: self.client.head_object(
                Bucket=self.bucket, Key=self._object_key(key)), attempts)
        except FileNotFoundError:
            return None

    # -- writing -----------------------------------------------------------------
    def _put(self, key: str, data: bytes, conditional: bool, metadata: dict[str, str],
             attempts: Optional[int] = None) -> dict[str, Any]:
        extra = {"IfNoneMatch": "*"} if conditional else {}
        return self._call("publish", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._object_key(key), Body=data, ContentType="application/octet-stream",
            ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            Metadata=metadata, **extra), attempts)

    def conditional_writes(self) -> bool:
        """Whether the server refuses ``If-None-Match: *`` on an existing key (probed once, then remembered)."""
        with self._conditional_lock:
            if self._conditional is None:
                probe = f"{TEMP_PREFIX}probe-{secrets.token_hex(8)}"
                try:
                    self._put(probe, b"1", True, {})
                    try:
                        self._put(probe, b"2", True, {})
                        self._conditional = False
                    except NameTaken:
                        self._conditional = True
                except ModelStoreError as exc:
                    if "NotImplemented" not in str(exc):
                        raise
                    self._conditional = False
                finally:
                    try:
                        self.delete(probe)
                    except (OSError, ModelStoreError):
                        pass  # a leftover probe is a temp object: the orphan sweep removes it
                if not self._conditional:
                    logger.info("s3://%s: the server ignores If-None-Match; publishing checks names with HEAD",
                                self.bucket)
            return self._conditional

    def write_new(self, name_factory: Callable[[], str], data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        # Identifies this write: a retried PUT whose first try did land is recognised as ours.
        write_id = secrets.token_hex(8)
        metadata = {"sha256": digest, "write-id": write_id}
        conditional = self.conditional_writes()
        for _ in range(20):
            name = name_factory()
            self._object_key(name)
            if not conditional and self._head(name) is not None:
                continue
            try:
                self._put(name, data, conditional, metadata)
            except NameTaken:
                head = self._head(name)
                if head is None or head.get("Metadata", {}).get("write-id") != write_id:
                    continue
            self.cache.put(name, data)  # the writer's own copy: this host's next load is local
            return name
        raise ModelStoreError("could not find a free model object name after 20 attempts")

    def delete(self, key: str) -> Optional[int]:
        if UPLOAD_SEPARATOR in key:
            return self._abort_upload(key)
        head = self._head(key)
        self.cache.discard(key)
        if head is None:
            return None
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key)))
        return int(head.get("ContentLength") or 0)

    # -- reading -----------------------------------------------------------------
    def read(self, key: str, max_bytes: int, *, expected_sha256: Optional[str] = None) -> bytes:
        """Bytes of ``key``: the cached copy while it matches ``expected_sha256``, else a download.

        A download is cached only once verified: against ``expected_sha256``
        when given (a mismatch raises ``ChecksumMismatchError``), otherwise
        against the SHA-256 this store recorded in the object's metadata.
        """
        self._object_key(key)
        if expected_sha256:
            cached = self.cache.get(key, expected_sha256, max_bytes)
            if cached is not None:
                return cached
        data, recorded = self._download(key, max_bytes)
        actual = hashlib.sha256(data).hexdigest()
        if expected_sha256 and actual != expected_sha256:
            raise ChecksumMismatchError(f"{self.locate(key)} does not match its expected SHA-256 "
                                        f"(got {actual[:12]}..., want {expected_sha256[:12]}...); not used, not cached")
        if actual == (expected_sha256 or recorded):
            self.cache.put(key, data)
        return data

    def _download(self, key: str, max_bytes: int) -> tuple[bytes, Optional[str]]:
        def get() -> tuple[bytes, Optional[str]]:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            body = response["Body"]
            try:
                size = int(response.get("ContentLength") or 0)
                if size > max_bytes:
                    raise ModelTooLargeError(f"{self.locate(key)} is {size} bytes, over the limit of "
                                             f"{max_bytes} bytes (ML_MAX_MODEL_MB)")
                # StreamingBody.read() raises IncompleteReadError if the body ends short.
                data = body.read()
            finally:
                body.close()
            if len(data) > max_bytes:
                raise ModelTooLargeError(f"{self.locate(key)} sent more than {max_bytes} bytes")
            return data, response.get("Metadata", {}).get("sha256")
        return self._call("read", key, get)

    def size(self, key: str) -> Optional[int]:
        try:
            head = self._head(key)
        except UnsafePathError:
            return None
        return None if head is None else int(head.get("ContentLength") or 0)

    # -- health ------------------------------------------------------------------
    def check_writable(self) -> None:
        """A real write and delete of a tiny probe object: one attempt each (a readiness probe must
        answer within its timeout; the next probe is the retry), within the connect/read timeouts."""
        probe = f"{TEMP_PREFIX}probe-{secrets.token_hex(8)}"
        try:
            self._put(probe, b"probe", False, {}, attempts=1)
        except NameTaken:  # pragma: no cover - an unconditional PUT is never refused as taken
            pass
        self._call("delete", probe, lambda: self.client.delete_object(
            Bucket=self.bucket, Key=self._object_key(probe)), attempts=1)

    def disk_usage(self) -> dict[str, float]:
        """Figures of the disk holding the local cache (as the local store gives them), plus the
        cache's own size and bound."""
        root = self.cache.root
        while not root.exists():
            root = root.parent
        usage: dict[str, float] = LocalModelStore(root, create=False).disk_usage()
        usage["cache_mb"] = round(self.cache.usage_bytes() / 1024 ** 2, 3)
        usage["cache_limit_mb"] = round(self.cache.max_bytes / 1024 ** 2, 3)
        return usage

    # -- cross-host change signal --------------------------------------------------
    def signal_change(self) -> None:
        """Replace the marker object; its new ETag is every host's new token."""
        body = f"{time.time_ns()} {secrets.token_hex(8)}\n".encode()
        response = self._put(MARKER_NAME, body, False, {})
        with self._token_lock:
            self._token, self._token_at = response.get("ETag"), time.monotonic()

    def change_token(self) -> Optional[Hashable]:
        """The marker's ETag, refreshed at most every ``token_ttl`` seconds (one HEAD, no retry).

        Between refreshes the last value is returned without a network call;
        if the refresh fails the last value is kept (a flapping token would
        throw away every cached model) and the next refresh waits ``token_ttl``.
        """
        now = time.monotonic()
        if now - self._token_at < self.token_ttl or not self._token_lock.acquire(blocking=False):
            return self._token  # fresh, or another thread is refreshing it right now
        try:
            try:
                head = self._head(MARKER_NAME, attempts=1)
                self._token = None if head is None else head.get("ETag")
            except (OSError, ModelStoreError) as exc:
                self._warn.warning("change_token", "S3 change token of s3://%s/%s not refreshed: %s",
                                   self.bucket, self.prefix, exc)
            self._token_at = time.monotonic()
            return self._token
        finally:
            self._token_lock.release()


STORE_SCHEMES.setdefault("s3", S3ModelStore)  # type: ignore[arg-type]
