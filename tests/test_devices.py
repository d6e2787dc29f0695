"""resolve_device: auto picks what exists; explicit requests are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_scribble_refine.core.devices import resolve_device

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def test_auto_picks_the_best_available():
    device, reason = resolve_device("auto")
    if HAS_CUDA:
        assert device.type == "cuda" and "CUDA" in reason
    elif HAS_MPS:
        assert device.type == "mps" and "MPS" in reason
    else:
        assert device == torch.device("cpu")
        assert "no CUDA or MPS" in reason and "CPU" in reason
    assert reason.startswith("auto")


def test_default_is_auto():
    assert resolve_device() == resolve_device("auto")


@pytest.mark.parametrize("spec", ["cpu", " CPU ", torch.device("cpu")])
def test_cpu(spec):
    device, reason = resolve_device(spec)
    assert device == torch.device("cpu") and "CPU" in reason


@pytest.mark.parametrize("spec", ["banana", "tpu", "cuda:x", "xla"])
def test_unknown_devices_are_rejected(spec):
    with pytest.raises(ValueError, match="device"):
        resolve_device(spec)


def test_non_string_is_rejected():
    with pytest.raises(ValueError, match="string"):
        resolve_device(3)  # type: ignore[arg-type]


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_cuda_unavailable_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_available():
    device, reason = resolve_device("cuda")
    assert device.type == "cuda" and "CUDA" in reason
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(HAS_MPS, reason="MPS is available here")
def test_mps_unavailable_is_a_clear_error():
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_refinement_on_cuda_matches_the_cpu(model3, scene):
    """A real refinement (trust region, CRF, growing) on CUDA ends where the CPU's does.

    Float sums differ between devices, so the class maps may differ at a few boundary
    pixels: at most 0.5 % of the image, and never at a scribbled pixel.
    """
    from _tiny_nets import scribble_disks

    from napari_scribble_refine.core.config import RefineConfig
    from napari_scribble_refine.core.session import RefineSession

    image, kinds = scene
    scribbles = np.zeros(image.shape, np.uint8)
    scribble_disks(scribbles, kinds, 2, [0, 1], 3)  # two dim disks are class 2
    scribbles[:4, :] = 1  # and a background stroke
    maps, losses = {}, {}
    for device in ("cpu", "cuda"):
        session = RefineSession(model3, image, RefineConfig(device=device, seed=0))
        assert session.device.type == device
        result = session.run(scribbles)
        maps[device], losses[device] = result.prediction, result.loss
    assert (maps["cpu"][scribbles > 0] == maps["cuda"][scribbles > 0]).all()
    assert np.mean(maps["cpu"] != maps["cuda"]) <= 0.005
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=0.05, abs=1e-3)


def test_the_device_choices_are_what_this_machine_has():
    from napari_scribble_refine.core.devices import available_devices

    choices = available_devices()
    assert choices[:2] == ["auto", "cpu"]
    assert len([c for c in choices if c.startswith("cuda:")]) == torch.cuda.device_count()
    for choice in choices:
        resolve_device(choice)  # each is one resolve_device accepts here
