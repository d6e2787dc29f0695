"""HoVerNetModel: geometry, combined log-probabilities, head depth, classes, instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_hovernet_postprocess import d5_scene

from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig
from napari_scribble_refine.core.models.hovernet_adapter import (
    PANNUKE_TYPES,
    HoVerNetModel,
    default_class_names,
)
from napari_scribble_refine.core.models.hovernet_checkpoint import (
    load_hovernet_safetensors,
    save_hovernet_safetensors,
)
from napari_scribble_refine.core.models.hovernet_normalisation import prepare_image

# a valid-padded (official geometry) network small enough for quick tests
TINY_VALID = dict(
    mode="fast",
    padding="valid",
    in_channels=3,
    stem_channels=8,
    block_mid=(8, 8, 16, 16),
    block_out=(16, 16, 32, 32),
    block_units=(1, 1, 1, 1),
    decoder_channels=(16, 16, 8),
    dense_units=(2, 1),
    dense_bottleneck=8,
    dense_growth=8,
)


def randomise_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    return net.eval()


def small_model(nr_types=None, in_channels=1, **kwargs) -> HoVerNetModel:
    torch.manual_seed(0)
    net = randomise_bn(HoVerNet(HoVerNetConfig.small(nr_types, in_channels)))
    kwargs.setdefault("precision", "float32")  # exact comparisons with the plain network
    return HoVerNetModel(net, **kwargs)


def combine(np_logits: torch.Tensor, tp_logits: torch.Tensor | None) -> torch.Tensor:
    log_np = F.log_softmax(np_logits, 1)
    if tp_logits is None:
        return log_np
    return torch.cat([log_np[:, :1], log_np[:, 1:2] + F.log_softmax(tp_logits[:, 1:], 1)], 1)


@pytest.mark.parametrize("nr_types", [None, 4])
def test_same_padded_logits_align_with_image(nr_types):
    model = small_model(nr_types)
    rng = np.random.default_rng(1)
    image = rng.random((50, 70)).astype(np.float32) * 1000
    feats = model.features(image)
    keys = ["np", "hv"] if nr_types is None else ["np", "tp", "hv"]
    assert sorted(feats) == sorted(keys)
    for value in feats.values():
        assert value.shape[0] == 1 and value.shape[-2:] == (50, 70)
    logits = model.head(feats)
    assert logits.shape == (1, model.n_classes, 50, 70)
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(1, 50, 70), atol=1e-5, rtol=0)
    # the same numbers as the whole network on the reflect-padded image, cropped back
    x = prepare_image(image, model.normalisation)
    x = np.pad(x, ((0, 6), (0, 2)), mode="reflect")
    with torch.no_grad():
        out = model.network(torch.from_numpy(x)[None, None])
    expected = combine(out["np"], out.get("tp"))[..., :50, :70]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats["hv"], out["hv"][..., :50, :70], atol=1e-4, rtol=1e-4)


def test_valid_padded_geometry_matches_manual_padding():
    torch.manual_seed(0)
    net = randomise_bn(HoVerNet(HoVerNetConfig(nr_types=3, **TINY_VALID)))
    config = net.config
    assert (config.offset, config.min_size) == (16, 40)
    model = HoVerNetModel(net, channels_last=False, precision="float32")
    assert model.normalisation == {"kind": "uint8"}
    rng = np.random.default_rng(2)
    image = (rng.random((60, 52, 3)) * 255).astype(np.uint8)
    window = model.window
    assert config.output_size(window) >= 60  # a single window covers this image
    feats = model.features(image)
    assert all(v.shape[-2:] == (60, 52) for v in feats.values())
    x = np.pad(
        image.astype(np.float32),
        ((16, window - 60 - 16), (16, window - 52 - 16), (0, 0)),
        mode="reflect",
    )
    with torch.no_grad():
        out = net(torch.from_numpy(x).permute(2, 0, 1)[None])
    logits = model.head(feats)
    torch.testing.assert_close(logits, combine(out["np"], out["tp"])[..., :60, :52])
    torch.testing.assert_close(feats["hv"], out["hv"][..., :60, :52])


def test_valid_padded_tiles_follow_the_official_grid():
    torch.manual_seed(0)
    net = randomise_bn(HoVerNet(HoVerNetConfig(nr_types=None, **TINY_VALID)))
    model = HoVerNetModel(net, window=48, channels_last=False, precision="float32")  # step 16
    step = net.config.output_size(model.window)
    assert (model.window, step) == (48, 16)
    rng = np.random.default_rng(3)
    image = (rng.random((40, 37, 3)) * 255).astype(np.uint8)
    feats = model.features(image)
    assert feats["hv"].shape == (1, 2, 40, 37)
    padded = np.pad(image.astype(np.float32), ((16, 24), (16, 27), (0, 0)), mode="reflect")
    for y, x in [(0, 0), (16, 16), (32, 32)]:
        window = torch.from_numpy(padded[y : y + 48, x : x + 48]).permute(2, 0, 1)[None]
        with torch.no_grad():
            out = net(window)
        h, w = min(16, 40 - y), min(16, 37 - x)
        torch.testing.assert_close(
            feats["hv"][..., y : y + h, x : x + w], out["hv"][..., :h, :w], atol=1e-4, rtol=1e-4
        )


def test_channels_and_normalisation():
    grey = (np.arange(64 * 48).reshape(64, 48) % 251).astype(np.uint8)
    official = HoVerNetModel(HoVerNet(HoVerNetConfig(nr_types=None, **TINY_VALID)))
    x = official._input([official.normalise_image(grey)], normalised=True)
    assert x.shape == (1, 3, 64, 48)
    assert torch.equal(x[0, 0], x[0, 2]) and torch.equal(x[0, 0], torch.from_numpy(grey).float())
    small = small_model(None, in_channels=1)
    rgb = np.stack([grey, grey, grey], -1)
    with pytest.raises(ValueError, match="takes 1 channel"):
        small._input([rgb], normalised=False)
    # normalisations
    assert prepare_image(grey, {"kind": "uint8"}).max() == 250
    unit = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert prepare_image(unit, {"kind": "uint8"}).max() == pytest.approx(255)
    scaled = prepare_image(unit * 4000, {"kind": "percentile", "low": 1, "high": 99})
    assert np.percentile(scaled, 1) == pytest.approx(0, abs=1e-5)
    assert np.percentile(scaled, 99) == pytest.approx(1, abs=1e-5)
    assert prepare_image(unit * 7 + 3, {"kind": "minmax"}).max() == pytest.approx(1)
    with pytest.raises(ValueError, match="normalisation kind"):
        prepare_image(unit, {"kind": "zscore"})


@pytest.mark.parametrize("nr_types", [None, 3])
def test_head_depths_agree_and_gathers_are_pointwise(nr_types):
    image = np.random.default_rng(4).random((48, 40)).astype(np.float32)
    results = {}
    for n_layers in (1, 2, 3):
        model = small_model(nr_types, n_layers=n_layers)
        assert model.head_is_pointwise == (n_layers <= 2)
        assert model.head_halo == (0 if n_layers <= 2 else 1)
        feats = model.features(image)
        results[n_layers] = model.head(feats)
        if model.head_is_pointwise:
            ys, xs = np.array([0, 5, 47]), np.array([3, 39, 20])
            gathered = {k: v[0, :, ys, xs].T[..., None, None] for k, v in feats.items()}
            assert gathered["np"].shape[0] == 3
            torch.testing.assert_close(
                model.head(gathered)[..., 0, 0], results[n_layers][0, :, ys, xs].T
            )
    torch.testing.assert_close(results[1], results[2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[1], results[3], atol=1e-4, rtol=1e-4)
    assert small_model(nr_types, n_layers=3).features(image)["np"].shape[1] == 16
    with pytest.raises(ValueError, match="n_layers"):
        small_model(nr_types, n_layers=4)


def test_head_trains_np_and_tp_together():
    model = small_model(4)
    feats = model.features(np.random.default_rng(5).random((32, 32)).astype(np.float32))
    for p in model.head_module.parameters():
        p.requires_grad_(True)
    target = torch.randint(0, 4, (1, 32, 32))
    F.nll_loss(model.head(feats), target).backward()
    names = {n for n, p in model.head_module.named_parameters() if p.grad is not None}
    assert names == {"np.0.weight", "np.0.bias", "tp.0.weight", "tp.0.bias"}
    trunk = [p for n, p in model.network.named_parameters() if ".u0." not in n]
    assert all(p.grad is None for p in trunk)


@pytest.mark.parametrize("nr_types", [None, 4])
def test_head_state_round_trip_and_add_class(nr_types):
    model = small_model(nr_types)
    image = np.random.default_rng(6).random((40, 40)).astype(np.float32)
    feats = model.features(image)
    before = model.head(feats).detach()
    snapshot = model.head_state()
    with torch.no_grad():
        for p in model.head_module.parameters():
            p.add_(0.5)
    assert not torch.allclose(model.head(feats), before)
    model.load_head_state(snapshot)
    assert torch.equal(model.head(feats), before)

    n = model.n_classes
    model.add_class("mitosis", init_from=1)
    assert model.class_names[-1] == "mitosis" and model.n_classes == n + 1
    after = model.head(feats).detach()
    assert after.shape[1] == n + 1
    torch.testing.assert_close(after.exp().sum(1), torch.ones(1, 40, 40), atol=1e-5, rtol=0)
    torch.testing.assert_close(after[:, 1], after[:, n])  # the copy shares class 1's mass
    torch.testing.assert_close(after[:, 0], before[:, 0])  # background is unchanged
    grown = model.network.config
    assert (grown.nr_types if nr_types else grown.np_channels) == n + 1
    with pytest.raises(ValueError, match="already exists"):
        model.add_class("mitosis", init_from=0)

    model.load_head_state(snapshot)  # undo the new class exactly
    assert model.n_classes == n and torch.equal(model.head(feats), before)
    assert model.network.config == small_model(nr_types).network.config


def test_grown_untyped_model_saves_and_reloads(tmp_path):
    model = small_model(None)
    model.add_class("debris", init_from=0)
    path = save_hovernet_safetensors(
        model.network,
        tmp_path / "grown.safetensors",
        model.class_names,
        normalisation={"kind": "percentile"},
    )
    loaded = load_hovernet_safetensors(path)
    again = HoVerNetModel(loaded, precision="float32")
    assert again.class_names == ["background", "nucleus", "debris"]
    assert again.normalisation["kind"] == "percentile"
    image = np.random.default_rng(7).random((24, 24)).astype(np.float32)
    torch.testing.assert_close(
        again.head(again.features(image)), model.head(model.features(image)), atol=1e-4, rtol=0
    )


def test_class_names():
    with torch.device("meta"):
        pannuke = HoVerNet(mode="fast", nr_types=6)
        consep = HoVerNet(mode="original", nr_types=5)
        untyped = HoVerNet(mode="fast")
    assert default_class_names(pannuke) == ["background", *PANNUKE_TYPES]
    assert default_class_names(consep) == ["background", "type 1", "type 2", "type 3", "type 4"]
    assert default_class_names(untyped) == ["background", "nucleus"]
    with pytest.raises(ValueError, match="one name per channel"):
        small_model(4, class_names=["background", "a"])


def test_instances_from_np_probability_and_hv():
    prob, hv, types, owner = d5_scene()
    model = small_model(None)
    p = torch.from_numpy(prob)
    logits = torch.log(torch.stack([1 - p, p]))[None]
    labels = model.instances(None, logits, {"hv": torch.from_numpy(hv)[None]})
    assert labels.shape == (96, 96)
    assert len([i for i in np.unique(labels) if i]) == 4
    kinds = model.instance_types(labels, types.astype(int))
    assert sorted(kinds.values()) == [1, 2, 3, 4]


def test_instances_on_a_real_forward():
    model = small_model(4)
    image = np.random.default_rng(8).random((64, 64)).astype(np.float32)
    feats = model.features(image)
    logits = model.head(feats)
    class_map = logits.argmax(1)[0].numpy()
    labels = model.instances(class_map, logits, feats)
    assert labels.shape == (64, 64) and labels.dtype == np.int32
    # the network's own outputs, without the adapter: nucleus probability and HV maps
    from scipy import ndimage

    from napari_scribble_refine.core.hovernet_postprocess import hv_instances

    with torch.no_grad():
        out = model.network(torch.from_numpy(prepare_image(image, model.normalisation))[None, None])
    prob = torch.softmax(out["np"], 1)[0, 1].numpy()
    blobs, _ = ndimage.label(prob >= 0.5)
    sizes = np.bincount(blobs.ravel())
    sizes[0] = 0  # not a blob
    large = np.flatnonzero(sizes >= 10)  # the nucleus blobs the rule keeps
    assert large.size >= 3  # the random network still predicts several nuclei here
    np.testing.assert_array_equal(labels > 0, np.isin(blobs, large))
    for label in np.unique(labels[labels > 0]):  # an instance never spans two blobs
        assert np.unique(blobs[labels == label]).size == 1
    expected = hv_instances(prob, out["hv"][0].numpy(), keep_unmarked=True)
    np.testing.assert_array_equal(labels, expected)


def test_class_map_decides_nucleus_first_then_its_type():
    model = small_model(4)
    probs = torch.tensor([0.4, 0.15, 0.25, 0.2]).log()  # nucleus 0.6, spread over 3 types
    logits = probs[None, :, None, None].expand(1, 4, 2, 3)
    assert torch.equal(model.class_map(logits), torch.full((1, 2, 3), 2))
    assert int(logits.argmax(1).max()) == 0  # a plain argmax would call it background
    background = torch.tensor([0.55, 0.15, 0.2, 0.1]).log()[None, :, None, None]
    assert int(model.class_map(background)) == 0


def test_adding_a_class_leaves_the_built_in_prediction_unchanged():
    from napari_scribble_refine.core.config import RefineConfig
    from napari_scribble_refine.core.models.registry import load_model
    from napari_scribble_refine.core.session import RefineSession
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    image = synthetic_fluorescence((96, 96), seed=5).image
    session = RefineSession(load_model("hovernet-fluo"), image, RefineConfig(device="cpu"))
    before = session.predict()
    assert before.any()
    session.add_class("debris", init_from=1)  # splits every nucleus probability in two
    np.testing.assert_array_equal(session.predict(), before)
