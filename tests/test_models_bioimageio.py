"""bioimage.io packages through ``load_model``: the real "UNet 2D Nuclei Broad" package.

The package lives beside the repository (``../shared/models/unet2d-nuclei-broad``, MIT; see
``../shared/models/README.md``) and is read in place; packages built from it for a test go to
``tmp_path``.
"""

from __future__ import annotations

import hashlib
import socket
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_scribble_refine.cli import main
from napari_scribble_refine.core.models.registry import load_model
from napari_scribble_refine.core.session import RefineSession

pytest.importorskip(
    "bioimageio.spec", reason="bioimageio.spec (the extra 'bioimageio') is not installed"
)

from napari_scribble_refine.core.models.bioimageio import BioImageIOModel  # noqa: E402
from napari_scribble_refine.core.models.bioimageio_layout import preprocess  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "models" / "unet2d-nuclei-broad"
pytestmark = [
    pytest.mark.skipif(
        not (PACKAGE / "bioimageio.yaml").is_file(),
        reason=f"the bioimage.io test package is not at {PACKAGE}",
    ),
    # bioimageio.spec leaves the rdf's file handle to the garbage collector
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: one torch thread is faster than two that contend on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(source, **kwargs) -> BioImageIOModel:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(source, allow_code=True, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("can execute code" in m for m in messages)
    assert model.description in messages
    return model


@pytest.fixture(scope="module")
def model() -> BioImageIOModel:
    return _load(PACKAGE)


@pytest.fixture(scope="module")
def tensors() -> tuple[np.ndarray, np.ndarray]:
    return np.load(PACKAGE / "test_input.npy"), np.load(PACKAGE / "test_output.npy")


def _probability(model, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model.head(model.features(image))
    return torch.softmax(logits, dim=1)[0, 1].numpy()


def _rdf() -> str:
    return (PACKAGE / "bioimageio.yaml").read_text().replace("\r\n", "\n")


def test_the_package_test_tensors_reproduce(model, tensors):
    x, y = tensors
    assert model.class_names == ["background", "nucleus"]
    assert model.in_channels == 1 and model.trunk_halo == 32 and model.size_multiple == 8
    assert model.head_names == ["output.weight", "output.bias"]
    assert model.trunk_is_cached and model.head_is_pointwise
    text = model.description
    for part in ("UNet 2D Nuclei Broad", "torchscript weights 'weights.pt'", "head 'output'"):
        assert part in text
    assert "classes background, nucleus" in text and "pytorch_state_dict (" in text
    np.testing.assert_allclose(_probability(model, x[0, 0]), y[0, 0], atol=1e-4)


def test_folder_yaml_and_zip_load_alike_without_network(model, tensors, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    archive = tmp_path / "unet2d.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for file in sorted(PACKAGE.iterdir()):
            zf.write(file, file.name)
    crop = tensors[0][0, 0, 100:228, 40:168]
    expected = _probability(model, crop)
    for source in (PACKAGE / "bioimageio.yaml", str(archive)):
        np.testing.assert_array_equal(_probability(_load(source), crop), expected)


def test_torchscript_alone_predicts_like_the_package(model, tensors, tmp_path):
    crop = tensors[0][0, 0, :96, :120]
    expected = _probability(model, crop)
    # TorchScript without its architecture file: the opaque route, same numbers
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "weights.pt").write_bytes((PACKAGE / "weights.pt").read_bytes())
    (alone / "bioimageio.yaml").write_text(_rdf())
    opaque = _load(alone)
    assert not opaque.trunk_is_cached and opaque.head_names == ["output.weight", "output.bias"]
    assert "the whole network" in opaque.description
    np.testing.assert_allclose(_probability(opaque, crop), expected, atol=1e-5)
    scripted = _load(PACKAGE, use_architecture=False)
    assert not scripted.trunk_is_cached
    np.testing.assert_array_equal(_probability(scripted, crop), _probability(opaque, crop))


def _state_dict_package(folder: Path, callable_: str = "UNet2d", extra_code: str = "") -> str:
    """A package whose pytorch_state_dict entry holds the TorchScript's weights; its rdf."""
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        state = torch.jit.load(str(PACKAGE / "weights.pt")).state_dict()
    torch.save(state, folder / "weights.torch")
    (folder / "unet2d.py").write_text((PACKAGE / "unet2d.py").read_text() + extra_code)
    rdf = _rdf().replace(
        "http://files.ilastik.org/bioimageio_test/unet2d_nuclei_broad_weights.torch",
        "weights.torch",
    )
    for old, file in (
        ("e4d3885bccbe41cbf6c1d825f3cd2b707c7021ead5593156007e407a16b27cf2", "weights.torch"),
        ("d00721e7d00f55222e8cbf90019dd85ce9df0ae42fd46a07f0e6ea45729b310d", "unet2d.py"),
    ):
        rdf = rdf.replace(old, hashlib.sha256((folder / file).read_bytes()).hexdigest())
    rdf = rdf.replace("callable: UNet2d\n", f"callable: {callable_}\n")
    (folder / "bioimageio.yaml").write_text(rdf)
    return rdf


def test_a_state_dict_with_its_architecture_predicts_like_the_package(model, tensors, tmp_path):
    crop = tensors[0][0, 0, :96, :120]
    folder = tmp_path / "sd"
    rdf = _state_dict_package(folder)
    loaded = _load(folder, weights="pytorch_state_dict")
    assert loaded.weights_format == "pytorch_state_dict" and loaded.trunk_is_cached
    np.testing.assert_array_equal(_probability(loaded, crop), _probability(model, crop))
    digest = hashlib.sha256((folder / "weights.torch").read_bytes()).hexdigest()
    (folder / "bioimageio.yaml").write_text(rdf.replace(digest, "ab" * 32))
    with pytest.raises(ValueError, match=r"weights\.torch.*sha256"):
        load_model(folder, allow_code=True, weights="pytorch_state_dict")


def test_a_network_ending_in_a_sigmoid_is_tuned_before_it(model, tensors, tmp_path):
    crop = tensors[0][0, 0, :96, :120]
    folder = tmp_path / "sigmoid"
    ends = "\n\nclass UNet2dSigmoid(UNet2d):\n    def forward(self, input):\n"
    ends += "        return torch.sigmoid(super().forward(input))\n"
    rdf = _state_dict_package(folder, "UNet2dSigmoid", ends)
    (folder / "bioimageio.yaml").write_text(rdf.replace("      - id: sigmoid\n", ""))
    expected = _probability(model, crop)
    cached = _load(folder)  # a probability output: the head's output is the logit
    assert cached.trunk_is_cached
    assert "the input of the network's final sigmoid" in cached.description
    np.testing.assert_allclose(_probability(cached, crop), expected, atol=1e-6)
    opaque = _load(folder, head=["decoders.2.1", "output"])  # logit(p) of the network's output
    assert not opaque.trunk_is_cached
    np.testing.assert_allclose(_probability(opaque, crop), expected, atol=1e-5)


def test_without_allow_code_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unet2d-nuclei-broad.*allow_code=True"):
        load_model(PACKAGE)
    with pytest.raises(ValueError, match=r"folder without a bioimage\.io description"):
        load_model(tmp_path, allow_code=True)


def test_refinement_fits_scribbles_and_undo_restores(model, tensors, config):
    image = tensors[0][0, 0, :256, :256]
    probability = _probability(model, image)  # the crop is normalised on its own
    session = RefineSession(model, image, config)
    before = session.predict()
    np.testing.assert_array_equal(before, (probability > 0.5).astype(before.dtype))
    rng = np.random.default_rng(0)
    unsure = np.argwhere((probability > 0.2) & (probability < 0.5))  # predicted background
    sure = np.argwhere(probability < 0.01)
    nuclei = unsure[rng.choice(len(unsure), 5, replace=False)]
    background = sure[rng.choice(len(sure), 5, replace=False)]
    scribbles = np.zeros(image.shape, dtype=np.int32)
    scribbles[nuclei[:, 0], nuclei[:, 1]] = 2  # class 1 (nucleus) + 1
    scribbles[background[:, 0], background[:, 1]] = 1
    assert (before[nuclei[:, 0], nuclei[:, 1]] == 0).all()
    result = session.run(scribbles)
    assert result.converged and result.violations == 0 and result.n_scribbled == 10
    after = session.predict()
    assert (after[nuclei[:, 0], nuclei[:, 1]] == 1).all()
    assert (after[background[:, 0], background[:, 1]] == 0).all()
    tuned = session.model.head_state()["weights"]
    assert not torch.equal(tuned["output.weight"], model.head_state()["weights"]["output.weight"])
    assert session.undo()
    np.testing.assert_array_equal(session.predict(), before)


def test_add_class_keeps_the_prediction(model, tensors, config):
    session = RefineSession(model, tensors[0][0, 0, :64, :64], config)
    before = session.predict()
    assert session.add_class("dividing", init_from=1) == 2
    assert session.class_names == ["background", "nucleus", "dividing"]
    np.testing.assert_array_equal(session.predict(), before)


def test_the_cli_refines_with_a_package(tensors, tmp_path, capsys):
    image = tensors[0][0, 0, :128, :128]
    tifffile.imwrite(tmp_path / "img.tif", image)
    scribbles = np.zeros(image.shape, dtype=np.uint8)
    scribbles[60:63, 60:63] = 1
    tifffile.imwrite(tmp_path / "scr.tif", scribbles)
    argv = ["refine", str(tmp_path / "img.tif"), str(tmp_path / "scr.tif"), "--model"]
    argv += [str(PACKAGE), "--allow-code", "--iterations", "10", "--no-progress"]
    argv += ["--device", "cpu", "--out", str(tmp_path / "res")]
    assert main(argv) == 0, capsys.readouterr().err
    classes = tifffile.imread(tmp_path / "res_classes.tif")
    assert classes.shape == image.shape and set(np.unique(classes)) <= {0, 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rdf: rdf, r"weights\.pt' is missing from the package"),
        (
            lambda rdf: rdf.replace("id: zero_mean_unit_variance", "id: zero_mean_unit_varianse"),
            r"not a valid bioimage\.io description.*zero_mean_unit_varianse",
        ),
        (
            lambda rdf: rdf.replace(
                "      - id: sigmoid\n",
                "      - id: sigmoid\n      - id: clip\n        kwargs: {min: 0.1, max: 0.9}\n",
            ),
            r"output postprocessing 'clip' is not supported",
        ),
        (lambda rdf: rdf[:400] + "\n  - [unclosed\n", r"not a readable bioimage\.io description"),
    ],
    ids=["missing-weights", "unknown-preprocessing", "unsupported-postprocessing", "broken"],
)
def test_bad_packages_name_the_file_and_the_problem(tmp_path, change, message):
    rdf = tmp_path / "bioimageio.yaml"  # beside no weights file
    rdf.write_text(change(_rdf()))
    with pytest.raises(ValueError, match=message) as info:
        load_model(rdf, allow_code=True)
    assert str(rdf) in str(info.value)


def test_preprocessing_operations_follow_the_spec():
    rng = np.random.default_rng(1)
    data = rng.normal(5.0, 2.0, size=(2, 6, 7, 3))  # (sample, y, x, channel)
    index = {"batch": 0, "y": 1, "x": 2, "channel": 3}

    def run(op, **kw):
        return preprocess(data, [(op, kw)], index).astype(np.float64)

    per = data.mean(axis=(1, 2), keepdims=True), data.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(
        run("zero_mean_unit_variance", axes=["x", "y"]), (data - per[0]) / (per[1] + 1e-6), 1e-5
    )
    lo, hi = np.percentile(data, [1, 99], axis=(0, 1, 2, 3), keepdims=True)
    np.testing.assert_allclose(
        run("scale_range", min_percentile=1.0, max_percentile=99.0),
        (data - lo) / (hi - lo + 1e-6),
        1e-5,
    )
    gain = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        run("scale_linear", gain=list(gain), offset=[0.0, 1.0, 2.0], axis="channel"),
        data * gain + np.array([0.0, 1.0, 2.0]),
        1e-5,
    )
    np.testing.assert_allclose(
        run("fixed_zero_mean_unit_variance", mean=5.0, std=2.0), (data - 5) / (2 + 1e-6), 1e-5
    )
    np.testing.assert_allclose(run("clip", min=4.0, max=6.0), np.clip(data, 4, 6), 1e-6)
    np.testing.assert_array_equal(run("binarize", threshold=5.0), data > 5)
    with pytest.raises(ValueError, match="'time'"):
        run("zero_mean_unit_variance", axes=["time"])
