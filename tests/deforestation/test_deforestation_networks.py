"""Deforestation change-detection networks: ChangeFormer V6, its MiT encoder loader, and the U-Net baselines."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from apps.deforestation import changeformer as changeformer_module
from apps.deforestation.baselines import build_early_fusion_unet, build_fc_siam_diff
from apps.deforestation.changeformer import build_changeformer_v6, load_mit_encoder
from apps.foundation.errors import InputError

#: ChangeFormerV6(input_nc=3, output_nc=2, embed_dim=256) of the authors' code, counted there.
AUTHORS_PARAMETER_COUNT = 41_026_674
ENCODER_PARAMETER_COUNT = 28_937_408


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def image_pair(batch: int = 2, channels: int = 3, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand(batch, channels, size, size, generator=generator) for _ in range(2))


def mit_name(key: str) -> str:
    """In MiT naming: ``stages.1.blocks.0.mlp.dwconv.weight`` -> ``block2.0.mlp.dwconv.dwconv.weight``."""
    stage, part, rest = re.fullmatch(r"stages\.(\d)\.(patch_embed|blocks|norm)\.(.+)", key).groups()
    return f"{part.replace('blocks', 'block')}{int(stage) + 1}.{rest.replace('dwconv.', 'dwconv.dwconv.')}"


@pytest.fixture(scope="module")
def changeformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_changeformer_v6()


@pytest.fixture(scope="module")
def one_band_changeformer() -> torch.nn.Module:
    return build_changeformer_v6(in_channels=1, num_classes=3)


def test_changeformer_has_the_authors_parameter_count(changeformer):
    assert parameter_count(changeformer) == AUTHORS_PARAMETER_COUNT


def test_changeformer_returns_five_logit_maps_coarsest_first(changeformer):
    with torch.no_grad():
        outputs = changeformer.eval()(*image_pair(batch=1))
    assert [tuple(o.shape) for o in outputs] == [(1, 2, s, s) for s in (2, 4, 8, 16, 64)]


@pytest.mark.slow
def test_changeformer_trains_end_to_end(changeformer):
    changeformer.train().zero_grad(set_to_none=True)
    sum(o.sum() for o in changeformer(*image_pair(size=32))).backward()
    assert all(p.grad is not None for p in changeformer.encoder.parameters())
    assert all(p.grad is not None for p in changeformer.decoder.parameters())


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_channels_last_weight_gradients_are_slow_only_on_cpus_without_avx512(device_type):
    slow = changeformer_module.channels_last_weight_gradients_are_slow(device_type)
    assert slow == (device_type == "cpu" and torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"))


@pytest.mark.slow  # two full-size ChangeFormers forward and backward
def test_changeformer_gives_the_same_outputs_and_gradients_in_both_layouts(changeformer, monkeypatch):
    """Training copies the token maps to NCHW where channels-last weight gradients are slow: only the
    convolutions' memory layout changes, not what they compute."""
    changeformer.eval()  # no dropout: its masks follow the memory layout
    convolution_inputs = []
    hook = changeformer.decoder.difference[0][0].register_forward_hook(  # at H/4
        lambda module, args, out: convolution_inputs.append(args[0].is_contiguous()))
    runs = []
    for nchw in (True, False):
        monkeypatch.setattr(changeformer_module, "channels_last_weight_gradients_are_slow", lambda device: nchw)
        changeformer.zero_grad(set_to_none=True)
        outputs = changeformer(*image_pair(batch=2, size=32))
        sum((o * o).mean() for o in outputs).backward()
        runs.append(([o.detach() for o in outputs], {n: p.grad for n, p in changeformer.named_parameters()}))
    hook.remove()
    assert convolution_inputs == [True, False]
    (nchw_outputs, nchw_grads), (channels_last_outputs, channels_last_grads) = runs
    for nchw_output, channels_last_output in zip(nchw_outputs, channels_last_outputs):
        torch.testing.assert_close(nchw_output, channels_last_output, rtol=1e-4, atol=1e-5)
    for name, grad in nchw_grads.items():
        torch.testing.assert_close(grad, channels_last_grads[name], rtol=1e-3, atol=1e-6, msg=name)


def test_changeformer_takes_one_band_and_other_class_counts(one_band_changeformer):
    with torch.no_grad():
        outputs = one_band_changeformer.eval()(*image_pair(batch=1, channels=1, size=32))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, s, s) for s in (1, 2, 4, 8, 32)]


def test_changeformer_encoder_is_one_module_shared_by_both_dates(changeformer):
    batch_sizes = []
    hook = changeformer.encoder.register_forward_hook(lambda module, args, out: batch_sizes.append(len(args[0])))
    before, after = image_pair(batch=1, size=32)
    with torch.no_grad():
        forward = changeformer.eval()(before, after)[-1]
        swapped = changeformer(after, before)[-1]
    hook.remove()
    assert batch_sizes == [2, 2]  # both dates through the same encoder
    assert parameter_count(changeformer.encoder) == ENCODER_PARAMETER_COUNT
    assert not torch.allclose(forward, swapped)


@pytest.mark.slow
def test_load_mit_encoder_reads_prefixed_state_dict(changeformer, tmp_path):
    path = tmp_path / "segformer.pth"
    encoder_state = changeformer.encoder.state_dict()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in encoder_state.items()}}, path)
    net = build_changeformer_v6()
    summary = load_mit_encoder(net, path)
    assert f"{len(encoder_state)} encoder tensors loaded" in summary
    assert all(torch.equal(v, encoder_state[k]) for k, v in net.encoder.state_dict().items())


@pytest.mark.slow
def test_load_mit_encoder_fits_mit_kernels_and_input_bands(changeformer, one_band_changeformer, tmp_path):
    """MiT-B* names and 3x3 kernels after stage 1 (safetensors), loaded into a 1-band network."""
    torch.manual_seed(1)
    mit = {mit_name(k): v.clone() for k, v in changeformer.encoder.state_dict().items()}
    for stage, (width, in_width) in enumerate(((128, 64), (320, 128), (512, 320)), start=2):
        mit[f"patch_embed{stage}.proj.weight"] = 0.02 * torch.randn(width, in_width, 3, 3)
    path = tmp_path / "mit_b2.safetensors"
    save_file(mit, str(path))
    net = one_band_changeformer
    assert "fitted" in load_mit_encoder(net, path)
    first = net.encoder.stages[0].patch_embed.proj.weight
    assert torch.allclose(first, mit["patch_embed1.proj.weight"].sum(dim=1, keepdim=True))
    features = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        fitted = net.encoder.stages[1].patch_embed.proj(features)
    mit_conv = F.conv2d(features, mit["patch_embed2.proj.weight"], mit["patch_embed2.proj.bias"], stride=2, padding=1)
    assert torch.allclose(fitted, mit_conv, atol=1e-5)


def test_load_mit_encoder_rejects_incomplete_checkpoint(changeformer, tmp_path):
    path = tmp_path / "partial.pt"
    state = {mit_name(k): v for k, v in changeformer.encoder.state_dict().items()}
    del state["block3.2.attn.kv.weight"]
    torch.save(state, path)
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}.*1 of \d+ tensors missing.*stages\.2\.blocks\.2"):
        load_mit_encoder(changeformer, path)


def test_load_mit_encoder_rejects_missing_file(changeformer, tmp_path):
    path = tmp_path / "mit_b2.pth"
    with pytest.raises(InputError, match=rf"{re.escape(str(path))} not found.*MiT-B2"):
        load_mit_encoder(changeformer, path)


@pytest.mark.parametrize("build", [build_early_fusion_unet, build_fc_siam_diff])
def test_baselines_take_two_dates_and_return_one_logit_map(build):
    net = build(in_channels=3, num_classes=2).eval()
    before, after = image_pair()
    with torch.no_grad():
        outputs = net(before, after)
        swapped = net(after, before)
    assert isinstance(outputs, list) and [tuple(o.shape) for o in outputs] == [(2, 2, 64, 64)]
    assert not torch.allclose(outputs[0], swapped[0])


def test_baselines_differ_in_how_dates_meet():
    early_fusion, siam_diff = build_early_fusion_unet(4, 2), build_fc_siam_diff(4, 2)
    assert early_fusion.unet.encoder.conv1.in_channels == 8
    assert siam_diff.unet.encoder.conv1.in_channels == 4
    assert parameter_count(early_fusion) != parameter_count(siam_diff)


def test_baselines_reject_unknown_encoder():
    with pytest.raises(InputError, match="resnet1000"):
        build_fc_siam_diff(3, 2, encoder="resnet1000")
