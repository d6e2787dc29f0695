"""Driving the napari widget from Python: the scripted version of what a user clicks.

Example
-------
>>> import napari
>>> from napari_scribble_refine.scripting import open_widget
>>> viewer = napari.Viewer()
>>> image = viewer.add_image(my_image)
>>> widget = open_widget(viewer, image=image, model="hovernet-fluo")
>>> widget.predict(wait=True)             # prediction and instances layers appear
>>> scribbles = widget.new_scribbles()    # paint into scribbles.data, or by hand
>>> scribbles.data[40:44, 60:90] = 2      # class 1 ("nucleus") is value 2
>>> widget.refine(wait=True)              # fine-tunes the head, updates the layers
>>> widget.undo(wait=True)

Every ``wait=True`` call processes Qt events until the work is done, so live updates,
progress and notifications behave as in the GUI. Without ``wait`` the call returns the
thread worker at once (``widget.wait()`` blocks later).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from ._napari._widget import ScribbleRefineWidget

PLUGIN = "napari-scribble-refine"
WIDGET = "Scribble Refine"


def open_widget(
    viewer: napari.viewer.Viewer,
    *,
    image: Image | str | None = None,
    scribbles: Labels | str | None = None,
    model: str | None = None,
    device: str | None = None,
    wait: bool = True,
) -> ScribbleRefineWidget:
    """Dock the Scribble Refine widget through napari's plugin system and set its inputs.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    image : napari.layers.Image or str, optional
        The image layer (or its name); by default the widget's first choice.
    scribbles : napari.layers.Labels or str, optional
        A scribble layer (or its name) to use.
    model : str, optional
        A built-in model name (see ``core.models.registry.available_models()``) or a path
        to a checkpoint / TorchScript file.
    device : str, optional
        ``"auto"``, ``"cpu"``, ``"cuda:0"``, ...
    wait : bool
        Wait until the model has loaded.

    Returns
    -------
    ScribbleRefineWidget
        The docked widget.
    """
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.configure(image=image, scribbles=scribbles, model=model, device=device)
    if wait:
        widget.wait()
    return widget
