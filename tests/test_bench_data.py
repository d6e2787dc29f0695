import numpy as np
from bench_data import Sample, class_space, ground_truth  # noqa: E402
from problem import paint  # noqa: E402

HE = ["background", "epithelial", "lymphocyte", "stromal"]


def _sample(types=True):
    labels = np.array([[0, 1, 1, 2]])
    t = np.array([[0, 1, 1, 2]], np.uint8) if types else None
    names = ["background", "Neoplastic", "Non-neoplastic"] if types else ["background", "nucleus"]
    return Sample("src", "s", np.zeros((1, 4, 3), np.uint8), labels, t, names)


def test_pannuke_types_map_by_name():
    space = class_space(HE, _sample())
    assert space.names == ["background", "Neoplastic", "Non-neoplastic"]
    assert space.lut.tolist() == [0, 1, 2, 2]
    np.testing.assert_array_equal(ground_truth(_sample(), space), [[0, 1, 1, 2]])
    probs = np.array([0.1, 0.2, 0.3, 0.4])[:, None, None] * np.ones((4, 1, 4))
    np.testing.assert_allclose(space.probabilities(probs)[:, 0, 0], [0.1, 0.2, 0.7])


def test_binary_when_untyped_or_model_has_one_nucleus_class():
    assert class_space(HE, _sample(types=False)).lut.tolist() == [0, 1, 1, 1]
    space = class_space(["background", "nucleus"], _sample())
    assert space.names == ["background", "nucleus"]
    np.testing.assert_array_equal(ground_truth(_sample(), space), [[0, 1, 1, 1]])


def test_scribbles_map_to_the_most_probable_model_class():
    space = class_space(HE, _sample())
    probs = np.zeros((4, 1, 4))
    probs[:, 0, 2] = [0.1, 0.1, 0.2, 0.6]  # stromal beats lymphocyte
    probs[:, 0, 3] = [0.1, 0.1, 0.5, 0.3]  # lymphocyte beats stromal
    scr = np.array([[1, 2, 3, 3]])
    np.testing.assert_array_equal(space.to_model_scribbles(scr, probs), [[1, 2, 4, 3]])


def test_paint_overwrites_only_scribbled_pixels():
    out = paint(np.array([[0, 1, 2]]), np.array([[2, 0, 1]]))
    np.testing.assert_array_equal(out, [[1, 1, 0]])
