"""A tuned model leaves the session: save_model, load_model round trips and the CLI option."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from _tiny_nets import CLASSES2, disks_scene, scribble_disks
from safetensors import safe_open

from napari_scribble_refine.cli import main
from napari_scribble_refine.core import RefineConfig, RefineSession, load_model
from napari_scribble_refine.core.models.module import TorchModuleModel

# torch >= 2.10 deprecates writing TorchScript; these tests need such files
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

FAST = RefineConfig(max_iterations=10, device="cpu")


def _scribbles(kinds: np.ndarray) -> np.ndarray:
    """Dim disks scribbled as the added class (value 3 = class 2), bright ones as nucleus."""
    scribbles = np.zeros(kinds.shape, np.uint8)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=3)
    scribble_disks(scribbles, kinds, 1, [0], value=2)
    scribbles[:3] = 1
    return scribbles


def _logits(model, image) -> torch.Tensor:
    """The head's own logits on ``image`` in a fresh session (no scribbles, no CRF)."""
    return RefineSession(model, image, FAST).logits()


def _tuned(model, image, kinds) -> RefineSession:
    """A session that added a class and refined once, so the head and its shape changed."""
    session = RefineSession(model, image, FAST)
    session.add_class("dim", init_from=1)
    session.run(_scribbles(kinds))
    return session


@pytest.fixture
def scene_uint8() -> tuple[np.ndarray, np.ndarray]:
    image, kinds = disks_scene(np.random.default_rng(11), size=96, n_bright=5, n_dim=4)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), kinds


def test_a_tuned_builtin_model_reloads_with_identical_predictions(tmp_path, scene_uint8):
    image, kinds = scene_uint8
    session = _tuned(load_model("hovernet-fluo"), image, kinds)
    path = session.save_model(tmp_path / "tuned.safetensors")
    loaded = load_model(path)
    assert loaded.class_names == ["background", "nucleus", "dim"]
    tuned = _logits(session.model, image)
    assert torch.equal(_logits(loaded, image), tuned)
    # the file holds the tuned head, not the shipped one
    shipped = _logits(load_model("hovernet-fluo"), image)
    assert not torch.equal(tuned[:, :2], shipped)
    # the shipped file's notes (licence, data) travel with it, and what was done is recorded
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert "training" in meta and meta["name"] == "hovernet-fluo"
    adapted = json.loads(meta["adapted"])
    assert adapted["from"] == "hovernet-fluo" and adapted["image_shape"] == [96, 96]
    assert adapted["steps"][0] == "add class 'dim'" and len(adapted["steps"]) == 2


def test_the_file_holds_the_head_of_the_current_history_entry(tmp_path, scene_uint8):
    image, kinds = scene_uint8
    session = RefineSession(load_model("hovernet-fluo"), image, FAST)
    scribbles = np.zeros(kinds.shape, np.uint8)
    scribble_disks(scribbles, kinds, 2, [0, 1, 2], value=1)
    session.run(scribbles)
    assert session.undo()
    loaded = load_model(session.save_model(tmp_path / "undone.safetensors"))
    assert torch.equal(_logits(loaded, image), _logits(load_model("hovernet-fluo"), image))


def test_a_tuned_module_reloads_into_the_same_architecture(tmp_path, unet2, scene):
    image, kinds = scene
    architecture = copy.deepcopy(unet2)  # the user's code builds the network again
    session = _tuned(TorchModuleModel(unet2, CLASSES2, size_multiple=2), image, kinds)
    path = session.save_model(tmp_path / "tuned.safetensors")
    with pytest.raises(ValueError, match=r"architecture is Python code.*module=net"):
        load_model(path)
    loaded = load_model(path, module=architecture)
    assert loaded.class_names == ["background", "nucleus", "dim"]
    assert loaded.size_multiple == 2
    tuned = _logits(session.model, image)
    assert torch.equal(_logits(loaded, image), tuned)
    untuned = _logits(TorchModuleModel(copy.deepcopy(unet2), CLASSES2, size_multiple=2), image)
    assert not torch.equal(tuned[:, :2], untuned)


def test_a_state_dict_that_does_not_fit_is_refused(tmp_path, unet2, scene):
    image, kinds = scene
    session = _tuned(TorchModuleModel(unet2, CLASSES2, size_multiple=2), image, kinds)
    path = session.save_model(tmp_path / "tuned.safetensors")
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    with pytest.raises(ValueError, match="does not fit the Sequential given"):
        load_model(path, module=other)
    builtin = RefineSession(load_model("hovernet-fluo"), image, FAST)
    hovernet_file = builtin.save_model(tmp_path / "hv.safetensors")
    with pytest.raises(ValueError, match="without module="):
        load_model(hovernet_file, module=other)


def test_a_custom_normalisation_must_be_given_again(tmp_path, unet2, scene):
    image, _ = scene
    model = TorchModuleModel(unet2, CLASSES2, size_multiple=2, normalise=lambda a: a * 1.0)
    path = RefineSession(model, image, FAST).save_model(tmp_path / "custom.safetensors")
    with pytest.raises(ValueError, match="normalisation function of its own"):
        load_model(path, module=copy.deepcopy(unet2))
    load_model(path, module=copy.deepcopy(unet2), normalise=lambda a: a * 1.0)


def test_a_tuned_torchscript_model_keeps_its_settings(tmp_path, unet2, scene):
    image, kinds = scene
    script = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(unet2), str(script))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = load_model(
            script, allow_code=True, head="final", class_names=CLASSES2, size_multiple=2
        )
        session = _tuned(model, image, kinds)
        path = session.save_model(tmp_path / "tuned.pt")
        loaded = load_model(path, allow_code=True)  # no head, classes or size given
    assert loaded.class_names == ["background", "nucleus", "dim"]
    assert loaded.size_multiple == 2 and loaded.head_names == ["final.weight", "final.bias"]
    assert torch.equal(_logits(loaded, image), _logits(session.model, image))


def test_bad_targets_are_refused_before_anything_is_written(tmp_path, scene_uint8):
    image, _ = scene_uint8
    session = RefineSession(load_model("hovernet-fluo"), image, FAST)
    with pytest.raises(ValueError, match=r"ending in \.safetensors \(e\.g\. 'm\.safetensors'\)"):
        session.save_model(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="does not exist; create it"):
        session.save_model(tmp_path / "missing" / "m.safetensors")
    existing = tmp_path / "m.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="exists; choose another name or pass overwrite=True"):
        session.save_model(existing)
    assert existing.read_bytes() == b"keep me"
    session.save_model(existing, overwrite=True)
    assert load_model(existing).class_names == ["background", "nucleus"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    session.close()
    with pytest.raises(ValueError, match="is closed; start a new one"):
        session.save_model(tmp_path / "after.safetensors")


def test_bioimageio_models_say_they_cannot_be_saved_yet(tmp_path, scene_uint8):
    package = Path(__file__).parents[2] / "shared" / "models" / "unet2d-nuclei-broad"
    if not package.is_dir():
        pytest.skip(f"{package} is absent")
    pytest.importorskip("bioimageio.spec")
    image, _ = scene_uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = RefineSession(load_model(package, allow_code=True), image, FAST)
    with pytest.raises(ValueError, match="BioImageIOModel cannot be saved yet"):
        session.save_model(tmp_path / "m.pt")


def test_the_command_line_saves_the_refined_model(tmp_path, scene_uint8, capsys):
    image, kinds = scene_uint8
    tifffile.imwrite(tmp_path / "img.tif", image)
    scribbles = np.zeros(kinds.shape, np.uint8)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=1)
    tifffile.imwrite(tmp_path / "scr.tif", scribbles)
    saved = tmp_path / "mine.safetensors"
    args = ["refine", str(tmp_path / "img.tif"), str(tmp_path / "scr.tif")]
    args += ["--out", str(tmp_path / "r"), "--save-model", str(saved), "--no-progress"]
    assert main(args) == 0
    assert f"saved the refined model to {saved}" in capsys.readouterr().out
    session = RefineSession(load_model("hovernet-fluo"), image, RefineConfig())
    session.run(scribbles)
    assert torch.equal(_logits(load_model(saved), image), _logits(session.model, image))
    # the saved model predicts from the command line
    assert main(["predict", str(tmp_path / "img.tif"), "--model", str(saved), "--out",
                 str(tmp_path / "p"), "--no-progress"]) == 0  # fmt: skip
    # a wrong suffix is refused before the work, with exit status 2
    args[-2] = str(tmp_path / "mine.pt")
    assert main(args) == 2
    assert "--save-model:" in capsys.readouterr().err
    assert not (tmp_path / "mine.pt").exists()
