"""A bounded local directory of verified copies of remote model objects.

Used by ``S3ModelStore`` (and usable by any remote store): every entry is a
whole object, written temp file -> fsync -> rename, so a reader never sees a
partial file; an entry is handed out only while its SHA-256 equals the one the
caller expects; the directory never holds more than ``max_bytes`` (least
recently used entries go first, recency = file mtime, shared by every process
using the directory); and a full or read-only disk turns caching off for that
read instead of failing it.  Files are 644, directories 755.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
# A temp file older than this belongs to a writer that died: the eviction pass removes it.
STALE_TEMP_SECONDS = 3600.0
# The same warning at most once a minute per reason (a full disk would otherwise log every read).
_LOG_EVERY_SECONDS = 60.0
_MAX_NAME_BYTES = 200


class RateLimitedLog:
    """Log a warning per reason at most once per ``interval`` seconds (counts what it dropped)."""

    def __init__(self, log: logging.Logger, interval: float = _LOG_EVERY_SECONDS) -> None:
        self.log, self.interval = log, interval
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, reason: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self.interval:
                self._dropped[reason] = self._dropped.get(reason, 0) + 1
                return
            self._last[reason] = now
            dropped = self._dropped.pop(reason, 0)
        suffix = f" ({dropped} similar messages suppressed)" if dropped else ""
        self.log.warning(message + suffix, *args)


def make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, each 755 whatever the umask."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o755)
        except FileExistsError:
            continue
        os.chmod(directory, 0o755)


class VerifiedDiskCache:
    """Whole-object cache in one directory, bounded to ``max_bytes`` (0 disables it)."""

    def __init__(self, root: Path, max_bytes: int, create: bool = True) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0 (got {max_bytes})")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._warn = RateLimitedLog(logger)
        self._evict_lock = threading.Lock()
        if create:
            make_dirs(self.root)

    def path_for(self, key: str) -> Path:
        """One flat file per key: the key percent-encoded, or its SHA-256 when that is too long."""
        name = quote(key, safe="")
        if len(name.encode()) > _MAX_NAME_BYTES or name.startswith((".", TEMP_PREFIX)):
            name = "k-" + hashlib.sha256(key.encode()).hexdigest()
        return self.root / name

    # -- reading -------------------------------------------------------------
    def get(self, key: str, expected_sha256: str, max_bytes: int) -> Optional[bytes]:
        """The cached bytes of ``key`` if they hash to ``expected_sha256``; else None.

        A copy that does not match (the model was replaced, the file was
        tampered with) is removed, so the next read downloads a fresh one.
        """
        path = self.path_for(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None  # not cached (or a symlink/FIFO planted there: never followed)
        try:
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                    return None
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            self._warn.warning("cache_read", "model cache: cannot read %s (%s); downloading instead", path, exc)
            return None
        if len(data) > max_bytes or hashlib.sha256(data).hexdigest() != expected_sha256:
            self._unlink_if_same(path, st)
            return None
        try:
            os.utime(path)  # recency for the LRU eviction
        except OSError:
            pass
        return data

    def _unlink_if_same(self, path: Path, seen: os.stat_result) -> None:
        """Remove a stale entry unless another process has just replaced it with a new file."""
        try:
            now = os.lstat(path)
            if (now.st_ino, now.st_dev) == (seen.st_ino, seen.st_dev):
                path.unlink()
        except OSError:
            pass

    # -- writing -------------------------------------------------------------
    def put(self, key: str, data: bytes) -> bool:
        """Store a verified copy of ``key``; False (logged, rate-limited) when it could not be.

        Never leaves a partial entry: the bytes go to a temp file that is
        fsynced and renamed over the entry only when complete; on any error
        (disk full, read-only, quota) the temp file is removed.
        """
        if not self.max_bytes or len(data) > self.max_bytes:
            return False
        path = self.path_for(key)
        tmp: Optional[str] = None
        try:
            make_dirs(self.root)
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=self.root)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, "error")
            self._warn.warning(f"cache_write_{reason}", "model cache %s: cannot store %s (%s); serving it uncached",
                               self.root, key, exc)
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.evict()
        return True

    def discard(self, key: str) -> None:
        try:
            self.path_for(key).unlink()
        except OSError:
            pass

    # -- bound ---------------------------------------------------------------
    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Finished entries (no temp files), oldest use first."""
        found = []
        try:
            scan = list(os.scandir(self.root))
        except OSError:
            return []
        for entry in scan:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((Path(entry.path), st))
        found.sort(key=lambda item: item[1].st_mtime_ns)
        return found

    def usage_bytes(self) -> int:
        return sum(st.st_size for _, st in self.entries())

    def evict(self) -> int:
        """Remove least recently used entries until the total fits ``max_bytes``; return bytes freed."""
        freed = 0
        with self._evict_lock:
            self._remove_stale_temps()
            entries = self.entries()
            total = sum(st.st_size for _, st in entries)
            for path, st in entries:
                if total <= self.max_bytes:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass  # another process evicted it first
                except OSError as exc:
                    self._warn.warning("cache_evict", "model cache: cannot evict %s (%s)", path, exc)
                    continue
                total -= st.st_size
                freed += st.st_size
        return freed

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        try:
            scan = list(os.scandir(self.root))
        except OSError:
            return
        for entry in scan:
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                continue
