"""TorchScriptModel: opaque networks from files, tuned through named parameters."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _tiny_nets import NoClassAxisNet, disks_scene, scribble_disks

from napari_scribble_refine.core.models.module import TorchModuleModel
from napari_scribble_refine.core.models.torchscript import TorchScriptModel
from napari_scribble_refine.core.session import RefineSession

CLASSES2 = ["background", "nucleus"]

# torch >= 2.10 deprecates writing TorchScript; these tests need such files
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture
def script_file(unet2, tmp_path):
    path = tmp_path / "tiny_unet.pt"
    torch.jit.save(torch.jit.script(unet2), str(path))
    return path


def _load(path, **kwargs):
    with pytest.warns(UserWarning, match="execute code"):
        return TorchScriptModel(path, **kwargs)


def test_loads_with_a_warning_and_predicts_like_the_module(script_file, unet2, scene, config):
    model = _load(script_file, head="final", size_multiple=2)
    assert model.class_names == ["background", "class 1"]
    assert not model.trunk_is_cached and not model.head_is_pointwise
    assert model.head_names == ["final.weight", "final.bias"]
    assert all(not p.requires_grad for p in model.network.parameters())
    image, _ = scene
    module = TorchModuleModel(unet2, CLASSES2, size_multiple=2)
    a = RefineSession(model, image, config).predict()
    b = RefineSession(module, image, config).predict()
    np.testing.assert_array_equal(a, b)


def test_class_names_must_match(script_file):
    with pytest.raises(ValueError, match="outputs 2 classes but 3"):
        _load(script_file, head="final", class_names=["a", "b", "c"], size_multiple=2)


def test_refine_tunes_only_the_head_and_undo_is_exact(script_file, scene, config):
    model = _load(script_file, head=["dec", "final"], class_names=CLASSES2, size_multiple=2)
    image, kinds = scene
    session = RefineSession(model, image, config)
    p0 = session.predict()
    before = {n: p.clone() for n, p in session.model.network.named_parameters()}
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=1)
    scribble_disks(scribbles, kinds, 1, [0], value=2)
    result = session.run(scribbles)
    assert result.converged and result.iterations > 0
    changed = {
        n for n, p in session.model.network.named_parameters() if not torch.equal(p, before[n])
    }
    assert changed and all(n.startswith(("dec.", "final.")) for n in changed)
    assert session.undo()
    np.testing.assert_array_equal(session.predict(), p0)


def test_add_class_and_undo(script_file, scene, config):
    model = _load(script_file, head="final", class_names=CLASSES2, size_multiple=2)
    image, kinds = scene
    session = RefineSession(model, image, config)
    p0 = session.predict()
    index = session.add_class("dim", init_from=1)
    np.testing.assert_array_equal(session.predict(), p0)
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=index + 1)
    scribble_disks(scribbles, kinds, 1, [0], value=2)
    assert session.run(scribbles).converged
    assert (session.predict() == 2).any()
    session.undo()
    session.undo()
    assert session.class_names == CLASSES2
    np.testing.assert_array_equal(session.predict(), p0)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TorchScriptModel(tmp_path / "nope.pt", head="final")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        TorchScriptModel(tmp_path, head="final")


def test_not_torchscript(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)  # a plain pickle, not TorchScript
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(
            ValueError, match=r"weights\.pt.*not a TorchScript file.*torch\.jit\.save"
        ):
            TorchScriptModel(path, head="final")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="not a TorchScript file"):
            TorchScriptModel(text, head="final")


def test_output_without_class_axis(tmp_path):
    path = tmp_path / "flat.pt"
    torch.jit.save(torch.jit.script(NoClassAxisNet()), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="no class axis"):
            TorchScriptModel(path, head="conv")


def test_prefix_matching_nothing_lists_prefixes(script_file):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=r"'decoder'.*match no parameter.*'enc1'.*'final'"):
            TorchScriptModel(script_file, head=["final", "decoder"], size_multiple=2)


def test_prefix_matches_whole_name_parts_only(script_file):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="match no parameter"):
            TorchScriptModel(script_file, head="enc", size_multiple=2)  # not enc1/enc2


def test_traced_module_also_works(unet2, tmp_path):
    path = tmp_path / "traced.pt"
    traced = torch.jit.trace(unet2, torch.rand(1, 1, 32, 32))
    torch.jit.save(traced, str(path))
    model = _load(path, head="final", class_names=CLASSES2, size_multiple=2)
    image, _ = disks_scene(np.random.default_rng(1), size=48, n_bright=2)
    assert model.head(model.features(image)).shape == (1, 2, 48, 48)
