"""A tuned built-in model exported as a bioimage.io package, validated and read back."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from napari_scribble_refine.core import RefineConfig, RefineSession, load_model
from napari_scribble_refine.core.models.bioimageio_package import Package
from napari_scribble_refine.core.models.module import TorchModuleModel
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence, synthetic_he

spec = pytest.importorskip("bioimageio.spec")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
FAST = RefineConfig(max_iterations=10, device="cpu")


def _tuned(name: str, sample) -> RefineSession:
    """A float32 session (the package runs in float32) refined once on truth scribbles."""
    session = RefineSession(load_model(name, precision="float32"), sample.image, FAST)
    scribbles = np.zeros(sample.types.shape, np.uint8)
    rows = np.zeros(sample.types.shape, bool)
    rows[::5] = True
    scribbles[rows] = sample.types[rows] + 1
    session.run(scribbles)
    return session


def _read_back(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(path, allow_code=True)


def test_a_tuned_grey_model_exports_validates_and_reads_back(tmp_path):
    sample = synthetic_fluorescence((160, 192), seed=41)
    session = _tuned("hovernet-fluo", sample)
    path = session.export_bioimageio(tmp_path / "tuned.zip")
    descr = spec.load_description(path, perform_io_checks=True)
    assert type(descr).__name__ == "ModelDescr", descr.validation_summary.format()
    back = _read_back(path)
    assert back.class_names == ["background", "nucleus"]
    assert back.head_names == [
        "network.decoder.np.u0.conv.weight",
        "network.decoder.np.u0.conv.bias",
    ]
    # the package's own test tensors reproduce through load_model
    package = Package(path)
    raw = np.load(io.BytesIO(package.read("test_input.npy")))
    expected = np.load(io.BytesIO(package.read("test_output.npy")))
    image = raw[0].transpose(1, 2, 0)[..., 0]
    got = back.head(back.features(image)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # the same classes as the tuned model in the plugin, over the whole image
    ours = RefineSession(session.model, sample.image, FAST).predict()
    theirs = RefineSession(back, sample.image, FAST).predict()
    assert np.mean(ours == theirs) > 0.999
    pretrained = RefineSession(load_model("hovernet-fluo", precision="float32"), sample.image)
    assert not np.array_equal(ours, pretrained.predict())  # it is the tuned model
    # and it can be refined again
    again = RefineSession(back, sample.image, FAST)
    marks = np.zeros(sample.types.shape, np.uint8)
    marks[sample.types > 0] = 1  # "all of these are background"
    marks[::2] = 0
    assert again.run(marks).iterations > 0
    assert np.mean(again.predict()[marks == 1] == 0) > np.mean(theirs[marks == 1] == 0)


def test_a_typed_model_needs_a_licence_and_keeps_the_class_rule(tmp_path):
    sample = synthetic_he((128, 128), seed=42)
    session = _tuned("hovernet-he", sample)
    with pytest.raises(ValueError, match="research-use condition.*pass license="):
        session.export_bioimageio(tmp_path / "he.zip")
    assert not (tmp_path / "he.zip").exists()
    path = session.export_bioimageio(tmp_path / "he.zip", license="CC-BY-NC-4.0")
    back = _read_back(path)
    assert back.class_names == session.class_names
    assert {n.rsplit(".", 2)[0] for n in back.head_names} == {
        "network.decoder.np.u0",
        "network.decoder.tp.u0",
    }
    ours = RefineSession(session.model, sample.image, FAST).predict()
    theirs = RefineSession(back, sample.image, FAST).predict()
    assert np.mean(ours == theirs) > 0.999
    assert len(np.unique(ours)) > 2  # several types take part


def test_other_models_and_bad_paths_are_refused(tmp_path, unet2, scene):
    image, _ = scene
    other = RefineSession(
        TorchModuleModel(unet2, ["background", "nucleus"], size_multiple=2), image
    )
    with pytest.raises(ValueError, match="HoVer-Net models only"):
        other.export_bioimageio(tmp_path / "x.zip")
    session = RefineSession(load_model("hovernet-fluo"), image, FAST)
    with pytest.raises(ValueError, match=r"ending in \.zip"):
        session.export_bioimageio(tmp_path / "x.yaml")
    (tmp_path / "x.zip").write_bytes(b"keep")
    with pytest.raises(ValueError, match="exists; choose another name or pass overwrite=True"):
        session.export_bioimageio(tmp_path / "x.zip")
    assert (tmp_path / "x.zip").read_bytes() == b"keep"
    assert torch.equal(
        RefineSession(load_model("hovernet-fluo"), image).logits(), session.logits()
    )  # exporting leaves the session's model as it was


def test_the_command_line_exports_a_package(tmp_path, capsys):
    import tifffile

    from napari_scribble_refine.cli import main

    sample = synthetic_fluorescence((96, 96), seed=43)
    tifffile.imwrite(tmp_path / "img.tif", sample.image)
    marks = np.zeros((96, 96), np.uint8)
    marks[sample.types > 0] = 2
    marks[::3] = 0
    tifffile.imwrite(tmp_path / "scr.tif", marks)
    args = ["refine", str(tmp_path / "img.tif"), str(tmp_path / "scr.tif"), "--no-progress"]
    args += ["--out", str(tmp_path / "r"), "--export-bioimageio", str(tmp_path / "m.zip")]
    assert main(args) == 0
    assert "bioimage.io package" in capsys.readouterr().out
    assert type(spec.load_description(tmp_path / "m.zip")).__name__ == "ModelDescr"
    args[-1] = str(tmp_path / "m.yaml")  # refused before the work
    assert main(args) == 2
    assert "--export-bioimageio" in capsys.readouterr().err
