"""The local model store: files in one directory (``ML_MODELS_DIR``, a path or ``file://`` URL).

Writes are temp file + fsync + no-clobber link, so no reader ever sees a
partial file and no file is ever overwritten; reads refuse symlinks, FIFOs,
escapes from the directory and files over the size limit.  Activations are
signalled to every process sharing the directory through a marker file.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlparse

from utils.ml.store.base import (
    ModelStore,
    ModelStoreError,
    ModelTooLargeError,
    StoredFile,
    UnsafePathError,
    register_scheme,
)

MODEL_SUFFIXES = (".pkl", ".pkl.gz")
TEMP_PREFIX = ".tmp-"
# Replaced on every activation; its (inode, mtime) is the change token.
CHANGE_MARKER = ".active-generation"


@register_scheme("", "file")
class LocalModelStore(ModelStore):
    """Files in one directory (755), each file 644, written temp-fsync-rename."""

    @classmethod
    def from_url(cls, url: str, create: bool = True, **options: Any) -> "LocalModelStore":
        parsed = urlparse(url)
        return cls(parsed.path if parsed.scheme.lower() == "file" else url, create=create, **options)

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        """``create=False`` leaves a missing directory missing (a dry run touches nothing)."""
        self.root = Path(root).expanduser().resolve()
        if create and not self.root.is_dir():
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            # mkdir's mode is masked by the umask; the contract says 755.
            os.chmod(self.root, 0o755)

    # -- paths -------------------------------------------------------------
    def resolve(self, key: str) -> Path:
        """Absolute path of ``key``, refusing anything that escapes the root.

        ``resolve()`` follows symlinks, so a link pointing out is caught too;
        ``is_relative_to`` compares path components, not string prefixes
        (``/app/ml_models_evil`` is not inside ``/app/ml_models``).
        """
        if not key or "\x00" in key:
            raise UnsafePathError(f"model key {key!r} is empty or contains NUL")
        path = (self.root / key).resolve()
        if path == self.root or not path.is_relative_to(self.root):
            raise UnsafePathError(f"model key {key!r} resolves outside {self.root}")
        return path

    def _entry(self, key: str) -> Path:
        """The directory entry named by ``key`` itself, without following a final symlink.

        Used to delete: removing a symlink must remove the link, never the file
        it points at (which could be another model's file).
        """
        if not key or "\x00" in key:
            raise UnsafePathError(f"model key {key!r} is empty or contains NUL")
        path = Path(os.path.normpath(self.root / key))
        if path.name in ("", ".", "..") or not path.parent.resolve().is_relative_to(self.root):
            raise UnsafePathError(f"model key {key!r} resolves outside {self.root}")
        return path

    @property
    def local_root(self) -> Path:
        return self.root

    def key_for(self, path: str | Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def locate(self, key: str) -> str:
        return str(self.resolve(key))

    def location_info(self, key: str | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": "local", "models_dir": str(self.root)}
        if key is not None:
            info["key"] = key
        return info

    # -- writing -------------------------------------------------------------
    def write_new(self, name_factory: Callable[[], str], data: bytes) -> str:
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            key = self._publish(tmp, name_factory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_dir()
        return key

    def _publish(self, tmp: Path, name_factory: Callable[[], str]) -> str:
        """Give the finished temp file its final name without ever overwriting."""
        for _ in range(20):
            name = name_factory()
            final = self.resolve(name)
            try:
                # link() fails if the name exists: a no-clobber rename.
                os.link(tmp, final)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                # Filesystems without hard links: names carry a random part,
                # so checking first and renaming is safe enough here.
                if final.exists():
                    continue
                os.replace(tmp, final)
                return name
            tmp.unlink()
            return name
        raise ModelStoreError("could not find a free model file name after 20 attempts")

    def _fsync_dir(self) -> None:
        # The rename is durable only once the directory entry is on disk.
        try:
            dir_fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    # -- reading -------------------------------------------------------------
    def read(self, key: str, max_bytes: int, *, expected_sha256: str | None = None) -> bytes:
        # The file is the only copy: expected_sha256 has nothing to choose between.
        path = self.resolve(key)
        # O_NOFOLLOW: the checked path cannot be swapped for a symlink before
        # the open.  O_NONBLOCK: a FIFO planted under a model's name must not
        # hang the loader (it is refused below as not a regular file).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ModelStoreError(f"model key {key!r} is not a regular file")
            size = st.st_size
            if size > max_bytes:
                raise ModelTooLargeError(
                    f"model file {key!r} is {size} bytes, over the limit of {max_bytes} bytes (ML_MAX_MODEL_MB)"
                )
            # One byte past the size fstat gave: a file growing under us is
            # noticed without allocating a max_bytes buffer for every load.
            data = handle.read(size + 1)
            if len(data) > size:
                data += handle.read(max_bytes + 1 - len(data))
        if len(data) > max_bytes:
            raise ModelTooLargeError(f"model file {key!r} grew past {max_bytes} bytes while being read")
        return data

    def size(self, key: str) -> int | None:
        try:
            return self.resolve(key).stat().st_size
        except (FileNotFoundError, UnsafePathError):
            return None

    def delete(self, key: str) -> Optional[int]:
        """Unlink ``key``; the bytes freed are the blocks allocated (a sparse file's apparent size is
        not disk), and 0 while another hard link keeps them; None when the file was already gone."""
        path = self._entry(key)
        try:
            st = path.lstat()
            path.unlink()
        except FileNotFoundError:
            return None
        return st.st_blocks * 512 if st.st_nlink <= 1 else 0

    def _scan(self, want_temp: bool) -> Iterator[StoredFile]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for entry in entries:
            is_temp = entry.name.startswith(TEMP_PREFIX)
            if is_temp != want_temp:
                continue
            if not want_temp and not entry.name.endswith(MODEL_SUFFIXES):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield StoredFile(entry.name, st.st_size, st.st_mtime)

    def iter_files(self) -> Iterator[StoredFile]:
        return self._scan(want_temp=False)

    def iter_temp_files(self) -> Iterator[StoredFile]:
        return self._scan(want_temp=True)

    def check_writable(self) -> None:
        if not self.root.is_dir():
            raise ModelStoreError(f"models directory {self.root} does not exist")
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".probe", dir=self.root)
        except OSError as exc:
            raise ModelStoreError(f"models directory {self.root} is not writable: {exc.strerror}") from exc
        try:
            # A real byte, flushed to the device: creating an empty file succeeds on a full disk.
            os.write(fd, b"\0")
            os.fsync(fd)
        except OSError as exc:
            raise ModelStoreError(f"models directory {self.root} cannot take a 1-byte write: {exc.strerror}") from exc
        finally:
            os.close(fd)
            os.unlink(name)

    def disk_usage(self) -> dict[str, float]:
        usage = shutil.disk_usage(self.root)
        gib = 1024 ** 3
        return {
            "total_gb": round(usage.total / gib, 2),
            "used_gb": round(usage.used / gib, 2),
            "free_gb": round(usage.free / gib, 2),
            "percent": round(100.0 * usage.used / usage.total, 1) if usage.total else 0.0,
        }

    # -- cross-process signal ------------------------------------------------
    def signal_change(self) -> None:
        """Atomically replace the marker file: every process sharing the directory sees a new token."""
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".marker", dir=self.root)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{time.time_ns()}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.root / CHANGE_MARKER)

    def change_token(self) -> tuple[int, int] | None:
        """The marker file's (inode, mtime): changes on every signal; one ``stat`` call."""
        try:
            st = os.stat(self.root / CHANGE_MARKER)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)
