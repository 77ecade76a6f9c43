"""Loading bytes nobody has vouched for: the minibar app's BLOBs and joblib files, under an allow-list.

A legacy BLOB or an adopted joblib file has no checksum of ours: it is what
the minibar app (or anyone with write access to its table or volume) left.
Such bytes are only ever unpickled here, by an unpickler whose
``find_class`` resolves nothing but the classes a scikit-learn model is made
of (estimators, trees, scalers, pipelines, numpy arrays and dtypes, joblib's
array wrapper, our own feature transformer and causal detector) and a handful of harmless
builtins.  Anything else (``os.system``, ``builtins.eval``, a numpy or
sklearn *function*) raises :class:`UnsafePickleError` before it can be called.

Formats recognised by their first bytes (never by the file name):

* ``FILE_BASED`` (10 bytes): the app's marker, "the model is in a file". Never unpickled.
* ``0x80`` (pickle protocol 2+): ``pickle.dumps`` of a model (the BLOB era).
* ``0x78`` (zlib): ``joblib.dump(..., compress=3)`` (the file era).
* ``0x1f 0x8b`` (gzip): our own ``.pkl.gz``.
"""
from __future__ import annotations

import io
import pickle
import zlib
from typing import Any

FILE_BASED = b"FILE_BASED"

# Decompressed size allowed per compressed byte limit: a model compresses ~3-5x;
# a "zip bomb" claiming more is refused instead of filling memory.
MAX_EXPANSION = 20

_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "slice", "range", "complex", "bytearray",
                       "object", "float", "int", "bool", "str", "bytes"})
_NUMPY = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random.mtrand", "RandomState"),
    ("numpy.random._mt19937", "MT19937"), ("numpy.random._generator", "Generator"),
})
_OTHER = frozenset({
    ("copyreg", "_reconstructor"), ("_codecs", "encode"), ("collections", "OrderedDict"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"), ("joblib.numpy_pickle_compat", "NDArrayWrapper"),
    ("utils.ml.pipeline.features", "EntityRelativeFeatures"), ("utils.ml.features", "EntityRelativeFeatures"),
    # The causal per-entity detector (feature version 2): plain state, numpy arrays and one forest.
    ("utils.ml.detector.model", "TrainedDetector"), ("utils.ml.detector.state", "EntityStats"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """The bytes name a global outside the allow-list; nothing was called."""


def _allowed(module: str, name: str, obj: Any) -> bool:
    if module == "builtins":
        return name in _BUILTINS
    if (module, name) in _NUMPY or (module, name) in _OTHER:
        return True
    if module.startswith("numpy.") and name.endswith("DType") and isinstance(obj, type):
        return True  # numpy 2's dtype classes (numpy.dtypes.Float64DType ...)
    if module.startswith("sklearn.") and isinstance(obj, type):
        # Classes only (never a function): estimators and their parts (Tree, loss objects...).
        from sklearn.base import BaseEstimator
        from sklearn.tree._tree import Tree

        return issubclass(obj, (BaseEstimator, Tree)) or module.startswith("sklearn.tree._")
    return False


def _checked(module: str, name: str, resolve: Any) -> Any:
    if not (module in ("builtins", "copyreg", "_codecs", "collections", "joblib.numpy_pickle",
                       "joblib.numpy_pickle_compat", "utils.ml.pipeline.features", "utils.ml.features",
                       "utils.ml.detector.model", "utils.ml.detector.state")
            or module.startswith(("numpy", "sklearn."))):
        raise UnsafePickleError(f"refused global {module}.{name}: not a model class")
    obj = resolve(module, name)
    if not _allowed(module, name, obj):
        raise UnsafePickleError(f"refused global {module}.{name}: not a model class")
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _checked(module, name, super().find_class)


def _restricted_joblib_unpickler() -> type:
    from joblib.numpy_pickle import NumpyUnpickler

    class RestrictedNumpyUnpickler(NumpyUnpickler):  # type: ignore[misc]
        def find_class(self, module: str, name: str) -> Any:
            return _checked(module, name, super().find_class)

    return RestrictedNumpyUnpickler


def _inflate(data: bytes, limit: int, kind: str) -> bytes:
    inflater = zlib.decompressobj(wbits=31 if kind == "gzip" else 15)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise pickle.UnpicklingError(f"{kind} data expands past {limit} bytes")
    return out


def describe_format(data: bytes) -> str:
    """``marker``, ``pickle``, ``joblib_zlib``, ``gzip`` or ``unknown`` (from the first bytes)."""
    if data == FILE_BASED:
        return "marker"
    if data[:1] == b"\x80":
        return "pickle"
    if data[:1] == b"\x78":
        return "joblib_zlib"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    return "unknown"


def restricted_loads(data: bytes, max_bytes: int) -> Any:
    """The object in ``data`` (any format above), unpickled under the allow-list.

    Raises :class:`UnsafePickleError` for a refused global, ``pickle.UnpicklingError``
    for the marker, an unknown format or a bomb, and whatever a malformed stream raises.
    """
    kind = describe_format(data)
    limit = max_bytes * MAX_EXPANSION
    if kind == "marker":
        raise pickle.UnpicklingError("the FILE_BASED marker is not a model (its file is in model_path)")
    if kind == "pickle":
        return RestrictedUnpickler(io.BytesIO(data)).load()
    if kind == "gzip":
        return RestrictedUnpickler(io.BytesIO(_inflate(data, limit, "gzip"))).load()
    if kind == "joblib_zlib":
        raw = _inflate(data, limit, "zlib")
        unpickler = _restricted_joblib_unpickler()("<legacy model>", io.BytesIO(raw), ensure_native_byte_order=True)
        return unpickler.load()
    raise pickle.UnpicklingError(f"not a pickle or joblib stream (starts with {data[:4]!r})")


def needs_restriction(data: bytes) -> bool:
    """True for formats only the minibar app wrote (joblib): always loaded under the allow-list."""
    return describe_format(data) == "joblib_zlib"


__all__ = ["FILE_BASED", "RestrictedUnpickler", "UnsafePickleError", "describe_format", "needs_restriction",
           "restricted_loads"]
