"""What the brush marks: the model's classes, the palette, and new layers to mark them in.

The palette's buttons set the chosen scribble layer's label (value = class + 1) and the
class new points and boxes mark; a label chosen in napari (keys, the layer controls) shows
in the palette. When the model's classes change, the palette, every scribble layer's colours
and the prediction's colours follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error

from . import _layers
from ._controls import ClassPalette
from ._pickers import LayerPickers

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import ComboBox
    from napari.layers import Image, Labels

DEFAULT_CLASSES = ["background", "nucleus"]


class Brush:
    """The class palette and the class names it offers.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (scribble layers are recoloured, new layers added).
    pickers : LayerPickers
        The layer pickers (the brush marks in the chosen scribble, point and box layers).
    on_status : callable
        Shows a line in the widget's status.
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, pickers: LayerPickers, on_status: Callable[[str], None]
    ) -> None:
        self._viewer = viewer
        self._pickers = pickers
        self._on_status = on_status
        self.class_names = list(DEFAULT_CLASSES)
        self.palette = ClassPalette(self.select)
        self.palette.set_classes(self.class_names)

    def select(self, index: int, *_: Any) -> None:
        """Make the brush, new points and new boxes mark one class.

        Parameters
        ----------
        index : int
            Class index (0 = background).
        """
        if not 0 <= index < len(self.class_names):
            show_error(f"No class {index}: the model has classes {self.class_names}")
            return
        scribbles = self._pickers.scribbles.value
        if scribbles is not None:
            scribbles.selected_label = index + 1
            if scribbles.mode not in ("paint", "fill", "polygon"):
                scribbles.mode = "paint"
        for layer in (self._pickers.points.value, self._pickers.boxes.value):
            if layer is not None:
                _layers.mark_class(layer, index)
        self.palette.show_selected(index)
        self._on_status(f"Brush: {self.class_names[index]}")

    def show_label(self, *_: Any) -> None:
        """Check the palette button of the chosen scribble layer's label."""
        scribbles = self._pickers.scribbles.value
        if scribbles is not None and 1 <= scribbles.selected_label <= len(self.class_names):
            self.palette.show_selected(scribbles.selected_label - 1)

    def set_classes(self, class_names: list[str], prediction: Labels | None) -> None:
        """Offer a model's classes: palette, scribble layers' and prediction's colours.

        Parameters
        ----------
        class_names : list of str
            The classes, index 0 = background.
        prediction : napari.layers.Labels or None
            The chosen image's prediction layer.
        """
        if class_names == self.class_names:
            return
        self.class_names = list(class_names)
        self.palette.set_classes(self.class_names)
        for layer in self._viewer.layers:
            if layer.metadata.get("scribble_refine") == "scribbles":
                layer.colormap = _layers.scribble_colormap(self.class_names)
                layer.features = _layers.class_features(self.class_names, offset=1)
        if prediction is not None:
            prediction.colormap = _layers.prediction_colormap(self.class_names)

    def new_layer(self, add: Callable[[Any, Image, list[str]], Any], picker: ComboBox) -> Any:
        """Add a layer over the chosen image, choose it in its picker and mark the brush class.

        Parameters
        ----------
        add : callable
            ``add(viewer, image, class_names)`` adds the layer (see :mod:`._layers`).
        picker : magicgui.widgets.ComboBox
            The picker that chooses it.

        Returns
        -------
        napari.layers.Layer or None
            The new layer, active in the viewer (None without an image).
        """
        image = self._pickers.require_image()
        if image is None:
            return None
        brush = self.palette.selected
        layer = add(self._viewer, image, self.class_names)
        picker.value = layer
        self.select(brush)
        self._viewer.layers.selection.active = layer
        return layer
