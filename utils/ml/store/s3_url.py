"""The rules of an ``s3://bucket/prefix`` URL, without importing boto3.

The settings check ``ML_STORE_URL`` with :func:`s3_url_problem` when a
process starts, and ``S3ModelStore`` parses it with :func:`parse_s3_url`;
both say the same rule.  Importing this module costs nothing (boto3 takes
~260 ms to import and is loaded only when an S3 store is opened).
"""
from __future__ import annotations

import re
from typing import Optional
from urllib.parse import urlparse

_BUCKET_RULE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def s3_url_problem(url: str) -> Optional[str]:
    """The rule ``url`` breaks, or None when it is a usable ``s3://bucket/prefix``."""
    parsed = urlparse(url)
    if parsed.scheme.lower() != "s3":
        return "must start with s3:// (s3://bucket/prefix); unset it to keep models in ML_MODELS_DIR"
    if "@" in parsed.netloc:
        return "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if parsed.query or parsed.fragment:
        return "no query or fragment allowed (s3://bucket/prefix)"
    bucket = parsed.netloc
    if not _BUCKET_RULE.fullmatch(bucket) or ".." in bucket:
        return (f"bucket {bucket!r} must be 3-63 characters of a-z, 0-9, '.' and '-', "
                "starting and ending with a letter or digit")
    prefix = parsed.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        return f"prefix {prefix!r} has an empty, '.' or '..' segment"
    return None


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without surrounding slashes); ValueError naming the rule."""
    problem = s3_url_problem(url)
    if problem:
        raise ValueError(f"ML_STORE_URL={url!r}: {problem}")
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.strip("/")
