"""Each image's work: its refinement session, its output layers and the nuclei they show.

One session per image and model, kept while the image layer exists, so that choosing
another image and coming back keeps the refinements and their undo history. The output
layers (*<image> prediction*, *<image> instances*) belong to the widget and are written
only here, on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import numpy as np

from . import _layers
from ._layers import layer_key

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from ..core.session import RefineSession
    from ..core.slide import SlideSession
    from ._tasks import Outcome


class ImageSessions:
    """The sessions, output layers and shown nuclei of every image, keyed by layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer the output layers are added to.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._sessions: dict[tuple[Hashable, str], tuple[Image, RefineSession]] = {}
        self._outputs: dict[Hashable, dict[str, Labels]] = {}
        self._types: dict[Hashable, dict[int, int]] = {}

    def session(self, image: Image | None, model: str) -> RefineSession | None:
        """Return an image's session with a model, or None.

        Parameters
        ----------
        image : napari.layers.Image or None
            The image layer.
        model : str
            What the model was loaded from (the Model picker's spec).

        Returns
        -------
        RefineSession or None
            The session, when the image has one with that model.
        """
        key = (layer_key(image), model)
        entry = self._sessions.get(key)
        if entry is None:
            return None
        session = entry[1]
        if session.closed and session.slide is not None and session.slide.working_session:
            # a large image's region session the slide replaced (a Predict elsewhere failed
            # and the slide reopened its working region): the live one
            session = session.slide.working_session
            self._sessions[key] = (entry[0], session)
        return session

    def slide(self, image: Image | None, model: str) -> SlideSession | None:
        """Return the slide session of a large image's regions with a model, or None.

        Parameters
        ----------
        image : napari.layers.Image or None
            The image layer.
        model : str
            The Model picker's spec.

        Returns
        -------
        SlideSession or None
            The slide session the image's session belongs to, when it has one.
        """
        session = self.session(image, model)
        return None if session is None else session.slide

    def keep(self, image: Image, model: str, session: RefineSession) -> None:
        """Make ``session`` the image's session with ``model``.

        Parameters
        ----------
        image : napari.layers.Image
            The image layer.
        model : str
            The Model picker's spec.
        session : RefineSession
            The session.
        """
        self._sessions[layer_key(image), model] = (image, session)

    def images(self) -> list[Image]:
        """Return the image layers that have a session."""
        return [image for image, _ in self._sessions.values()]

    def drop_sessions(self) -> bool:
        """Forget every session (their output layers stay); True when there was one."""
        had = bool(self._sessions)
        self._sessions.clear()
        return had

    def forget_missing(self) -> None:
        """Forget the work of images (and outputs) whose layers left the viewer."""
        present = {layer_key(layer) for layer in self._viewer.layers}
        for key in [k for k in self._sessions if k[0] not in present]:
            del self._sessions[key]
        for table in (self._outputs, self._types):
            for key in [k for k in table if k not in present]:
                del table[key]

    def output(self, image: Image | None, kind: str) -> Labels | None:
        """Return an image's output layer, while it is in the viewer.

        Parameters
        ----------
        image : napari.layers.Image or None
            The image layer.
        kind : str
            ``"prediction"`` or ``"instances"``.

        Returns
        -------
        napari.layers.Labels or None
            The layer, or None.
        """
        layer = self._outputs.get(layer_key(image), {}).get(kind)
        return layer if layer is not None and layer in self._viewer.layers else None

    def owned(self) -> set[Hashable]:
        """Return the keys of every output layer (never offered as scribbles)."""
        return {layer_key(layer) for out in self._outputs.values() for layer in out.values()}

    @property
    def n_images_shown(self) -> int:
        """How many images have output layers."""
        return len(self._outputs)

    def types(self, image: Image | None) -> dict[int, int] | None:
        """Return the class of each nucleus shown for an image (None before Predict).

        Parameters
        ----------
        image : napari.layers.Image or None
            The image layer.

        Returns
        -------
        dict of int to int or None
            Instance label -> class index (the dictionary itself: edit with care).
        """
        return self._types.get(layer_key(image))

    def show_prediction(
        self,
        image: Image,
        prediction: np.ndarray,
        class_names: list[str],
        origin: tuple[int, ...] | None = None,
    ) -> Labels:
        """Show a class map in the image's prediction layer (added when needed).

        Parameters
        ----------
        image : napari.layers.Image
            The image layer.
        prediction : numpy.ndarray
            Class map (0 = background, c = class c).
        class_names : list of str
            The model's classes (colours and hover names of a new layer).
        origin : tuple of int, optional
            Where the class map's first pixel lies in the image (a large image's region).

        Returns
        -------
        napari.layers.Labels
            The prediction layer.
        """
        outputs = self._outputs.setdefault(layer_key(image), {})
        outputs["prediction"] = _layers.set_output(
            self._viewer,
            self.output(image, "prediction"),
            np.asarray(prediction),
            name=f"{image.name} prediction",
            image=image,
            colormap=_layers.prediction_colormap(class_names),
            origin=origin,
            opacity=0.5,
            features=_layers.class_features(class_names, offset=0),
        )
        return outputs["prediction"]

    def show_instances(
        self,
        image: Image,
        instances: np.ndarray,
        classes: dict[int, int],
        origin: tuple[int, ...] | None = None,
    ) -> Labels:
        """Show nuclei, outlined in their class colours, in the image's instances layer.

        Parameters
        ----------
        image : napari.layers.Image
            The image layer.
        instances : numpy.ndarray
            Instance labels (0 = background).
        classes : dict of int to int
            Class of each instance.
        origin : tuple of int, optional
            Where the labels' first pixel lies in the image (a large image's region).

        Returns
        -------
        napari.layers.Labels
            The instances layer.
        """
        colormap = _layers.instance_colormap(classes)
        existing = self.output(image, "instances")
        layer = _layers.set_output(
            self._viewer,
            existing,
            np.asarray(instances),
            name=f"{image.name} instances",
            image=image,
            colormap=colormap,
            origin=origin,
            opacity=0.9,
        )
        self._outputs.setdefault(layer_key(image), {})["instances"] = layer
        self._types[layer_key(image)] = dict(classes)
        if existing is not None and layer_key(layer) == layer_key(existing):
            layer.colormap = colormap
        else:
            layer.contour = 1
        return layer

    def show_outcome(
        self, image: Image, outcome: Outcome, model: str, class_names: list[str]
    ) -> None:
        """Keep a task's session as the image's and show its prediction and nuclei.

        Parameters
        ----------
        image : napari.layers.Image
            The image the task worked on.
        outcome : Outcome
            What the task left.
        model : str
            The Model picker's spec.
        class_names : list of str
            The model's classes.
        """
        self.keep(image, model, outcome.session)
        origin = outcome.session.origin
        self.show_prediction(image, outcome.prediction, class_names, origin)
        if outcome.instances is not None:
            self.show_instances(image, outcome.instances, outcome.instance_classes, origin)
