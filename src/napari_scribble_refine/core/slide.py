"""SlideSession: refinement on images too large for memory, at a cost independent of their size.

A :class:`~.session.RefineSession` caches the trunk's features of every pixel (about 140
bytes per pixel), so its memory and each refinement's time grow with the image. A slide
session reads the image lazily (:class:`~.lazy_image.LazyImage`: numpy, dask, zarr,
OME-Zarr, TIFF), computes the trunk's features tile by tile when a region needs them and
keeps them within a budget (:class:`~.feature_tiles.TileFeatures`), and refines on a
*working region*: the scribbles' box with some context, joined with the region the user
looks at. Each region runs through an ordinary :class:`~.session.RefineSession` on the
tiles' features, so its result is the in-memory session's on that crop::

    session = SlideSession(model, zarr_or_dask_or_path)
    view = (slice(8192, 10240), slice(4096, 6144))
    labels = session.predict(view)             # only the tiles under the view run
    result = session.run(scribbles, region=view)
    session.write_prediction("result.zarr")     # the whole image, tile by tile, resumable

Undo and redo act within the working region (a new one starts from the head as tuned so
far, the pre-trained head still its reference); reset restores the pre-trained head.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from .config import RefineConfig
from .devices import resolve_device
from .feature_tiles import TileFeatures
from .history import DEFAULT_BUDGET_MB
from .lazy_image import LazyImage, Region
from .models.base import Features, HeadState, SegmentationModel
from .refine_loop import no_op_refinement
from .regions import (
    BlankRegion,
    box_text,
    clip_region,
    contains,
    count_marked,
    region_shape,
    scribble_box,
    working_region,
)
from .session import RefineSession
from .slide_output import SlideOutput
from .steps import RefineResult, RefineStep
from .tile_normalisation import tile_normaliser

__all__ = ["BlankRegion", "SlideSession"]


WHOLE_MAX_PIXELS = 4096 * 4096
"""``predict()`` without a region works on images up to this size (all slices)."""


class SlideSession(SlideOutput):
    """Scribble refinement on a large image read lazily, one working region at a time.

    Parameters
    ----------
    model : SegmentationModel
        The adapter; the session works on a deep copy.
    image : array_like, str or os.PathLike
        (Y, X), (Y, X, 3|4) or (Z, Y, X): a numpy, dask or zarr array, or the path of a
        TIFF file or a zarr / OME-Zarr folder. Never read whole (except to normalise an
        image of at most 2048² pixels) and never modified.
    config : RefineConfig, optional
        Refinement settings (default: ``RefineConfig()``).
    rgb : bool, optional
        Whether the last axis is colour; None guesses from the shape.
    tile_size : int
        Side of the tiles the trunk runs on.
    tile_halo : int, optional
        Context per tile; default: the adapter's ``trunk_halo`` (or 64).
    feature_budget_mb : float
        Memory for cached tile features; the least recently used tiles beyond it are
        dropped and computed again when needed.
    context : int
        Pixels of context around the scribbles' box in the working region when a
        refinement is not given the region the user looks at.
    max_region_pixels : int
        Largest working or predicted region; larger requests are refused with a message.
    history_budget_mb : float
        Memory for each working region's undo states.

    Attributes
    ----------
    image : LazyImage
        The image.
    features : TileFeatures
        The tile cache (``features.computed`` counts trunk runs).
    working_region : Region or None
        The region the last refinement trained on.
    """

    def __init__(
        self,
        model: SegmentationModel,
        image: Any,
        config: RefineConfig | None = None,
        *,
        rgb: bool | None = None,
        tile_size: int = 1024,
        tile_halo: int | None = None,
        feature_budget_mb: float = 2048.0,
        context: int = 256,
        max_region_pixels: int = 4096 * 4096,
        history_budget_mb: float = DEFAULT_BUDGET_MB,
    ) -> None:
        self.config = config if config is not None else RefineConfig()
        self.image = LazyImage(image, rgb=rgb)
        info = self.image.info
        if info.is_rgb and model.in_channels == 1:
            raise ValueError(
                f"image: a colour image of shape {tuple(self.image.array.shape)} was given, but "
                f"model {model.name!r} takes greyscale images; choose a colour model (such as "
                "'hovernet-he') or convert the image to greyscale first"
            )
        if not feature_budget_mb > 0:
            raise ValueError(f"feature_budget_mb must be > 0, got {feature_budget_mb!r}")
        self.device, self.device_reason = resolve_device(self.config.device)
        self.model = copy.deepcopy(model)
        self.model.set_n_layers(self.config.n_layers)
        self.model.to(self.device)
        self.model.network.eval()
        for p in self.model.network.parameters():
            p.requires_grad_(False)
        self._pretrained: HeadState = self.model.head_state()
        self._viewer_model = copy.deepcopy(self.model)  # regions other than the working one
        self.context = int(context)
        self.max_region_pixels = int(max_region_pixels)
        self.history_budget_mb = history_budget_mb
        halo = tile_halo if tile_halo is not None else model.trunk_halo
        self.features = TileFeatures(
            self.model,
            self.image,
            tile_normaliser(self.model, self.image),
            tile_size=tile_size,
            halo=int(halo),
            budget_bytes=int(feature_budget_mb * 2**20),
        )
        self.working_region: Region | None = None
        self._work: RefineSession | None = None
        self._view: tuple[tuple[Region, object], RefineSession] | None = None
        self._scribbles: Any = None
        self._settings: RefineConfig | None = None
        self._closed = False

    # ------------------------------------------------------------------ basics
    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(Y, X) or (Z, Y, X)."""
        return self.image.spatial_shape

    @property
    def class_names(self) -> list[str]:
        """Current output classes (index 0 = background)."""
        return list(self.model.class_names)

    @property
    def n_classes(self) -> int:
        """Number of output classes, background included."""
        return self.model.n_classes

    def close(self) -> None:
        """Free the features and the regions' sessions; the session cannot be used after."""
        if self._closed:
            return
        self._closed = True
        self._drop_view()
        if self._work is not None:
            self._work.close()
            self._work = None
        self.features.clear()

    def __enter__(self) -> SlideSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("session: this SlideSession is closed; start a new one")

    def check_region(self, region: Region | tuple[slice, ...] | None) -> Region:
        """Clip a region to the image and refuse an empty or too large one.

        Parameters
        ----------
        region : tuple of slice or None
            A box over the spatial axes (None: the whole image, if it is small enough).

        Returns
        -------
        Region
            With integer starts and stops inside the image.

        Raises
        ------
        ValueError
            If the region has the wrong number of axes, is empty, or has more than
            ``max_region_pixels`` pixels.
        """
        if region is None:
            if self.image.n_pixels > min(WHOLE_MAX_PIXELS, self.max_region_pixels):
                raise ValueError(
                    f"region: this image has {self.image.n_pixels:,} pixels; give the region to "
                    "predict (for example the viewport: (slice(y0, y1), slice(x0, x1))), or "
                    "write the whole result tile by tile with write_prediction(path)"
                )
            return self.image.whole()
        return clip_region(region, self.spatial_shape, self.max_region_pixels)

    # ------------------------------------------------------------------ regions
    def _tuned(self) -> bool:
        """Whether the head differs from the pre-trained one."""
        now, before = self.model.head_state(), self._pretrained
        return now["class_names"] != before["class_names"] or any(
            not torch.equal(v, before["weights"][k]) for k, v in now["weights"].items()
        )

    def _open(
        self, model: SegmentationModel, region: Region, features: Features | None = None
    ) -> RefineSession:
        """Open a session on a region: the pre-trained head first, then (tuned) the current one.

        ``model`` holds the slide's current head (``self.model``, or the viewer's copy of it).
        """
        tuned = self._tuned()
        pixels = self.image.read(region)
        if pixels.size and pixels.min() == pixels.max():
            raise BlankRegion(
                f"region {box_text(region)} is blank (every pixel is {pixels.flat[0]!r}): there "
                "is nothing to segment there; work where there is tissue"
            )
        self.features.anchor(region)  # the first region asked for starts on a tile corner
        current = model.head_state()
        model.load_head_state(self._pretrained)
        try:
            session = RefineSession(
                model,
                pixels,
                self.config,
                rgb=self.image.info.is_rgb,
                tile_size=self.features.tile,
                tile_halo=self.features.halo,
                copy_model=False,
                history_budget_mb=self.history_budget_mb,
                features=self.features.region(region) if features is None else features,
            )
        except BaseException:
            model.load_head_state(current)
            raise
        session.origin = tuple(s.start for s in region)
        session.slide = self
        if tuned:
            marks = None
            if self._scribbles is not None:  # as the refinement used them: grown, if set
                settings = self._settings or self.config
                marks = session.prepare_scribbles(np.asarray(self._scribbles[region]), settings)[0]
            session.adopt_head(
                current, "tuned on the slide", scribbles=marks, settings=self._settings
            )
        else:
            model.load_head_state(current)
        return session

    def _drop_view(self) -> None:
        if self._view is not None:
            self._view[1].close()
            self._view = None

    def _state(self) -> object:
        """Return what a region's prediction depends on besides the region."""
        if self._work is None:
            return None
        return (id(self._work), self._work.state_version)

    def _open_view(self, region: Region, features: Features | None = None) -> RefineSession:
        """Open a session on a region with the viewer's copy of the current head."""
        self._drop_view()  # its session tunes the viewer's model
        self._viewer_model.load_head_state(self.model.head_state())
        return self._open(self._viewer_model, region, features)

    def _session_for(self, region: Region) -> RefineSession:
        """Return the working session for its region, else a (cached) viewing session."""
        if self._work is not None and region == self.working_region:
            return self._work
        key = (region, self._state())
        if self._view is None or self._view[0] != key:
            self._view = (key, self._open_view(region))
        return self._view[1]

    def _resolve(self, region: tuple[slice, ...] | None) -> Region:
        """Return the region asked for, else the working region, checked."""
        if region is None and self.working_region is not None:
            region = self.working_region
        return self.check_region(region)

    # ------------------------------------------------------------------ prediction
    def predict(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Class map of a region with the current head (only the tiles under it run).

        Parameters
        ----------
        region : tuple of slice, optional
            A box over the spatial axes; default: the working region after a refinement,
            else the whole image when it has at most 4096² pixels.

        Returns
        -------
        numpy.ndarray
            int32 of the region's shape: 0 = background, c = class c.
        """
        self._check_open()
        region = self._resolve(region)
        try:
            return self._session_for(region).predict()
        except BlankRegion:
            return np.zeros(region_shape(region), np.int32)

    def instances(
        self, region: tuple[slice, ...] | None = None
    ) -> tuple[np.ndarray, dict[int, int]]:
        """Instance labels of a region's prediction and the class of each instance.

        Nuclei cut by the region's border are cut there too.

        Parameters
        ----------
        region : tuple of slice, optional
            As for :meth:`predict`.

        Returns
        -------
        labels : numpy.ndarray
            int32 of the region's shape.
        classes : dict of int to int
            Instance label -> class.
        """
        self._check_open()
        region = self._resolve(region)
        try:
            return self._session_for(region).instances()
        except BlankRegion:
            return np.zeros(region_shape(region), np.int32), {}

    # ------------------------------------------------------------------ refinement
    def _working(self, region: Region) -> RefineSession:
        if self._work is not None and region == self.working_region:
            return self._work
        self._drop_view()
        previous = self.working_region
        if self._work is not None:
            self._work.close()  # the model keeps the head it reached
            self._work, self.working_region = None, None
        try:
            self._work = self._open(self.model, region)
        except BaseException:
            if previous is not None:  # stay where it was (as tuned), usable
                self._work = self._open(self.model, previous)
                self.working_region = previous
            raise
        self.working_region = region
        return self._work

    @property
    def working_session(self) -> RefineSession | None:
        """The working region's session (None before a refinement or region_session)."""
        return self._work

    def region_session(self, region: tuple[slice, ...]) -> RefineSession:
        """Make ``region`` the working region and return its session.

        The session is an ordinary :class:`~.session.RefineSession` on the region's pixels
        (the tiles' features, the head as tuned so far, the pre-trained head as its
        reference): a GUI can drive it as it drives a session on a whole image. It stays
        the working region's session until another region becomes the working one.

        Parameters
        ----------
        region : tuple of slice
            A box over the spatial axes.

        Returns
        -------
        RefineSession
            The working region's session.
        """
        self._check_open()
        return self._working(self.check_region(region))

    def working_region_for(
        self, scribbles: Any, region: tuple[slice, ...] | None = None
    ) -> Region | None:
        """Return the region a refinement with these scribbles (and this view) trains on.

        Parameters
        ----------
        scribbles : array_like
            Of :attr:`spatial_shape`.
        region : tuple of slice, optional
            What the user looks at (the viewport or an ROI).

        Returns
        -------
        Region or None
            The current working region when it holds the scribbles' box and ``region``;
            else the box joined with ``region`` when one is given (``region`` alone when
            that would exceed ``max_region_pixels``: scribbles outside it are not used),
            else the box grown by ``context`` (in Y and X); None when nothing is
            scribbled and no region is given.
        """
        return self._working_region(scribble_box(scribbles), region)

    def _working_region(
        self, box: Region | None, region: tuple[slice, ...] | None
    ) -> Region | None:
        view = None if region is None else self.check_region(region)
        return working_region(
            box, view, self.working_region, self.spatial_shape, self.context, self.max_region_pixels
        )

    def refine(
        self,
        scribbles: Any,
        *,
        region: tuple[slice, ...] | None = None,
        config: RefineConfig | None = None,
        previews: bool = True,
    ) -> Generator[RefineStep, None, RefineResult]:
        """Tune the head on the scribbles of the working region, step by step.

        Parameters
        ----------
        scribbles : array_like
            Of :attr:`spatial_shape` (a numpy, dask or zarr array): 0 none, 1 background,
            c + 1 class c. Scanned chunk by chunk for the scribbles' box, then only the
            working region is read; never modified.
        region : tuple of slice, optional
            What the user looks at; the working region includes it (see
            :meth:`working_region_for`).
        config : RefineConfig, optional
            Settings for this refinement (default: :attr:`config`).
        previews : bool
            As for :meth:`RefineSession.refine`; previews and the result cover the working
            region.

        Yields
        ------
        RefineStep
            As :meth:`RefineSession.refine` does, for the working region.

        Returns
        -------
        RefineResult
            The outcome; its prediction is the working region's.

        Raises
        ------
        ValueError
            If the scribbles' shape is not the image's, or the working region is too large.

        Warns
        -----
        UserWarning
            When nothing is scribbled, or scribbles lie outside the working region (they
            are not used).
        """
        self._check_open()
        if tuple(scribbles.shape) != self.spatial_shape:
            raise ValueError(
                f"scribbles have shape {tuple(scribbles.shape)}, but the image's spatial shape "
                f"is {self.spatial_shape}; paint them on a layer of the image's size"
            )
        box = scribble_box(scribbles)
        working = self._working_region(box, region)
        if working is None:
            warnings.warn(
                "No scribbles: nothing to refine (paint some pixels first).",
                UserWarning,
                stacklevel=2,
            )
            return no_op_refinement(lambda: np.zeros((0,) * len(self.spatial_shape), np.int32))
        cfg = config if config is not None else self.config
        work = self._working(working)
        self._scribbles, self._settings = scribbles, cfg
        crop = np.asarray(scribbles[working])
        outside = 0
        if box is not None and not contains(working, box):
            outside = count_marked(scribbles) - int(np.count_nonzero(crop))
        if outside > 0:
            warnings.warn(
                f"{outside} scribbled pixel(s) lie outside the working region "
                f"{box_text(working)} and are not used; refine near them (region=...) to use "
                "them",
                UserWarning,
                stacklevel=2,
            )
        return work.refine(crop, config=cfg, previews=previews)

    def run(
        self,
        scribbles: Any,
        *,
        region: tuple[slice, ...] | None = None,
        config: RefineConfig | None = None,
    ) -> RefineResult:
        """Run :meth:`refine` to the end.

        Parameters
        ----------
        scribbles : array_like
            As for :meth:`refine`.
        region : tuple of slice, optional
            As for :meth:`refine`.
        config : RefineConfig, optional
            As for :meth:`refine`.

        Returns
        -------
        RefineResult
            The outcome.
        """
        generator = self.refine(scribbles, region=region, config=config, previews=False)
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                return stop.value

    # ------------------------------------------------------------------ history
    def undo(self) -> bool:
        """Undo the working region's last change; False when there is none."""
        self._check_open()
        return self._work.undo() if self._work is not None else False

    def redo(self) -> bool:
        """Redo the working region's last undone change; False when there is none."""
        self._check_open()
        return self._work.redo() if self._work is not None else False

    def reset(self) -> bool:
        """Restore the pre-trained head (undoable in the working region)."""
        self._check_open()
        return self._work.reset() if self._work is not None else False

    @property
    def settings(self) -> RefineConfig | None:
        """The settings of the last refinement (None before one)."""
        return self._settings
