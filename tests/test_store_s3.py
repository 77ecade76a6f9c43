"""S3ModelStore against a real S3 server (nanio, tests/s3server.py) on loopback: no mocks.

Faults are real: the server is SIGKILLed while an upload or a download is in
flight, credentials are wrong, the bucket is missing, objects are deleted or
replaced behind the cache's back, and the cache sits on a full tmpfs.
"""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.procutil import ROOT, VENV_BIN
from tests.s3server import S3Server, running_server
from utils.ml.store import ModelStoreError, UnsafePathError, open_store
from utils.ml.store.s3 import (
    ChecksumMismatchError,
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3ModelStore,
    S3UnavailableError,
    parse_s3_url,
)

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch, tmp_path):
    """Nothing from the developer's ~/.aws, and never the instance-metadata endpoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("s3")) as srv:
        yield srv


@pytest.fixture
def own_server(tmp_path):
    """A server of this test alone: it may be killed and restarted."""
    with running_server(tmp_path / "s3") as srv:
        yield srv


def make_store(srv: S3Server, url: str, cache_dir: Path, **options) -> S3ModelStore:
    options = {"endpoint_url": srv.endpoint, "access_key": srv.access_key, "secret_key": srv.secret_key,
               "backoff_base": 0.05, "backoff_cap": 0.2, "token_ttl": 0.2, **options}
    return S3ModelStore(url, cache_dir=cache_dir, **options)


@pytest.fixture
def bucket(server) -> str:
    return server.create_bucket()


@pytest.fixture
def host_a(server, bucket, tmp_path) -> S3ModelStore:
    return make_store(server, f"s3://{bucket}/models", tmp_path / "host-a")


@pytest.fixture
def host_b(server, bucket, tmp_path) -> S3ModelStore:
    return make_store(server, f"s3://{bucket}/models", tmp_path / "host-b")


def names(*items: str):
    it = iter(items)
    return lambda: next(it)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_files(store: S3ModelStore) -> list[str]:
    return sorted(p.name for p in store.cache.root.iterdir()) if store.cache.root.exists() else []


def test_round_trip_is_verified_cached_and_named_like_local_files(server, bucket, host_a):
    data = os.urandom(50_000)
    key = host_a.write_new(names("isolation_forest_stok_seviye_20260101_120000_000001ab12.pkl"), data)
    assert key == "isolation_forest_stok_seviye_20260101_120000_000001ab12.pkl"
    assert host_a.locate(key) == f"s3://{bucket}/models/{key}"
    assert host_a.size(key) == len(data)
    raw = server.client().get_object(Bucket=bucket, Key=f"models/{key}")
    assert raw["Body"].read() == data
    assert raw["Metadata"]["sha256"] == sha(data)

    assert host_a.read(key, MB, expected_sha256=sha(data)) == data
    entry = host_a.cache.path_for(key)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o644
    assert stat.S_IMODE(host_a.cache.root.stat().st_mode) == 0o755
    assert stat.S_IMODE(host_a.cache.root.parent.stat().st_mode) == 0o755
    with pytest.raises(ModelStoreError, match="over the limit"):
        host_a.read(key, 1000)


def test_an_existing_key_is_never_overwritten(server, bucket, host_a):
    first = host_a.write_new(names("m_t_1.pkl"), b"first version")
    # The factory offers the taken name again: the store must move on to the next one.
    second = host_a.write_new(names("m_t_1.pkl", "m_t_2.pkl"), b"second version")
    assert (first, second) == ("m_t_1.pkl", "m_t_2.pkl")
    client = server.client()
    assert client.get_object(Bucket=bucket, Key="models/m_t_1.pkl")["Body"].read() == b"first version"
    assert client.get_object(Bucket=bucket, Key="models/m_t_2.pkl")["Body"].read() == b"second version"
    # nanio ignores If-None-Match, which the store detected; it checks names with HEAD instead.
    assert host_a.conditional_writes() is False
    with pytest.raises(ModelStoreError, match="free model object name"):
        host_a.write_new(lambda: "m_t_1.pkl", b"third")


def test_listing_pages_through_models_temp_objects_and_unfinished_uploads(server, bucket, tmp_path):
    store = make_store(server, f"s3://{bucket}/models", tmp_path / "c", page_size=2)
    written = {store.write_new(names(f"a_b_{i}.pkl"), b"x" * (i + 1)) for i in range(5)}
    written.add(store.write_new(names("a_b_9.pkl.gz"), b"gz"))
    client = server.client()
    for key in ("models/notes.txt", "models/sub/a_b_7.pkl", "elsewhere/a_b_8.pkl", "models/.tmp-probe-dead"):
        client.put_object(Bucket=bucket, Key=key, Body=b"other")
    upload = client.create_multipart_upload(Bucket=bucket, Key="models/a_b_big.pkl")
    client.upload_part(Bucket=bucket, Key="models/a_b_big.pkl", UploadId=upload["UploadId"], PartNumber=1,
                       Body=b"p" * 1234)

    files = list(store.iter_files())
    assert {f.key for f in files} == written
    assert {f.key: f.size_bytes for f in files}["a_b_4.pkl"] == 5
    assert all(abs(f.modified_at - time.time()) < 300 for f in files)
    temps = {f.key for f in store.iter_temp_files()}
    upload_key = f"a_b_big.pkl?uploadId={upload['UploadId']}"
    assert temps == {".tmp-probe-dead", upload_key}

    assert store.delete(upload_key) == 1234
    assert store.delete(".tmp-probe-dead") == 5
    assert list(store.iter_temp_files()) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert store.delete("a_b_0.pkl") == 1 and store.delete("a_b_0.pkl") is None  # None: already gone
    assert store.size("a_b_0.pkl") is None


def test_wrong_credentials_are_refused_clearly_and_write_nothing(server, bucket, host_a, tmp_path):
    key = host_a.write_new(names("m_t_1.pkl"), b"model")
    before = server.client().list_objects_v2(Bucket=bucket)["KeyCount"]
    bad_secret = make_store(server, f"s3://{bucket}/models", tmp_path / "bad", secret_key="not-the-secret")
    with pytest.raises(S3AccessDeniedError, match="SignatureDoesNotMatch.*AWS_SECRET_ACCESS_KEY") as info:
        bad_secret.check_writable()
    assert isinstance(info.value, PermissionError)  # the manager reports it as permission_denied
    with pytest.raises(PermissionError):
        bad_secret.write_new(names("m_t_2.pkl"), b"never stored")
    with pytest.raises(PermissionError):
        bad_secret.read(key, MB)
    bad_key = make_store(server, f"s3://{bucket}/models", tmp_path / "bad2", access_key="AKNOBODY")
    with pytest.raises(S3AccessDeniedError, match="InvalidAccessKeyId"):
        bad_key.write_new(names("m_t_3.pkl"), b"never stored")
    assert server.client().list_objects_v2(Bucket=bucket)["KeyCount"] == before
    assert cache_files(bad_secret) == [] and cache_files(bad_key) == []


def test_a_missing_bucket_is_named_not_reported_as_a_missing_file(server, tmp_path):
    store = make_store(server, "s3://no-such-bucket-here/models", tmp_path / "c")
    with pytest.raises(S3BucketNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        store.check_writable()
    with pytest.raises(S3BucketNotFoundError):
        store.read("m_t_1.pkl", MB)
    with pytest.raises(S3BucketNotFoundError):
        store.write_new(names("m_t_1.pkl"), b"model")
    with pytest.raises(S3BucketNotFoundError):
        list(store.iter_files())


def test_object_deleted_behind_the_cache(server, bucket, host_a, host_b):
    data = os.urandom(20_000)
    key = host_a.write_new(names("m_t_1.pkl"), data)
    assert host_a.read(key, MB, expected_sha256=sha(data)) == data
    server.client().delete_object(Bucket=bucket, Key=f"models/{key}")
    # The cached copy still matches the checksum the caller vouches for: usable.
    assert host_a.read(key, MB, expected_sha256=sha(data)) == data
    # Without a cached copy the object is simply missing.
    with pytest.raises(FileNotFoundError, match="no such object"):
        host_b.read(key, MB, expected_sha256=sha(data))
    # Without an expected checksum nothing cached is trusted: the store asks the server.
    with pytest.raises(FileNotFoundError):
        host_a.read(key, MB)


def test_object_replaced_with_other_bytes(server, bucket, host_a, host_b):
    original, forged = os.urandom(30_000), os.urandom(30_000)
    key = host_a.write_new(names("m_t_1.pkl"), original)
    assert host_a.read(key, MB, expected_sha256=sha(original)) == original
    server.client().put_object(Bucket=bucket, Key=f"models/{key}", Body=forged)

    # Host A's cached copy matches what the database vouches for: it is used.
    assert host_a.read(key, MB, expected_sha256=sha(original)) == original
    # Host B must download, gets other bytes: refused and not cached.
    with pytest.raises(ChecksumMismatchError, match="does not match its expected SHA-256"):
        host_b.read(key, MB, expected_sha256=sha(original))
    assert cache_files(host_b) == []
    # If the database now vouches for the new bytes, A's stale copy is replaced by a download.
    assert host_a.read(key, MB, expected_sha256=sha(forged)) == forged
    assert host_a.cache.path_for(key).read_bytes() == forged
    # A cache file tampered with on disk is never handed out either.
    host_a.cache.path_for(key).write_bytes(b"tampered")
    assert host_a.read(key, MB, expected_sha256=sha(forged)) == forged
    assert host_a.cache.path_for(key).read_bytes() == forged


def test_the_cache_stays_within_its_bound_least_recently_used_first(server, bucket, host_a, tmp_path):
    blobs = {f"m_t_{i}.pkl": os.urandom(100_000) for i in range(4)}
    for key, data in blobs.items():
        host_a.write_new(names(key), data)
    reader = make_store(server, f"s3://{bucket}/models", tmp_path / "small", cache_max_bytes=250_000)
    for key in ("m_t_0.pkl", "m_t_1.pkl", "m_t_0.pkl", "m_t_2.pkl"):
        assert reader.read(key, MB, expected_sha256=sha(blobs[key])) == blobs[key]
        time.sleep(0.02)  # file mtimes (the recency) are only as fine as the kernel's clock tick
    cached = cache_files(reader)
    assert cached == ["m_t_0.pkl", "m_t_2.pkl"]  # m_t_1 was the least recently used
    assert reader.cache.usage_bytes() <= 250_000
    # An object bigger than the whole cache is served, never cached.
    big = os.urandom(300_000)
    host_a.write_new(names("m_t_big.pkl"), big)
    assert reader.read("m_t_big.pkl", MB, expected_sha256=sha(big)) == big
    assert "m_t_big.pkl" not in cache_files(reader)
    usage = reader.disk_usage()
    assert usage["cache_limit_mb"] == round(250_000 / MB, 3) and 0 < usage["cache_mb"] <= usage["cache_limit_mb"]


@pytest.fixture
def small_tmpfs(tmp_path):
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=755", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {result.stderr.strip()}")
        pytest.skip(f"mount refused here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_cache_disk_degrades_to_uncached_reads(server, bucket, host_a, small_tmpfs):
    data = os.urandom(100_000)
    key = host_a.write_new(names("m_t_1.pkl"), data)
    reader = make_store(server, f"s3://{bucket}/models", small_tmpfs)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as handle:  # leave ~40 KB free
        handle.write(b"\0" * (256 * 1024 - 40 * 1024 - 8192))
    for _ in range(3):
        assert reader.read(key, MB, expected_sha256=sha(data)) == data
    assert cache_files(reader) == []  # no entry and no temp file left behind
    filler.unlink()
    assert reader.read(key, MB, expected_sha256=sha(data)) == data
    assert cache_files(reader) == [key]  # space is back: cached again


def test_two_hosts_share_objects_and_change_tokens(server, bucket, host_a, host_b):
    assert host_b.change_token() is None  # nothing activated yet
    data = os.urandom(10_000)
    key = host_a.write_new(names("m_t_1.pkl"), data)
    assert cache_files(host_b) == []
    assert host_b.read(key, MB, expected_sha256=sha(data)) == data
    host_a.signal_change()
    first = host_a.change_token()
    assert first is not None
    deadline = time.monotonic() + 5
    while host_b.change_token() != first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_b.change_token() == first
    host_b.signal_change()
    second = host_b.change_token()
    assert second != first
    deadline = time.monotonic() + 5
    while host_a.change_token() != second and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_a.change_token() == second

    # A third "host" in another process, with its own empty cache directory.
    script = (
        "import hashlib, sys; from utils.ml.store.s3 import S3ModelStore;"
        "s = S3ModelStore(sys.argv[1], cache_dir=sys.argv[2], endpoint_url=sys.argv[3]);"
        "print(hashlib.sha256(s.read(sys.argv[4], 10**6, expected_sha256=sys.argv[5])).hexdigest(), s.change_token())"
    )
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(host_b.cache.root)}
    out = subprocess.run([sys.executable, "-c", script, f"s3://{bucket}/models", str(host_b.cache.root / "c3"),
                          server.endpoint, key, sha(data)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [sha(data), second]


def test_check_writable_leaves_nothing_behind(server, bucket, host_a):
    host_a.check_writable()
    assert server.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_urls_keys_and_registry(server, bucket, monkeypatch, tmp_path):
    assert parse_s3_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b")
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    for url, rule in (("s3://A_B/x", "3-63 characters"), ("s3://key:secret@bkt/x", "credentials"),
                      ("s3://bkt/a//b", "empty"), ("s3://bkt/x?region=eu", "no query")):
        with pytest.raises(ValueError, match=rule):
            parse_s3_url(url)
    monkeypatch.setenv("ML_MODELS_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    store = open_store(f"s3://{bucket}")
    assert isinstance(store, S3ModelStore)
    assert store.cache.root.is_relative_to(tmp_path / "from-env")
    key = store.write_new(names("m_t_1.pkl"), b"at the bucket root")
    assert store.locate(key) == f"s3://{bucket}/m_t_1.pkl"
    for bad in ("", "../x.pkl", "/x.pkl", "a//b.pkl", "x\x00.pkl", "x\n.pkl"):
        with pytest.raises(UnsafePathError):
            store.read(bad, MB)
    dry = S3ModelStore(f"s3://{bucket}/p", create=False, cache_dir=tmp_path / "dry")
    assert not (tmp_path / "dry").exists() and dry.size("m_t_1.pkl") is None


# -- the server dies ---------------------------------------------------------------------


def _run_in_thread(fn):
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.001)
    pytest.fail(f"never saw {what}")


def test_server_killed_mid_upload_leaves_no_object_under_the_final_key(own_server, tmp_path):
    bucket = own_server.create_bucket()
    store = make_store(own_server, f"s3://{bucket}/models", tmp_path / "c", conditional_writes=False)
    data = os.urandom(40 * MB)
    object_dir = own_server.data_dir / bucket / "models"
    object_dir.mkdir(parents=True, exist_ok=True)
    thread, outcome = _run_in_thread(lambda: store.write_new(names("m_t_big.pkl"), data))
    # The server stages the body in a temp file next to the object: it is receiving it now.
    _wait_for(lambda: [p for p in object_dir.iterdir() if p.name.startswith(".tmp.")], 20, "the upload in flight")
    own_server.kill()
    thread.join(30)
    assert isinstance(outcome.get("error"), S3UnavailableError), outcome
    assert "m_t_big.pkl" in str(outcome["error"])

    own_server.start()
    client = own_server.client()
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "models/m_t_big.pkl" not in listed
    assert store.size("m_t_big.pkl") is None and list(store.iter_files()) == []
    # The store works again once the server is back.
    assert store.write_new(names("m_t_big.pkl"), b"small") == "m_t_big.pkl"


def test_server_killed_mid_download_leaves_no_partial_cache_file(own_server, tmp_path):
    bucket = own_server.create_bucket()
    data = os.urandom(40 * MB)
    own_server.client().put_object(Bucket=bucket, Key="models/m_t_big.pkl", Body=data)
    store = make_store(own_server, f"s3://{bucket}/models", tmp_path / "c")
    object_path = str(own_server.data_dir / bucket / "models" / "m_t_big.pkl")
    thread, outcome = _run_in_thread(lambda: store.read("m_t_big.pkl", 64 * MB, expected_sha256=sha(data)))
    _wait_for(lambda: object_path in own_server.open_files(), 20, "the download in flight")
    own_server.kill()
    thread.join(30)
    assert isinstance(outcome.get("error"), S3UnavailableError), outcome
    assert cache_files(store) == []

    own_server.start()
    assert store.read("m_t_big.pkl", 64 * MB, expected_sha256=sha(data)) == data
    assert cache_files(store) == ["m_t_big.pkl"]


def test_calls_are_retried_until_the_server_is_back_and_tokens_survive_an_outage(own_server, tmp_path):
    bucket = own_server.create_bucket()
    store = make_store(own_server, f"s3://{bucket}/models", tmp_path / "c",
                       max_attempts=8, backoff_base=0.5, backoff_cap=2.0)
    key = store.write_new(names("m_t_1.pkl"), b"model bytes")
    store.signal_change()
    token = store.change_token()
    own_server.kill()
    time.sleep(0.3)  # past token_ttl: the next call tries a refresh, which fails
    started = time.monotonic()
    assert store.change_token() == token  # the last known token, not an error and not None
    assert time.monotonic() - started < 3
    thread, outcome = _run_in_thread(lambda: store.size(key))
    time.sleep(0.2)
    own_server.start()
    thread.join(60)
    assert outcome == {"value": len(b"model bytes")}
    fast_fail = make_store(own_server, f"s3://{bucket}/models", tmp_path / "d", max_attempts=2)
    own_server.kill()
    with pytest.raises(S3UnavailableError, match="failed after 2 attempts"):
        fast_fail.read(key, MB)
