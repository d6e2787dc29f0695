"""Errors as notifications, a responsive GUI during refinement, and closing mid-refinement."""

from __future__ import annotations

import time

import numpy as np
from _qt_helpers import truth_scribbles
from qtpy.QtCore import QTimer

from napari_scribble_refine.core.synthetic import synthetic_he
from napari_scribble_refine.scripting import PLUGIN, WIDGET

TIMEOUT_MS = 120_000


def test_rgb_image_with_grey_model_error(make_napari_viewer, fluo_model, notifications):
    """An RGB image with a greyscale model is the core's clear error, as a notification."""
    from napari_scribble_refine.scripting import open_widget

    viewer = make_napari_viewer()
    viewer.add_image(synthetic_he((64, 64), seed=0).image, name="he", rgb=True)
    widget = open_widget(viewer, image="he", model=fluo_model, device="cpu")
    notifications.clear()
    widget.predict(wait=True)
    errors = notifications.errors()
    assert len(errors) == 1 and "greyscale" in errors[0] and "hovernet-he" in errors[0], errors
    assert widget._predict_button.enabled


def test_broken_model_file_error(viewer_with_image, tmp_path, notifications):
    from napari_scribble_refine.scripting import open_widget

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00not a model" * 8)
    widget = open_widget(viewer_with_image, image="nuclei")
    notifications.clear()
    widget.set_model_file(broken)
    widget.wait()
    errors = notifications.errors()
    assert len(errors) == 1 and "broken.safetensors" in errors[0], errors
    assert "Failed" in widget._status.value


def test_gui_stays_responsive_during_refinement(docked, fluo_sample, qtbot):
    """The Qt event loop keeps serving timer events within 100 ms while a refinement runs."""
    docked.predict(wait=True)
    docked.new_scribbles().data = truth_scribbles(fluo_sample.types)
    docked.configure(iterations=150, stop_fraction=1.0, region_growing=True)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    worker = docked.refine()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    timer.stop()
    gaps = np.diff(ticks) * 1000
    assert docked.live_updates >= 2
    assert len(gaps) > 20, len(gaps)
    print(
        f"event-loop gaps during refinement: n={len(gaps)}, max {gaps.max():.1f} ms, "
        f"p99 {np.percentile(gaps, 99):.1f} ms, median {np.median(gaps):.1f} ms"
    )
    assert gaps.max() < 100, gaps.max()


def test_closing_mid_refinement_stops_the_worker(docked, fluo_sample, qtbot):
    docked.predict(wait=True)
    docked.new_scribbles().data = truth_scribbles(fluo_sample.types)
    docked.configure(iterations=5000, region_growing=False)
    worker = docked.refine()
    qtbot.waitUntil(lambda: docked.live_updates >= 1, timeout=TIMEOUT_MS)
    viewer = docked.viewer
    n_layers = len(viewer.layers)
    viewer.window.remove_dock_widget(docked.native)
    assert docked._closed
    assert docked._runner._done.is_set()  # the thread let go of the session
    qtbot.waitUntil(lambda: not docked.busy, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == n_layers
    assert f"{WIDGET} ({PLUGIN})" not in viewer.window.dock_widgets
    assert worker is not None
