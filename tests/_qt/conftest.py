"""Fixtures for the widget tests: a real headless napari viewer with the widget docked."""

from __future__ import annotations

import pytest

from napari_scribble_refine.core.synthetic import synthetic_fluorescence


@pytest.fixture(autouse=True)
def _layers_only_on_the_gui_thread(monkeypatch):
    """napari then raises if the plugin sets a napari attribute from a worker thread."""
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")


class Notifications(list):
    """napari notifications seen during a test, in order."""

    def texts(self, severity: str | None = None) -> list[str]:
        """Messages, optionally of one severity (``"error"``, ``"info"``)."""
        return [str(n.message) for n in self if severity is None or str(n.severity) == severity]

    def errors(self) -> list[str]:
        """Error messages."""
        return self.texts("error")


@pytest.fixture
def notifications():
    """Messages the widget shows as napari notifications (errors and infos)."""
    from napari.utils.notifications import notification_manager

    seen = Notifications()
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _model(name: str, tmp_path_factory, in_channels: int, classes: list[str]) -> str:
    """The built-in model when its weights are installed, else an untrained stand-in file.

    The stand-in has the built-in's architecture and classes, so every widget path runs;
    only how good the predictions are differs.
    """
    from napari_scribble_refine.core.models.registry import builtin_weights

    if builtin_weights(name).is_file():
        return name
    import torch

    from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig
    from napari_scribble_refine.core.models.hovernet_checkpoint import save_hovernet_safetensors

    torch.manual_seed(0)
    types = len(classes) if len(classes) > 2 else None
    net = HoVerNet(HoVerNetConfig.small(nr_types=types, in_channels=in_channels))
    path = tmp_path_factory.mktemp("models") / f"{name}-untrained.safetensors"
    norm = {"kind": "percentile", "low": 1.0, "high": 99.8}
    return str(save_hovernet_safetensors(net, path, classes, normalisation=norm))


@pytest.fixture(scope="session")
def fluo_model(tmp_path_factory) -> str:
    """Name or path of the greyscale nucleus model."""
    return _model("hovernet-fluo", tmp_path_factory, 1, ["background", "nucleus"])


@pytest.fixture(scope="session")
def he_model(tmp_path_factory) -> str:
    """Name or path of the H&E model with nucleus types."""
    classes = ["background", "other", "inflammatory", "epithelial", "spindle"]
    return _model("hovernet-he", tmp_path_factory, 3, classes)


@pytest.fixture(scope="session")
def fluo_sample():
    """A small synthetic fluorescence image with ground truth (fast on the CPU)."""
    return synthetic_fluorescence(shape=(128, 128), seed=3)


@pytest.fixture
def viewer_with_image(make_napari_viewer, fluo_sample):
    """A headless viewer holding the sample image."""
    viewer = make_napari_viewer()
    viewer.add_image(fluo_sample.image, name="nuclei")
    return viewer


@pytest.fixture
def docked(viewer_with_image, fluo_model, qtbot):
    """The widget docked through the plugin system over the sample, model loaded."""
    from napari_scribble_refine.scripting import open_widget

    widget = open_widget(viewer_with_image, image="nuclei", model=fluo_model, device="cpu")
    widget.configure(iterations=10)
    assert not widget.busy
    return widget
