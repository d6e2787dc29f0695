"""Shared fixtures: small deterministic networks and synthetic disk scenes.

The tiny U-Net is trained once per test session (single-threaded, a few seconds) on bright
disks only: it predicts background and "nucleus" almost right, predicts its third class
("other") nowhere, and calls dim disks mostly "nucleus". Tests get deep copies.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from _fuzz import CI_MAX_EXAMPLES, LONG_MAX_EXAMPLES
from _tiny_nets import CLASSES2, CLASSES3, TinyUNet, disks_scene, train_tiny_unet
from hypothesis import HealthCheck, settings
from torch import nn

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.models.module import TorchModuleModel

# Hypothesis profiles of the property-based tests (tests/test_fuzz_*.py), chosen with the
# environment variable HYPOTHESIS_PROFILE: "ci" (default) is small and reproducible (the same
# examples on every run, no example database); "long" runs 20 times as many random examples
# and keeps failing ones in .hypothesis/ (git-ignored) to replay them first next time.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=CI_MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.register_profile(
    "long",
    max_examples=LONG_MAX_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def trained_unet() -> TinyUNet:
    """The session's one trained 3-class TinyUNet (do not modify: use ``unet``)."""
    return train_tiny_unet()


@pytest.fixture
def unet(trained_unet: TinyUNet) -> TinyUNet:
    """A fresh copy of the trained 3-class network (class 2 is never predicted)."""
    return copy.deepcopy(trained_unet)


@pytest.fixture
def unet2(trained_unet: TinyUNet) -> TinyUNet:
    """A 2-class copy (background, nucleus): the 3-class net without its unused output."""
    net = copy.deepcopy(trained_unet)
    old = net.final
    final = nn.Conv2d(old.in_channels, 2, 1)
    with torch.no_grad():
        final.weight.copy_(old.weight[:2])
        final.bias.copy_(old.bias[:2])
    net.final = final
    return net.eval()


@pytest.fixture
def model3(unet: TinyUNet) -> TorchModuleModel:
    """The 3-class network with its 1x1 final layer as the head."""
    return TorchModuleModel(unet, CLASSES3, size_multiple=2)


@pytest.fixture
def model2(unet2: TinyUNet) -> TorchModuleModel:
    """The 2-class network with its 1x1 final layer as the head."""
    return TorchModuleModel(unet2, CLASSES2, size_multiple=2)


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A 96x96 image with 5 bright and 4 dim disks, and their kinds (0, 1 bright, 2 dim)."""
    return disks_scene(np.random.default_rng(7), size=96, n_bright=5, n_dim=4)


@pytest.fixture
def config() -> RefineConfig:
    """Fast, deterministic settings on the CPU without region growing.

    The head's own output is shown (no trust region, CRF or per-nucleus typing), so tests
    of the loop see what the tuned head does; those mechanisms have tests of their own.
    """
    return RefineConfig(
        trust_region=False,
        crf_weight=0.0,
        type_by_instance=False,
        max_iterations=80,
        optimiser="sgd",
        learning_rate=0.05,
        momentum=0.9,
        proximity_weight=0.01,
        region_growing=False,
        preview_every=5,
        device="cpu",
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """Say how many GPU tests (marked ``gpu``) ran, so a CPU-only green run is visible."""
    ran = skipped = 0
    for key in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(key, []):
            if report.when not in ("call", "setup") or "gpu" not in report.keywords:
                continue
            if key == "skipped":
                skipped += 1
            elif report.when == "call" or key == "error":
                ran += 1
    where = "CUDA available" if torch.cuda.is_available() else "no CUDA here"
    terminalreporter.write_line(f"GPU tests: {ran} ran, {skipped} skipped ({where})")
