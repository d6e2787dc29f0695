"""Property-based tests of the scribble functions: any input gives a result or a clear error.

``validate_scribbles``, ``merge_scribbles``, ``points_to_scribbles``, ``boxes_to_scribbles``
and ``grow_scribbles`` get arrays of every dtype, shape, memory layout and value (NaN, inf,
1e300, negative, constant). Each call either returns a new int32 array of the right shape
whose values follow from the inputs, or raises ValueError/TypeError naming the argument; it
never changes its inputs and never allocates more than 500 MiB (see ``_fuzz.check_call``).
"""

from __future__ import annotations

import math

import numpy as np
from _fuzz import arrays, check_call, examples, label_arrays, spatial_shapes
from hypothesis import given
from hypothesis import strategies as st

from napari_scribble_refine.core.scribbles import (
    boxes_to_scribbles,
    grow_scribbles,
    merge_scribbles,
    points_to_scribbles,
    validate_scribbles,
)

# Numbers of every kind for scalar parameters: valid ones, and NaN, inf, huge, negative,
# fractional, bool, None, strings.
WEIRD_NUMBERS = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, 2**63, 10**30, 10**400, 0.5, 2.5, -0.5]),
    st.sampled_from([None, True, "3", np.int64(2), np.float32(1.0), [1], 1 + 2j]),
)


def _as_objects(array: np.ndarray) -> np.ndarray:
    """The values of a label array as Python numbers (exact for any int or float)."""
    return np.asarray(array).astype(object)


def _assert_new_int32(out: object, shape: tuple[int, ...], *inputs: object) -> np.ndarray:
    """Check that ``out`` is a new writable int32 array of ``shape`` and return it."""
    assert isinstance(out, np.ndarray), type(out)
    assert out.dtype == np.int32 and out.shape == shape, (out.dtype, out.shape, shape)
    assert out.flags.writeable
    for array in inputs:
        if isinstance(array, np.ndarray):
            assert not np.shares_memory(out, array), "the result is a view of an input"
    return out


# --------------------------------------------------------------------------- validate
@st.composite
def validate_args(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], object, bool]:
    """Scribbles of any kind, a spatial shape (mostly theirs) and a class count."""
    scribbles = draw(st.one_of(arrays(), spatial_shapes().flatmap(label_arrays)))
    shape = draw(st.one_of(st.just(scribbles.shape), spatial_shapes(max_side=5, min_side=0)))
    n_classes = draw(st.one_of(st.integers(1, 5), WEIRD_NUMBERS))
    return scribbles, shape, n_classes, draw(st.booleans())


@examples(200)
@given(validate_args())
def test_validate_scribbles_returns_clean_labels_or_names_the_problem(args):
    scribbles, shape, n_classes, allow_new = args
    outcome = check_call(
        validate_scribbles,
        scribbles,
        shape,
        n_classes,
        allow_new_class=allow_new,
        names=("scribbles", "n_classes"),
    )
    if outcome.ok:
        out = _assert_new_int32(outcome.result, tuple(shape), scribbles)
        assert (_as_objects(out) == _as_objects(scribbles)).all()
        assert out.size == 0 or 0 <= out.min() <= out.max() <= n_classes + allow_new


def test_validate_scribbles_names_n_classes_when_it_is_not_a_number():
    """Regression (fuzzing): n_classes=None raised an unnamed TypeError from int()."""
    outcome = check_call(
        validate_scribbles, np.zeros((2, 2), int), (2, 2), None, names=("n_classes",)
    )
    assert isinstance(outcome.error, ValueError | TypeError)


# --------------------------------------------------------------------------- merge
@st.composite
def merge_args(draw: st.DrawFn) -> list[np.ndarray]:
    """One to three label arrays: mostly valid and of one shape, some of any kind."""
    shape = draw(spatial_shapes(max_side=4))
    n = draw(st.integers(1, 3))
    return [
        draw(st.one_of(label_arrays(shape, top=6), arrays(shape=shape), arrays())) for _ in range(n)
    ]


@examples(200)
@given(merge_args())
def test_merge_scribbles_later_non_zero_wins_or_names_the_array(scribbles):
    outcome = check_call(merge_scribbles, *scribbles, names=("scribbles",))
    if outcome.ok:
        out = _assert_new_int32(outcome.result, np.shape(scribbles[0]), *scribbles)
        expected = _as_objects(scribbles[0])
        for array in scribbles[1:]:
            values = _as_objects(array)
            expected = np.where(values != 0, values, expected)
        assert (_as_objects(out) == expected).all(), "merged values differ from the inputs'"


def test_merge_scribbles_refuses_values_beyond_int32():
    """Regression (fuzzing): 2**32 + 2 in an int64 array wrapped around to 2 in the int32
    result, and 1e300 in a float array became -2**31 (a negative label)."""
    for value in (2**32 + 2, 1e300):
        big = np.zeros((2, 2), dtype=np.int64 if isinstance(value, int) else np.float64)
        big[0, 0] = value
        outcome = check_call(merge_scribbles, np.zeros((2, 2), int), big, names=("scribbles[1]",))
        assert isinstance(outcome.error, ValueError), outcome


# --------------------------------------------------------------------------- points
@st.composite
def points_args(draw: st.DrawFn) -> tuple[object, object, object, object, bool]:
    """Points (mostly inside the image), classes, a spatial shape, a radius, per_slice."""
    shape = draw(
        st.one_of(
            spatial_shapes(max_side=6),
            st.tuples(st.integers(-2, 3)),
            spatial_shapes(max_side=3, min_side=0),
        )
    )
    n = draw(st.integers(0, 4))
    ndim = len(shape) if draw(st.integers(0, 5)) else draw(st.integers(1, 4))
    inside = st.floats(-0.6, max(*shape, 1) - 0.4, allow_nan=False)
    points = draw(
        st.one_of(
            st.lists(st.lists(inside, min_size=ndim, max_size=ndim), min_size=n, max_size=n),
            arrays(shape=(n, ndim)),
            arrays(),
        )
    )
    classes = draw(
        st.one_of(st.integers(1, 4), label_arrays((n,), top=4), WEIRD_NUMBERS, arrays(max_dims=2))
    )
    radius = draw(st.one_of(st.integers(0, 3), st.integers(10**4, 10**9), WEIRD_NUMBERS))
    return points, classes, shape, radius, draw(st.booleans())


@examples(200)
@given(points_args())
def test_points_to_scribbles_paints_the_classes_or_names_the_problem(args):
    points, classes, shape, radius, per_slice = args
    outcome = check_call(
        points_to_scribbles,
        points,
        classes,
        shape,
        radius,
        per_slice=per_slice,
        names=("points", "classes", "spatial_shape", "radius"),
    )
    if outcome.ok:
        out = _assert_new_int32(outcome.result, tuple(shape), points, classes)
        painted = set(np.unique(out).tolist()) - {0}
        assert painted <= set(np.unique(np.asarray(classes)).tolist())
        assert len(np.asarray(points).reshape(-1, len(shape))) > 0 or not painted


def test_points_to_scribbles_with_a_huge_radius_fills_the_image_without_a_huge_grid():
    """Regression (fuzzing): radius=10**5 built a (2r + 1)**2 offset grid (tens of GB)."""
    outcome = check_call(points_to_scribbles, [[1, 1]], 2, (4, 5), 10**5, names=("radius",))
    np.testing.assert_array_equal(outcome.result, np.full((4, 5), 2))
    ball = check_call(
        points_to_scribbles, [[0, 0, 0]], 3, (2, 3, 4), 10**9, per_slice=False, names=("radius",)
    )
    np.testing.assert_array_equal(ball.result, np.full((2, 3, 4), 3))


def test_points_to_scribbles_names_a_radius_that_is_not_a_number():
    """Regression (fuzzing): radius=inf raised OverflowError, nan and None unnamed errors."""
    for radius in (math.inf, math.nan, None, "x"):
        outcome = check_call(points_to_scribbles, [[1, 1]], 2, (4, 4), radius, names=("radius",))
        assert not outcome.ok


# --------------------------------------------------------------------------- boxes
@st.composite
def boxes_args(draw: st.DrawFn) -> tuple[object, object, object, object, object]:
    """Boxes (mostly corner pairs inside the image), classes, shape, ring, core_fraction."""
    shape = draw(st.one_of(spatial_shapes(max_side=8), st.tuples(st.integers(-2, 3))))
    n = draw(st.integers(0, 3))
    ndim = len(shape)
    corner = st.lists(st.floats(-2, max(shape) + 2, allow_nan=False), min_size=ndim, max_size=ndim)
    boxes = draw(
        st.one_of(
            st.lists(
                st.lists(corner, min_size=2, max_size=4).map(np.array), min_size=n, max_size=n
            ),
            st.lists(arrays(max_dims=3), min_size=n, max_size=n),
            arrays(shape=(n, 2, ndim)),
            arrays(),
        )
    )
    classes = draw(st.one_of(st.integers(1, 4), label_arrays((n,), top=4), WEIRD_NUMBERS))
    ring = draw(st.one_of(st.integers(0, 3), st.integers(10**6, 10**12), WEIRD_NUMBERS))
    fraction = draw(st.one_of(st.floats(0.01, 1.0), WEIRD_NUMBERS))
    return boxes, classes, shape, ring, fraction


@examples(200)
@given(boxes_args())
def test_boxes_to_scribbles_paints_cores_and_rings_or_names_the_problem(args):
    boxes, classes, shape, ring, fraction = args
    outcome = check_call(
        boxes_to_scribbles,
        boxes,
        classes,
        shape,
        ring,
        core_fraction=fraction,
        names=("boxes", "classes", "spatial_shape", "ring", "core_fraction"),
    )
    if outcome.ok:
        out = _assert_new_int32(outcome.result, tuple(shape), classes)
        allowed = set(np.unique(np.asarray(classes)).tolist()) | {0, 1}
        assert set(np.unique(out).tolist()) <= allowed


def test_boxes_to_scribbles_names_boxes_that_are_not_numbers():
    """Regression (fuzzing): a 0-d array of boxes raised "iteration over a 0-d array" and
    text corners "could not convert string to float", neither naming the boxes (corners
    holding None already read as NaN and were refused by name)."""
    for boxes in (
        np.array(3.0),
        [np.array([[0, None], [2, 2]], dtype=object)],
        [np.array([["a", "0"], ["2", "2"]])],
    ):
        outcome = check_call(boxes_to_scribbles, boxes, 2, (4, 4), names=("boxes",))
        assert not outcome.ok


def test_boxes_to_scribbles_names_ring_and_core_fraction_that_are_not_numbers():
    """Regression (fuzzing): ring=inf raised OverflowError; ring=None and core_fraction=None
    raised TypeError from a comparison, without naming the argument."""
    box = [np.array([[0, 0], [3, 3]])]
    for ring in (math.inf, math.nan, None):
        outcome = check_call(boxes_to_scribbles, box, 2, (5, 5), ring, names=("ring",))
        assert not outcome.ok
    for fraction in (None, "0.5", [0.5]):
        outcome = check_call(
            boxes_to_scribbles, box, 2, (5, 5), core_fraction=fraction, names=("core_fraction",)
        )
        assert not outcome.ok


# --------------------------------------------------------------------------- grow
@st.composite
def grow_args(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, dict]:
    """An image of any kind, scribbles (mostly of its spatial shape) and growth settings."""
    shape = draw(spatial_shapes(max_side=7))
    channels = draw(st.sampled_from([(), (), (1,), (3,), (4,)]))
    image = draw(st.one_of(arrays(shape=shape + channels), arrays()))
    scribbles = draw(st.one_of(label_arrays(shape), label_arrays(shape), arrays()))
    settings = {
        "threshold": draw(st.one_of(st.floats(0, 1), WEIRD_NUMBERS)),
        "max_distance": draw(st.one_of(st.integers(0, 6), WEIRD_NUMBERS)),
        "connectivity": draw(st.one_of(st.integers(1, 3), WEIRD_NUMBERS)),
        "max_grown_ratio": draw(st.one_of(st.none(), st.floats(0, 3), WEIRD_NUMBERS)),
    }
    if draw(st.booleans()):
        settings["intensity_range"] = draw(
            st.one_of(st.tuples(st.floats(), st.floats()), WEIRD_NUMBERS)
        )
    return image, scribbles, settings


GROW_NAMES = (
    "image",
    "scribbles",
    "threshold",
    "max_distance",
    "connectivity",
    "max_grown_ratio",
    "intensity_range",
)


@examples(200)
@given(grow_args())
def test_grow_scribbles_keeps_strokes_and_spreads_their_labels_or_names_the_problem(args):
    image, scribbles, settings = args
    outcome = check_call(grow_scribbles, image, scribbles, names=GROW_NAMES, **settings)
    if outcome.ok:
        out = _assert_new_int32(outcome.result, scribbles.shape, image, scribbles)
        stroke = scribbles != 0
        assert (_as_objects(out[stroke]) == _as_objects(scribbles[stroke])).all()
        assert set(np.unique(out[~stroke]).tolist()) <= set(np.unique(scribbles).tolist()) | {0}


def test_grow_scribbles_refuses_images_that_are_not_real_numbers():
    """Regression (fuzzing): complex and object images raised assorted unnamed errors from
    np.percentile, a bool image numpy's TypeError on boolean subtraction."""
    scribbles = np.zeros((3, 3), int)
    scribbles[1, 1] = 2
    for dtype in (bool, np.complex128, object):
        image = np.ones((3, 3), dtype=dtype)
        outcome = check_call(grow_scribbles, image, scribbles, names=("image",))
        assert isinstance(outcome.error, TypeError), outcome


def test_grow_scribbles_on_an_empty_image_returns_the_empty_scribbles():
    """Regression (fuzzing): an image with an empty axis and its (empty) scribbles raised
    IndexError from np.percentile of no pixels."""
    empty = np.zeros((2, 0), np.uint8)
    outcome = check_call(grow_scribbles, empty, empty, names=("image",))
    assert outcome.result.shape == (2, 0) and outcome.result.dtype == np.int32


def test_grow_scribbles_refuses_labels_beyond_int32():
    """Regression (fuzzing): label 2**32 + 2 (int64) became 2 in the int32 result."""
    scribbles = np.zeros((3, 3), np.int64)
    scribbles[1, 1] = 2**32 + 2
    outcome = check_call(grow_scribbles, np.ones((3, 3)), scribbles, names=("scribbles",))
    assert isinstance(outcome.error, ValueError), outcome


def test_grow_scribbles_names_settings_that_are_not_numbers():
    """Regression (fuzzing): max_distance=inf, threshold=10**400 and max_grown_ratio=10**400
    raised OverflowError, max_distance=nan an unnamed ValueError, and threshold=None a
    TypeError from a comparison."""
    scribbles = np.zeros((3, 3), int)
    scribbles[1, 1] = 2
    image = np.arange(9.0).reshape(3, 3)
    for name, value in [
        ("threshold", 10**400),
        ("max_grown_ratio", 10**400),
        ("intensity_range", (0, 10**400)),
        ("max_distance", math.inf),
        ("max_distance", math.nan),
        ("max_distance", None),
        ("threshold", None),
        ("threshold", "x"),
        ("max_grown_ratio", "x"),
        ("connectivity", None),
    ]:
        outcome = check_call(grow_scribbles, image, scribbles, names=(name,), **{name: value})
        assert not outcome.ok, (name, value)
