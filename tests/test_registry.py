import re
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_scribble_refine import RefineConfig, RefineSession, available_models, load_model
from napari_scribble_refine.core.models.base import SegmentationModel
from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig
from napari_scribble_refine.core.models.hovernet_checkpoint import save_hovernet_safetensors
from napari_scribble_refine.core.models.registry import BUILTIN_MODELS, builtin_weights
from napari_scribble_refine.evaluation.metrics import dice
from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence, synthetic_he

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "train"
SPLIT = REPO / "benchmarks" / "splits" / "validation.txt"

# Validation images of the training set (never trained on; benchmarks/splits/validation.txt):
# the first 6 of a group. Thresholds: mean foreground Dice seen with the shipped weights
# (fluorescence 0.92, CoNSeP 0.82 at the best checkpoint's validation) minus about 0.05.
REAL_CHECK = {
    "hovernet-fluo": ("dsb2018", "fluo_", 0.85),
    "hovernet-he": ("consep", "test_", 0.75),
}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _predict(model, image):
    with torch.inference_mode():
        feats = model.features(image)
        logits = model.head(feats)
        classes = logits.argmax(1)[0].numpy()
        inst = model.instances(classes, logits, feats)
    return classes, inst


def test_available_models_lists_builtins_with_descriptions():
    models = available_models()
    assert set(models) == {"hovernet-fluo", "hovernet-he"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in models.values())


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_weights_are_packaged_and_small(name):
    resource = builtin_weights(name)
    assert resource.is_file()
    assert len(resource.read_bytes()) <= 10 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(REAL_CHECK))
def test_builtin_model_segments_real_validation_images(name, no_network):
    source, prefix, min_dice = REAL_CHECK[name]
    ids = [i for i in SPLIT.read_text().split() if i.startswith(prefix)][:6]
    model = load_model(name)
    assert isinstance(model, SegmentationModel)
    assert model.name == name
    scores = []
    for sample_id in ids:
        folder = TRAIN / source / sample_id
        image = tifffile.imread(folder / "image.tif")
        truth = tifffile.imread(folder / "labels.tif")
        classes, inst = _predict(model, image)
        assert classes.shape == truth.shape
        assert inst is not None and inst.shape == classes.shape
        scores.append(dice(inst > 0, truth > 0))
    assert np.mean(scores) > min_dice, scores


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_model_matches_its_card(name):
    """The card states the classes and input channels the loaded model has."""
    card = (REPO / "src/napari_scribble_refine/weights" / f"{name}.md").read_text()
    stated = re.search(r"^\| classes \| (.+) \|$", card, re.MULTILINE)
    channels = re.search(r"^\| input channels \| (\d) ", card, re.MULTILINE)
    assert stated and channels, "the card needs '| classes |' and '| input channels |' rows"
    model = load_model(name)
    assert model.class_names == re.findall(r"`([^`]+)`", stated.group(1))
    assert model.in_channels == int(channels.group(1))


def test_he_model_has_types():
    model = load_model("hovernet-he")
    assert model.class_names == ["background", "other", "inflammatory", "epithelial", "spindle"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="hovernet-fluo") as info:
        load_model("no-such-model")
    assert "hovernet-he" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_model(missing)


def test_corrupt_safetensors_is_a_value_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_model(bad)


def test_foreign_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(ValueError, match="other.safetensors"):
        load_model(other)


def test_wrong_architecture_is_rejected(tmp_path):
    config = HoVerNetConfig.small(nr_types=None, in_channels=1)
    net = HoVerNet(config)
    path = save_hovernet_safetensors(net, tmp_path / "w.safetensors", ["background", "nucleus"])
    # Swap in weights of another shape under the same key.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    key = next(k for k in tensors if k.endswith("conv.weight"))
    tensors[key] = torch.zeros(7, 1, 1, 1)
    save_file(tensors, str(path), metadata=meta)
    shape = list(net.state_dict()[key].shape)
    with pytest.raises(ValueError, match="w.safetensors") as info:
        load_model(path)
    message = str(info.value)
    assert "1 shape mismatches" in message
    assert f"{key} [7, 1, 1, 1] (model: {shape})" in message


def test_own_safetensors_file_loads(tmp_path):
    net = HoVerNet(HoVerNetConfig.small(nr_types=None, in_channels=1))
    path = save_hovernet_safetensors(net, tmp_path / "mine.safetensors", ["background", "cell"])
    model = load_model(str(path))
    assert model.class_names == ["background", "cell"]
    assert model.name == "mine.safetensors"


def test_unsupported_extension(tmp_path):
    f = tmp_path / "weights.xyz"
    f.write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        load_model(f)


def test_torchscript_needs_allow_code(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    with pytest.raises(ValueError, match="allow_code=True"):
        load_model(path)
    with pytest.warns(UserWarning, match="TorchScript"):
        model = load_model(path, allow_code=True, head="0")
    assert model.n_classes == 2


def test_official_checkpoint_path_is_routed_to_hovernet_loader(tmp_path):
    net = HoVerNet(HoVerNetConfig.official("fast", nr_types=None))
    path = Path(tmp_path) / "official.tar"
    torch.save({"desc": net.state_dict()}, path)
    model = load_model(path)
    assert model.class_names[0] == "background" and model.in_channels == 3


@pytest.mark.parametrize("name", ["hovernet-fluo", "hovernet-he"])
def test_bfloat16_trunk_agrees_with_float32(name):
    generate = synthetic_fluorescence if name == "hovernet-fluo" else synthetic_he
    image = generate((128, 128), seed=11).image
    maps = {}
    for precision in ("float32", "bfloat16"):
        model = load_model(name, precision=precision)
        with torch.inference_mode():
            feats = model.features(image)
            assert all(v.dtype == torch.float32 for v in feats.values())
            maps[precision] = model.head(feats).argmax(1)[0].numpy()
    assert np.mean(maps["float32"] == maps["bfloat16"]) > 0.99
    assert len(np.unique(maps["float32"])) > 1


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match=r"precision must be one of .*got 'float16'"):
        load_model("hovernet-fluo", precision="float16")


def test_tiled_features_keep_the_trunks_channels_last_layout():
    image = synthetic_fluorescence((96, 80), seed=3).image
    model = load_model("hovernet-fluo")
    whole = RefineSession(model, image, RefineConfig(device="cpu")).features["np"]
    tiled = RefineSession(model, image, RefineConfig(device="cpu"), tile_size=48).features["np"]
    assert whole.is_contiguous(memory_format=torch.channels_last)
    assert tiled.is_contiguous(memory_format=torch.channels_last)  # the 1x1 head's fast path
