"""Uploading run directories to a real local S3-compatible server (moto) and to local paths."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from apps.foundation.errors import InputError
from apps.core.runs.storage import upload_run_dir

BUCKET = "geoscale-runs"
#: Fail fast against an unreachable endpoint: one attempt, one-second timeouts.
FAST_FAIL = {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    """URL of a moto S3 server on a free local port, for this module's tests."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """A boto3 client of the moto server holding an empty bucket; dummy credentials in the env."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run ``sweep/3`` with a checkpoint, logs and a leftover temporary file."""
    run = tmp_path / "sweep" / "3"
    files = {
        ".hydra/config.yaml": b"lr: 0.001\n",
        ".hydra/overrides.yaml": b"- lr=0.001\n",
        "metrics.json": b'{"status": "completed"}',
        "provenance.json": b'{"attempts": []}',
        "checkpoints/best.ckpt": os.urandom(300_000),
        "logs/version_0/events.out": os.urandom(1000),
        ".metrics.json.tmp-4242": b"half a file",
    }
    for name, data in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    return run


def expected_files(run: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file an upload must copy."""
    return {
        path.relative_to(run).as_posix(): path.read_bytes()
        for path in run.rglob("*")
        if path.is_file() and ".tmp-" not in path.name
    }


def options(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}, "config_kwargs": FAST_FAIL}


def test_upload_to_s3_keeps_the_sweep_layout(s3, s3_endpoint: str, run_dir: Path) -> None:
    url = upload_run_dir(run_dir, f"s3://{BUCKET}/study/", options(s3_endpoint),
                         relative_to=run_dir.parent.parent)

    assert url == f"s3://{BUCKET}/study/sweep/3"
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    uploaded = {
        key.removeprefix("study/sweep/3/"): s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        for key in keys
    }
    assert uploaded == expected_files(run_dir)
    assert "checkpoints/best.ckpt" in uploaded


def test_each_upload_reaches_the_endpoint_its_environment_names(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers in turn, each named only by AWS_ENDPOINT_URL: the second upload must not reuse
    a filesystem made for the first (which is gone)."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for _ in range(2):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            upload_run_dir(run_dir, f"s3://{BUCKET}/study")
            keys = {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
            assert "study/3/metrics.json" in keys
        finally:
            server.stop()


def test_default_name_is_the_run_directory_name(s3, s3_endpoint: str, run_dir: Path) -> None:
    assert upload_run_dir(run_dir, f"s3://{BUCKET}", options(s3_endpoint)) == f"s3://{BUCKET}/3"


def test_missing_bucket_is_an_input_error(s3, s3_endpoint: str, run_dir: Path) -> None:
    with pytest.raises(InputError, match=r"s3://no-such-bucket/runs/3: .*bucket does not exist"):
        upload_run_dir(run_dir, "s3://no-such-bucket/runs", options(s3_endpoint))
    assert "no-such-bucket" not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]


@pytest.mark.timeout(60)
def test_unreachable_endpoint_is_an_input_error(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    with pytest.raises(InputError, match=rf"s3://{BUCKET}/runs/3: .*Could not connect"):
        upload_run_dir(run_dir, f"s3://{BUCKET}/runs", options(f"http://127.0.0.1:{closed_port}"))


def test_missing_credentials_are_an_input_error(
    s3_endpoint: str, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    with pytest.raises(InputError, match="NoCredentialsError"):
        upload_run_dir(run_dir, f"s3://{BUCKET}/runs", options(s3_endpoint))


@pytest.mark.parametrize("as_url", [False, True], ids=["plain path", "file url"])
def test_upload_to_a_local_path(run_dir: Path, tmp_path: Path, as_url: bool) -> None:
    destination = tmp_path / "archive"
    target = f"file://{destination}" if as_url else str(destination)

    url = upload_run_dir(run_dir, target, relative_to=run_dir.parent.parent)

    assert url == f"{target}/sweep/3"
    assert expected_files(destination / "sweep" / "3") == expected_files(run_dir)
    assert not list((destination / "sweep" / "3").glob(".*.tmp-*"))


@pytest.mark.parametrize("base", ["elsewhere", "sweep/3"])
def test_run_dir_not_below_relative_to_is_an_input_error(run_dir: Path, tmp_path: Path, base: str) -> None:
    with pytest.raises(InputError, match="is not below"):
        upload_run_dir(run_dir, str(tmp_path / "archive"), relative_to=tmp_path / base)
