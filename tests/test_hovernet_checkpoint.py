"""Loading official HoVer-Net checkpoints (reference c) and the plugin's safetensors files."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from _hovernet_fixtures import fixture_state_dict

from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig
from napari_scribble_refine.core.models.hovernet_checkpoint import (
    infer_hovernet_config,
    load_hovernet_checkpoint,
    load_hovernet_safetensors,
    normalise_hovernet_state_dict,
    save_hovernet_safetensors,
)

COUNTER = "num_batches_tracked"


def official_dict(mode: str, nr_types: int | None) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = HoVerNet(mode=mode, nr_types=nr_types)
    return fixture_state_dict(model)


def assert_weights_equal(model: HoVerNet, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_released_vqdang_tar_without_counters(tmp_path):
    """{'desc': plain dict}, no 'module.' prefix, no num_batches_tracked (668 entries)."""
    sd = official_dict("fast", 6)
    desc = {k: v for k, v in sd.items() if not k.endswith(COUNTER)}
    assert len(desc) == 668
    path = tmp_path / "hovernet_fast_pannuke_type_tf2pytorch.tar"
    torch.save({"desc": desc}, path)
    loaded = load_hovernet_checkpoint(path)
    assert (loaded.config.mode, loaded.config.nr_types) == ("fast", 6)
    assert loaded.metadata["counters"] == "absent"
    assert loaded.normalisation == {"kind": "uint8"}
    assert_weights_equal(loaded.model, sd)
    assert not loaded.model.training
    with torch.no_grad():
        out = loaded.model(torch.rand(1, 3, 96, 96) * 255)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "tp": (1, 6, 4, 4),
        "np": (1, 2, 4, 4),
        "hv": (1, 2, 4, 4),
    }


def test_trained_vqdang_tar_with_module_prefix_and_optimizer(tmp_path):
    """{'desc': DataParallel state dict, 'optimizer': ..., 'lr_scheduler': ...}."""
    sd = official_dict("original", 5)
    desc = OrderedDict((f"module.{k}", v) for k, v in sd.items())
    assert len(desc) == 798
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    scheduler = {"step_size": 25, "gamma": 0.1, "last_epoch": 3}
    path = tmp_path / "net_epoch=50.tar"
    torch.save({"desc": desc, "optimizer": optimizer, "lr_scheduler": scheduler}, path)
    loaded = load_hovernet_checkpoint(path)
    assert (loaded.config.mode, loaded.config.nr_types) == ("original", 5)
    assert loaded.metadata["prefix_stripped"] == "module."
    assert "optimizer" in loaded.metadata["container"]
    assert_weights_equal(loaded.model, sd)
    with torch.no_grad():
        out = loaded.model(torch.rand(1, 3, 198, 198) * 255)
    assert [tuple(v.shape) for v in out.values()] == [(1, 5, 8, 8), (1, 2, 8, 8), (1, 2, 8, 8)]


@pytest.mark.parametrize("counters", [True, False])
def test_tiatoolbox_plain_pth(tmp_path, counters):
    """A plain state dict (no 'desc', no prefix), untyped fast model: 632 / 529 entries."""
    sd = official_dict("fast", None)
    plain = sd if counters else {k: v for k, v in sd.items() if not k.endswith(COUNTER)}
    assert len(plain) == (632 if counters else 529)
    path = tmp_path / "hovernet_fast-kumar.pth"
    torch.save(plain, path)
    loaded = load_hovernet_checkpoint(path)
    assert (loaded.config.mode, loaded.config.nr_types) == ("fast", None)
    assert list(loaded.model.decoder) == ["np", "hv"]
    assert_weights_equal(loaded.model, sd)


def test_state_dict_with_version_metadata_and_no_counters(tmp_path):
    """An OrderedDict carrying state_dict() metadata, counters removed: still loads (c.1)."""
    with torch.device("meta"):
        model = HoVerNet(mode="original", nr_types=None)
    sd = model.to_empty(device="cpu").state_dict()
    sd.update(fixture_state_dict(model))
    for key in [k for k in sd if k.endswith(COUNTER)]:
        del sd[key]
    assert hasattr(sd, "_metadata")
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    loaded = load_hovernet_checkpoint(path)
    assert loaded.config == HoVerNetConfig.official("original", None)


def test_normalise_and_infer():
    sd = official_dict("fast", 6)
    wrapped = {"desc": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}}
    state, notes = normalise_hovernet_state_dict(wrapped)
    assert type(state) is dict and list(state) == list(sd)
    assert notes["prefix_stripped"] == "module." and notes["counters"] == "present"
    assert infer_hovernet_config(state) == HoVerNetConfig.official("fast", 6)
    # a prefix carried by only some keys is left alone
    partial = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}
    state, notes = normalise_hovernet_state_dict(partial)
    assert notes["prefix_stripped"] == "" and list(state) == list(partial)


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "broken.tar"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"broken\.tar is not a readable PyTorch checkpoint"):
        load_hovernet_checkpoint(path)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth"):
        load_hovernet_checkpoint(text)
    with pytest.raises(FileNotFoundError):
        load_hovernet_checkpoint(tmp_path / "missing.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"desc": _Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth: refused .* can run code"):
        load_hovernet_checkpoint(path)


def test_another_network_names_its_keys(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    path = tmp_path / "resnet.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet\.pth.*not a HoVer-Net.*keys found: 0\.weight"):
        load_hovernet_checkpoint(path)
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_hovernet_checkpoint(path)


def test_fourth_decoder_branch_is_rejected(tmp_path):
    """HoVer-Net+ has a fourth decoder branch 'ls': a different model."""
    sd = official_dict("fast", 6)
    ls = {k.replace("decoder.np.", "decoder.ls."): v for k, v in sd.items() if ".np." in k}
    path = tmp_path / "hovernetplus.pth"
    torch.save({**sd, **ls}, path)
    with pytest.raises(ValueError) as info:
        load_hovernet_checkpoint(path)
    message = str(info.value)
    assert "hovernetplus.pth" in message
    assert "'ls'" in message
    assert f"{len(ls)} unexpected keys: decoder.ls.u3.conva.weight" in message
    assert "mode='fast', nr_types=6" in message


def test_missing_keys_and_wrong_mode_are_listed(tmp_path):
    sd = official_dict("fast", None)
    dropped = [k for k in sd if k.startswith("d3.units.2.")]
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in sd.items() if k not in dropped}, path)
    with pytest.raises(ValueError, match=rf"{len(dropped)} missing keys: d3\.units\.2\."):
        load_hovernet_checkpoint(path)

    path = tmp_path / "fast.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as info:
        load_hovernet_checkpoint(path, mode="original")
    message = str(info.value)
    assert "mode='original', nr_types=None" in message
    assert "30 shape mismatches" in message  # 15 k x k decoder weights in each of np, hv
    assert "decoder.np.u3.conva.weight [256, 1024, 3, 3] (model: [256, 1024, 5, 5])" in message


def test_counters_must_be_all_or_none(tmp_path):
    sd = official_dict("fast", None)
    counters = [k for k in sd if k.endswith(COUNTER)]
    path = tmp_path / "half.pth"
    torch.save({k: v for k, v in sd.items() if k not in counters[:5]}, path)
    with pytest.raises(ValueError, match="all present or all absent"):
        load_hovernet_checkpoint(path)


# --------------------------------------------------------------------------- safetensors
@pytest.mark.parametrize(("nr_types", "in_channels"), [(None, 1), (4, 3)])
def test_safetensors_round_trip(tmp_path, nr_types, in_channels):
    torch.manual_seed(0)
    model = HoVerNet(HoVerNetConfig.small(nr_types=nr_types, in_channels=in_channels)).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    names = ["background", "nucleus"] if nr_types is None else ["background", "a", "b", "c"]
    norm = {"kind": "percentile", "low": 1.0, "high": 99.8}
    path = save_hovernet_safetensors(
        model.to(memory_format=torch.channels_last),
        tmp_path / "m.safetensors",
        names,
        {"seed": 3, "trained_on": "synthetic"},
        normalisation=norm,
    )
    loaded = load_hovernet_safetensors(path)
    assert loaded.config == model.config
    assert loaded.class_names == names
    assert loaded.normalisation == norm
    assert loaded.metadata["seed"] == "3" and loaded.metadata["trained_on"] == "synthetic"
    assert_weights_equal(loaded.model, {k: v.contiguous() for k, v in model.state_dict().items()})
    x = torch.rand(1, in_channels, 32, 48)
    with torch.no_grad():
        a, b = model.to(memory_format=torch.contiguous_format)(x), loaded.model(x)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_safetensors_errors(tmp_path):
    model = HoVerNet(HoVerNetConfig.small())
    with pytest.raises(ValueError, match="reserved"):
        save_hovernet_safetensors(model, tmp_path / "x.safetensors", ["bg", "n"], {"config": 1})
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a napari-scribble-refine HoVer-Net file"):
        load_hovernet_safetensors(foreign)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"broken\.safetensors"):
        load_hovernet_safetensors(broken)
    # weights that do not fit the stored configuration
    path = save_hovernet_safetensors(model, tmp_path / "ok.safetensors", ["background", "nucleus"])
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors.pop("conv_bot.weight")
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"1 missing keys: conv_bot\.weight"):
        load_hovernet_safetensors(tmp_path / "bad.safetensors")


def test_a_header_claiming_huge_layers_is_refused_before_allocating_them(tmp_path):
    """A small file whose metadata claims layers of terabytes: refused from the shapes alone.

    Built for real, the claimed network would need about 4 TB (the allocator refuses at
    once with a RuntimeError), so only a check made before building it passes this test.
    """
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    model = HoVerNet(HoVerNetConfig.small())
    path = save_hovernet_safetensors(model, tmp_path / "ok.safetensors", ["background", "n"])
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in list(f.keys())[:3]}
    claim = json.loads(meta["config"])
    claim["stem_channels"] = 1_000_000  # stem conv 1e6 x 1 x k x k, then 1e6-wide blocks
    claim["block_mid"] = [1_000_000] * len(claim["block_mid"])
    meta["config"] = json.dumps(claim)
    liar = tmp_path / "liar.safetensors"
    save_file(tensors, str(liar), metadata=meta)
    assert liar.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"liar\.safetensors: the weights do not fit HoVer-Net"):
        load_hovernet_safetensors(liar)
