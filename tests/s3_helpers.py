"""Fixtures and helpers of the tests that run the app on S3 (``ML_STORE_URL``) against nanio.

The server is real (``tests/s3server.py``); the app reads the standard AWS_*
variables from its environment, as in production, so the tests set them with
``monkeypatch`` (in-process) or pass them to the processes they start.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests import dbutil
from tests.s3server import S3Server, running_server

AMBIENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE",
           "AWS_DEFAULT_REGION", "ML_STORE_URL")


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch, tmp_path) -> None:
    """Nothing from the developer's ~/.aws, and never the instance-metadata endpoint."""
    for name in AMBIENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[S3Server]:
    with running_server(tmp_path_factory.mktemp("s3")) as srv:
        yield srv


@pytest.fixture
def bucket(server) -> str:
    return server.create_bucket()


@pytest.fixture
def aws(server, monkeypatch) -> S3Server:
    """This process talks to ``server`` through the standard AWS_* variables."""
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return server


def s3_app(database_url: str, models_dir: Path, url: str, **overrides: Any):
    """An app whose models live at ``url`` with ``models_dir`` as its cache."""
    return dbutil.make_app(database_url, models_dir, ML_STORE_URL=url, **overrides)


def objects(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes, straight from the server."""
    client = server.client()
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listing}


def model_objects(server: S3Server, bucket: str, prefix: str = "models/") -> dict[str, bytes]:
    return {key: data for key, data in objects(server, bucket, prefix).items() if key.endswith((".pkl", ".pkl.gz"))}


def top_level_models(directory: Path) -> set[str]:
    """Model files directly in ``directory`` (the local store's layout; the S3 cache is a subdirectory)."""
    if not directory.exists():
        return set()
    return {p.name for p in directory.iterdir() if p.is_file() and p.name.endswith((".pkl", ".pkl.gz"))}


def cache_files(directory: Path) -> list[Path]:
    root = directory / "s3-cache"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
