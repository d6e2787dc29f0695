import re

import numpy as np
import pytest
from _tiny_nets import readonly

from napari_scribble_refine.core.images import ImageInfo, guess_rgb, validate_image


def test_greyscale_2d():
    image = readonly(np.arange(12 * 10, dtype=np.uint8).reshape(12, 10))
    info = validate_image(image)
    assert info == ImageInfo(is_rgb=False, is_3d=False, spatial_shape=(12, 10), n_channels=1)


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_guessed_like_napari(channels):
    image = np.random.default_rng(0).random((64, 48, channels))
    info = validate_image(image)
    assert info.is_rgb and not info.is_3d
    assert info.spatial_shape == (64, 48)
    assert info.n_channels == channels


@pytest.mark.parametrize(
    ("shape", "said"),
    [
        ((3, 64, 64), "a 3-slice (Z, Y, X) stack or 3 colour channels first"),
        ((4, 64, 64), "a 4-slice (Z, Y, X) stack or 4 colour channels first"),
        ((64, 64, 2), "a 64-slice (Z, Y, X) stack or a small image with 2 channels"),
        ((20, 20, 3), "a 20-slice (Z, Y, X) stack or a small image with 3 channels"),
    ],
)
def test_shapes_that_could_be_channels_or_a_stack_need_the_caller_to_say(shape, said):
    image = np.random.default_rng(0).random(shape)
    with pytest.raises(ValueError, match=re.escape(f"image has shape {shape}: it could be {said}")):
        validate_image(image)
    with pytest.raises(ValueError, match=r"rgb=False reads it as a \(Z, Y, X\) stack"):
        validate_image(image)
    info = validate_image(image, rgb=False)
    assert info == ImageInfo(is_rgb=False, is_3d=True, spatial_shape=shape, n_channels=1)


def test_stacks_with_five_or_more_slices_and_clear_colour_need_no_flag():
    assert validate_image(np.random.default_rng(0).random((5, 64, 64))).is_3d
    assert validate_image(np.random.default_rng(0).random((64, 64, 3))).is_rgb


def test_small_image_with_three_last_is_colour_when_told():
    image = np.random.default_rng(0).random((20, 20, 3))
    assert not guess_rgb(image.shape)
    info = validate_image(image, rgb=True)
    assert info.is_rgb and info.spatial_shape == (20, 20) and info.n_channels == 3


def test_rgb_false_forces_a_stack():
    image = np.random.default_rng(0).random((64, 64, 3))
    info = validate_image(image, rgb=False)
    assert info.is_3d and not info.is_rgb and info.spatial_shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("shape", "rgb"), [((2, 8, 8, 8), None), ((2, 8, 8, 8), False), ((4, 40, 40, 3), True)]
)
def test_4d_rejected_with_advice(shape, rgb):
    with pytest.raises(ValueError, match="4D images are not supported; pick one time point"):
        validate_image(np.random.default_rng(0).random(shape), rgb=rgb)


def test_4d_message_names_argument():
    with pytest.raises(ValueError, match=r"^my image has shape \(2, 8, 8, 8\)"):
        validate_image(np.ones((2, 8, 8, 8)), name="my image")


@pytest.mark.parametrize("shape", [(10,), ()])
def test_too_few_dimensions(shape):
    with pytest.raises(ValueError, match=r"image must have 2 or 3 dimensions.*got \d dimension"):
        validate_image(np.random.default_rng(0).random(shape))


def test_rgb_flag_needs_a_colour_axis():
    with pytest.raises(ValueError, match=r"image is marked as RGB.*\(Y, X, 3\).*got shape"):
        validate_image(np.random.default_rng(0).random((32, 32, 5)), rgb=True)
    with pytest.raises(ValueError, match="marked as RGB"):
        validate_image(np.random.default_rng(0).random((32, 32)), rgb=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    image = np.random.default_rng(0).random((16, 16))
    image[3, 4] = bad
    with pytest.raises(ValueError, match="image contains 1 NaN or infinite value"):
        validate_image(image)


def test_constant_rejected():
    with pytest.raises(ValueError, match=r"image is constant \(every pixel is 7\)"):
        validate_image(np.full((16, 16), 7, dtype=np.uint16))


@pytest.mark.parametrize("dtype", [bool, np.complex64, object, "U1"])
def test_non_real_dtype_rejected(dtype):
    image = np.zeros((8, 8), dtype=dtype)
    with pytest.raises(TypeError, match=r"image must hold real numbers.*got dtype"):
        validate_image(image)


def test_empty_axis_rejected():
    with pytest.raises(ValueError, match=r"image has an empty axis: shape \(0, 8\)"):
        validate_image(np.zeros((0, 8)))


def test_input_untouched_and_lists_accepted():
    image = readonly(np.random.default_rng(0).random((40, 40, 3)).astype(np.float32))
    before = image.copy()
    validate_image(image)
    np.testing.assert_array_equal(image, before)
    assert validate_image([[0, 1], [2, 3]]).spatial_shape == (2, 2)
