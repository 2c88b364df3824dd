"""Pretrained encoder weights come from local files only, with a clear error when missing."""

from __future__ import annotations

import pytest
import torch

from helpers.core import TINY_MODEL, compose_config, run_module

from apps.core.config import build as instantiate
from apps.foundation.errors import InputError


def resnet18_classifier_weights(path):
    """A torchvision-style ResNet-18 checkpoint (with its fc head), random values."""
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_imagenet_init_reads_local_file(tmp_path):
    saved = resnet18_classifier_weights(tmp_path / "resnet18.imagenet.pth")
    cfg = compose_config(overrides=["model.encoder=resnet18", "init=imagenet", f"init.weights_dir={tmp_path}"])
    task = instantiate(cfg.task)
    encoder = task.net.encoder.state_dict()
    assert torch.equal(encoder["conv1.weight"], saved["conv1.weight"])
    assert torch.equal(encoder["layer4.1.bn2.running_var"], saved["layer4.1.bn2.running_var"])


def test_explicit_weights_path_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    saved = resnet18_classifier_weights(tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in saved.items() if not k.startswith("fc.")}, tmp_path / "enc.safetensors")
    cfg = compose_config(overrides=["model.encoder=resnet18", "init=imagenet",
                                    f"init.weights_path={tmp_path / 'enc.safetensors'}"])
    assert torch.equal(instantiate(cfg.task).net.encoder.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_weights_of_another_network_are_rejected(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet18.imagenet.pth")
    cfg = compose_config(overrides=["model.encoder=resnet18", "init=imagenet", f"init.weights_dir={tmp_path}"])
    with pytest.raises(InputError, match="does not fit the encoder"):
        instantiate(cfg.task)


def test_missing_catalogued_weights_name_the_file_and_the_fetch_command(tmp_path):
    cfg = compose_config(overrides=["init=imagenet", f"weights_dir={tmp_path}"])
    with pytest.raises(InputError) as err:
        instantiate(cfg.task)
    message = str(err.value)
    assert str(tmp_path / "resnet50-19c8e357.pth") in message
    assert f"python -m apps.weights fetch names=[resnet50.imagenet] weights_dir={tmp_path}" in message


def test_catalogued_encoder_weights_load_and_say_how_many_tensors(tmp_path, caplog):
    import torchvision

    saved = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(saved, tmp_path / "resnet50-19c8e357.pth")
    cfg = compose_config(overrides=["init=imagenet", f"weights_dir={tmp_path}"])
    with caplog.at_level("INFO"):
        task = instantiate(cfg.task)
    assert torch.equal(task.net.encoder.state_dict()["layer4.2.conv3.weight"], saved["layer4.2.conv3.weight"])
    expected = len(task.net.encoder.state_dict())
    assert f"loaded {expected}/{expected} tensors of the encoder" in caplog.text


def test_an_uncatalogued_encoder_without_its_file_names_what_to_provide(tmp_path):
    cfg = compose_config(overrides=["model.encoder=resnet18", "init=imagenet", f"init.weights_dir={tmp_path}"])
    with pytest.raises(InputError) as err:
        instantiate(cfg.task)
    message = str(err.value)
    assert str(tmp_path / "resnet18.imagenet.safetensors") in message
    assert "smp-hub/resnet18.imagenet" in message and "init=random" in message


@pytest.mark.slow
def test_missing_imagenet_weights_through_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module("apps.burned_area", *TINY_MODEL, "init=imagenet", f"init.weights_dir={tmp_path}",
                      f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: init=imagenet for encoder resnet18")
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints").exists()
