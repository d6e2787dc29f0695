"""The widget's layout, layers and input errors (no refinement needed)."""

from __future__ import annotations

import numpy as np
import pytest
from magicgui.widgets import LineEdit
from napari.layers import Labels

from napari_scribble_refine._napari import _layers
from napari_scribble_refine._napari._widget import ScribbleRefineWidget
from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.scripting import PLUGIN, WIDGET


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    assert [w.display_name for w in manifest.contributions.widgets] == [WIDGET]


def test_dock_by_plugin_name(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, ScribbleRefineWidget)
    assert f"{WIDGET} ({PLUGIN})" in viewer.window.dock_widgets
    assert widget.viewer.layers is not None
    widget.wait(60)


def test_every_control_has_a_tooltip(make_napari_viewer):
    widget = ScribbleRefineWidget(make_napari_viewer())
    widget.wait(60)

    def walk(container):
        for child in container:
            if hasattr(child, "__iter__") and not hasattr(child, "choices"):
                yield from walk(child)
            else:
                yield child

    settings = widget._settings  # the advanced settings fold away in a superqt QCollapsible
    controls = [*walk(widget), *walk(settings.advanced)]
    assert len(controls) > len(settings.names)
    missing = [w.label or w.name for w in controls if not w.tooltip]
    assert missing == [] and settings.collapsible.toolTip()


def test_new_scribbles_matches_image_and_classes(viewer_with_image, qtbot):
    widget = ScribbleRefineWidget(viewer_with_image)
    widget.wait(60)
    layer = widget.new_scribbles()
    image = viewer_with_image.layers["nuclei"]
    assert isinstance(layer, Labels)
    assert layer.data.shape == image.data.shape
    assert not layer.data.any()
    assert widget._pickers.scribbles.value == layer
    names = widget.class_names
    assert names[0] == "background"
    for c in range(len(names)):
        np.testing.assert_allclose(layer.colormap.map(c + 1), _layers.scribble_colour(c))
    assert list(layer.features["class"]) == ["unpainted", *names]


def test_strokes_stand_out_from_the_prediction_and_the_image():
    """Stroke colours differ from every prediction colour, each other and common images."""
    backgrounds = [(0, 0, 0), (1, 1, 1), (0.93, 0.6, 0.8), (0.35, 0.2, 0.55)]  # black, white,
    # eosin pink, haematoxylin purple: fluorescence and H&E images
    strokes = [_layers.scribble_colour(c)[:3] for c in range(6)]
    predicted = [_layers.class_colour(c)[:3] for c in range(len(_layers.CLASS_COLOURS))]
    for c, stroke in enumerate(strokes):
        assert min(np.linalg.norm(stroke - p) for p in predicted) >= 0.4, c
        assert min(np.linalg.norm(stroke - np.array(b)) for b in backgrounds) >= 0.5, c
        others = [np.linalg.norm(stroke - o) for i, o in enumerate(strokes) if i != c]
        assert min(others) >= 0.45, c


def test_palette_sets_brush(viewer_with_image):
    widget = ScribbleRefineWidget(viewer_with_image)
    widget.wait(60)
    layer = widget.new_scribbles()
    widget.select_class(0)
    assert layer.selected_label == 1
    widget._brush.palette[1].native.click()
    assert layer.selected_label == 2
    assert layer.mode == "paint"
    layer.selected_label = 1  # keyboard change shows in the palette
    assert widget._brush.palette[0].native.isChecked()
    assert not widget._brush.palette[1].native.isChecked()


def test_settings_form_is_generated_from_the_config(qtbot):
    """One control per RefineConfig field, named, typed and defaulted as the field."""
    from dataclasses import fields

    from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox

    from napari_scribble_refine._napari._settings_form import (
        SHOWN,
        RefineSettings,
        parameter_docs,
    )

    settings = RefineSettings()
    config_fields = [f for f in fields(RefineConfig) if f.name != "device"]
    assert settings.names == [f.name for f in config_fields] + ["point_radius", "box_ring"]
    assert settings.config("cpu") == RefineConfig(device="cpu")  # the defaults, all of them
    kinds = {"bool": CheckBox, "int": SpinBox, "float": FloatSpinBox}
    docs = parameter_docs(RefineConfig)
    for field in config_fields:
        control = settings.inputs[field.name]
        assert control.value == field.default, field.name
        assert isinstance(control, kinds.get(field.type, (ComboBox, LineEdit))), field.name
        if field.name in docs:  # the docstring's text is the tooltip
            words = docs[field.name][1].replace("``", "").split()[:4]
            assert " ".join(words) in control.tooltip, field.name
    assert settings.inputs["optimiser"].choices == ("sgd", "adam")  # {"sgd", "adam"}
    assert settings.inputs["max_iterations"].label == "Max iterations (M)"
    assert settings.inputs["learning_rate"].label == "Learning rate (η)"
    assert [w.name for w in settings] == list(SHOWN)  # the rest is under Advanced
    assert {w.name for w in settings.advanced} == set(settings.names) - set(SHOWN)


def test_advanced_settings_folded(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    widget = ScribbleRefineWidget(make_napari_viewer())
    settings = widget._settings
    fold = settings.collapsible
    assert not fold.isExpanded()
    qtbot.mouseClick(fold.toggleButton(), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: settings.advanced.native.height() > 100)
    assert fold.isExpanded()
    widget.configure(max_iterations=7, learning_rate=0.02, n_layers=2, region_growing=False)
    config = widget.config()
    assert (config.max_iterations, config.learning_rate, config.n_layers) == (7, 0.02, 2)
    assert not config.region_growing
    assert not settings.inputs["grow_threshold"].enabled  # growing is off
    assert config.pin_scribbles and config.crf_weight == RefineConfig.crf_weight
    widget.configure(pin_scribbles=False, crf_weight=0.0, optimiser="adam")
    config = widget.config()
    assert not config.pin_scribbles and config.crf_weight == 0 and config.optimiser == "adam"
    with pytest.raises(TypeError, match="did you mean max_iterations"):
        widget.configure(iterations=3)  # one name per setting: the config's
    widget.wait(60)


def test_an_invalid_setting_gives_the_configs_message(docked, fluo_sample, notifications):
    """A value the config rejects: its own message in the status line, never a traceback."""
    from _qt_helpers import truth_scribbles

    docked.predict(wait=True)
    docked.new_scribbles().data = truth_scribbles(fluo_sample.types)
    with pytest.raises(ValueError) as expected:
        RefineConfig(momentum=1.0)
    message = str(expected.value)
    assert "RefineConfig.momentum" in message
    momentum = docked._settings.inputs["momentum"]
    momentum.value = 1.0  # typed by the user: the form lets it through to the config
    assert docked._status.value == message
    assert "border" in momentum.native.styleSheet()  # and marks the setting
    notifications.clear()
    assert docked.refine() is None and not docked.busy
    assert notifications.errors() == [message]
    assert docked._status.value == message
    momentum.value = 0.5
    assert momentum.native.styleSheet() == ""
    docked.refine(wait=True)
    assert docked.last_outcome.result is not None


def test_no_image_layer_error(make_napari_viewer, notifications):
    widget = ScribbleRefineWidget(make_napari_viewer())
    widget.wait(60)
    notifications.clear()
    assert widget.predict() is None
    assert widget.refine() is None
    assert widget.new_scribbles() is None
    errors = notifications.errors()
    assert errors and all("No image layer" in e for e in errors)


def test_4d_image_error(make_napari_viewer, notifications):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((2, 3, 32, 32)), name="movie")
    widget = ScribbleRefineWidget(viewer)
    widget.wait(60)
    assert widget.predict() is None
    assert any("4D images are not supported" in e for e in notifications.errors())


def test_scribbles_of_another_shape_error(viewer_with_image, notifications):
    widget = ScribbleRefineWidget(viewer_with_image)
    widget.wait(60)
    other = viewer_with_image.add_labels(np.zeros((50, 60), np.uint8), name="wrong")
    other.data[10:20, 10:20] = 2
    widget.configure(scribbles=other)
    assert widget.refine() is None
    errors = notifications.errors()
    assert any("spatial shape (128, 128)" in e and "(50, 60)" in e for e in errors), errors


def test_widget_never_writes_user_layers(docked, qtbot):
    viewer = docked.viewer
    image = viewer.layers["nuclei"]
    before = image.data.copy()
    docked.predict(wait=True)
    assert docked.prediction_layer is not None
    assert docked.prediction_layer != image
    np.testing.assert_array_equal(image.data, before)


def test_model_follows_the_image_until_the_user_picks_one(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="he", rgb=True)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert widget._models.combo.value == "hovernet-he"  # a colour image: the H&E model
    viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")
    widget._pickers.image.value = viewer.layers["grey"]
    assert widget._models.combo.value == "hovernet-fluo"  # a grey image: the grey model
    widget._models.combo.value = "hovernet-he"  # the user's own choice ...
    widget._pickers.image.value = viewer.layers["he"]
    widget._pickers.image.value = viewer.layers["grey"]
    assert widget._models.combo.value == "hovernet-he"  # ... stays
    widget.wait(60)


def test_the_brush_suits_the_nuclei_found(docked):
    """New scribbles get a brush a third of the predicted nuclei's median width."""
    from skimage.draw import disk

    labels = np.zeros((100, 100), np.int32)
    for i, (y, x) in enumerate([(20, 20), (20, 60), (60, 20), (60, 60)], start=1):
        labels[disk((y, x), 9)] = i  # 18 px wide
    assert _layers.brush_size_for(labels) == 6
    assert _layers.brush_size_for(None) == _layers.brush_size_for(labels * 0) == 5
    docked.predict(wait=True)
    layer = docked.new_scribbles()
    expected = _layers.brush_size_for(docked.instances_layer.data)
    assert layer.brush_size == expected and f"Brush {expected} px" in docked._status.value


def test_a_long_message_wraps_instead_of_widening_the_dock(make_napari_viewer, fluo_model, qtbot):
    """The RGB-with-greyscale-model message once made the dock 1,918 px wide (no canvas)."""
    from napari_scribble_refine.scripting import open_widget

    viewer = make_napari_viewer(show=True)
    colour = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    viewer.add_image(colour, name="colour", rgb=True)
    widget = open_widget(viewer, image="colour", model=fluo_model, device="cpu")
    dock = widget.native.parentWidget()
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.wait(100)
    before, dock_before = canvas.width(), dock.minimumSizeHint().width()
    widget.predict(wait=True)  # refused: a colour image for a greyscale model
    qtbot.wait(100)
    message = widget._status.value
    assert "greyscale" in message and len(message) > 150
    assert widget.native.minimumSizeHint().width() <= 420
    assert dock.minimumSizeHint().width() <= dock_before
    assert canvas.width() >= before - 10
