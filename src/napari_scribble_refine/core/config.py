"""Settings of one refinement: the paper's M, eta, alpha, l and T, and their companions."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np


def _check_types(config: RefineConfig) -> None:
    """Raise TypeError/ValueError for a field of the wrong type or a non-finite number."""
    for f in fields(config):
        value = getattr(config, f.name)
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            ok = isinstance(value, bool | np.bool_)
        elif kind == "int":
            ok = isinstance(value, Integral) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, Real) and not isinstance(value, bool)
        else:  # str
            ok = isinstance(value, str)
        if not ok:
            article = "an" if kind == "int" else "a"
            raise TypeError(
                f"RefineConfig.{f.name} must be {article} {kind}, got {value!r} "
                f"({type(value).__name__})"
            )
        if kind == "float" and not _is_finite(value):
            raise ValueError(f"RefineConfig.{f.name} must be a finite number, got {value!r}")


def _is_finite(value: Real) -> bool:
    """Whether a number is finite as a float (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class RefineConfig:
    """Parameters of scribble-aware refinement (Sambaturu et al., MICCAI 2021, Algorithm 1).

    Every field is checked when a config is made (its type, finite numbers, its range) and
    a config cannot be changed afterwards: :meth:`replace` makes a new, checked one.

    The head depth and optimiser defaults (three tuned layers, Adam at 0.01) were chosen
    with the robot on the training set's validation split (``benchmarks/notes.md``, table
    Q): the head fits 0.97 of its scribbles against 0.67 with two point-wise layers and
    SGD, at level Dice. SGD (momentum 0.5 at 0.1, chosen on synthetic images with
    ``benchmarks/tune_refine_synthetic.py --hard``) stays for ``optimiser="sgd"``. The
    trust-region and
    CRF defaults were chosen with the robot on the training set's validation split
    (``benchmarks/tune_refine.py``; table in ``benchmarks/notes.md``): look-alike spreading
    (``spread``) lost Dice there and is off; local changes are kept within half a stroke
    length where the pixels look like the corrected ones.

    Parameters
    ----------
    max_iterations : int
        M, the most optimiser steps one refinement may take.
    learning_rate : float
        eta, the step size on the head's weights (Adam's, or SGD's with ``optimiser``).
    momentum : float
        SGD momentum (0 is the paper's plain SGD).
    optimiser : {"sgd", "adam"}
        SGD with ``momentum`` (the paper's) or Adam (``learning_rate`` is then its step).
    proximity_weight : float
        alpha, the weight of ``||W - W_lambda||_2`` that keeps the tuned head near the
        pre-trained one.
    n_layers : int
        l, how many of the network's final layers are tuned (the head). Applied when a
        session starts, through the adapter's ``set_n_layers`` (the built-in HoVer-Net
        models take 1-3); adapters without it, such as ``TorchModuleModel``, take their
        head from their own arguments. A session keeps its depth: start a new session to
        change it. The default, 3 (HoVer-Net: ``u1``'s 3x3 or 5x5 convolution and
        ``u0``, a spatial head), was chosen on the validation split with the Adam
        ``optimiser``: its head fits 0.97 of its scribbles against 0.67 with 2 (``u0``
        alone, point-wise) at level Dice, for 1.35 times the time per interaction
        (``benchmarks/notes.md``, table Q).
    stop_fraction : float
        Refinement stops once this fraction of scribbled pixels is predicted as its class.
    class_balanced : bool
        Weight the cross-entropy so that every scribbled class counts equally (the mean of
        the per-class means) instead of every scribbled pixel (the paper's g, the plain mean
        over scribbled pixels). A user typically paints far more background than nuclei;
        with the plain mean a few nucleus strokes are outvoted 20:1 and the head can
        collapse to predicting background everywhere. False restores the paper's loss.
    grown_weight : float
        Loss weight of a pixel added by region growing relative to a pixel the user painted
        (1 treats them alike, as in the paper; grown pixels are guesses, so less is safer).
    keep_weight : float
        Weight of the keep term: the mean KL divergence, over unscribbled pixels (a random
        sample of the image, each pixel with its halo for spatial heads; the scribbled
        slices for opaque models),
        from the pre-trained head's output to the current one. A proximity in function
        space beside ``proximity_weight``'s in weight space (0 turns it off, as in the
        paper). It stops strokes of one class from flipping the whole image to that class.
    region_growing : bool
        Grow each scribble to similar neighbouring pixels before refining.
    grow_threshold : float
        T, the largest intensity difference (image units after scaling to [0, 1]) between a
        pixel and the pixel it grows from.
    grow_max_distance : int
        The farthest (in pixels) a grown scribble may reach from its original stroke.
    grow_cap : float
        Each connected stroke may grow by at most this many times its own pixel count
        (0: no cap). Keeps a background stroke on a flat region from turning into
        thousands of pixels that outweigh everything else.
    grow_similar : bool
        Grown pixels that would change the class keep their stroke only where the head
        features are nearer the pixels the stroke corrected than the class they leave.
    pin_scribbles : bool
        Show every scribbled pixel (after region growing) as its scribbled class in the
        prediction that refinement leaves, whether or not the tuned head predicts it so.
        The user's paint is ground truth; the head's weights are unaffected, and undo,
        redo and reset restore the scribbles pinned with each state. False shows the
        head's raw output (the paper's prediction).
    trust_region : bool
        Keep only the tuned head's changes that are local to a stroke or look like what a
        stroke corrected; elsewhere the pre-trained head's class stays
        (:mod:`~napari_scribble_refine.core.trust_region`). False shows the tuned head's
        output everywhere (the paper's prediction).
    trust_reach : float
        A change that touches a stroke of its class is kept up to this many stroke extents
        from the stroke.
    local_similar : bool
        Keep a change next to a stroke only at pixels that look more like the pixels the
        stroke corrected than like their old class.
    spread : bool
        Keep look-alike changes away from the strokes (the correction spreads to similar
        errors); False keeps local changes only.
    spread_confidence : float
        Least mean probability the tuned head must give a look-alike region's new class.
    spread_margin : float
        A look-alike region must be closer to the corrected pixels than to its old class
        by this factor (its distance to them below ``spread_margin`` times its distance to
        its old class, in the head's standardised features).
    type_by_instance : bool
        For models with several nucleus classes, give every nucleus one class: the class
        scribbled on it, else the majority of its pixels (a type stroke retypes the whole
        nucleus).
    free_types : bool
        The trust region guards only nucleus/background changes: the tuned head's type
        changes between nucleus classes are kept everywhere (the head spreads a type
        stroke to the nuclei it finds alike).
    type_spread : bool
        A type stroke also retypes the unscribbled nuclei that look like the nuclei it was
        drawn on (:mod:`~napari_scribble_refine.core.type_spreading`); needs
        ``type_by_instance``.
    type_spread_margin : float
        A nucleus takes a scribbled type when its distance to that type's scribbled nuclei
        is below this factor times its distance to its own class (head features).
    type_classifier : bool
        Type strokes train a small per-image classifier on multiscale image features that
        retypes the unscribbled nuclei looking like a stroke
        (:mod:`~napari_scribble_refine.core.type_classifier`; a model whose types are
        another lab's is corrected in a few strokes, but where its types are right the
        classifier moves some right nuclei); False keeps a type stroke to the nucleus it is
        drawn on. Needs ``type_by_instance``.
    type_prior_weight : float
        How much the types the network gives the unscribbled nuclei weigh against the type
        strokes in that classifier (a share of one scribbled type; small: a nucleus that
        looks like a stroke takes its type).
    crf_weight : float
        Strength of the edge-aware CRF applied after the trust region
        (:mod:`~napari_scribble_refine.core.edge_crf`): decisions follow the image's edges
        and uncertain regions are decided by their neighbours (0: off). Images (slices)
        larger than 4096² skip it.
    crf_weight_bright : float
        The CRF weight on images whose nuclei are brighter than their background
        (fluorescence), told apart by the pre-trained prediction; ``crf_weight`` applies to
        the others (brightfield, H&E). Chosen on the validation split: without the CRF the
        refinement was ahead on fluorescence, with weight 3 on dark nuclei. Set it to
        ``crf_weight`` for one weight everywhere.
    crf_radius : int
        Window radius (px) of the CRF's guided-filter messages.
    crf_eps : float
        Edge regularisation of the guided filter (intensities scaled to [0, 1]): edges of
        contrast well above its square root stop the spreading.
    crf_iterations : int
        Mean-field updates of the CRF.
    preview_every : int
        Yield the full prediction every this many iterations (and always at the end).
    seed : int
        Seed for torch and numpy; refinement on the CPU is deterministic with it.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU) or an explicit torch device string.
    """

    max_iterations: int = 50
    learning_rate: float = 0.01
    momentum: float = 0.5
    optimiser: str = "adam"
    proximity_weight: float = 0.01
    n_layers: int = 3
    stop_fraction: float = 1.0
    class_balanced: bool = True
    grown_weight: float = 0.5
    keep_weight: float = 2.0
    region_growing: bool = True
    grow_threshold: float = 0.05
    grow_max_distance: int = 10
    grow_cap: float = 2.0
    grow_similar: bool = True
    pin_scribbles: bool = True
    trust_region: bool = True
    trust_reach: float = 0.5
    local_similar: bool = True
    spread: bool = False
    spread_confidence: float = 0.7
    spread_margin: float = 1.0
    type_by_instance: bool = True
    free_types: bool = False
    type_spread: bool = False
    type_spread_margin: float = 1.0
    type_classifier: bool = False
    type_prior_weight: float = 0.01
    crf_weight: float = 3.0
    crf_weight_bright: float = 0.0
    crf_radius: int = 8
    crf_eps: float = 0.01
    crf_iterations: int = 5
    preview_every: int = 5
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        _check_types(self)
        checks = {
            "max_iterations": self.max_iterations >= 1,
            "seed": 0 <= self.seed < 2**32,
            "learning_rate": self.learning_rate > 0,
            "momentum": 0 <= self.momentum < 1,
            "proximity_weight": self.proximity_weight >= 0,
            "n_layers": self.n_layers >= 1,
            "stop_fraction": 0 < self.stop_fraction <= 1,
            "grow_threshold": self.grow_threshold >= 0,
            "grow_max_distance": self.grow_max_distance >= 0,
            "grown_weight": self.grown_weight >= 0,
            "keep_weight": self.keep_weight >= 0,
            "grow_cap": self.grow_cap >= 0,
            "preview_every": self.preview_every >= 1,
            "optimiser": self.optimiser in ("sgd", "adam"),
            "trust_reach": self.trust_reach > 0,
            "spread_confidence": 0 <= self.spread_confidence <= 1,
            "spread_margin": self.spread_margin > 0,
            "type_spread_margin": self.type_spread_margin > 0,
            "type_prior_weight": self.type_prior_weight > 0,
            "crf_weight": self.crf_weight >= 0,
            "crf_weight_bright": self.crf_weight_bright >= 0,
            "crf_radius": self.crf_radius >= 1,
            "crf_eps": self.crf_eps > 0,
            "crf_iterations": self.crf_iterations >= 1,
        }
        expected = {
            "max_iterations": "an integer >= 1",
            "seed": "an integer in [0, 2**32)",
            "learning_rate": "a number > 0",
            "momentum": "a number in [0, 1)",
            "proximity_weight": "a number >= 0",
            "n_layers": "an integer >= 1",
            "stop_fraction": "a number in (0, 1]",
            "grow_threshold": "a number >= 0",
            "grow_max_distance": "an integer >= 0",
            "grown_weight": "a number >= 0",
            "keep_weight": "a number >= 0 (0: off)",
            "grow_cap": "a number >= 0 (0: no cap)",
            "preview_every": "an integer >= 1",
            "optimiser": "'sgd' or 'adam'",
            "trust_reach": "a number > 0",
            "spread_confidence": "a number in [0, 1]",
            "spread_margin": "a number > 0",
            "type_spread_margin": "a number > 0",
            "type_prior_weight": "a number > 0",
            "crf_weight": "a number >= 0 (0: off)",
            "crf_weight_bright": "a number >= 0 (0: off)",
            "crf_radius": "an integer >= 1",
            "crf_eps": "a number > 0",
            "crf_iterations": "an integer >= 1",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"RefineConfig.{name} must be {expected[name]}, got {getattr(self, name)!r}"
                )

    @classmethod
    def paper(cls, **changes: object) -> RefineConfig:
        """Return the paper's plain Algorithm 1: mean cross-entropy plus proximity, plain SGD.

        No class balancing, no keep term, grown pixels weigh as painted ones, no pins, no
        trust region and no per-nucleus typing.

        Parameters
        ----------
        **changes
            Further fields to set.

        Returns
        -------
        RefineConfig
            The configuration.
        """
        plain = dict(
            momentum=0.0,
            optimiser="sgd",
            learning_rate=0.1,
            n_layers=2,
            class_balanced=False,
            grown_weight=1.0,
            grow_similar=False,
            keep_weight=0.0,
            pin_scribbles=False,
            trust_region=False,
            type_by_instance=False,
            type_spread=False,
            type_classifier=False,
            crf_weight=0.0,
            crf_weight_bright=0.0,
        )
        return cls().replace(**{**plain, **changes})

    def replace(self, **changes: object) -> RefineConfig:
        """Return a copy with some fields changed (validated like a new config).

        Parameters
        ----------
        **changes
            Field names and their new values.

        Returns
        -------
        RefineConfig
            The new configuration.
        """
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            valid = ", ".join(f.name for f in fields(self))
            raise TypeError(f"RefineConfig has no field(s) {sorted(unknown)}; valid: {valid}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return RefineConfig(**values)  # type: ignore[arg-type]
