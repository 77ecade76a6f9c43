"""Listing an S3 prefix like a directory, and unfinished multipart uploads: a part of ``S3ModelStore``.

A mixin over the store's ``client``, ``bucket``, ``prefix``, ``page_size``,
``_call``, ``_relative`` and ``_object_key`` (see :mod:`utils.ml.store.s3`).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from utils.ml.store.base import ModelStoreError, StoredFile
from utils.ml.store.local import MODEL_SUFFIXES, TEMP_PREFIX

UPLOAD_SEPARATOR = "?uploadId="  # temp-file keys of unfinished multipart uploads: "<key>?uploadId=<id>"


class S3Listing:
    """``iter_files`` / ``iter_temp_files`` over ListObjectsV2 and ListMultipartUploads, paginated by hand."""

    client: Any
    bucket: str
    prefix: str
    page_size: int
    _call: Any
    _relative: Any
    _object_key: Any

    # -- listing -----------------------------------------------------------------
    def _pages(self, operation: str) -> Iterator[dict[str, Any]]:
        """Every page of a listing under the prefix (top level only, like the local store).

        Paginated by hand so that a retried call asks again for the same page
        (a paginator that raised once would end the listing silently).
        """
        method = getattr(self.client, operation)
        base = f"{self.prefix}/" if self.prefix else ""
        markers: dict[str, str] = {}
        while True:
            size_arg = {"MaxKeys": self.page_size} if operation == "list_objects_v2" else {"MaxUploads": self.page_size}
            page = self._call("list", None, lambda: method(Bucket=self.bucket, Prefix=base, Delimiter="/",
                                                           **size_arg, **markers))
            yield page
            if not page.get("IsTruncated"):
                return
            if operation == "list_objects_v2":
                markers = {"ContinuationToken": page["NextContinuationToken"]}
            else:
                markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def _objects(self) -> Iterator[StoredFile]:
        for page in self._pages("list_objects_v2"):
            for item in page.get("Contents", []):
                name = self._relative(item["Key"])
                yield StoredFile(name, int(item["Size"]), item["LastModified"].timestamp())

    def iter_files(self) -> Iterator[StoredFile]:
        return (f for f in self._objects() if f.key.endswith(MODEL_SUFFIXES) and not f.key.startswith(TEMP_PREFIX))

    def iter_temp_files(self) -> Iterator[StoredFile]:
        """Probe objects left by a killed writer, and unfinished multipart uploads (``<key>?uploadId=<id>``)."""
        yield from (f for f in self._objects() if f.key.startswith(TEMP_PREFIX))
        for page in self._pages("list_multipart_uploads"):
            for upload in page.get("Uploads", []):
                name = self._relative(upload["Key"])
                yield StoredFile(f"{name}{UPLOAD_SEPARATOR}{upload['UploadId']}", 0, upload["Initiated"].timestamp())

    def _abort_upload(self, key: str) -> Optional[int]:
        name, upload_id = key.split(UPLOAD_SEPARATOR, 1)
        full = self._object_key(name)
        try:
            parts = self._call("list parts of", name, lambda: self.client.list_parts(
                Bucket=self.bucket, Key=full, UploadId=upload_id)).get("Parts", [])
        except (FileNotFoundError, ModelStoreError):
            parts = []
        try:
            self._call("abort upload of", name, lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id))
        except FileNotFoundError:  # NoSuchUpload answers 404: already gone
            return None
        return sum(int(part.get("Size") or 0) for part in parts)
