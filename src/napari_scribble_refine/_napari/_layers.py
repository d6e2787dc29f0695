"""Between napari layers and the engine's arrays: copies, class colours, output layers.

Everything here runs on the GUI thread. Arrays handed to the engine are copies, so a worker
never reads a layer that the user keeps editing, and nothing here writes into a user's layer.
Colours follow one palette: class ``c`` has the same colour as a scribble (value ``c + 1``),
in the prediction (value ``c``) and on the outline of an instance of that class.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Points
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.colormaps.standardize_color import transform_color

from ..core.regions import region_shape

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

CLASS_COLOURS = (
    "#8a8a8a",  # background
    "#ffd400",  # nucleus / first type
    "#00c8ff",
    "#ff3d8b",
    "#7cff4d",
    "#ff8c1a",
    "#b266ff",
    "#3d7dff",
    "#ff5c5c",
    "#40e0b0",
)
"""Colour of class ``c`` (index 0 = background); cycles after the last entry (skipping
background)."""

SCRIBBLE_COLOURS = (
    "#00ff00",  # background strokes
    "#ff0000",  # nucleus / first type
    "#0000ff",
    "#ff00ff",
    "#8000ff",
    "#804000",
)
"""Colour of a stroke (and a point or box) of class ``c``: saturated, and away from every
prediction colour and from fluorescence's black and H&E's white, pink and purple, so that
strokes stay visible over the image and the prediction; cycles after the last entry
(skipping background)."""

TRANSPARENT = np.zeros(4, dtype=np.float32)


def layer_key(layer: Any) -> Hashable:
    """Identify a layer (napari may hand a plugin proxies: ``id`` and ``is`` differ per access).

    Parameters
    ----------
    layer : napari.layers.Layer or None
        The layer.

    Returns
    -------
    Hashable
        Its ``unique_id``, or None for None.
    """
    return None if layer is None else layer.unique_id


def _pick(palette: tuple[str, ...], index: int) -> np.ndarray:
    hex_colour = palette[index if index < len(palette) else 1 + (index - 1) % (len(palette) - 1)]
    return transform_color(hex_colour)[0].astype(np.float32)


def class_colour(index: int) -> np.ndarray:
    """RGBA colour of a class in the prediction and instance layers.

    Parameters
    ----------
    index : int
        Class index, 0 = background.

    Returns
    -------
    numpy.ndarray
        float32 RGBA in [0, 1].
    """
    return _pick(CLASS_COLOURS, index)


def scribble_colour(index: int) -> np.ndarray:
    """RGBA colour of a stroke, point or box of a class (see :data:`SCRIBBLE_COLOURS`).

    Parameters
    ----------
    index : int
        Class index, 0 = background.

    Returns
    -------
    numpy.ndarray
        float32 RGBA in [0, 1].
    """
    return _pick(SCRIBBLE_COLOURS, index)


def scribble_colour_hex(index: int) -> str:
    """Stroke colour of a class as ``#rrggbb`` (the palette's buttons).

    Parameters
    ----------
    index : int
        Class index, 0 = background.

    Returns
    -------
    str
        Hex colour.
    """
    r, g, b, _ = (np.round(scribble_colour(index) * 255)).astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def _colormap(
    value_classes: dict[int, int], unlisted: np.ndarray = TRANSPARENT, colour=class_colour
) -> DirectLabelColormap:
    colours = {None: unlisted, 0: TRANSPARENT}
    colours.update({int(v): colour(int(c)) for v, c in value_classes.items()})
    return DirectLabelColormap(color_dict=colours)


def scribble_colormap(class_names: list[str]) -> DirectLabelColormap:
    """Colormap for a scribble layer: value ``c + 1`` is class ``c``, 0 is unpainted.

    Parameters
    ----------
    class_names : list of str
        Class names, index 0 = background.

    Returns
    -------
    DirectLabelColormap
        The colormap.
    """
    return _colormap({c + 1: c for c in range(len(class_names))}, colour=scribble_colour)


def prediction_colormap(class_names: list[str]) -> DirectLabelColormap:
    """Colormap for a class map: value ``c`` is class ``c``, background is transparent.

    Parameters
    ----------
    class_names : list of str
        Class names, index 0 = background.

    Returns
    -------
    DirectLabelColormap
        The colormap.
    """
    return _colormap({c: c for c in range(1, len(class_names))})


def instance_colormap(instance_classes: dict[int, int]) -> DirectLabelColormap:
    """Colormap for instance labels: each instance in the colour of its class.

    Parameters
    ----------
    instance_classes : dict of int to int
        Instance label -> class index.

    Returns
    -------
    DirectLabelColormap
        The colormap (unlisted labels take the first nucleus colour).
    """
    return _colormap(instance_classes, unlisted=class_colour(1))


def class_features(class_names: list[str], offset: int) -> dict[str, list]:
    """Labels-layer features naming each value's class (shown in the status bar on hover).

    Parameters
    ----------
    class_names : list of str
        Class names, index 0 = background.
    offset : int
        1 for scribble layers (value = class + 1), 0 for class maps.

    Returns
    -------
    dict
        Columns ``index`` (label value) and ``class``.
    """
    index = list(range(len(class_names) + offset))
    names = (["unpainted"] if offset else []) + list(class_names)
    return {"index": index, "class": names}


def full_resolution(layer: Image | Labels) -> Any:
    """Return a layer's full-resolution data (level 0 of a multiscale one), not copied."""
    return layer.data[0] if layer.multiscale else layer.data


def image_array(layer: Image) -> tuple[np.ndarray, bool]:
    """Copy an image layer's pixels and tell whether they are colour.

    Parameters
    ----------
    layer : napari.layers.Image
        The layer (2D, RGB, or a stack; multiscale layers give their full resolution).

    Returns
    -------
    image : numpy.ndarray
        A copy of the data; the layer is never written.
    rgb : bool
        napari's own ``rgb`` flag for the layer.
    """
    data = full_resolution(layer)
    return np.array(data, copy=True), bool(layer.rgb)


def spatial_shape(layer: Image) -> tuple[int, ...]:
    """Shape of an image layer without its colour axis.

    Parameters
    ----------
    layer : napari.layers.Image
        The layer.

    Returns
    -------
    tuple of int
        ``(Y, X)`` or ``(Z, Y, X)`` (or whatever the layer holds, for error messages).
    """
    data = full_resolution(layer)
    shape = tuple(int(s) for s in data.shape)
    return shape[:-1] if layer.rgb else shape


def labels_array(layer: Labels) -> np.ndarray:
    """Copy a Labels layer's data as ``int32``.

    Parameters
    ----------
    layer : napari.layers.Labels
        The layer.

    Returns
    -------
    numpy.ndarray
        The copy.
    """
    data = full_resolution(layer)
    return np.array(data, dtype=np.int32, copy=True)


def world_to_pixels(source: Points | Shapes, target: Image, coords: np.ndarray) -> np.ndarray:
    """Convert a layer's data coordinates into another layer's pixel coordinates.

    Parameters
    ----------
    source : napari.layers.Layer
        The layer the coordinates belong to.
    target : napari.layers.Image
        The image whose pixel grid is wanted.
    coords : numpy.ndarray
        (N, D) coordinates in ``source``'s data space.

    Returns
    -------
    numpy.ndarray
        (N, D) coordinates in ``target``'s data space (float).
    """
    coords = np.asarray(coords, dtype=float)
    if len(coords) == 0:
        return coords.reshape(0, source.ndim)
    return np.array(
        [target.world_to_data(source.data_to_world(point)) for point in coords], dtype=float
    )


def point_prompts(points: Points, image: Image) -> tuple[np.ndarray, np.ndarray]:
    """Points of a Points layer in image pixels, with the class each one marks.

    Parameters
    ----------
    points : napari.layers.Points
        Points whose ``class`` feature holds the class index (set by the widget's palette).
    image : napari.layers.Image
        The image being segmented.

    Returns
    -------
    coords : numpy.ndarray
        (N, D) pixel coordinates.
    classes : numpy.ndarray
        (N,) class indices (0 = background).
    """
    coords = world_to_pixels(points, image, points.data)
    classes = _feature_classes(points, len(coords))
    return coords, classes


def box_prompts(shapes: Shapes, image: Image) -> tuple[list[np.ndarray], np.ndarray]:
    """Rectangles of a Shapes layer in image pixels, with the class each one marks.

    Parameters
    ----------
    shapes : napari.layers.Shapes
        Shapes whose ``class`` feature holds the class index; only rectangles are used.
    image : napari.layers.Image
        The image being segmented.

    Returns
    -------
    boxes : list of numpy.ndarray
        Each (4, D) corner coordinates in image pixels.
    classes : numpy.ndarray
        (N,) class indices.
    """
    all_classes = _feature_classes(shapes, len(shapes.data))
    boxes, classes = [], []
    for vertices, kind, cls in zip(shapes.data, shapes.shape_type, all_classes, strict=True):
        if kind == "rectangle":
            boxes.append(world_to_pixels(shapes, image, vertices))
            classes.append(cls)
    return boxes, np.asarray(classes, dtype=int)


def _feature_classes(layer: Points | Shapes, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=int)
    if "class" in layer.features:
        return np.asarray(layer.features["class"], dtype=int)
    return np.ones(n, dtype=int)


def set_output(
    viewer: napari.Viewer,
    layer: Labels | None,
    data: np.ndarray,
    *,
    name: str,
    image: Image,
    colormap: DirectLabelColormap,
    origin: tuple[int, ...] | None = None,
    **kwargs: object,
) -> Labels:
    """Show engine output in a Labels layer the widget owns, creating it when needed.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    layer : napari.layers.Labels or None
        The widget's previous output layer; a new one is added when it is None or no longer
        in the viewer.
    data : numpy.ndarray
        The new labels (copied; the layer owns its array).
    name : str
        Layer name for a new layer.
    image : napari.layers.Image
        The image, whose scale and translation the output takes.
    colormap : DirectLabelColormap
        Colours of the values for a new layer (an existing layer keeps its own).
    origin : tuple of int, optional
        Where ``data``'s first pixel lies in the image (a large image's region).
    **kwargs
        Further ``Labels`` arguments for a new layer (``opacity``, ``features``, ...).

    Returns
    -------
    napari.layers.Labels
        The layer showing ``data``.
    """
    where = placement(image, origin)
    if layer is None or layer not in viewer.layers:
        return viewer.add_labels(
            np.array(data, copy=True), name=name, colormap=colormap, **where, **kwargs
        )
    if origin is not None and not np.array_equal(layer.translate, where["translate"]):
        layer.translate = where["translate"]  # another region of a large image
    if layer.data.shape == data.shape and layer.data.dtype == data.dtype:
        # in place: far cheaper than the data setter, which re-derives the viewer's dims
        np.copyto(layer.data, data)
        layer.refresh()
    else:
        layer.data = np.array(data, copy=True)
    return layer


def placement(image: Image, origin: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Scale and translation that put a layer over ``image`` (at ``origin``, in pixels)."""
    ndim = len(spatial_shape(image))
    scale = np.asarray(image.scale[-ndim:])
    translate = np.asarray(image.translate[-ndim:])
    if origin is not None:
        translate = translate + np.asarray(origin) * scale
    return {"scale": scale, "translate": translate}


def brush_size_for(instances: np.ndarray | None) -> int:
    """Return a brush width (px) for strokes inside nuclei: a third of their median width.

    Parameters
    ----------
    instances : numpy.ndarray or None
        Instance labels (0 = background); None or no instance gives the default, 5.

    Returns
    -------
    int
        Between 2 and 40.
    """
    if instances is None:
        return 5
    areas = np.bincount(np.asarray(instances).ravel())[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return 5
    diameter = 2.0 * np.sqrt(np.median(areas) / np.pi)
    return int(np.clip(round(diameter / 3), 2, 40))


def add_scribble_layer(
    viewer: napari.Viewer,
    image: Image,
    class_names: list[str],
    brush_size: int = 5,
    region: tuple[slice, ...] | None = None,
) -> Labels:
    """Add an empty scribble layer over an image, coloured and named by class.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    image : napari.layers.Image
        The image whose spatial shape, scale and translation the layer takes.
    class_names : list of str
        The model's classes (value ``c + 1`` paints class ``c``).
    brush_size : int
        The brush width (see :func:`brush_size_for`).
    region : tuple of slice, optional
        Cover only this region of the image (a large image's working region).

    Returns
    -------
    napari.layers.Labels
        The new layer, in paint mode.
    """
    layer = viewer.add_labels(
        np.zeros(
            spatial_shape(image) if region is None else region_shape(region),
            dtype=np.uint8,
        ),
        name=f"{image.name} scribbles",
        colormap=scribble_colormap(class_names),
        features=class_features(class_names, offset=1),
        metadata={"scribble_refine": "scribbles"},
        opacity=0.9,
        **placement(image, None if region is None else tuple(s.start for s in region)),
    )
    layer.brush_size = brush_size
    layer.mode = "paint"
    return layer


def add_points_layer(viewer: napari.Viewer, image: Image, class_names: list[str]) -> Points:
    """Add an empty Points layer whose points carry a ``class`` feature.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    image : napari.layers.Image
        The image the points refer to.
    class_names : list of str
        The model's classes (unused beyond documentation of the feature's range).

    Returns
    -------
    napari.layers.Points
        The new layer, in add mode.
    """
    ndim = len(spatial_shape(image))
    layer = viewer.add_points(
        np.zeros((0, ndim)),
        ndim=ndim,
        name=f"{image.name} points",
        size=7,
        features={"class": np.zeros(0, dtype=int)},
        **placement(image),
    )
    layer.mode = "add"
    return layer


def add_boxes_layer(viewer: napari.Viewer, image: Image, class_names: list[str]) -> Shapes:
    """Add an empty Shapes layer for rectangles carrying a ``class`` feature.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    image : napari.layers.Image
        The image the boxes refer to.
    class_names : list of str
        The model's classes.

    Returns
    -------
    napari.layers.Shapes
        The new layer, in rectangle mode.
    """
    layer = viewer.add_shapes(
        ndim=len(spatial_shape(image)),
        name=f"{image.name} boxes",
        features={"class": np.zeros(0, dtype=int)},
        face_color="transparent",
        edge_width=2,
        **placement(image),
    )
    layer.mode = "add_rectangle"
    return layer


def mark_class(layer: Points | Shapes, index: int) -> None:
    """Make new points or boxes mark a class, and relabel the selected ones to it.

    Parameters
    ----------
    layer : napari.layers.Points or napari.layers.Shapes
        The prompt layer (its ``class`` feature holds class indices).
    index : int
        Class index (0 = background).
    """
    colour = scribble_colour(index)
    selected = sorted(layer.selected_data)
    if selected:
        features = layer.features.copy()
        if "class" not in features:
            features["class"] = 1
        features.loc[selected, "class"] = index
        layer.features = features
    layer.feature_defaults["class"] = index
    if isinstance(layer, Points):
        layer.current_face_color = colour
    else:
        layer.current_edge_color = colour
