"""Retype mode: a click with a type brush on a nucleus retypes the whole nucleus at once.

While the "Retype nuclei" button is down, a click on the scribble layer with a nucleus
class (value >= 2) paints its dot as usual and shows the nucleus under it, in the image's
prediction and instances layers, as that class. The dot stays in the scribble layer: it is
the constraint the next Refine learns from (with ``type_by_instance``, a type scribbled on
a nucleus decides its class). The shown class follows the scribbles inside the nucleus by
that same rule, so napari's undo on the scribble layer (Ctrl+Z), or erasing the dot, takes
the retype back. The next result of Predict, Refine, Undo or Redo replaces the shown one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import PushButton
from napari.utils.notifications import show_info

from . import _layers
from ._layers import layer_key

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

    from ._image_sessions import ImageSessions
    from ._pickers import LayerPickers

LEGEND = (
    "Keys: Shift+P Predict · Shift+R Refine · Shift+Z / Shift+Y Undo / Redo · Shift+C Commit. "
    "Retype nuclei: with a type brush, click a nucleus (Ctrl+Z takes it back)."
)
"""The legend under the widget's buttons."""


@dataclass
class _Retyped:
    """A nucleus clicked in retype mode: where it is and what it showed before."""

    pixels: tuple[np.ndarray, ...]
    base_class: int
    base_values: np.ndarray
    shown: int


class NucleusRetype:
    """The Retype mode button, its clicks on the scribble layer, and the nuclei retyped.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (the scribble layer becomes its active layer when the mode turns on).
    pickers : LayerPickers
        The layer pickers (the chosen image and scribble layer).
    images : ImageSessions
        The images' output layers and shown nucleus types (edited here).
    class_names : callable
        Returns the model's classes.
    busy : callable
        Whether a task runs (no retype meanwhile: the layers are about to change).
    on_status : callable
        Shows a line in the widget's status.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        pickers: LayerPickers,
        images: ImageSessions,
        *,
        class_names: Callable[[], list[str]],
        busy: Callable[[], bool],
        on_status: Callable[[str], None],
    ) -> None:
        self._viewer, self._pickers, self._images = viewer, pickers, images
        self._class_names, self._busy, self._on_status = class_names, busy, on_status
        self._hooked: Labels | None = None
        self._retyped: dict[Hashable, dict[int, _Retyped]] = {}  # per image: by instance
        self.button = PushButton(
            text="Retype nuclei",
            tooltip="While down: click a nucleus with a type brush to retype the whole "
            "nucleus; the dot you paint teaches the next Refine (Ctrl+Z takes it back).",
        )
        self.button.native.setCheckable(True)
        self.button.native.toggled.connect(self._on_toggled)

    @property
    def on(self) -> bool:
        """Whether retype mode is on."""
        return self.button.native.isChecked()

    def _on_toggled(self, on: bool) -> None:
        self.follow()
        layer = self._pickers.scribbles.value
        if on and layer is None:
            show_info("Retype paints on a scribble layer: New scribbles first")
        elif on:
            layer.visible = True
            self._viewer.layers.selection.active = layer  # clicks go to the active layer
            layer.mode = "paint"
            self._on_status("Retype: choose a type in the palette, then click a nucleus")

    def follow(self) -> None:
        """Connect to the chosen scribble layer while the mode is on (leave the last one)."""
        layer = self._pickers.scribbles.value if self.on else None
        if layer_key(layer) == layer_key(self._hooked):
            return
        if self._hooked is not None:
            if self._on_press in self._hooked.mouse_drag_callbacks:
                self._hooked.mouse_drag_callbacks.remove(self._on_press)
            self._hooked.events.paint.disconnect(self.sync)
            self._hooked.events.set_data.disconnect(self.sync)
        self._hooked = layer
        if layer is not None:
            layer.mouse_drag_callbacks.append(self._on_press)
            layer.events.paint.connect(self.sync)  # a stroke ends
            layer.events.set_data.connect(self.sync)  # napari's undo and redo refresh it

    def forget(self, image: Any) -> None:
        """Forget the nuclei retyped on an image (its layers now show a new result).

        Parameters
        ----------
        image : napari.layers.Image
            The image.
        """
        self._retyped.pop(layer_key(image), None)

    def _on_press(self, layer: Labels, event: Any):
        """Mouse callback of the scribble layer: retype the nucleus under a left click."""
        if event.button != 1:
            return
        position = np.asarray(layer.world_to_data(event.position))
        yield
        while event.type == "mouse_move":
            yield
        self.retype_at(layer, position)

    def retype_at(self, layer: Labels, position: np.ndarray) -> int | None:
        """Retype the nucleus at a pixel of the scribble layer to its brush's class.

        Parameters
        ----------
        layer : napari.layers.Labels
            The scribble layer clicked (its label at the pixel decides the class).
        position : numpy.ndarray
            The pixel, in the layer's data coordinates.

        Returns
        -------
        int or None
            The nucleus's instance label, or None when nothing was retyped (the status line
            says why).
        """
        image = self._pickers.image.value
        instances = self._images.output(image, "instances")
        prediction = self._images.output(image, "prediction")
        types = self._images.types(image)
        pixel = tuple(int(round(c)) for c in position)
        if self._busy() or instances is None or prediction is None or types is None:
            self._on_status("Retype works on the nuclei shown: Predict first, then click")
            return None
        if layer.selected_label < 2:
            self._on_status("Retype: choose a nucleus type in the palette, not background")
            return None
        shape = instances.data.shape
        if layer.data.shape != shape or len(pixel) != len(shape):
            self._on_status("Retype: the scribble layer does not match the image's nuclei")
            return None
        if not all(0 <= p < s for p, s in zip(pixel, shape, strict=True)):
            return None
        label = int(instances.data[pixel])
        if label == 0:
            self._on_status("Retype: no nucleus there")
            return None
        retyped = self._retyped.setdefault(layer_key(image), {})
        if label not in retyped:
            pixels = np.nonzero(np.asarray(instances.data) == label)
            base = types.get(label, 1)
            retyped[label] = _Retyped(pixels, base, np.array(prediction.data[pixels]), base)
        before = retyped[label].shown
        self.sync()
        names = self._class_names()
        now = retyped[label].shown
        self._on_status(
            f"Nucleus {label}: {names[now]} (was {names[before]}); the dot teaches the next "
            "Refine, Ctrl+Z takes it back"
        )
        return label

    def sync(self, *_: Any) -> None:
        """Show each retyped nucleus of the chosen image as the class its scribbles give it.

        The class scribbled most inside the nucleus (the rule of the core's
        ``type_by_instance``), else the class it had.
        """
        image = self._pickers.image.value
        retyped = self._retyped.get(layer_key(image))
        scribbles = self._hooked
        if not retyped or scribbles is None or self._busy():
            return
        instances = self._images.output(image, "instances")
        prediction = self._images.output(image, "prediction")
        types = self._images.types(image)
        if instances is None or prediction is None or types is None:
            return
        data = np.asarray(scribbles.data)
        changed = False
        for label, nucleus in retyped.items():
            values = data[nucleus.pixels]
            typed = values[values > 1].astype(np.int64) - 1
            cls = int(np.bincount(typed).argmax()) if typed.size else nucleus.base_class
            if cls == nucleus.shown:
                continue
            new = nucleus.base_values if cls == nucleus.base_class else cls
            prediction.data[nucleus.pixels] = new
            types[label] = nucleus.shown = cls
            changed = True
        if changed:
            prediction.refresh()
            instances.colormap = _layers.instance_colormap(types)
