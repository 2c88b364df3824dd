"""Pretrained weights from local files only: nothing is downloaded at run time."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from apps.foundation.catalogue import fetch_hint, read_catalogue
from apps.foundation.errors import InputError

CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


def find_weights_file(weights_path: str | None, weights_dir: str, name: str, what: str, source_hint: str) -> Path:
    """The local weights file for ``what``: ``weights_path`` if given; else the catalogue's file for
    ``name`` in ``weights_dir``; else, for a name the catalogue lacks, ``<weights_dir>/<name><suffix>``.

    Raises InputError naming the file(s) looked for and how to get them when none exists.
    """
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise InputError(f"{what}: weights file {path} not found")
        return path
    catalogued = read_catalogue().get(name)
    if catalogued is not None:
        path = Path(weights_dir).expanduser() / catalogued.file
        if not path.is_file():
            raise InputError(f"{what}: weights file {path} not found (nothing is downloaded at run time): "
                             f"{fetch_hint(name, weights_dir)}, or pass a file as init.weights_path")
        return path
    candidates = [Path(weights_dir).expanduser() / f"{name}{suffix}" for suffix in WEIGHT_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise InputError(
        f"{what}: no local weights (looked for {candidates[0]} or .pth/.pt beside it; nothing is downloaded): "
        f"{source_hint}, save it there or pass its path as init.weights_path, or use init=random"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or a torch checkpoint (plain state dict, or under 'state_dict'/'model')."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files fail in many library-specific ways
        raise InputError(f"weights file {path}: unreadable ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"weights file {path}: holds no state dict")
    return state


def load_encoder_weights(encoder: nn.Module, path: Path) -> str:
    """Load pretrained classification-network weights into ``encoder``, ignoring its classifier head.

    Every encoder tensor must be present with the same shape; InputError otherwise. Returns a
    one-line account of what was loaded.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(CLASSIFIER_PREFIXES)}
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        raise InputError(
            f"weights file {path}: does not fit the encoder ({len(missing)} tensors missing such as "
            f"{missing[:2]}, {len(unexpected)} unexpected such as {unexpected[:2]}, "
            f"{len(reshaped)} of another shape such as {reshaped[:2]})"
        )
    # nn.Module's own loader: some encoders override load_state_dict to drop classifier keys.
    nn.Module.load_state_dict(encoder, state, strict=True)
    return f"loaded {len(state)}/{len(expected)} tensors of the encoder from {path}"
