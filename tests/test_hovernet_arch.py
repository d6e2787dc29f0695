"""HoVer-Net architecture against the checkpoint-compatibility reference (hovernet.md)."""

from __future__ import annotations

import pytest
import torch
from _hovernet_fixtures import fixture_input, fixture_model, fixture_state_dict, read_keys

from napari_scribble_refine.core.models.hovernet import (
    HoVerNet,
    HoVerNetConfig,
    TFSamePad2d,
    count_parameters,
)

CONFIGS = {"fast6": ("fast", 6), "original5": ("original", 5)}


def entries(model: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [
        (k, list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]


def meta_model(mode: str, nr_types: int | None) -> HoVerNet:
    with torch.device("meta"):
        return HoVerNet(mode=mode, nr_types=nr_types).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_equals_key_file(name):
    mode, nr_types = CONFIGS[name]
    expected = read_keys(name)
    assert len(expected) == 798
    assert entries(meta_model(mode, nr_types)) == expected


@pytest.mark.parametrize("name", list(CONFIGS))
def test_untyped_state_dict_is_key_file_without_tp(name):
    mode, _ = CONFIGS[name]
    expected = [e for e in read_keys(name) if not e[0].startswith("decoder.tp.")]
    assert len(expected) == 632
    assert entries(meta_model(mode, None)) == expected


def test_module_names_contain_slashes():
    model = meta_model("fast", None)
    names = dict(model.named_modules())
    assert "conv0./" in names and "d0.units.1.preact/bn" in names
    assert list(model.decoder.keys()) == ["np", "hv"]
    assert list(meta_model("fast", 6).decoder.keys()) == ["tp", "np", "hv"]
    assert [n for n, _ in model.decoder["np"].named_children()] == ["u3", "u2", "u1", "u0"]
    assert "upsample2x.unpool_mat" in model.state_dict()


def test_tf_same_padding_rule():
    pad = TFSamePad2d(3, 2)
    x = torch.zeros(1, 1, 8, 8)
    y = pad(torch.nn.functional.pad(x, (0, 0, 0, 0), value=0) + 1)
    # even size, stride 2: 0 before and 1 after, on both axes (computed from the height)
    assert y.shape[-2:] == (9, 9)
    assert y[0, 0, 0, 0] == 1 and y[0, 0, -1, -1] == 0 and y[0, 0, 0, -1] == 0
    assert TFSamePad2d(3, 2)(torch.ones(1, 1, 7, 7)).shape[-2:] == (9, 9)  # odd: 1 + 1
    assert TFSamePad2d(7, 1)(torch.ones(1, 1, 5, 5)).shape[-2:] == (11, 11)
    # the stride-2 convs keep an explicit pad module; stride-1 "same" convs pad themselves
    unit0 = dict(meta_model("fast", None).d1.units[0].named_children())
    assert isinstance(unit0["conv2/pad"], TFSamePad2d) and unit0["conv2"].padding == (0, 0)


@pytest.mark.parametrize(
    ("config", "nr_types", "checksum"),
    [
        ("fast", 6, 81552.65189),
        ("original", 5, 81553.60316),
        ("fast", None, 69505.39616),
        ("original", None, 69505.80727),
    ],
)
def test_fixture_weights_checksums(config, nr_types, checksum):
    sd = fixture_state_dict(meta_model(config, nr_types))
    total = sum(v.double().sum().item() for v in sd.values() if v.dtype == torch.float32)
    assert total == pytest.approx(checksum, abs=1e-4)
    flat = {k: v.flatten() for k, v in sd.items()}
    torch.testing.assert_close(
        flat["conv0./.weight"][:3], torch.tensor([-0.142857, 0.130857, 0.118714]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        flat["conv0.bn.running_var"][:3], torch.tensor([0.8535, 0.811, 0.7685]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        flat["decoder.np.u0.conv.bias"], torch.tensor([-0.0969, 0.0947]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        flat["d3.blk_bna.bn.weight"][:3], torch.tensor([1.20325, 1.182, 1.16075]), atol=1e-6, rtol=0
    )
    # a plain dict without the counters loads with strict=True (reference c.1)
    plain = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    meta_model(config, nr_types).load_state_dict(plain, strict=True, assign=True)


# Reference f.3: (shape, mean, std, per-channel means, values at 5 positions)
F3 = {
    ("fast", 6): {
        "size": 256,
        "input": (25112019.48, {(0, 0, 0): 126.545, (2, 255, 255): 55.7966, (1, 10, 20): 62.7945}),
        "positions": [(0, 0, 0), (1, 0, 163), (0, 82, 82), ("C-1", 163, 0), (1, 37, 153)],
        "tp": (
            (1, 6, 164, 164),
            -0.0438737,
            0.162551,
            [0.176654, 0.103699, -0.102785, -0.0590207, -0.307343, -0.0744465],
            [0.219928, -0.0230073, 0.136313, -0.0249421, 0.0700006],
        ),
        "np": (
            (1, 2, 164, 164),
            -0.0910565,
            0.0847596,
            [-0.147216, -0.0348968],
            [-0.0772552, 0.0062924, -0.155894, 0.0345958, 0.0445852],
        ),
        "hv": (
            (1, 2, 164, 164),
            0.303161,
            0.106089,
            [0.40094, 0.205383],
            [0.353663, 0.126099, 0.438361, 0.162873, 0.138544],
        ),
    },
    ("original", 5): {
        "size": 270,
        "input": (27926371.40, {(0, 0, 0): 126.545, (2, 269, 269): 157.257, (1, 10, 20): 234.585}),
        "positions": [(0, 0, 0), (1, 0, 79), (0, 40, 40), ("C-1", 79, 0), (1, 37, 69)],
        "tp": (
            (1, 5, 80, 80),
            -0.054172,
            0.142123,
            [-0.0887967, 0.0581196, -0.0124359, -0.145597, -0.0821499],
            [-0.127089, 0.140918, 0.1248, -0.194447, 0.175874],
        ),
        "np": (
            (1, 2, 80, 80),
            0.0652,
            0.0840128,
            [0.0407155, 0.0896845],
            [0.0075322, 0.097301, 0.121286, -0.0445514, 0.0457901],
        ),
        "hv": (
            (1, 2, 80, 80),
            0.0718506,
            0.114472,
            [0.0770551, 0.0666461],
            [-0.153988, -0.0258855, -0.0169022, 0.346673, 0.0798767],
        ),
    },
}


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("config", list(F3))
def test_fixture_outputs_match_official(config, two_threads):
    """One full-size forward per configuration (a few seconds each on a CPU)."""
    mode, nr_types = config
    expected = F3[config]
    model = fixture_model(mode, nr_types)
    x = fixture_input(expected["size"])
    total, spots = expected["input"]
    assert x.double().sum().item() == pytest.approx(total, abs=0.05)
    for (c, i, j), value in spots.items():
        assert x[0, c, i, j].item() == pytest.approx(value, abs=1e-3)
    with torch.no_grad():
        out = model(x)
    assert list(out) == ["tp", "np", "hv"]
    for key in ("tp", "np", "hv"):
        shape, mean, std, channel_means, values = expected[key]
        y = out[key]
        assert tuple(y.shape) == shape
        y64 = y.double()
        assert y64.mean().item() == pytest.approx(mean, abs=1e-4)
        assert y64.std().item() == pytest.approx(std, abs=1e-4)
        assert y64.mean(dim=(0, 2, 3)).tolist() == pytest.approx(channel_means, abs=1e-4)
        for (c, i, j), value in zip(expected["positions"], values, strict=True):
            c = y.shape[1] - 1 if c == "C-1" else c
            assert y[0, c, i, j].item() == pytest.approx(value, abs=1e-4), (key, c, i, j)


@pytest.mark.parametrize(
    ("mode", "nr_types", "shape", "out"),
    [
        ("fast", 6, (1, 3, 256, 256), (164, 164)),
        ("fast", None, (1, 3, 256, 256), (164, 164)),
        ("fast", None, (1, 3, 96, 96), (4, 4)),
        ("fast", None, (1, 3, 264, 264), (172, 172)),
        ("fast", None, (1, 3, 512, 512), (420, 420)),
        ("fast", None, (1, 3, 256, 320), (164, 228)),
        ("fast", None, (2, 3, 256, 256), (164, 164)),
        ("original", 5, (1, 3, 270, 270), (80, 80)),
        ("original", None, (1, 3, 198, 198), (8, 8)),
        ("original", None, (1, 3, 262, 262), (72, 72)),
        ("original", None, (1, 3, 270, 278), (80, 88)),
        ("original", None, (1, 3, 526, 270), (336, 80)),
    ],
)
def test_output_shapes_e2(mode, nr_types, shape, out):
    model = meta_model(mode, nr_types)
    result = model(torch.empty(shape, device="meta"))
    expected_keys = ["tp", "np", "hv"] if nr_types else ["np", "hv"]
    assert list(result) == expected_keys
    for key, y in result.items():
        channels = nr_types if key == "tp" else 2
        assert tuple(y.shape) == (shape[0], channels, *out)
    assert model.config.output_size(shape[2]) == out[0]


def test_intermediate_shapes_a10():
    model = meta_model("fast", 6)
    shapes = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))
        )
        for name in ["conv0", "d0", "d1", "d2", "d3", "conv_bot", "decoder.np.u3", "decoder.np.u2"]
    ]
    model(torch.empty(1, 3, 256, 256, device="meta"))
    for h in hooks:
        h.remove()
    assert shapes == {
        "conv0": (64, 256, 256),
        "d0": (256, 256, 256),
        "d1": (512, 128, 128),
        "d2": (1024, 64, 64),
        "d3": (2048, 32, 32),
        "conv_bot": (1024, 32, 32),
        "decoder.np.u3": (512, 46, 46),
        "decoder.np.u2": (256, 82, 82),
    }


@pytest.mark.parametrize(
    ("mode", "size", "rule"),
    [
        ("fast", 250, "multiples of 8 and >= 96"),
        ("fast", 88, "multiples of 8 and >= 96"),
        ("original", 272, r"= 6 \(mod 8\) and >= 198"),
        ("original", 268, r"= 6 \(mod 8\) and >= 198"),
        ("original", 190, r"= 6 \(mod 8\) and >= 198"),
    ],
)
def test_invalid_sizes_name_the_rule(mode, size, rule):
    model = meta_model(mode, None)
    with pytest.raises(ValueError, match=rule):
        model(torch.empty(1, 3, size, size, device="meta"))
    ok = 256 if mode == "fast" else 270
    with pytest.raises(ValueError, match=rule):
        model(torch.empty(1, 3, ok, size, device="meta"))


def test_valid_size_rules():
    fast, original = HoVerNetConfig.official("fast"), HoVerNetConfig.official("original")
    assert [s for s in range(60, 331) if fast.is_valid_size(s)] == list(range(96, 329, 8))
    assert [s for s in range(150, 421) if original.is_valid_size(s)] == list(range(198, 415, 8))
    assert (fast.offset, fast.shrink, original.offset, original.shrink) == (46, 92, 95, 190)
    assert fast.valid_size_at_least(250) == 256 and original.valid_size_at_least(100) == 198
    assert original.valid_size_at_least(271) == 278


def test_wrong_channel_count_is_reported():
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        meta_model("fast", None)(torch.empty(1, 1, 256, 256, device="meta"))


def test_small_preset_same_geometry_and_size():
    for nr_types, in_channels in [(None, 1), (4, 3)]:
        config = HoVerNetConfig.small(nr_types=nr_types, in_channels=in_channels)
        model = HoVerNet(config).eval()
        assert count_parameters(model) <= 3_000_000
        x = torch.rand(2, in_channels, 64, 40)
        with torch.no_grad():
            out = model(x)
        assert list(out) == list(config.branches)
        for key, y in out.items():
            assert y.shape[-2:] == (64, 40), key
        with pytest.raises(ValueError, match="multiples of 8"):
            model(torch.rand(1, in_channels, 60, 64))


def test_config_round_trip_and_validation():
    config = HoVerNetConfig.small(nr_types=4, in_channels=3)
    assert HoVerNetConfig.from_dict(config.to_dict()) == config
    import json

    assert HoVerNetConfig.from_dict(json.loads(config.to_json())) == config
    with pytest.raises(ValueError, match="mode"):
        HoVerNetConfig(mode="slow")
    with pytest.raises(ValueError, match="Unknown HoVerNetConfig field"):
        HoVerNetConfig.from_dict({"mode": "fast", "widths": 3})
    assert HoVerNetConfig.official("original", 5) == HoVerNetConfig(mode="original", nr_types=5)
