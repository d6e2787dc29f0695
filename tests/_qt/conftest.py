"""Fixtures for the widget tests: a real headless napari viewer with the widget docked."""

from __future__ import annotations

import pytest

from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence


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


def _builtin(name: str) -> str:
    """The name of a built-in model, whose weights ship with the package."""
    from napari_scribble_refine.core.models.registry import builtin_weights

    weights = builtin_weights(name)
    assert weights.is_file(), f"the built-in model's weights are missing: {weights}"
    return name


@pytest.fixture(scope="session")
def fluo_model() -> str:
    """Name of the greyscale nucleus model."""
    return _builtin("hovernet-fluo")


@pytest.fixture(scope="session")
def he_model() -> str:
    """Name of the H&E model with nucleus types."""
    return _builtin("hovernet-he")


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
    widget.configure(max_iterations=10)
    assert not widget.busy
    return widget


@pytest.fixture
def shown(make_napari_viewer, fluo_model, fluo_sample, qtbot):
    """The widget docked in a shown viewer over the sample, for real key presses and clicks."""
    from napari_scribble_refine.scripting import open_widget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(fluo_sample.image, name="nuclei")
    widget = open_widget(viewer, image="nuclei", model=fluo_model, device="cpu")
    widget.configure(max_iterations=10)
    assert viewer.window._qt_window.isVisible()
    assert not widget.busy
    return widget
