"""Fixtures for the widget tests: a real headless napari viewer with the widget docked."""

from __future__ import annotations

import numpy as np
import pytest

from napari_scribble_refine.core.synthetic import synthetic_fluorescence


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
def docked(viewer_with_image, qtbot):
    """The widget docked through the plugin system over the sample, model loaded."""
    from napari_scribble_refine.scripting import open_widget

    widget = open_widget(viewer_with_image, image="nuclei", model="hovernet-fluo", device="cpu")
    widget.configure(iterations=10)
    return widget


def scribble_errors(widget, sample, n=3, seed=0) -> np.ndarray:
    """Scribbles a careful user would paint: a few strokes where the prediction is wrong.

    Returns a copy of ``widget``'s prediction-corrected scribbles (value = class + 1).
    """
    truth = sample.types.astype(np.int32)
    prediction = np.asarray(widget.prediction_layer.data)
    wrong = np.argwhere(prediction != truth)
    rng = np.random.default_rng(seed)
    scribbles = np.zeros(truth.shape, np.uint8)
    for y, x in wrong[rng.choice(len(wrong), size=min(n * 20, len(wrong)), replace=False)]:
        scribbles[y, x] = truth[y, x] + 1
    return scribbles
