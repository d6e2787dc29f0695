"""Property-based tests of RefineSession: construction on any image, run() with any scribbles.

A tiny untrained network (two convolutions; the 1x1 one is the head) keeps every example to
milliseconds. The properties:

* ``RefineSession(model, image, config, rgb=...)`` succeeds exactly when ``validate_image``
  accepts the image (and a colour image meets a colour model); otherwise it raises
  ValueError/TypeError naming the image. It never changes the image or the model.
* ``session.run(scribbles)`` succeeds exactly when ``validate_scribbles`` accepts the
  scribbles, and returns an int32 class map of the image's spatial shape with valid classes;
  otherwise it raises ValueError/TypeError naming the scribbles. It never changes them.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from _fuzz import DTYPES, REAL_DTYPES, arrays, check_call, examples, label_arrays, layouts
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from napari_scribble_refine.core import RefineConfig, RefineResult, RefineSession
from napari_scribble_refine.core.images import validate_image
from napari_scribble_refine.core.models._prepare import normalise_array
from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig
from napari_scribble_refine.core.models.hovernet_adapter import HoVerNetModel
from napari_scribble_refine.core.models.module import TorchModuleModel
from napari_scribble_refine.core.scribbles import validate_scribbles


@functools.cache
def tiny_model(
    in_channels: int, n_classes: int, normalise: str | None = "percentile"
) -> TorchModuleModel:
    """An untrained conv(3x3) - ReLU - conv(1x1) network; the 1x1 layer is the head.

    Parameters
    ----------
    in_channels : int
        1 for greyscale images, 3 for colour.
    n_classes : int
        Output classes, background included.
    normalise : str or None
        The adapter's image normalisation.

    Returns
    -------
    TorchModuleModel
        The adapter (shared: sessions work on deep copies).
    """
    torch.manual_seed(in_channels * 10 + n_classes)
    net = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, n_classes, 1)
    )
    names = ["background", "nucleus", "other", "third"][:n_classes]
    return TorchModuleModel(net, names, in_channels=in_channels, normalise=normalise, name="tiny")


def _small_hovernet() -> HoVerNetModel:
    """The built-in models' small HoVer-Net architecture, untrained, percentile-normalised."""
    torch.manual_seed(0)
    return HoVerNetModel(HoVerNet(HoVerNetConfig.small()), normalisation={"kind": "percentile"})


MODELS = st.tuples(
    st.sampled_from([1, 3]), st.sampled_from([2, 3, 4]), st.sampled_from(["percentile", "minmax"])
)


@st.composite
def good_images(draw: st.DrawFn) -> np.ndarray:
    """Non-constant real images: (Y, X), (Z, Y, X) or (Y, X, 3|4), any layout and scale."""
    layout = draw(st.sampled_from(["2d", "3d", "rgb"]))
    side = st.integers(1, 12)
    if layout == "2d":
        shape = (draw(side), draw(side))
    elif layout == "3d":
        shape = (draw(st.integers(1, 3)), draw(side), draw(side))
    else:
        shape = (draw(side), draw(side), draw(st.sampled_from([3, 4])))
    dtype = draw(st.sampled_from(REAL_DTYPES))
    if dtype.kind == "f" and draw(st.integers(0, 7)) == 0:  # the dtype's extremes
        big = np.finfo(dtype).max
        values = draw(hnp.arrays(dtype, shape, elements=st.sampled_from([-big, 0, big, 1])))
        values.flat[0], values.flat[-1] = -big, big
        return draw(layouts(values))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.random(shape) * draw(st.sampled_from([1.0, 255.0, 6e4, 1e-300, 1e300]))
    values += draw(st.sampled_from([0.0, -0.5, 1e6]))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), max(info.min, -(2.0**62)), min(info.max, 2.0**62))
    elif dtype.kind == "f":
        values = np.clip(values, np.finfo(dtype).min, np.finfo(dtype).max)
    image = values.astype(dtype)
    if image.size > 1 and image.min() == image.max():  # keep it non-constant
        image.flat[0] = 0 if image.flat[1] else 1
    return draw(layouts(image))


IMAGES = st.one_of(good_images(), good_images(), arrays(max_side=6, dtypes=DTYPES))

CONFIGS = st.builds(
    RefineConfig,
    max_iterations=st.integers(1, 3),
    learning_rate=st.sampled_from([0.1, 1.0, 1e6]),
    optimiser=st.sampled_from(["sgd", "adam"]),
    region_growing=st.booleans(),
    grow_cap=st.sampled_from([0.0, 2.0]),
    trust_region=st.booleans(),
    spread=st.booleans(),
    type_by_instance=st.booleans(),
    type_spread=st.booleans(),
    type_classifier=st.booleans(),
    pin_scribbles=st.booleans(),
    keep_weight=st.sampled_from([0.0, 2.0]),
    crf_weight=st.sampled_from([0.0, 3.0]),
    crf_radius=st.sampled_from([1, 8, 1000]),
    device=st.just("cpu"),
)

SESSION_NAMES = ("image",)


def _image_is_valid(image: np.ndarray, rgb: bool | None, in_channels: int) -> bool:
    try:
        info = validate_image(image, rgb=rgb)
    except (ValueError, TypeError):
        return False
    return not (info.is_rgb and in_channels == 1)


def _open(model: TorchModuleModel, image: np.ndarray, config: RefineConfig, rgb: bool | None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RGBA drops its alpha channel with a warning
        return check_call(RefineSession, model, image, config, rgb=rgb, names=SESSION_NAMES)


@examples(60)
@given(IMAGES, st.sampled_from([None, None, False, True]), MODELS, CONFIGS)
def test_session_opens_exactly_on_valid_images_and_predicts_their_shape(image, rgb, kind, config):
    model = tiny_model(*kind)
    outcome = _open(model, image, config, rgb)
    valid = _image_is_valid(image, rgb, model.in_channels)
    assert outcome.ok == valid, outcome.error
    if not outcome.ok:
        return
    session = outcome.result
    info = validate_image(image, rgb=rgb)
    assert session.spatial_shape == info.spatial_shape
    expected = np.asarray(image)[..., :3] if info.n_channels == 4 else np.asarray(image)
    assert np.array_equal(session.image, expected, equal_nan=True)
    prediction = session.predict()
    assert prediction.dtype == np.int32 and prediction.shape == info.spatial_shape
    assert prediction.min() >= 0 and prediction.max() < session.n_classes


@dataclass
class RunCase:
    """What a run example is made of (printed in full when an example fails)."""

    model: tuple[int, int, str]
    image: np.ndarray
    rgb: bool
    config: RefineConfig
    scribbles: np.ndarray
    run_config: RefineConfig | None


@st.composite
def run_cases(draw: st.DrawFn) -> RunCase:
    """A model, a valid image, a session config, scribbles (mostly valid), a run config."""
    kind = draw(MODELS)
    image = draw(good_images())
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    if rgb and kind[0] == 1:
        image = image[..., 0]
        rgb = False
    assume(_image_is_valid(image, rgb, kind[0]))  # a 1-pixel image is constant
    shape = validate_image(image, rgb=rgb).spatial_shape
    scribbles = draw(
        st.one_of(
            label_arrays(shape, top=kind[1]),
            label_arrays(shape, top=kind[1] + 1),
            arrays(shape=shape),
            arrays(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)),
        )
    )
    return RunCase(kind, image, rgb, draw(CONFIGS), scribbles, draw(st.one_of(st.none(), CONFIGS)))


@examples(80)
@given(run_cases())
def test_session_run_refines_exactly_valid_scribbles(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RGBA; "No scribbles: nothing to refine"
        session = RefineSession(tiny_model(*case.model), case.image, case.config, rgb=case.rgb)
        try:
            validate_scribbles(case.scribbles, session.spatial_shape, session.n_classes)
            valid = True
        except (ValueError, TypeError):
            valid = False
        outcome = check_call(
            session.run, case.scribbles, config=case.run_config, names=("scribbles",)
        )
    assert outcome.ok == valid, outcome.error
    if not outcome.ok:
        return
    result = outcome.result
    assert isinstance(result, RefineResult)
    assert result.prediction.dtype == np.int32
    assert result.prediction.shape == session.spatial_shape
    assert 0 <= result.prediction.min() and result.prediction.max() < session.n_classes
    limit = (case.run_config or case.config).max_iterations
    assert 0 <= result.iterations <= limit
    assert np.array_equal(session.predict(), result.prediction)
    assert math.isfinite(result.loss), result.loss
    assert torch.isfinite(session.logits(0)).all(), f"NaN log-probabilities: {case.image!r}"


def test_an_image_spanning_the_float64_range_is_refused_with_a_clear_message():
    """Regression (fuzzing): values -1.7e308 and 1.7e308 (both finite) were accepted, and
    every normaliser scaled them to NaN (the range high - low overflows): NaN features, a NaN
    loss and a meaningless prediction."""
    big = np.finfo(np.float64).max
    image = np.zeros((8, 8))
    image[:4], image[4:] = -big, big
    outcome = _open(tiny_model(1, 2), image, RefineConfig(device="cpu"), None)
    assert isinstance(outcome.error, ValueError)
    assert "range wider than the largest float64" in str(outcome.error)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_float32_image_spanning_its_dtype_gets_finite_features(dtype):
    """Regression (fuzzing): a float32 image with values -3.4e38 and 3.4e38 came out of the
    HoVer-Net normaliser as NaN and out of the "minmax" one as inf (float32 differences
    overflowed), so the features and the loss were NaN."""
    big = np.finfo(dtype).max
    image = np.zeros((8, 8), dtype)
    image[:4], image[4:] = -big, big
    for model in (tiny_model(1, 2), _small_hovernet()):
        for normalised in (model.normalise_image(image), normalise_array(image, "minmax")):
            assert np.isfinite(normalised).all() and normalised.dtype == np.float32


@pytest.mark.parametrize(
    ("dtype", "colour"), [(np.float16, False), (np.float32, False), (np.float32, True)]
)
def test_the_crf_guide_of_an_image_near_its_dtypes_limits_is_finite(dtype, colour):
    """Regression (fuzzing): the CRF's guide was computed in the image's dtype, so a
    float16/float32 image near its limits gave an inf/NaN guide and NaN log-probabilities."""
    big = np.finfo(dtype).max
    image = np.zeros((8, 8, 3) if colour else (8, 8), dtype)
    if colour:  # grey levels within range, but the sum of the channels overflows
        image[4:] = big
    else:
        image[:4], image[4:] = -big, big
    image[0, 0] = 0
    model = tiny_model(3 if colour else 1, 2)
    config = RefineConfig(device="cpu", crf_weight=3.0)
    session = RefineSession(model, image, config, rgb=colour)
    scribbles = np.zeros((8, 8), np.uint8)
    scribbles[1, 1], scribbles[6, 6] = 1, 2
    session.run(scribbles)
    assert torch.isfinite(session.logits(0)).all()
