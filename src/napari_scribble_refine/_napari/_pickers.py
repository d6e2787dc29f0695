"""The layer pickers: which image to segment and which layers hold the user's corrections.

Four combo boxes over the viewer's layers. The scribble picker never offers the widget's own
output layers or a committed result; the brush of the chosen scribble layer is followed so
that the palette can show it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error

from ..core.regions import region_shape
from ..core.scribbles import validate_scribbles
from . import _layers
from ._large_images import region_text
from ._layers import layer_key
from ._tasks import Feedback

if TYPE_CHECKING:
    import napari


class LayerPickers:
    """The Image, Scribbles, Points and Boxes pickers.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are offered.
    owned : callable
        Returns the keys (:func:`~._layers.layer_key`) of the widget's own output layers,
        which are never offered as scribbles.
    """

    def __init__(self, viewer: napari.viewer.Viewer, owned: Callable[[], set[Hashable]]) -> None:
        self._viewer = viewer
        self._owned = owned
        self._watched: Labels | None = None
        self._on_brush: Callable[..., None] | None = None
        self.image = ComboBox(
            label="Image",
            choices=partial(self._choices, Image),
            tooltip="The image to segment: 2D greyscale, RGB, or a (Z, Y, X) stack.",
        )
        self.scribbles = ComboBox(
            label="Scribbles",
            choices=partial(self._choices, Labels, scribbles=True),
            nullable=True,
            tooltip="Labels layer with your corrections: 1 = background, c + 1 = class c.",
        )
        self.points = ComboBox(
            label="Points",
            choices=partial(self._choices, Points),
            nullable=True,
            tooltip="Optional Points layer: each point marks a small disk of its class.",
        )
        self.boxes = ComboBox(
            label="Boxes",
            choices=partial(self._choices, Shapes),
            nullable=True,
            tooltip="Optional Shapes layer of rectangles: the box's core is its class, a "
            "thin ring outside it is background.",
        )

    @property
    def all(self) -> tuple[ComboBox, ComboBox, ComboBox, ComboBox]:
        """The four pickers: image, scribbles, points, boxes."""
        return self.image, self.scribbles, self.points, self.boxes

    def _choices(self, kind: type, _widget: Any = None, scribbles: bool = False):
        layers = [layer for layer in self._viewer.layers if isinstance(layer, kind)]
        if scribbles:
            owned = self._owned()
            layers = [
                layer
                for layer in layers
                if layer_key(layer) not in owned
                and layer.metadata.get("scribble_refine") != "committed"
            ]
        return [(layer.name, layer) for layer in layers]

    def reset(self) -> None:
        """Offer the viewer's current layers (keeps each choice while its layer exists)."""
        for picker in self.all:
            picker.reset_choices()

    def choose(self, **layers: Any) -> None:
        """Choose layers, given as layers or layer names (None leaves a picker as it is).

        Parameters
        ----------
        **layers
            ``image``, ``scribbles``, ``points``, ``boxes``.
        """
        for name, layer in layers.items():
            if layer is not None:
                picker = getattr(self, name)
                picker.value = self._viewer.layers[layer] if isinstance(layer, str) else layer

    def require_image(self) -> Image | None:
        """Return the chosen image, or None after an error notification."""
        image = self.image.value
        if image is None:
            show_error("No image layer: open or choose an image first (File > Open, or a sample)")
        return image

    def other_images(self) -> list[Image]:
        """Return the image layers other than the chosen one."""
        current = layer_key(self.image.value)
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, Image) and layer_key(layer) != current
        ]

    def feedback(
        self,
        image: Image,
        n_classes: int,
        point_radius: int,
        box_ring: int,
        region: tuple[slice, ...] | None = None,
    ) -> Feedback:
        """Copy the chosen scribbles, points and boxes, in the image's pixels.

        Parameters
        ----------
        image : napari.layers.Image
            The image they correct.
        n_classes : int
            How many classes the model has (scribble values above ``n_classes`` are errors).
        point_radius, box_ring : int
            See :class:`~._tasks.Feedback`.
        region : tuple of slice, optional
            The region of a large image the session covers: scribbles, points and boxes
            are cut to it, in its pixels. A scribble layer covers the whole image or
            exactly this region.

        Returns
        -------
        Feedback
            Private copies, for a thread worker.

        Raises
        ------
        ValueError
            If the scribbles do not fit the image (or region) or the classes.
        """
        shape = _layers.spatial_shape(image)
        origin = np.zeros(len(shape), dtype=int)
        if region is not None:
            origin = np.array([s.start for s in region])
            shape = region_shape(region)
        scribbles = None
        layer = self.scribbles.value
        if layer is not None:
            marks = _region_marks(layer, image, region)
            name = f"Scribble layer '{layer.name}'"
            scribbles = validate_scribbles(marks, shape, n_classes, name=name)
        points, point_classes = np.zeros((0, len(shape))), np.zeros(0, dtype=int)
        if self.points.value is not None:
            points, point_classes = _layers.point_prompts(self.points.value, image)
            points = _in_region(points - origin, shape, self.points.value.name, region)
        boxes: list[np.ndarray] = []
        box_classes = np.zeros(0, dtype=int)
        if self.boxes.value is not None:
            boxes, box_classes = _layers.box_prompts(self.boxes.value, image)
            boxes = [
                _in_region(box - origin, shape, self.boxes.value.name, region) for box in boxes
            ]
        return Feedback(
            scribbles=scribbles,
            points=points,
            point_classes=point_classes,
            boxes=boxes,
            box_classes=box_classes,
            point_radius=point_radius,
            box_ring=box_ring,
        )

    def follow_brush(self, on_brush: Callable[..., None] | None) -> None:
        """Call ``on_brush`` whenever the chosen scribble layer's label changes (None: stop).

        Parameters
        ----------
        on_brush : callable or None
            Called with napari's event; follows the layer chosen in the Scribbles picker.
        """
        if self._watched is not None and self._on_brush is not None:
            self._watched.events.selected_label.disconnect(self._on_brush)
        self._on_brush = on_brush
        self._watched = self.scribbles.value if on_brush is not None else None
        if self._watched is not None:
            self._watched.events.selected_label.connect(on_brush)


def _region_marks(layer: Labels, image: Image, region: tuple[slice, ...] | None) -> np.ndarray:
    """Return a scribble layer's values over the image, or over a large image's region."""
    if region is None:
        return _layers.labels_array(layer)
    shape = region_shape(region)
    data = _layers.full_resolution(layer)
    if tuple(data.shape) == _layers.spatial_shape(image):  # covers the whole image
        return np.array(data[region], dtype=np.int32)
    expected = _layers.placement(image, tuple(s.start for s in region))["translate"]
    if tuple(data.shape) != shape or not np.allclose(layer.translate, expected):
        raise ValueError(
            f"Scribble layer '{layer.name}' was painted on another region of this large "
            f"image; Predict works on the region in view ({region_text(region)}): press "
            "New scribbles there, or pan back and Predict where the scribbles are"
        )
    return np.array(data, dtype=np.int32)


def _in_region(
    coords: np.ndarray, shape: tuple[int, ...], name: str, region: tuple[slice, ...] | None
) -> np.ndarray:
    """Refuse points (or box corners) outside a large image's region, saying what to do."""
    if region is None or len(coords) == 0:
        return coords
    inside = np.all((coords >= -0.5) & (coords < np.asarray(shape) - 0.5), axis=1)
    if not inside.all():
        raise ValueError(
            f"Layer '{name}': {int((~inside).sum())} of its points lie outside the region "
            f"Predict worked on ({region_text(region)}); pan there and Predict, or remove them"
        )
    return coords
