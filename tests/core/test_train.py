"""The training core end to end on a tiny chip dataset: run directory, determinism, resume, reuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.synthetic_chips import make_chip_dataset
from helpers.core import LIMIT_S, REPO, TINY_MODEL, compose_config, run_module

from apps.foundation.errors import InputError
from apps.core.training.train import train


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    return make_chip_dataset(tmp_path_factory.mktemp("chips"), chips_per_scene=8, size=32)


def tiny_cfg(chips: Path, *extra: str):
    return compose_config(overrides=[*TINY_MODEL, f"data.root={chips}", "epochs=2", *extra])


@pytest.mark.slow
def test_run_directory_contract(chips, tmp_path):
    run_dir = tmp_path / "run"
    value = train(tiny_cfg(chips), run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert record["objective"] == {"name": "test/iou", "mode": "max", "value": value}
    assert {"test/precision", "test/recall", "test/f1", "test/iou", "val/iou"} <= set(record["metrics"])
    facts = record["facts"]
    assert facts["epochs"] == 2 and facts["device"] == "cpu" and facts["device_count"] == 1
    assert facts["parameters"] > 0 and facts["wall_time_s"] > 0 and facts["peak_memory_bytes"] > 0
    assert facts["peak_memory_kind"] == "process_rss"
    assert (run_dir / facts["best_checkpoint"]).is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    provenance = json.loads((run_dir / "provenance.json").read_text())["attempts"][0]
    assert provenance["git_commit"] and "torch" in provenance["packages"] and provenance["command_line"]
    assert (run_dir / "logs" / "metrics.csv").is_file()
    assert (run_dir / "test_examples.png").stat().st_size > 1000
    # The synthetic discs are easy: two epochs already separate them better than chance.
    assert value > 0.3
    # Imagery fed to the network: two epochs of training and validation chips, then the test chips (3 x 32 x 32 float32).
    from apps.core.config import build

    datamodule = build(tiny_cfg(chips).data)
    datamodule.setup("fit"), datamodule.setup("test")
    sizes = {split: len(dataset) for split, dataset in datamodule.splits.items()}
    assert facts["images_processed"] == 2 * (sizes["train"] + sizes["val"]) + sizes["test"]
    assert facts["imagery_bytes"] == facts["images_processed"] * 3 * 32 * 32 * 4


@pytest.mark.slow
def test_same_seed_same_metrics(chips, tmp_path):
    first = train(tiny_cfg(chips, "seed=7"), tmp_path / "a")
    second = train(tiny_cfg(chips, "seed=7"), tmp_path / "b")
    train(tiny_cfg(chips, "seed=8"), tmp_path / "c")
    a, b, c = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in "abc")
    assert first == second and a == b
    assert a != c


@pytest.mark.slow
def test_completed_run_is_not_trained_again(chips, tmp_path):
    run_dir = tmp_path / "run"
    value = train(tiny_cfg(chips), run_dir)
    stamp = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert train(tiny_cfg(chips), run_dir) == value
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_tensorboard_logger_and_other_losses(chips, tmp_path):
    train(tiny_cfg(chips, "logger=tensorboard", "loss=ce_dice", "optimizer=lamb", "scheduler=cosine", "epochs=1"),
          tmp_path / "run")
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_missing_split_is_an_input_error(tmp_path):
    chips = make_chip_dataset(tmp_path / "chips", chips_per_scene=2, splits={"a": "train", "b": "val"})
    with pytest.raises(InputError, match="split 'test' has no chips"):
        train(tiny_cfg(chips), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_objective_must_be_a_metric(chips, tmp_path):
    with pytest.raises(InputError, match="objective=test/iouu"):
        train(tiny_cfg(chips, "objective=test/iouu", "epochs=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def _metrics_csv_epochs(run_dir: Path) -> list[int]:
    import csv

    with (run_dir / "logs" / "metrics.csv").open() as fh:
        return sorted({int(row["epoch"]) for row in csv.DictReader(fh) if row.get("val/iou")})


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes(tmp_path):
    """A run killed with SIGKILL during its second epoch, re-run with the same command, continues
    from its last checkpoint and ends with the configured number of epochs."""
    chips = make_chip_dataset(tmp_path / "chips", chips_per_scene=48, size=32)
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "apps.burned_area", *TINY_MODEL, "batch_size=2", f"data.root={chips}",
            "epochs=3", f"hydra.run.dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well into the second epoch (an epoch takes several seconds)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()

    import torch

    killed_at_epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at_epoch < 2

    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Restoring states from the checkpoint" in rerun.stdout + rerun.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["facts"]["epochs"] == 3
    assert len(json.loads((run_dir / "provenance.json").read_text())["attempts"]) == 2
    assert _metrics_csv_epochs(run_dir)[-1] == 2


@pytest.mark.slow
def test_local_sweep_and_reproduce(chips, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module("apps.burned_area", "-m", *TINY_MODEL, f"data.root={chips}", "epochs=1",
                      "lr=1e-3,1e-2", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1)]
    assert all(r["status"] == "completed" for r in records)
    assert (sweep / "summary.md").is_file()

    # A re-run of the same sweep trains nothing again.
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    again = run_module("apps.burned_area", "-m", *TINY_MODEL, f"data.root={chips}", "epochs=1",
                       "lr=1e-3,1e-2", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0 and (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp

    evaluated = run_module("apps.reproduce", str(sweep / "0"), "--evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["new"]["test/iou"] == pytest.approx(result["saved"]["test/iou"], abs=1e-6)
    # Chips cut otherwise than the run's (its preparation record against the checkpoint's) are refused.
    other = make_chip_dataset(tmp_path / "other_chips", chips_per_scene=2, size=16)
    refused = run_module("apps.reproduce", str(sweep / "0"), "--evaluate", f"data.root={other}")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr[-2000:]
    assert f"data.root {other}: chips made otherwise than the run's (chip_size 16 where the run trained on 32)" \
        in refused.stderr

    retrained = run_module("apps.reproduce", str(sweep / "1"), "--out", str(tmp_path / "again"))
    assert retrained.returncode == 0, retrained.stderr[-2000:]
    result = json.loads(retrained.stdout.strip().splitlines()[-1])
    assert result["new"]["test/iou"] == pytest.approx(result["saved"]["test/iou"], abs=1e-6)


def test_reproduce_rejects_a_directory_that_is_not_a_run(tmp_path):
    proc = run_module("apps.reproduce", str(tmp_path), "--evaluate")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and str(tmp_path) in proc.stderr


@pytest.mark.slow
def test_finished_run_is_copied_to_the_upload_destination(chips, tmp_path):
    remote = tmp_path / "remote"
    train(tiny_cfg(chips, "epochs=1", f"upload.to={remote}"), tmp_path / "runs" / "r1")
    copied = json.loads((remote / "r1" / "metrics.json").read_text())
    assert copied == json.loads((tmp_path / "runs" / "r1" / "metrics.json").read_text())
    assert (remote / "r1" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "runs" / "r1" / "upload.json").read_text())["uploaded_to"].endswith("r1")


@pytest.mark.slow
def test_cli_prints_its_result_line_and_a_failed_attempt_leaves_its_error(chips, tmp_path):
    from apps.foundation.rundir import ResultLine, read_completed

    failed = run_module("apps.burned_area", *TINY_MODEL, f"data.root={chips}", "epochs=1", "objective=test/iouu",
                        f"hydra.run.dir={tmp_path}")
    assert failed.returncode == 2 and (tmp_path / "error.txt").read_text().startswith("objective=test/iouu: not a metric")
    proc = run_module("apps.burned_area", *TINY_MODEL, f"data.root={chips}", "epochs=1", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "error.txt").exists()                     # the attempt that completed removed it
    marker, payload = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert marker == "geoscale-result:"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert json.loads(payload) == {"objective": "test/iou", "value": saved["objective"]["value"], "record": saved,
                                   "uploaded_to": None}
    assert ResultLine.last_in(proc.stdout) == ResultLine("test/iou", saved["objective"]["value"],
                                                         read_completed(tmp_path))


@pytest.mark.slow
def test_ddp_on_two_processes_records_the_whole_test_split_once(tmp_path):
    from apps.reproduce.__main__ import evaluate, load_run

    # 7 test chips (4 + 3 per process); 64 px, so a last training batch of one chip still has 2x2 pixels at BatchNorm.
    odd_chips = make_chip_dataset(tmp_path / "chips", chips_per_scene=7, size=64)
    run_dir = tmp_path / "run"
    # Full-depth encoder: DDP refuses a model whose unused stages (encoder_depth < 5) hold parameters.
    proc = run_module("apps.burned_area", "model.encoder=resnet18", "+model.decoder_channels=[16,16,8,8,8]",
                      "batch_size=2", "num_workers=0", "trainer.enable_progress_bar=false", f"data.root={odd_chips}",
                      "epochs=1", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                      f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result_line] = [line for line in proc.stdout.splitlines() if line.startswith("geoscale-result:")]
    cfg, record = load_run(run_dir)
    assert json.loads(result_line.split(" ", 1)[1])["value"] == record.value
    assert record.facts["device_count"] == 2
    assert len(json.loads((run_dir / "provenance.json").read_text())) == 1
    # Scores come from the confusion matrix summed over both processes, each chip counted once:
    # one process on the whole test split gets the same.
    single = evaluate(cfg, record, run_dir)
    for name in ("test/iou", "test/f1", "test/accuracy"):
        assert single[name] == pytest.approx(record.metrics[name], abs=1e-6)


@pytest.mark.slow
def test_batch_size_auto_trains_with_the_largest_batch_that_fits(chips, tmp_path, monkeypatch):
    """The GPU path of batch_size=auto, on the CPU: a training step that runs out of "GPU memory" above
    5 chips (the error CUDA raises), Lightning's finder doubling from 2 then bisecting to 5, and the
    run trained and recorded with 4 (5 less the finder's 5% margin, rounded down)."""
    import apps.core.training.train as core_train
    from apps.core.tasks.segmentation import SegmentationTask

    fitting = SegmentationTask.training_step

    def training_step(self, batch, batch_idx):
        if len(batch["mask"]) > 5:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fitting(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationTask, "training_step", training_step)
    monkeypatch.setattr(core_train, "_on_gpu", lambda trainer: True)
    run_dir = tmp_path / "run"
    train(tiny_cfg(chips, "batch_size=auto", "default_batch_size=2"), run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed" and record["facts"]["batch_size"] == 4
    assert not list(run_dir.glob(".scale_batch_size*")), "the finder's checkpoint was left behind"


OOM_ABOVE_FIVE = """
import json, sys
from pathlib import Path

import pytorch_lightning as pl

import apps.core.training.train as core_train
from apps.core.tasks.segmentation import SegmentationTask

fitting = SegmentationTask.training_step


def training_step(self, batch, batch_idx):
    if len(batch["mask"]) > 5:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return fitting(self, batch, batch_idx)


class RecordBatchSize(pl.Callback):
    def on_train_start(self, trainer, task):
        out = Path(trainer.default_root_dir) / f"rank_{trainer.global_rank}.json"
        out.write_text(json.dumps({"batch_size": trainer.train_dataloader.batch_size, "world": trainer.world_size}))


SegmentationTask.training_step = training_step
core_train._on_gpu = lambda trainer: True
if __name__ == "__main__":
    from apps.burned_area.__main__ import main

    main()
"""


@pytest.mark.slow
def test_batch_size_auto_under_ddp_is_found_once_before_the_start_and_used_by_every_rank(tmp_path):
    """batch_size=auto on two DDP processes (gloo, on the CPU), each seeing "GPU memory" run out above 5
    chips: rank zero finds 4 on one device before the distributed start, and both ranks train with it."""
    script = tmp_path / "oom_above_five.py"
    script.write_text(OOM_ABOVE_FIVE)
    chips = make_chip_dataset(tmp_path / "chips", chips_per_scene=8, size=64)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), "model.encoder=resnet18", "+model.decoder_channels=[16,16,8,8,8]",
         "batch_size=auto", "default_batch_size=2", "num_workers=0", "trainer.enable_progress_bar=false",
         f"data.root={chips}", "epochs=1", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
         "+callbacks.record._target_=__main__.RecordBatchSize", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((run_dir / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks == [{"batch_size": 4, "world": 2}] * 2
    assert (proc.stdout + proc.stderr).count("fits one GPU's memory") == 1
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["facts"]["batch_size"] == 4 and record["facts"]["device_count"] == 2
    import yaml

    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["batch_size"] == 4


def test_gradients_are_released_after_each_step_and_accumulate_between(tmp_path):
    """The forward pass of a step after an optimizer step runs without gradients in memory; within an
    accumulation window they add up, and the step sees the window's mean (Lightning divides each loss
    by the window's length)."""
    import pytorch_lightning as pl
    import torch

    from apps.core.tasks.base import BaseTask

    class Linear(BaseTask):
        def __init__(self):
            super().__init__({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0})
            self.layer = torch.nn.Linear(2, 1, bias=False)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()  # d/dw = the batch's x

    class Record(pl.Callback):
        def __init__(self):
            self.grad_at_start, self.grad_at_step = [], []

        def on_train_batch_start(self, trainer, task, batch, batch_idx):
            grad = task.layer.weight.grad
            self.grad_at_start.append(None if grad is None else grad.clone())

        def on_before_optimizer_step(self, trainer, task, optimizer):
            self.grad_at_step.append(task.layer.weight.grad.clone())

    xs = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    record = Record()
    trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[record], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs), batch_size=1)
    trainer.fit(Linear(), loader)
    starts = record.grad_at_start
    assert starts[0] is None and starts[2] is None, "the last step's gradients were kept"
    assert torch.equal(starts[1], xs[:1] / 2) and torch.equal(starts[3], xs[2:3] / 2)  # mid-window: accumulating
    assert [g.tolist() for g in record.grad_at_step] == [[((xs[0] + xs[1]) / 2).tolist()],
                                                         [((xs[2] + xs[3]) / 2).tolist()]]
