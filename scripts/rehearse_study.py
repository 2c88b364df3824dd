"""The whole study at toy scale, through the real launcher and its real manifests, with no cluster.

A Kubernetes API stand-in runs every Job's pods the way a kubelet would (``Kubelet``: the repository bound
at the container's working directory, each volume of the cluster profile bound at its mount path in a
private mount namespace, read-only where the manifest says so, the pod's environment and secrets), so a
Job that would fail on the cluster for a path, a mount or a missing secret fails here. Around it: a STAC
stand-in serving synthetic Sentinel-2 items, a local HTTP server for the weights, and a local S3 server
(moto) for the uploads. The chain, each stage one launcher command with ``cluster=nautilus``:

    weights       python -m apps.weights fetch                  -> the weights volume
    acquisition   data_prep.acquire (areas, then one Job per area; burns and PRODES), synthetic objects
    prep          data_prep.burned_area (one Job per scene, then split), data_prep.deforestation, data_prep.detection
    training      a 2-point sweep of each app (burned area from ImageNet weights on the weights volume), and one
                  two-pod Indexed Job (DDP over gloo on loopback); every run uploaded to s3://
    reproduce     python -m apps.reproduce s3://... --evaluate, here, against the recorded metrics
    tables        python -m apps.report --study over the local sweep directories

Prints one JSON object: the wall time and the number of Jobs of each stage, the reproduction, and the tables.
Exit 1 (with the failing stage's log tail) when a stage fails, 77 when mount namespaces are not available.

    .venv/bin/python scripts/rehearse_study.py [--workspace DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

BUCKET = "geoscale-study"
SKIPPED_EXIT_CODE = 77
"""Exit code when this machine cannot make mount namespaces (the rehearsal cannot run here)."""
TINY = {
    "burned_area": ["debug=tiny", "epochs=1"],
    "deforestation": ["debug=tiny", "epochs=1", "trainer.limit_train_batches=2"],
    "detection": ["debug=tiny", "epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
                  "trainer.limit_test_batches=2"],
}
"""Overrides that keep each app's training to seconds on a CPU (the tiny network of ``debug=tiny``)."""


class StageFailed(Exception):
    """A stage's launcher command exited non-zero."""


def tiny_encoder_weights(folder: Path) -> Path:
    """A ResNet-18 (depth 3) encoder checkpoint, as ``init=imagenet`` of the tiny U-Net loads it."""
    import segmentation_models_pytorch as smp
    import torch

    path = folder / "resnet18-rehearsal.pth"
    encoder = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, encoder_depth=3,
                               decoder_channels=[32, 16, 8], classes=2).encoder
    torch.save(encoder.state_dict(), path)
    return path


def serve_weights(stack: ExitStack, workspace: Path) -> Path:
    """A weights catalogue naming a tiny encoder checkpoint served over HTTP; its path."""
    from geoscale_standins.stac import StacStandin

    (workspace / "served_weights").mkdir(exist_ok=True)
    served = tiny_encoder_weights((workspace / "served_weights").resolve())
    stac = stack.enter_context(StacStandin())
    href = stac.serve_files({"encoder": served})["encoder"]
    catalogue = workspace / "weights_catalogue.yaml"
    catalogue.write_text(yaml.safe_dump({"resnet18.imagenet": {
        "url": href, "file": served.name, "sha256": hashlib.sha256(served.read_bytes()).hexdigest(),
        "trained_on": "imagenet-1k", "part": "encoder"}}))
    return catalogue.resolve()


def serve_scenes(stack: ExitStack, workspace: Path) -> tuple[str, dict[str, Path]]:
    """A STAC stand-in serving synthetic burned-area scenes and deforestation pairs: (its URL, polygon files)."""
    from geoscale_standins.stac import StacStandin, synthetic_s2_catalog

    catalogs = {"burns": synthetic_s2_catalog(workspace / "stac" / "burns", app="burned_area", n_products=3, size=256),
                "prodes": synthetic_s2_catalog(workspace / "stac" / "prodes", app="deforestation", n_products=2,
                                               size=256)}
    stac = stack.enter_context(StacStandin())
    for catalog in catalogs.values():
        catalog.serve(stac)
    return stac.url, {name: catalog.polygons.resolve() for name, catalog in catalogs.items()}


def start_s3(stack: ExitStack) -> dict[str, str]:
    """A moto S3 server with the study's bucket; the credentials and endpoint that reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    access = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal"}
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **{k.lower(): v for k, v in access.items()}
                 ).create_bucket(Bucket=BUCKET)
    return {**access, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


class Rehearsal:
    """The stages of the study, each a launcher command run here against the API stand-in."""

    def __init__(self, workspace: Path, api_server: str, standin, s3: dict[str, str], catalogue: Path):
        self.workspace, self.standin = workspace, standin
        self.sweeps = workspace / "sweeps"
        self.cluster = ["cluster=nautilus", f"hydra.launcher.api_server={api_server}", "hydra.launcher.watch_timeout_s=5",
                        "hydra.launcher.output_root_in_pod=/outputs/sweeps",
                        f"hydra.launcher.env.AWS_ENDPOINT_URL={s3['AWS_ENDPOINT_URL']}",
                        "+hydra.launcher.env.AWS_DEFAULT_REGION=us-east-1", "+hydra.launcher.env.OMP_NUM_THREADS=1",
                        f"+hydra.launcher.env.GEOSCALE_WEIGHTS_CATALOGUE={catalogue}"]
        self.figures: dict[str, dict] = {}

    def stage(self, name: str, module: str, *overrides: str, sweep: str | None = None, append_cluster: bool = False
              ) -> Path:
        """Run ``module`` as a multirun on the cluster profile (``append_cluster``: for an app whose config has no
        cluster group); its local sweep directory."""
        sweep_dir = self.sweeps / (sweep or name)
        cluster = ["+" + self.cluster[0], *self.cluster[1:]] if append_cluster else self.cluster
        argv = [sys.executable, "-m", module, "-m", *cluster, *overrides, f"hydra.sweep.dir={sweep_dir}"]
        outcomes_before = sum(self.standin.outcomes.values())
        began = time.perf_counter()
        proc = subprocess.run(argv, cwd=self.workspace, capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        entry = self.figures.setdefault(name.split(":")[0], {"wall_s": 0.0, "jobs": 0})
        entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - began, 2)
        entry["jobs"] += sum(self.standin.outcomes.values()) - outcomes_before
        if proc.returncode != 0:
            logs = "\n".join(p.read_text()[-1500:] for p in sorted(sweep_dir.glob("*/pod.log")))
            raise StageFailed(f"stage {name}: {' '.join(argv[2:])} exited {proc.returncode}\n"
                              f"{proc.stderr[-3000:]}\n{logs}")
        return sweep_dir

    def run(self, volumes: dict[str, Path], stac_url: str, polygons: dict[str, Path], s3: dict[str, str]) -> dict:
        data = volumes["geoscale-data"]
        upload = f"upload.to=s3://{BUCKET}/runs"
        self.stage("weights", "apps.weights", "action=fetch", "progress=false")

        acquire = [f"catalog.url={stac_url}", "progress=false", "download.backoff_s=0.05"]
        self.stage("acquisition:burn areas", "data_prep.acquire", "stage=areas", f"polygons={polygons['burns']}",
                   "out_dir=/app/data/acquired/burns", *acquire, sweep="acquisition_burn_areas")
        areas = json.loads((data / "acquired/burns/areas.geojson").read_text())["features"]
        names = ",".join(feature["properties"]["name"] for feature in areas)
        self.stage("acquisition:burns", "data_prep.acquire", f"area={names}", f"polygons={polygons['burns']}",
                   "dates.start=2021-07-01", "dates.end=2021-09-30", "out_dir=/app/data/acquired/burns", *acquire,
                   sweep="acquisition_burns")
        self.stage("acquisition:prodes", "data_prep.acquire", "app=deforestation", f"polygons={polygons['prodes']}",
                   "target_year=2021", "areas.margin_m=0", "out_dir=/app/data/acquired/prodes", *acquire,
                   sweep="acquisition_prodes")
        # The detection datasets are downloads, not STAC searches: generated scenes with boxes stand in for them.
        self.stage("acquisition:objects", "data_prep.synthetic_objects", "out_dir=/app/data/acquired/objects",
                   "n_scenes=4", "size=384", sweep="acquisition_objects", append_cluster=True)

        scenes = ",".join(sorted(p.name for p in (data / "acquired/burns/scenes").iterdir() if not p.name.startswith(".")))
        burned = ["scenes_dir=/app/data/acquired/burns/scenes", f"polygons={polygons['burns']}",
                  "out_dir=/app/data/chips/burns", "chip.size=64", "progress=false"]
        self.stage("prep:burned scenes", "data_prep.burned_area", f"scene={scenes}", *burned, sweep="prep_burned_scenes")
        self.stage("prep:burned split", "data_prep.burned_area", "stage=split", *burned, sweep="prep_burned_split")
        self.stage("prep:prodes", "data_prep.deforestation", "areas_dir=/app/data/acquired/prodes/areas",
                   f"polygons={polygons['prodes']}", "target_year=2021", "out_dir=/app/data/chips/prodes/chips_64",
                   "chip.size=64", "split.block_size_px=128", sweep="prep_prodes")
        self.stage("prep:objects", "data_prep.detection", "format=dota", "images=/app/data/acquired/objects/images",
                   "labels=/app/data/acquired/objects/labelTxt", "classes=[vehicle,storage_tank,building,aircraft]",
                   "out_dir=/app/data/chips/objects", "chip.size=128", "progress=false", sweep="prep_objects")

        training = ["gpus_per_model=1", "models_at_once=2", "trainer.accelerator=cpu", upload]
        burned_sweep = self.stage("training:burned area", "apps.burned_area", "lr=1e-3,1e-2", "init=imagenet",
                                  "data.root=/app/data/chips/burns", *TINY["burned_area"], *training,
                                  sweep="train_burned_area")
        self.stage("training:deforestation", "apps.deforestation", "lr=1e-3,1e-4", "datasets=/app/data/chips/prodes",
                   "chip_size=64", *TINY["deforestation"], *training, sweep="train_deforestation")
        self.stage("training:detection", "apps.detection", "lr=1e-3,1e-4", "data.root=/app/data/chips/objects",
                   *TINY["detection"], *training, sweep="train_detection")
        two_pods = self.stage("training:two-pod DDP", "apps.burned_area", "lr=1e-3", "data.root=/app/data/chips/burns",
                              "model.encoder=resnet18", "+model.decoder_channels=[16,16,8,8,8]", "epochs=1",
                              "batch_size=2", "num_workers=0", "trainer.enable_progress_bar=false",
                              "trainer.strategy=ddp", "hydra.launcher.num_nodes=2", *training, sweep="train_two_pods")

        reproduced = self.reproduce(burned_sweep, data, s3)
        tables = self.workspace / "tables"
        began = time.perf_counter()
        report = subprocess.run([sys.executable, "-m", "apps.report", "--study", str(self.sweeps), "--out", str(tables)],
                                cwd=self.workspace, capture_output=True, text=True, timeout=600)
        if report.returncode != 0:
            raise StageFailed(f"stage tables: {report.stderr[-2000:]}")
        self.figures["tables"] = {"wall_s": round(time.perf_counter() - began, 2), "jobs": 0}
        two_pod_record = json.loads((two_pods / "0" / "metrics.json").read_text())
        return {"stages": self.figures, "total_wall_s": round(sum(f["wall_s"] for f in self.figures.values()), 2),
                "jobs": sum(f["jobs"] for f in self.figures.values()),
                "two_pod_run": {"device_count": two_pod_record["facts"]["device_count"]},
                "reproduce": reproduced,
                "tables": {p.stem: p.read_text() for p in sorted(tables.glob("*.md"))}}

    def reproduce(self, sweep: Path, data: Path, s3: dict[str, str]) -> dict:
        """Re-evaluate the sweep's first run from its s3:// copy here; its metrics beside the recorded ones."""
        url = json.loads((sweep / "0" / "upload.json").read_text())["uploaded_to"]
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "apps.reproduce", url, "--evaluate", "--cache",
                               str(self.workspace / "reproduce"), f"data.root={data / 'chips/burns'}"],
                              cwd=self.workspace, capture_output=True, text=True, timeout=600, env={**os.environ, **s3})
        self.figures["reproduce"] = {"wall_s": round(time.perf_counter() - began, 2), "jobs": 0}
        if proc.returncode != 0:
            raise StageFailed(f"stage reproduce: {proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"url": url, "saved_test_iou": result["saved"]["test/iou"], "new_test_iou": result["new"]["test/iou"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=None,
                        help="where the volumes, sweeps and tables go (default: outputs/rehearsal/<time>)")
    args = parser.parse_args(argv)
    from geoscale_standins.kubernetes import KubeStandIn, Kubelet

    if not Kubelet.available():
        print("rehearse_study: mount namespaces are not available here (needs unshare as root); skipped",
              file=sys.stderr)
        return SKIPPED_EXIT_CODE
    workspace = (args.workspace or REPO / "outputs" / "rehearsal" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    workspace = workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    volumes = {claim: workspace / "volumes" / claim for claim in ("geoscale-data", "geoscale-weights", "geoscale-outputs")}
    began = time.perf_counter()
    with ExitStack() as stack:
        s3 = start_s3(stack)
        catalogue = serve_weights(stack, workspace)
        stac_url, polygons = serve_scenes(stack, workspace)
        secrets = {"geoscale-s3": {"access_key_id": s3["AWS_ACCESS_KEY_ID"],
                                   "secret_access_key": s3["AWS_SECRET_ACCESS_KEY"]}}
        standin = stack.enter_context(KubeStandIn(workdir=workspace, secrets=secrets,
                                                  kubelet=Kubelet(claims=volumes, image_root=REPO)))
        rehearsal = Rehearsal(workspace, standin.url, standin, s3, catalogue)
        try:
            figures = rehearsal.run(volumes, stac_url, polygons, s3)
        except StageFailed as failure:
            print(f"rehearse_study: {failure}", file=sys.stderr)
            return 1
    figures["wall_s"] = round(time.perf_counter() - began, 2)
    figures["workspace"] = str(workspace)
    (workspace / "rehearsal.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
