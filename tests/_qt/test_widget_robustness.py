"""Errors as notifications, a responsive GUI during refinement, and closing mid-refinement."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from _qt_helpers import click, truth_scribbles

from napari_scribble_refine._napari import _widget
from napari_scribble_refine.scripting import PLUGIN, WIDGET
from napari_scribble_refine.synthetic.scenes import synthetic_he

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
    assert widget._buttons.predict.enabled


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


def test_gui_handles_clicks_during_refinement(shown, fluo_sample, qtbot):
    """The refinement runs in a worker: the GUI shows previews and takes clicks meanwhile."""
    click(qtbot, shown._buttons.predict, shown)
    scribbles = shown.new_scribbles()
    scribbles.data = truth_scribbles(fluo_sample.types)
    shown.configure(max_iterations=5000, stop_fraction=1.0, region_growing=True)
    click(qtbot, shown._buttons.refine)
    worker = shown.worker
    qtbot.waitUntil(lambda: shown.live_updates >= 1, timeout=TIMEOUT_MS)
    assert shown.busy and scribbles.selected_label == 2
    click(qtbot, shown._brush.palette[0])  # the brush follows a click while the worker runs
    assert scribbles.selected_label == 1 and shown.busy
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        click(qtbot, shown._buttons.cancel)
    shown.wait()
    assert shown.last_outcome.cancelled


@pytest.mark.parametrize("close", ["viewer", "dock"])
def test_closing_with_a_live_update_pending_is_clean(shown, fluo_sample, qtbot, close):
    """Closing while a throttled live update waits: it never reaches the deleted controls.

    Closing the viewer deletes the widget without a close event of its own; the update's
    timer used to fire afterwards ("QComboBox has been deleted").
    """
    click(qtbot, shown._buttons.predict, shown)
    layer = shown.prediction_layer
    shown.new_scribbles().data = truth_scribbles(fluo_sample.types)
    shown.configure(max_iterations=5000, stop_fraction=1.0, region_growing=False)
    click(qtbot, shown._buttons.refine)
    qtbot.waitUntil(lambda: shown.live_updates >= 1, timeout=TIMEOUT_MS)
    live = shown._refinement.live  # superqt's qthrottled: a Future per call
    for _ in range(10):  # one more preview right after a delivery waits for its turn
        if not live(layer.data.copy()).done():  # shown at once when the last one is old
            break
    waiting = live(np.zeros_like(layer.data))  # replaces the waiting value: must never show
    assert not waiting.done() and shown.busy
    viewer = shown.viewer
    with qtbot.capture_exceptions() as exceptions:
        if close == "viewer":
            viewer.close()
        else:
            viewer.window.remove_dock_widget(shown.native)
        qtbot.wait(3 * _widget.LIVE_UPDATE_MS)  # past the moment the update was due
        qtbot.waitUntil(lambda: not shown.busy, timeout=TIMEOUT_MS)
    assert exceptions == [], exceptions
    assert shown._closed and not waiting.done()  # never delivered
    assert shown._runner._done.is_set()  # the thread let go of the session
    assert layer.data.any()  # the pending all-background update was never shown


def test_closing_mid_refinement_stops_the_worker(docked, fluo_sample, qtbot):
    docked.predict(wait=True)
    docked.new_scribbles().data = truth_scribbles(fluo_sample.types)
    docked.configure(max_iterations=5000, region_growing=False)
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


def test_a_quit_worker_closes_its_task_in_the_worker_thread(qtbot):
    """napari quits running workers when its window closes; the task must still finish."""
    from napari_scribble_refine._napari._workers import TaskRunner

    closed_in: list[bool] = []

    def counting():
        try:
            while True:
                time.sleep(0.001)  # pacing only: the yields need not flood the event queue
                yield 1
        finally:
            closed_in.append(threading.current_thread() is threading.main_thread())

    results: list = []
    runner = TaskRunner(lambda busy: None)
    worker = runner.start(
        "counting",
        counting(),
        on_result=results.append,
        on_yielded=lambda value: None,
        on_failed=results.append,
    )
    with qtbot.waitSignal(worker.yielded, timeout=TIMEOUT_MS):
        pass  # it runs
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        worker.quit()
    assert closed_in == [False]  # closed once, in the worker thread
    assert runner._done.is_set() and not runner.busy
    assert results == []  # quit: no result, no failure
