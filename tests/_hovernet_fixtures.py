"""Shared helpers for the HoVer-Net tests: the reference's deterministic weights (f.1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from napari_scribble_refine.core.models.hovernet import HoVerNet

REFERENCE = Path("/work/shared/reference")
KEYS_DIR = Path(__file__).parent / "data"


def key_file(name: str) -> Path:
    """A key listing shipped with the tests (copied from the shared reference)."""
    return KEYS_DIR / f"hovernet_keys_{name}.txt"


def read_keys(name: str) -> list[tuple[str, list[int], str]]:
    """Entries (key, shape, dtype) of ``hovernet_keys_<name>.txt``."""
    rows = []
    for line in key_file(name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, json.loads(shape), dtype))
    return rows


def fixture_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The reference's deterministic weights (section f.1) for ``model``'s state dict.

    ``model`` may live on the meta device; the result is on the CPU, in state-dict order.
    """
    sd = model.state_dict()
    out = {}
    for i, key in enumerate(sorted(sd)):
        ref = sd[key]
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.int64)
            continue
        if key == "upsample2x.unpool_mat":
            out[key] = torch.ones(ref.shape, dtype=torch.float32)
            continue
        n = ref.numel()
        # p depends on k only through k mod 2001: build one period and repeat it
        k = torch.arange(min(n, 2001), dtype=torch.int64)
        period = ((k * 7919 + i * 104729) % 2001 - 1000).to(torch.float32) / 1000.0
        p = period.repeat(-(-n // period.numel()))[:n].reshape(ref.shape)
        if ref.ndim == 4:
            fan_in = n // ref.shape[0]
            value = p * math.sqrt(3.0 / fan_in)
        elif key.endswith("running_var"):
            value = 1 + 0.5 * p
        elif key.endswith("running_mean"):
            value = 0.1 * p
        elif key.endswith("weight"):
            value = 1 + 0.25 * p
        elif key.endswith("bias"):
            value = 0.1 * p
        else:  # pragma: no cover - every HoVer-Net entry is covered above
            raise AssertionError(key)
        out[key] = value
    return {k: out[k] for k in sd}


def fixture_model(mode: str, nr_types: int | None) -> HoVerNet:
    """An official-size HoVer-Net in eval mode holding the f.1 weights (no random init)."""
    with torch.device("meta"):
        model = HoVerNet(mode=mode, nr_types=nr_types)
    model = model.to_empty(device="cpu")
    model.load_state_dict(fixture_state_dict(model), strict=True)
    return model.eval()


def fixture_input(size: int) -> torch.Tensor:
    """The reference's input (section f.2): seed 0, rand(1, 3, size, size) * 255."""
    torch.manual_seed(0)
    return torch.rand(1, 3, size, size) * 255
