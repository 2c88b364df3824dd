"""python -m apps.reproduce of a cluster run: from its s3:// URL (a local moto server), and from a local copy of a
cluster sweep point whose checkpoint stayed on the cluster; bad URLs and missing credentials are one line."""

from __future__ import annotations

import json
import os
import subprocess
from unittest import mock

import boto3
import pytest
from moto.server import ThreadedMotoServer
from omegaconf import OmegaConf

from helpers.core import TINY_MODEL, compose_config, run_module
from data_prep.synthetic_chips import make_chip_dataset

BUCKET = "study-runs"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server holding an empty bucket; the environment that reaches it with test credentials."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


@pytest.fixture(scope="module")
def uploaded(s3_env, tmp_path_factory):
    """A tiny burned-area run trained here with upload.to=s3://study-runs/sweeps: (local run dir, its URL)."""
    from apps.core.training.train import train
    from apps.foundation.rundir import read_upload_record

    root = tmp_path_factory.mktemp("uploaded")
    chips = make_chip_dataset(root / "chips", chips_per_scene=8, size=32)
    with mock.patch.dict(os.environ, s3_env):
        run_dir = root / "outputs" / "sweep" / "0"
        overrides = [*TINY_MODEL, f"data.root={chips}", "epochs=1", f"output_root={root / 'outputs'}",
                     f"upload.to=s3://{BUCKET}/sweeps"]
        cfg = compose_config(overrides=overrides)
        (run_dir / ".hydra").mkdir(parents=True)  # as Hydra writes them
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
        train(cfg, run_dir)
    url = read_upload_record(run_dir)
    assert url == f"s3://{BUCKET}/sweeps/sweep/0"
    return run_dir, url


def reproduce(*args, env: dict) -> "subprocess.CompletedProcess":
    with mock.patch.dict(os.environ, env):
        return run_module("apps.reproduce", *args)


def one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_a_run_reevaluates_from_its_s3_url_fetching_only_what_it_needs(uploaded, s3_env, tmp_path):
    _, url = uploaded
    cache = tmp_path / "cache"
    proc = reproduce(url, "--evaluate", "--cache", str(cache), env=s3_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["new"]["test/iou"] == pytest.approx(result["saved"]["test/iou"], abs=1e-6)
    local = cache / BUCKET / "sweeps" / "sweep" / "0"
    fetched = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
               and not p.relative_to(local).as_posix().startswith("reevaluation")}
    record = json.loads((local / "metrics.json").read_text())
    assert fetched == {".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json", record["facts"]["best_checkpoint"]}


@pytest.mark.slow
def test_a_local_copy_of_a_cluster_run_fetches_its_checkpoint_from_where_the_pod_uploaded_it(uploaded, s3_env, tmp_path):
    run_dir, _ = uploaded
    copy = tmp_path / "local_copy"
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json", "upload.json"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((run_dir / name).read_bytes())
    proc = reproduce(str(copy), "--evaluate", env=s3_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["new"]["test/iou"] == pytest.approx(result["saved"]["test/iou"], abs=1e-6)
    assert list((copy / "checkpoints").glob("best-*.ckpt"))


def test_an_s3_url_that_holds_no_run_is_one_line(s3_env, tmp_path):
    url = f"s3://{BUCKET}/sweeps/nowhere/7"
    line = one_line(reproduce(url, "--evaluate", "--cache", str(tmp_path), env=s3_env))
    assert url in line and "no .hydra/config.yaml there" in line
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_missing_s3_credentials_are_one_line(s3_env, tmp_path):
    bare = {**s3_env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    line = one_line(reproduce(f"s3://{BUCKET}/sweeps/sweep/0", "--cache", str(tmp_path / "cache"), env=bare))
    assert "no credentials" in line and "AWS_ACCESS_KEY_ID" in line


def test_a_setting_for_a_key_the_run_lacks_is_one_line(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("lr: 0.1\ndata: {root: x}\n")
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": {}, "facts": {}}))
    assert "dataa.root=y" in one_line(run_module("apps.reproduce", str(run), "dataa.root=y"))
