"""TorchModuleModel: splitting any nn.Module into a cached trunk and a tunable head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_nets import NoClassAxisNet, SkipHeadNet, TinyUNet, disks_scene
from torch import nn

from napari_scribble_refine.core.models._prepare import normalise_array, pad_to_multiple
from napari_scribble_refine.core.models.module import TorchModuleModel

CLASSES2 = ["background", "nucleus"]


def _image(size: int = 45) -> np.ndarray:
    image, _ = disks_scene(np.random.default_rng(0), size=size, n_bright=2, radius=(4, 6))
    return image


def _reference_logits(model: TorchModuleModel, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(model.normalise_image(image))[None, None]
    with torch.no_grad():
        return model.network(pad_to_multiple(x, model.size_multiple))[
            ..., : x.shape[-2], : x.shape[-1]
        ]


def test_default_head_is_the_final_pointwise_layer(unet2):
    model = TorchModuleModel(unet2, CLASSES2, size_multiple=2)
    assert model.head_names == ["final"]
    assert model.trunk_is_cached and model.head_is_pointwise and model.head_halo == 0
    assert all(not p.requires_grad for p in model.network.parameters())
    assert not model.network.training
    assert [id(p) for p in model.head_module.parameters()] == [
        id(unet2.final.weight),
        id(unet2.final.bias),
    ]


def test_features_and_head_reproduce_the_network_on_odd_sizes(unet2):
    model = TorchModuleModel(unet2, CLASSES2, size_multiple=2)
    image = _image(45)[:, :37]
    feats = model.features(image)
    assert set(feats) == {"trunk"}
    assert feats["trunk"].shape == (1, 8, 45, 37)
    with torch.no_grad():
        logits = model.head(feats)
    torch.testing.assert_close(logits, _reference_logits(model, image), rtol=1e-5, atol=1e-5)


def test_pointwise_head_on_gathered_pixels(unet2):
    model = TorchModuleModel(unet2, CLASSES2, size_multiple=2)
    image = _image(32)
    feats = model.features(image)["trunk"]
    ys, xs = np.array([1, 5, 20]), np.array([3, 9, 30])
    gathered = feats[0, :, ys, xs].t()[:, :, None, None]  # [P, F, 1, 1]
    with torch.no_grad():
        points = model.head({"trunk": gathered})[:, :, 0, 0]
        full = model.head({"trunk": feats})[0, :, ys, xs].t()
    torch.testing.assert_close(points, full)


def test_n_layers_counts_parameterised_leaves_in_execution_order(unet2):
    model = TorchModuleModel(unet2, CLASSES2, n_layers=3, size_multiple=2)
    assert model.head_names == ["dec.0", "dec.1", "final"]
    assert model.trunk_is_cached and not model.head_is_pointwise
    assert model.head_halo >= 1


def test_named_container_head(unet2):
    model = TorchModuleModel(unet2, CLASSES2, head=["dec", "final"], size_multiple=2)
    assert model.trunk_is_cached and not model.head_is_pointwise
    image = _image(40)
    with torch.no_grad():
        logits = model.head(model.features(image))
    # the 3x3 conv sees zeros beyond the cropped feature map at the bottom/right edge only
    torch.testing.assert_close(
        logits[..., :-2, :-2], _reference_logits(model, image)[..., :-2, :-2], rtol=1e-5, atol=1e-5
    )


def test_skip_connection_into_head_falls_back_to_opaque(unet2):
    skip = TorchModuleModel(unet2, CLASSES2, head=["enc1", "final"], size_multiple=2)
    assert not skip.trunk_is_cached and "sequence" in skip.split_note
    model = TorchModuleModel(unet2, CLASSES2, head=["up", "final"], size_multiple=2)
    assert not model.trunk_is_cached and "resolution" in model.split_note
    image = _image(36)
    feats = model.features(image)
    assert set(feats) == {"input"}
    with torch.no_grad():
        torch.testing.assert_close(model.head(feats), _reference_logits(model, image))
    names = {n for n, _ in model.head_module.named_parameters()}
    assert names == {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_functional_skip_between_head_layers_is_opaque():
    model = TorchModuleModel(SkipHeadNet().eval(), CLASSES2, n_layers=2)
    assert model.head_names == ["mid", "final"]
    assert not model.trunk_is_cached
    single = TorchModuleModel(SkipHeadNet().eval(), CLASSES2, n_layers=1)
    assert single.trunk_is_cached and single.head_is_pointwise


def test_unknown_head_name_lists_module_names(unet2):
    with pytest.raises(ValueError, match="no module.*'decoder.final'.*module names:.*'enc1'"):
        TorchModuleModel(unet2, CLASSES2, head="decoder.final", size_multiple=2)


def test_head_and_n_layers_are_exclusive(unet2):
    with pytest.raises(ValueError, match="either"):
        TorchModuleModel(unet2, CLASSES2, head="final", n_layers=2, size_multiple=2)


def test_too_many_layers(unet2):
    with pytest.raises(ValueError, match="n_layers=99"):
        TorchModuleModel(unet2, CLASSES2, n_layers=99, size_multiple=2)


def test_class_count_must_match_output(unet2):
    with pytest.raises(ValueError, match="returns 2 channels but 3 class names"):
        TorchModuleModel(unet2, ["a", "b", "c"], size_multiple=2)


def test_output_without_class_axis_is_rejected():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        TorchModuleModel(NoClassAxisNet(), CLASSES2)


def test_output_of_other_size_is_rejected():
    net = nn.Conv2d(1, 2, 3)  # valid convolution: output 2 px smaller
    with pytest.raises(ValueError, match="input's size"):
        TorchModuleModel(net, CLASSES2)


def test_network_failing_on_probe_is_reported():
    net = TinyUNet(n_classes=2).eval()
    with pytest.raises(ValueError, match="failed on a probe input"):
        TorchModuleModel(net, CLASSES2, in_channels=3)  # the first conv takes 1 channel


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        TorchModuleModel(lambda x: x, CLASSES2)  # type: ignore[arg-type]


def test_size_multiple_pads_and_crops():
    class NeedsMultipleOf8(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.final = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0, "needs multiples of 8"
            return self.final(torch.relu(self.conv(x)))

    model = TorchModuleModel(NeedsMultipleOf8().eval(), CLASSES2, size_multiple=8)
    feats = model.features(_image(45)[:, :41])
    assert feats["trunk"].shape[-2:] == (45, 41)
    assert model.head(feats).shape == (1, 2, 45, 41)


@pytest.mark.parametrize("normalise", ["percentile", "minmax", "none", None])
def test_normalise_options(unet2, normalise):
    model = TorchModuleModel(unet2, CLASSES2, size_multiple=2, normalise=normalise)
    image = _image(32) * 100
    scaled = model.normalise_image(image)
    assert scaled.dtype == np.float32 and scaled.shape == image.shape
    if normalise == "minmax":
        assert scaled.min() == pytest.approx(0) and scaled.max() == pytest.approx(1)
    if normalise in ("none", None):
        np.testing.assert_allclose(scaled, image.astype(np.float32))


def test_normalise_callable(unet2):
    model = TorchModuleModel(unet2, CLASSES2, size_multiple=2, normalise=lambda a: a / 2)
    image = _image(32)
    np.testing.assert_allclose(model.normalise_image(image), image / 2, rtol=1e-6)


def test_bad_normalise(unet2):
    with pytest.raises(ValueError, match="normalise"):
        TorchModuleModel(unet2, CLASSES2, size_multiple=2, normalise="zscore-ish")


def test_normalise_never_modifies_input():
    image = _image(32)
    image.setflags(write=False)
    before = image.copy()
    normalise_array(image, lambda a: a.__imul__(2))
    np.testing.assert_array_equal(image, before)


def test_add_class_grows_the_final_conv_and_state_round_trips(unet2):
    model = TorchModuleModel(unet2, CLASSES2, size_multiple=2)
    state = model.head_state()
    model.add_class("dim", init_from=1)
    assert model.class_names == ["background", "nucleus", "dim"]
    assert unet2.final.weight.shape == (3, 8, 1, 1) and unet2.final.out_channels == 3
    torch.testing.assert_close(unet2.final.weight[2], unet2.final.weight[1])
    model.load_head_state(state)
    assert unet2.final.weight.shape == (2, 8, 1, 1)
    assert model.class_names == CLASSES2


def test_add_class_to_opaque_model(unet2):
    model = TorchModuleModel(unet2, CLASSES2, head=["up", "final"], size_multiple=2)
    model.add_class("dim", init_from=0)
    with torch.no_grad():
        out = model.head(model.features(_image(32)))
    assert out.shape[1] == 3
    torch.testing.assert_close(out[:, 2], out[:, 0])


def test_rgb_model_takes_rgb_images():
    net = TinyUNet(in_channels=3, n_classes=2).eval()
    model = TorchModuleModel(net, CLASSES2, in_channels=3, size_multiple=2)
    rgb = np.repeat(_image(32)[..., None], 3, axis=-1)
    assert model.features(rgb)["trunk"].shape[-2:] == (32, 32)
    assert model.features(_image(32))["trunk"].shape[-2:] == (32, 32)  # grey repeated


@pytest.mark.parametrize("factor", [1e300, 1e-300])
@pytest.mark.parametrize("kind", ["percentile", "minmax"])
def test_float64_extremes_scale_like_the_unscaled_image(kind, factor):
    image = np.random.default_rng(3).random((32, 32))
    expected = normalise_array(image, kind)
    got = normalise_array(image * factor, kind)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=1e-5)
