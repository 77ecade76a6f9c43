"""The S3 side of ``S3ModelStore``: URL rules, the botocore client, retries and error mapping.

Every call has a connect and a read timeout and is tried at most
``RetryPolicy.attempts`` times; throttling (SlowDown, 429), 5xx, timeouts and
broken connections are retried after a full-jitter exponential backoff
(``uniform(0, min(cap, base * 2**n))``), everything else fails at once.
Failures become the store's errors: ``FileNotFoundError`` for a missing
object, ``S3AccessDeniedError`` (a ``PermissionError``) for refused
credentials, ``S3BucketNotFoundError``, ``S3UnavailableError`` once the retry
budget is spent, and ``ModelStoreError`` for the rest, each with the URL.
"""
from __future__ import annotations

import errno
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)

from utils.ml.store.base import ChecksumMismatchError, ModelStoreError  # noqa: F401 - re-exported
from utils.ml.store.s3_cache import RateLimitedLog
from utils.ml.store.s3_url import parse_s3_url  # noqa: F401 - re-exported

_RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
})
_DENIED_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403",
})
_TAKEN_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})


class S3AccessDeniedError(ModelStoreError, PermissionError):
    """The server refused the credentials or the operation (bad key, bad signature, policy)."""


class S3BucketNotFoundError(ModelStoreError):
    """The bucket of ``ML_STORE_URL`` does not exist on the endpoint."""


class S3UnavailableError(ModelStoreError):
    """The endpoint did not answer usefully within the retry budget."""


class NameTaken(Exception):
    """A conditional PUT found the name already used."""


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per call (>= 1) and the backoff between them, in seconds."""

    attempts: int = 3
    base: float = 0.25
    cap: float = 4.0

    def delay(self, attempt: int) -> float:
        # Full jitter: retries from many processes do not arrive in step.
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def make_client(endpoint_url: Optional[str], region: str, access_key: Optional[str], secret_key: Optional[str],
                connect_timeout: float, read_timeout: float) -> Any:
    """A boto3 S3 client with bounded timeouts and no retries of its own (``call`` retries)."""
    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                    region_name=region)
    return session.client("s3", endpoint_url=endpoint_url, config=Config(
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        retries={"total_max_attempts": 1},  # our own loop retries, with known numbers
        # Path style: what MinIO, Ceph and other self-hosted servers expect behind one host name.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # We send Content-MD5 and SHA-256 ourselves and verify every body; botocore's
        # default aws-chunked CRC trailers are refused by several S3-compatible servers.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        max_pool_connections=16, tcp_keepalive=True,
    ))


def call(fn: Callable[[], Any], what: str, url: str, bucket: str, endpoint: Optional[str],
         policy: RetryPolicy, warn: RateLimitedLog) -> Any:
    """Run one S3 call under ``policy``; raise the store's errors, each naming ``url``."""
    attempts = policy.attempts
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in _TAKEN_CODES:
                raise NameTaken(code) from None
            if code == "NoSuchBucket":
                raise S3BucketNotFoundError(f"{what} {url}: bucket {bucket!r} does not exist at "
                                            f"{endpoint or 'AWS'}") from None
            if code in ("NoSuchKey", "NoSuchUpload", "404", "NotFound"):
                raise FileNotFoundError(errno.ENOENT, f"{what} {url}: no such object") from None
            if code in _DENIED_CODES:
                raise S3AccessDeniedError(errno.EACCES, f"{what} {url}: refused by the server ({code}); check "
                                          "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket policy") from None
            # A 400 with no S3 error document is not S3 speaking (a proxy, or a connection
            # left out of step by an earlier refused upload): worth one more try.
            garbled = status == 400 and code == "400"
            if code not in _RETRYABLE_CODES and status < 500 and status != 429 and not garbled:
                raise ModelStoreError(f"{what} {url}: {code}: {error.get('Message') or exc}") from None
            problem: Exception = exc
        except NoCredentialsError:
            raise S3AccessDeniedError(errno.EACCES, f"{what} {url}: no S3 credentials; set "
                                      "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        # Refused or reset connections, timeouts, bodies cut short: the server may be back soon.
        except (BotoConnectionError, HTTPClientError, IncompleteReadError) as exc:
            problem = exc
        except BotoCoreError as exc:
            raise ModelStoreError(f"{what} {url}: {exc}") from None
        if attempt == attempts:
            raise S3UnavailableError(f"{what} {url}: failed after {attempts} attempts: {problem}") from None
        delay = policy.delay(attempt)
        warn.warning(f"retry_{what}", "S3 %s %s: %s; retry %d/%d in %.2fs",
                     what, url, problem, attempt, attempts - 1, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")

