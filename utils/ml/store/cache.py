"""The per-process cache of loaded models: bounded, thread-safe, never stale for long.

An entry is served while the store's change token is the one it was
validated under and it is younger than the TTL; after that it must be
re-validated against the database (same model id, same checksum) before it
is served again.  Any activation signalled through the store changes the
token in every process, so a rollback is seen at once, not after the TTL.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

Key = tuple[str, str]  # (model_type, metric_type)
Loaded = tuple[Any, Optional[str], Optional[str]]  # (model or None, reason, detail)


@dataclass
class CacheEntry:
    model: Any
    model_id: int
    checksum: Optional[str]
    token: Optional[Hashable]
    validated_at: float  # time.monotonic()


class ModelCache:
    """An LRU of at most ``size`` models (0 disables it), each trusted for ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[Key, CacheEntry] = OrderedDict()
        self._lock = threading.RLock()
        self._key_locks: dict[Key, threading.Lock] = {}

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: Key, token: Optional[Hashable], fresh_only: bool = True) -> Optional[CacheEntry]:
        """The entry for ``key``; with ``fresh_only``, only if its token matches and its TTL has not run out."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if fresh_only and (entry.token != token or time.monotonic() - entry.validated_at >= self.ttl):
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: Key, entry: CacheEntry) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def revalidated(self, entry: CacheEntry, token: Optional[Hashable]) -> CacheEntry:
        """Mark ``entry`` checked against the database now, under ``token``."""
        with self._lock:
            entry.token, entry.validated_at = token, time.monotonic()
        return entry

    def get_or_load(self, key: Key, token: Optional[Hashable], model_id: int, checksum: Optional[str],
                    read: Callable[[], Loaded]) -> tuple[Any, str, Optional[str], Optional[str]]:
        """``(model, source, reason, detail)``: the cached model if it is still version ``model_id``
        with ``checksum`` (source "cache"), else ``read()``'s, remembered on success (source "file").

        One reader per key: threads asking for the same cold model wait for the
        first one's read instead of each reading the file.  Without a cache
        nobody waits (a waiter would have nothing to reuse, and reads and
        SHA-256 release the GIL, so concurrent loads overlap there).
        """
        if not self.enabled:
            model, reason, detail = read()
            return model, "file", reason, detail
        with self.key_lock(key):
            entry = self.get(key, token, fresh_only=False)
            if entry is not None and entry.model_id == model_id and entry.checksum == checksum:
                return self.revalidated(entry, token).model, "cache", None, None
            model, reason, detail = read()
            if model is not None:
                self.put(key, CacheEntry(model, model_id, checksum, token, time.monotonic()))
            return model, "file", reason, detail

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def key_lock(self, key: Key) -> threading.Lock:
        """One lock per key: concurrent cold loads of the same model read the file once."""
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())
