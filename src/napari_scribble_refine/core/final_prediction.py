"""The prediction a session shows: the tuned head's classes with the refinement's guards.

The tuned head alone changes pixels everywhere; the final prediction decides, per slice:

1. the class rule of the model on the current head (:func:`~.prediction.class_map_of`);
2. the trust region (:mod:`.trust_region`): where the tuned head's change is kept, the
   pre-trained head's class elsewhere; or, with the edge-aware CRF on (:mod:`.edge_crf`),
   the CRF over the trust region's log-probabilities;
3. one class per nucleus (:func:`~.postprocess.type_by_instance`), then the type classifier
   (:mod:`.type_classifier`) and type spreading (:mod:`.type_spreading`) as set;
4. the pins: the current state's pinned scribbles shown as their class.

A preview (a refinement's live view) is the tuned head's classes with the pins only.
Everything is cached per head state (:attr:`FinalPrediction.version`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .config import RefineConfig
from .edge_crf import crf_applies, mean_field
from .history import HeadHistory
from .images import ImageInfo
from .kept_logits import KeptLogits
from .memory import release_free_memory
from .models.base import Features, SegmentationModel
from .objective import Anchored
from .postprocess import instance_types, type_by_instance
from .prediction import class_map_of, head_pieces
from .trust_region import Describe, accepted_changes, like_corrected
from .type_classifier import classify_types, feature_image, pixel_features
from .type_spreading import spread_types

__all__ = ["FinalPrediction"]

HEAD_CHUNK_PIXELS = 1 << 20
"""Pixels per piece when the head runs over the whole image (bounds memory)."""

TYPE_FEATURE_CACHE_PIXELS = 2048 * 2048
"""Pixels (all slices together) whose type-classifier features are kept (36 float32 maps
for RGB: 600 MB at 2048²); other slices compute them at the pixels wanted."""

FINAL_CACHE_PIXELS = 4096 * 4096
"""Slices up to this size keep their final log-probabilities until the head changes."""


class FinalPrediction:
    """The class map, log-probabilities and instances a session shows, cached per head state.

    Parameters
    ----------
    model : SegmentationModel
        The adapter whose head the session tunes.
    features : Features
        The trunk's cached features [N, F, Y, X] of the image.
    image : numpy.ndarray
        The session's read-only copy of the image.
    image_info : ImageInfo
        Its layout.
    history : HeadHistory
        The session's head states: the anchor (pre-trained head), the current state's
        scribbles, settings and pins.
    tile_size, tile_halo : int
        Piece size and context when an opaque model's head runs over a large image.

    Attributes
    ----------
    version : int
        Counts head states (:meth:`head_changed` adds one whenever the head, or what the
        current state records, changes); every cache here is keyed by it.
    features : Features
        The cached trunk features (emptied by :meth:`release`).
    """

    def __init__(
        self,
        model: SegmentationModel,
        features: Features,
        image: np.ndarray,
        image_info: ImageInfo,
        history: HeadHistory,
        *,
        tile_size: int,
        tile_halo: int,
    ) -> None:
        self.model = model
        self.features = features
        self._image = image
        self.image_info = image_info
        self._history = history
        self.tile_size = tile_size
        self.tile_halo = tile_halo
        self.version = 0
        self._class_map: tuple[int, np.ndarray] | None = None
        self._intensity_range: tuple[float, float] | None = None
        self._before: tuple[object, list[np.ndarray], list[dict[int, np.ndarray]]] | None = None
        self._bright: tuple[object, bool] | None = None
        self._accept: tuple[int, list[np.ndarray | None]] | None = None
        self._feature_stats: list[tuple[np.ndarray, np.ndarray]] = []
        self._final: tuple[int, dict[int, torch.Tensor]] = (-1, {})
        pixels = int(np.prod(image_info.spatial_shape[-2:]))
        self._kept = {False: KeptLogits(pixels), True: KeptLogits(pixels)}  # tuned, anchor
        self._type_feature_cache: dict[int, np.ndarray] = {}

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(Y, X) or (Z, Y, X): the shape of class maps."""
        return self.image_info.spatial_shape

    def head_changed(self) -> None:
        """Start a new head state: what is cached for the old one is computed anew."""
        self.version += 1

    def release(self) -> None:
        """Drop the cached features and final log-probabilities (the session closed)."""
        self.features = {}
        self._final = (-1, {})
        self._kept = {k: KeptLogits(kept.slice_pixels) for k, kept in self._kept.items()}
        self._type_feature_cache = {}

    def intensity_range(self) -> tuple[float, float]:
        """Return the image's robust intensity range, computed once.

        Returns
        -------
        tuple of float
            ``(low, high)`` of :func:`~.region_growing.robust_intensity_range` (region
            growing and the CRF's guide share it).
        """
        if self._intensity_range is None:
            from .region_growing import robust_intensity_range

            channel_axis = -1 if self.image_info.is_rgb else None
            self._intensity_range = robust_intensity_range(self._image, channel_axis=channel_axis)
        return self._intensity_range

    # ------------------------------------------------------------------ the head's output
    def _head_pieces(self, index: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        return head_pieces(
            self.model,
            self.features,
            index,
            chunk_pixels=HEAD_CHUNK_PIXELS,
            tile_size=self.tile_size,
            tile_halo=self.tile_halo,
        )

    def _state(self, anchored: bool) -> object:
        """Return the head state logits are kept for: the anchor, or the current state."""
        return self._history.anchor if anchored else self.version

    def _run_head(self, index: int, anchored: bool) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Run the current (or the pre-trained) head on one slice: logits [C, h, w] by pieces."""
        with torch.no_grad(), Anchored(self.model, self._history.anchor if anchored else None):
            for y0, x0, piece in self._head_pieces(index):
                yield y0, x0, piece.float().cpu()

    def _logits(self, index: int, *, anchored: bool = False) -> torch.Tensor:
        """Logits [1, C, Y, X] of the current (or the pre-trained) head on one slice, kept."""

        def run() -> torch.Tensor:
            height, width = self.spatial_shape[-2:]
            out = torch.empty((1, self.model.n_classes, height, width), dtype=torch.float32)
            for y0, x0, piece in self._run_head(index, anchored):
                h, w = piece.shape[-2:]
                out[0, :, y0 : y0 + h, x0 : x0 + w] = piece
            return out

        return self._kept[anchored].get(self._state(anchored), index, run)

    def _pieces(
        self, index: int, *, anchored: bool = False
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield the head's logits [C, h, w] of one slice by pieces at (y0, x0), kept ones whole."""
        if self._kept[anchored].keeps(self._state(anchored), index):
            yield 0, 0, self._logits(index, anchored=anchored)[0]
        else:
            yield from self._run_head(index, anchored)

    def _maps(self, index: int, *, anchored: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Class map (int32) and the probability of each pixel's class (float32), one slice."""
        height, width = self.spatial_shape[-2:]
        classes = np.empty((height, width), dtype=np.int32)
        prob = np.empty((height, width), dtype=np.float32)
        for y0, x0, piece in self._pieces(index, anchored=anchored):
            h, w = piece.shape[-2:]
            cls = class_map_of(self.model, piece)
            classes[y0 : y0 + h, x0 : x0 + w] = cls
            chosen = piece.softmax(0).gather(0, torch.from_numpy(cls).long()[None])[0]
            prob[y0 : y0 + h, x0 : x0 + w] = chosen.numpy()
        return classes, prob

    def _n_slices(self) -> int:
        return self.spatial_shape[0] if self.image_info.is_3d else 1

    def _pixel_features(self, index: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Gather the head's features (F, k) of slice ``index`` at pixels (ys, xs), unscaled."""
        keys = self.model.pixel_feature_keys(self.features)
        yi, xi = torch.as_tensor(ys), torch.as_tensor(xs)
        parts = [self.features[k][index][:, yi, xi].float().cpu() for k in keys]
        return torch.cat(parts).numpy()

    def _describe(self, index: int) -> Describe:
        """Standardised head features of one slice at a mask's pixels (trust region)."""
        while len(self._feature_stats) <= index:
            i = len(self._feature_stats)
            height, width = self.spatial_shape[-2:]
            step = max(1, int(np.sqrt(height * width / 65536)))  # a grid sample is enough
            ys, xs = np.mgrid[0:height:step, 0:width:step]
            sample = self._pixel_features(i, ys.ravel(), xs.ravel())
            std = sample.std(1)
            std[std == 0] = 1.0
            self._feature_stats.append((sample.mean(1), std))
        mean, std = self._feature_stats[index]

        def describe(mask: np.ndarray) -> np.ndarray:
            ys, xs = np.nonzero(mask)
            return (self._pixel_features(index, ys, xs) - mean[:, None]) / std[:, None]

        return describe

    # ------------------------------------------------------------------ trust region, CRF
    def _pretrained_maps(self) -> tuple[list[np.ndarray], list[dict[int, np.ndarray]]]:
        """Class maps of the anchor (pre-trained) head and each class's mean feature."""
        anchor = self._history.anchor
        if self._before is None or self._before[0] is not anchor:
            maps, means = [], []
            for index in range(self._n_slices()):
                classes = self._maps(index, anchored=True)[0]
                describe = self._describe(index)
                per_class = {}
                for c in np.unique(classes):
                    mask = classes == c
                    step = max(1, int(mask.sum()) // 20000)  # a sample is enough
                    ys, xs = np.nonzero(mask)
                    sample = np.zeros_like(mask)
                    sample[ys[::step], xs[::step]] = True
                    per_class[int(c)] = describe(sample).mean(1)
                maps.append(classes)
                means.append(per_class)
            self._before = (anchor, maps, means)
        return self._before[1], self._before[2]

    def bright_nuclei(self) -> bool:
        """Whether the pre-trained head's nuclei are brighter than its background (fluorescence).

        Returns
        -------
        bool
            True when the mean intensity (over channels) of the pixels the pre-trained head
            calls nucleus exceeds that of its background; False without either.
        """
        anchor = self._history.anchor
        if self._bright is None or self._bright[0] is not anchor:
            inside = outside = 0.0
            n_in = n_out = 0
            for index, classes in enumerate(self._pretrained_maps()[0]):
                plane = self._image[index] if self.image_info.is_3d else self._image
                plane = np.asarray(plane, np.float64)
                if self.image_info.is_rgb:
                    plane = plane.mean(-1)
                nucleus = classes > 0
                inside += float(plane[nucleus].sum())
                outside += float(plane[~nucleus].sum())
                n_in += int(nucleus.sum())
                n_out += int(nucleus.size - nucleus.sum())
            bright = n_in > 0 and n_out > 0 and inside / n_in > outside / n_out
            self._bright = (anchor, bright)
        return self._bright[1]

    def crf_weight(self, settings: RefineConfig | None) -> float:
        """Return the CRF weight for this image (see ``RefineConfig.crf_weight_bright``).

        Parameters
        ----------
        settings : RefineConfig or None
            The refinement's settings (None: no refinement yet).

        Returns
        -------
        float
            0 where the CRF does not run (:func:`crf_applies`); else ``crf_weight_bright``
            on an image of bright nuclei and ``crf_weight`` on the others.
        """
        if settings is None or not crf_applies(settings, self.spatial_shape):
            return 0.0
        if settings.crf_weight_bright == settings.crf_weight:
            return settings.crf_weight
        return settings.crf_weight_bright if self.bright_nuclei() else settings.crf_weight

    def similar_growth(self, painted: np.ndarray, grown: np.ndarray) -> np.ndarray:
        """Drop the grown pixels that change a class but look like the class they leave.

        A grown pixel of class c where the pre-trained head says another class o stays
        only when its head features are nearer the mean of the painted pixels of c that
        correct the pre-trained head than o's (o's painted pixels, else its mean).

        Parameters
        ----------
        painted, grown : numpy.ndarray
            Scribbles of the image's spatial shape before and after region growing.

        Returns
        -------
        numpy.ndarray
            A new scribble array: ``grown`` less the dropped pixels.
        """
        out = np.array(grown, copy=True)
        planes = out if self.image_info.is_3d else out[None]
        painted_planes = painted if self.image_info.is_3d else painted[None]
        before, means = self._pretrained_maps()
        for index in range(self._n_slices()):
            plane, own = planes[index], painted_planes[index]
            changing = (plane > 0) & (own == 0) & (plane - 1 != before[index])
            if not changing.any():
                continue
            describe = self._describe(index)
            for c in np.unique(plane[changing]) - 1:
                rows = changing & (plane == c + 1)
                keep = like_corrected(rows, c, before[index], own, describe, means[index])
                plane[rows] = np.where(keep, c + 1, 0)
        return out

    def _accept_masks(self) -> list[np.ndarray | None]:
        """Per slice, where the trust region keeps the tuned head (None: everywhere)."""
        if self._accept is not None and self._accept[0] == self.version:
            return self._accept[1]
        n = self._n_slices()
        masks: list[np.ndarray | None] = [None] * n
        cons = self._history.constraints
        settings = cons.settings if cons is not None else None
        if settings is not None and settings.trust_region:
            before, means = self._pretrained_maps()
            scribbles = cons.scribbles if self.image_info.is_3d else cons.scribbles[None]
            for index in range(n):
                after, prob = self._maps(index)
                masks[index] = accepted_changes(
                    before[index],
                    after,
                    scribbles[index],
                    self._describe(index),
                    means[index],
                    prob,
                    reach=settings.trust_reach,
                    confidence=settings.spread_confidence,
                    margin=settings.spread_margin,
                    spread=settings.spread,
                    local_similar=settings.local_similar,
                )
                if settings.free_types:
                    masks[index] |= (before[index] > 0) & (after > 0)
        self._accept = (self.version, masks)
        return masks

    def slice_logits(self, index: int) -> torch.Tensor:
        """Return the log-probabilities [1, C, Y, X] of one image (slice) as refined.

        The tuned head's where the trust region keeps its change and the pre-trained
        head's elsewhere, then the edge-aware CRF (both as the refinement's settings say).

        Parameters
        ----------
        index : int
            Slice of a stack (0 for 2D images).

        Returns
        -------
        torch.Tensor
            [1, C, Y, X] on the CPU (cached until the head changes, for slices up to
            :data:`FINAL_CACHE_PIXELS`).
        """
        version, cache = self._final
        if version == self.version and index in cache:
            return cache[index]
        logits = self._logits(index)
        accept = self._accept_masks()[index]
        if accept is not None:
            before = self._logits(index, anchored=True)
            logits = torch.where(torch.from_numpy(accept)[None, None], logits, before)
        cons = self._history.constraints
        settings = cons.settings if cons is not None else None
        weight = self.crf_weight(settings)
        if weight > 0:
            scribbles = cons.scribbles if self.image_info.is_3d else cons.scribbles[None]
            q = mean_field(
                logits[0].log_softmax(0),
                self._guide(index),
                scribbles[index],
                weight=weight,
                radius=settings.crf_radius,
                eps=settings.crf_eps,
                iterations=settings.crf_iterations,
            )
            logits = q.clamp_min(1e-12).log()[None]
        if version != self.version:
            cache = {}
        if logits[0, 0].numel() <= FINAL_CACHE_PIXELS:
            cache[index] = logits
        self._final = (self.version, cache)
        return logits

    def _scaled_plane(self, index: int) -> np.ndarray:
        """One slice (channels kept) scaled to about [0, 1], float64."""
        low, high = self.intensity_range()
        plane = self._image[index] if self.image_info.is_3d else self._image
        plane = plane.astype(np.float64)  # float16/32 images near their limits overflow
        return (plane - low) / (high - low)

    def _type_features(self, index: int) -> Describe:
        """Return the type classifier's pixel features of one slice at a mask's pixels.

        Slices keep their whole feature image while the slices kept hold at most
        :data:`TYPE_FEATURE_CACHE_PIXELS` pixels in all; the others compute it anew each
        time, one feature map at a time.
        """
        cache = self._type_feature_cache
        height, width = self.spatial_shape[-2:]
        if index not in cache:
            plane = self._scaled_plane(index)
            if (len(cache) + 1) * height * width > TYPE_FEATURE_CACHE_PIXELS:
                return lambda mask: pixel_features(plane, mask)
            cache[index] = feature_image(plane)
        cached = cache[index]
        return lambda mask: cached[mask]

    def _guide(self, index: int) -> torch.Tensor:
        """Grey image [Y, X] of one slice scaled to about [0, 1] (the CRF's guide)."""
        plane = self._scaled_plane(index)
        grey = plane.mean(-1) if self.image_info.is_rgb else plane
        return torch.from_numpy(grey.astype(np.float32))

    # ------------------------------------------------------------------ class maps
    def class_map(self) -> np.ndarray:
        """Return the class map of the whole image for the current head state.

        Computed once per head state (:attr:`version`).

        Returns
        -------
        numpy.ndarray
            int32 of the image's spatial shape, read-only: 0 = background, c = class c.
        """
        if self._class_map is None or self._class_map[0] != self.version:
            class_map = self._compute_class_map()
            class_map.setflags(write=False)
            self._class_map = (self.version, class_map)
            release_free_memory()  # else the process keeps what numpy and torch freed
        return self._class_map[1]

    def _compute_class_map(self) -> np.ndarray:
        """Decide the classes of the whole image (int32).

        The model's class rule on the current head, the trust region (or the CRF on the
        trust region's log-probabilities), one class per nucleus, then the pins.
        """
        n = self._n_slices()
        height, width = self.spatial_shape[-2:]
        class_map = np.empty((n, height, width), dtype=np.int32)
        accept = self._accept_masks()
        cons = self._history.constraints
        crf = self.crf_weight(cons.settings if cons is not None else None) > 0
        for index in range(n):
            if crf:
                class_map[index] = class_map_of(self.model, self.slice_logits(index)[0])
                continue
            after = self._maps(index)[0]
            if accept[index] is not None:
                before = self._pretrained_maps()[0][index]
                after = np.where(accept[index], after, before)
            class_map[index] = after
        if cons is not None and cons.settings.type_by_instance and self.model.n_classes > 2:
            scribbles = cons.scribbles if self.image_info.is_3d else cons.scribbles[None]
            labels = self._instance_labels(class_map)
            for index in range(n):
                class_map[index] = type_by_instance(
                    labels[index], class_map[index], scribbles[index]
                )
                if cons.settings.type_classifier:
                    class_map[index] = classify_types(
                        self._type_features(index), labels[index], class_map[index],
                        scribbles[index], prior_weight=cons.settings.type_prior_weight,
                        seed=cons.settings.seed,
                    )  # fmt: skip
                if cons.settings.type_spread:
                    class_map[index] = spread_types(
                        labels[index], class_map[index], scribbles[index],
                        self._describe(index), margin=cons.settings.type_spread_margin,
                    )  # fmt: skip
        return self._with_pins(class_map if self.image_info.is_3d else class_map[0])

    def _with_pins(self, class_map: np.ndarray) -> np.ndarray:
        """Show the current state's pinned scribbles as their class (in place)."""
        pins = self._history.pins
        if pins is not None:
            pinned = pins > 0
            class_map[pinned] = pins[pinned] - 1
        return class_map

    def preview(self) -> np.ndarray:
        """Return the tuned head's classes with this refinement's pins: a cheap live view.

        The trust region, the CRF and per-nucleus typing apply to the final prediction
        only; a preview shows how the head itself is moving.

        Returns
        -------
        numpy.ndarray
            int32 of the image's spatial shape, a new array.
        """
        n = self._n_slices()
        planes = np.stack([self._classes(index) for index in range(n)])
        return self._with_pins(planes if self.image_info.is_3d else planes[0])

    def _classes(self, index: int) -> np.ndarray:
        """Class map (int32) of one slice: :meth:`_maps` without the probabilities."""
        height, width = self.spatial_shape[-2:]
        classes = np.empty((height, width), dtype=np.int32)
        for y0, x0, piece in self._pieces(index):
            h, w = piece.shape[-2:]
            classes[y0 : y0 + h, x0 : x0 + w] = class_map_of(self.model, piece)
        return classes

    # ------------------------------------------------------------------ instances
    def instances(self, class_map: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """Instance labels of a class map of the image and the class of each instance.

        Parameters
        ----------
        class_map : numpy.ndarray
            int32 of the image's spatial shape (:meth:`class_map`).

        Returns
        -------
        labels : numpy.ndarray
            int32 of the image's spatial shape, 0 = background, 1..N (unique over a stack).
        classes : dict of int to int
            Instance label -> its class: the adapter's ``instance_types`` rule when it has
            one, else the majority foreground class in the class map.
        """
        planes = class_map if self.image_info.is_3d else class_map[None]
        labels = self._instance_labels(planes)
        result = labels if self.image_info.is_3d else labels[0]
        return result, self._instance_classes(result, class_map)

    def _instance_labels(self, planes: np.ndarray) -> np.ndarray:
        """Instances (N, Y, X) of class maps (N, Y, X), ids unique over the stack."""
        from .postprocess import class_map_to_instances

        method = self.model.instances
        if getattr(method, "__func__", None) is SegmentationModel.instances:
            # no model-specific post-processing: one watershed over the image or stack
            whole = planes if self.image_info.is_3d else planes[0]
            result = np.asarray(class_map_to_instances(whole)).astype(np.int32)
            return result if self.image_info.is_3d else result[None]
        labels = []
        offset = 0
        for index, plane in enumerate(planes):
            one_feats = {k: v[index : index + 1] for k, v in self.features.items()}
            own = method(plane, self.slice_logits(index), one_feats)
            if own is None:
                own = class_map_to_instances(plane)
            own = np.asarray(own).astype(np.int32)
            if offset:
                own = np.where(own > 0, own + offset, 0).astype(np.int32)
            offset = max(offset, int(own.max(initial=0)))
            labels.append(own)
        return np.stack(labels)

    def _instance_classes(self, labels: np.ndarray, class_map: np.ndarray) -> dict[int, int]:
        rule = getattr(self.model, "instance_types", None)
        if rule is None:
            return instance_types(labels, class_map)
        # the adapter's rule is 2D: apply it slice by slice (ids are unique over a stack)
        plane_shape = labels.shape[-2:]
        planes = zip(
            labels.reshape(-1, *plane_shape), class_map.reshape(-1, *plane_shape), strict=True
        )
        return {int(k): int(v) for lab, cls in planes for k, v in rule(lab, cls).items()}
