"""What the head trains on and its loss (``core/objective.py``), against hand computations.

Small untrained networks give the three geometries: a point-wise head on cached features, a
spatial head (a 3x3 convolution, halo 1) on cached features, and an opaque model whose head
cannot be split off. Expected batches are cut from the features by hand; expected losses and
gradients are worked out from the logits with the formulas written here in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_nets import SkipHeadNet
from torch import nn

from napari_scribble_refine.core import objective
from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.models.module import TorchModuleModel
from napari_scribble_refine.core.objective import (
    IGNORE,
    Anchored,
    Batch,
    build_batches,
    keep_batch,
    loss_and_gradients,
    pixel_weights,
    scribble_targets,
)

CLASSES = ["background", "a", "b"]


def _pointwise() -> TorchModuleModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    model = TorchModuleModel(net, CLASSES)
    assert model.trunk_is_cached and model.head_is_pointwise
    return model


def _spatial() -> TorchModuleModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 3, 1),
    )  # fmt: skip
    model = TorchModuleModel(net, CLASSES, n_layers=2)
    assert model.trunk_is_cached and not model.head_is_pointwise and model.head_halo == 1
    return model


def _opaque() -> TorchModuleModel:
    torch.manual_seed(0)
    model = TorchModuleModel(SkipHeadNet(n_classes=3), CLASSES, n_layers=2)
    assert not model.trunk_is_cached
    return model


def _trainable(model: TorchModuleModel) -> None:
    """Let the head's parameters take gradients, as a refinement does."""
    for p in model.head_module.parameters():
        p.requires_grad_(True)


def _features(key: str, shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    return {key: torch.randn(shape, generator=torch.Generator().manual_seed(seed))}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Along axis 0, in float64."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=0, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=0, keepdims=True))


def _zero_anchor(model: TorchModuleModel) -> dict[str, torch.Tensor]:
    """A head of zeros: every logit 0, so its log-probabilities are all -log(C)."""
    return {n: torch.zeros_like(p) for n, p in model.head_module.named_parameters()}


def _params(model: TorchModuleModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.head_module.named_parameters()}


def _assert_params(model: TorchModuleModel, expected: dict[str, torch.Tensor]) -> None:
    for name, p in model.head_module.named_parameters():
        assert torch.equal(p.detach(), expected[name]), name


# --- targets and weights --------------------------------------------------------------------


def test_scribble_targets_shift_labels_down_by_one_with_ignore_for_unscribbled():
    targets = scribble_targets(np.array([[0, 1], [3, 2]], np.int32))
    assert IGNORE == -1
    assert targets.dtype == np.int64
    np.testing.assert_array_equal(targets, [[-1, 0], [2, 1]])


def test_pixel_weights_plain_weighted_mean_discounts_grown_pixels():
    used = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 0]])
    strokes = np.array([[1, 1, 0, 0, 0, 0, 2, 2, 0]])  # four grown pixels of class 1
    w = pixel_weights(used, strokes, RefineConfig(class_balanced=False, grown_weight=0.25))
    assert w.dtype == np.float32
    # weights 1, 1, 0.25 x 4, 1, 1 sum to 5
    np.testing.assert_allclose(w, [[0.2, 0.2, 0.05, 0.05, 0.05, 0.05, 0.2, 0.2, 0]], rtol=1e-6)


def test_pixel_weights_balanced_give_each_class_an_equal_share():
    used = np.array([[1, 2, 2, 3, 3, 3, 3, 0]])
    w = pixel_weights(used, used, RefineConfig(class_balanced=True, grown_weight=0.5))
    third = 1 / 3
    np.testing.assert_allclose(
        w, [[third, third / 2, third / 2, third / 4, third / 4, third / 4, third / 4, 0]], rtol=1e-6
    )


def test_pixel_weights_balanced_with_a_weightless_class_renormalise_the_rest():
    used = np.array([[1, 1, 1, 2, 2]])
    strokes = np.array([[1, 1, 1, 0, 0]])  # class 2 is all grown and grown pixels weigh 0
    w = pixel_weights(used, strokes, RefineConfig(class_balanced=True, grown_weight=0.0))
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w, [[1 / 3, 1 / 3, 1 / 3, 0, 0]], rtol=1e-6)


def test_pixel_weights_of_nothing_scribbled_are_zero():
    used = np.zeros((3, 4), np.int32)
    w = pixel_weights(used, used, RefineConfig())
    assert w.dtype == np.float32 and not w.any()


# --- point-wise heads -----------------------------------------------------------------------


def _scribbled_targets() -> tuple[np.ndarray, list[tuple[int, int, int]], list[int]]:
    targets = np.full((2, 5, 6), IGNORE, np.int64)
    where = [(0, 0, 4), (0, 3, 1), (1, 2, 2), (1, 4, 5), (1, 4, 0)]
    labels = [2, 0, 1, 1, 0]
    for (z, y, x), c in zip(where, labels, strict=True):
        targets[z, y, x] = c
    return targets, where, labels


def test_pointwise_batch_gathers_the_scribbled_pixels_in_raster_order():
    model = _pointwise()
    features = _features("trunk", (2, 4, 5, 6))
    targets, where, labels = _scribbled_targets()
    weights = np.zeros(targets.shape, np.float32)
    for i, (z, y, x) in enumerate(where):
        weights[z, y, x] = 0.1 * (i + 1)
    batches = build_batches(model, features, targets, weights)
    assert len(batches) == 1
    batch = batches[0]
    order = sorted(range(len(where)), key=lambda i: where[i])  # (z, y, x) raster order
    f = features["trunk"]
    expected = torch.stack([f[where[i][0], :, where[i][1], where[i][2]] for i in order], dim=1)
    assert batch.features["trunk"].shape == (1, 4, 1, 5)
    torch.testing.assert_close(batch.features["trunk"][0, :, 0, :], expected)
    assert batch.target.dtype == torch.long
    assert batch.target.tolist() == [[[labels[i] for i in order]]]
    torch.testing.assert_close(
        batch.weight, torch.tensor([[[0.1 * (i + 1) for i in order]]], dtype=torch.float32)
    )
    assert batch.keep is None and batch.keep_share is None
    plain = build_batches(model, features, targets)
    assert len(plain) == 1 and plain[0].weight is None


def test_pointwise_batches_are_cut_in_chunks_of_point_chunk(monkeypatch):
    model = _pointwise()
    features = _features("trunk", (2, 4, 5, 6))
    targets, _, _ = _scribbled_targets()
    weights = (targets >= 0).astype(np.float32) / 5
    whole = build_batches(model, features, targets, weights)[0]
    monkeypatch.setattr(objective, "POINT_CHUNK", 2)
    chunks = build_batches(model, features, targets, weights)
    assert [b.target.shape[-1] for b in chunks] == [2, 2, 1]
    torch.testing.assert_close(
        torch.cat([b.features["trunk"] for b in chunks], dim=-1), whole.features["trunk"]
    )
    assert torch.equal(torch.cat([b.target for b in chunks], dim=-1), whole.target)
    torch.testing.assert_close(torch.cat([b.weight for b in chunks], dim=-1), whole.weight)


def test_pointwise_keep_batch_is_appended_only_with_a_keep_weight():
    model = _pointwise()
    features = _features("trunk", (2, 4, 5, 6))
    targets, _, _ = _scribbled_targets()
    assert len(build_batches(model, features, targets, keep_weight=0.0)) == 1
    batches = build_batches(model, features, targets, keep_weight=0.5, seed=1)
    assert len(batches) == 2
    keep = batches[1]
    assert keep.keep is not None and keep.weight is None
    assert float(keep.keep_share.sum()) == pytest.approx(0.5)


def test_keep_batch_samples_free_pixels_and_records_the_anchor_output(monkeypatch):
    monkeypatch.setattr(objective, "KEEP_SAMPLES", 5)
    model = _pointwise()
    before = _params(model)
    features = _features("trunk", (1, 4, 4, 4))
    targets = np.full((1, 4, 4), IGNORE, np.int64)
    targets[0, 1, 1] = 0
    targets[0, 2, 3] = 2
    batch = keep_batch(model, features, targets, 2.0, seed=0, anchor=_zero_anchor(model))
    n = batch.target.shape[-1]
    assert n == 5  # KEEP_SAMPLES of the 14 free pixels
    assert batch.target.tolist() == [[[IGNORE] * 5]]
    assert batch.weight is None
    torch.testing.assert_close(batch.keep_share, torch.full((1, 1, 5), 2.0 / 5))
    # the zero anchor gives logits 0: log-probabilities -log(3) for every class
    torch.testing.assert_close(batch.keep, torch.full((1, 3, 1, 5), -float(np.log(3.0))))
    _assert_params(model, before)  # the anchor was only borrowed
    # the sampled pixels are distinct free pixels, in raster order, with their features
    gathered = batch.features["trunk"][0, :, 0, :]
    f = features["trunk"][0].reshape(4, -1)
    flat = [int(torch.nonzero((f.t() == column).all(dim=1))[0]) for column in gathered.t()]
    assert flat == sorted(set(flat))
    assert all(targets.reshape(-1)[i] == IGNORE for i in flat)
    again = keep_batch(model, features, targets, 2.0, seed=0)
    assert torch.equal(again.features["trunk"], batch.features["trunk"])  # seeded
    other = keep_batch(model, features, targets, 2.0, seed=1)
    assert not torch.equal(other.features["trunk"], batch.features["trunk"])


def test_keep_batch_takes_every_free_pixel_when_there_are_few(monkeypatch):
    monkeypatch.setattr(objective, "KEEP_SAMPLES", 5)
    model = _pointwise()
    features = _features("trunk", (1, 4, 2, 2))
    targets = np.array([[[0, IGNORE], [IGNORE, 1]]], np.int64)
    batch = keep_batch(model, features, targets, 1.0, seed=0)
    f = features["trunk"][0]
    torch.testing.assert_close(
        batch.features["trunk"][0, :, 0, :], torch.stack([f[:, 0, 1], f[:, 1, 0]], 1)
    )
    torch.testing.assert_close(batch.keep_share, torch.full((1, 1, 2), 0.5))
    with torch.no_grad():  # no anchor: the head as it is now
        expected = model.head(batch.features).log_softmax(1)
    torch.testing.assert_close(batch.keep, expected)
    assert keep_batch(model, features, np.zeros((1, 2, 2), np.int64), 1.0, seed=0) is None


# --- the anchor context ---------------------------------------------------------------------


def test_anchored_swaps_in_the_anchor_weights_and_restores_the_head():
    model = _pointwise()
    before = _params(model)
    anchor = {
        "0.weight": torch.full_like(before["0.weight"], 0.5),
        "0.bias": torch.zeros(7),  # wrong shape (a class added since): left alone
        "missing": torch.zeros(1),
    }
    with Anchored(model, anchor):
        now = _params(model)
        assert torch.equal(now["0.weight"], anchor["0.weight"])
        assert torch.equal(now["0.bias"], before["0.bias"])
    _assert_params(model, before)
    with Anchored(model, None):
        _assert_params(model, before)
    _assert_params(model, before)


# --- spatial heads --------------------------------------------------------------------------


def _spatial_case() -> tuple[np.ndarray, np.ndarray]:
    """Three scribbled pixels in the first of two 20 x 20 slices (one on the right edge)."""
    targets = np.full((2, 20, 20), IGNORE, np.int64)
    targets[0, 2, 3] = 1
    targets[0, 8, 3] = 2
    targets[0, 10, 19] = 0  # on the right edge: part of its neighbourhood is outside
    weights = np.zeros(targets.shape, np.float32)
    weights[0, 2, 3], weights[0, 8, 3], weights[0, 10, 19] = 0.5, 0.25, 0.25
    return targets, weights


def _whole_logits(model: TorchModuleModel, features: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.head(features)


def test_spatial_batches_are_scribbled_pixels_with_their_halo_and_count_the_centres():
    model = _spatial()
    features = _features("trunk", (2, 4, 20, 20))
    targets, weights = _spatial_case()
    (batch,) = build_batches(model, features, targets, weights)
    assert batch.centres and batch.keep is None and batch.keep_share is None
    patches = batch.features["trunk"]
    assert patches.shape == (3, 4, 3, 3)
    full = features["trunk"]
    torch.testing.assert_close(patches[0], full[0, :, 1:4, 2:5])
    torch.testing.assert_close(patches[1], full[0, :, 7:10, 2:5])
    torch.testing.assert_close(patches[2, :, :, :2], full[0, :, 9:12, 18:20])
    assert not patches[2, :, :, 2].any()  # outside the image: 0, like the head's padding
    np.testing.assert_array_equal(batch.target.numpy()[:, 0, 0], [1, 2, 0])
    np.testing.assert_array_equal(batch.weight.numpy()[:, 0, 0], [0.5, 0.25, 0.25])
    # the head's output at each centre is its output at that pixel of the whole slice
    with torch.no_grad():
        centres = objective.centre_logits(model, batch.features)
    assert centres.shape == (3, 3, 1, 1)
    whole = _whole_logits(model, features)
    for i, (y, x) in enumerate([(2, 3), (8, 3), (10, 19)]):
        torch.testing.assert_close(centres[i, :, 0, 0], whole[0, :, y, x])
    assert all(b.weight is None for b in build_batches(model, features, targets))


def test_a_head_that_cannot_drop_its_padding_gives_its_centre_output():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, stride=1),
        nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(4, 3, 1),
    )  # fmt: skip
    model = TorchModuleModel(net, CLASSES, n_layers=2)  # the second conv, the pool, the last
    halo = model.head_halo  # an upper bound: the pool counts its whole kernel
    assert not model.head_is_pointwise and halo >= 2
    features = _features("trunk", (1, 4, 20, 20))
    items = objective.pixel_patches(features, np.array([0]), np.array([9]), np.array([10]), halo)
    with torch.no_grad():
        centre = objective.centre_logits(model, items)
    assert centre.shape == (1, 3, 1, 1)
    torch.testing.assert_close(centre[0, :, 0, 0], _whole_logits(model, features)[0, :, 9, 10])
    assert model.head_module[0].padding == (1, 1)  # left as it was
    # a head of plain convolutions runs without padding: one output per item
    plain = _spatial()
    with objective._valid_convolutions(plain.head_module):
        out = plain.head(objective.pixel_patches(features, [0], [9], [10], 1))
    assert out.shape == (1, 3, 1, 1) and plain.head_module[0].padding == (1, 1)
    assert "forward" not in vars(plain.head_module[0])  # its own forward again


def test_spatial_keep_term_samples_pixels_with_their_halo_and_counts_the_centre(monkeypatch):
    monkeypatch.setattr(objective, "SPATIAL_KEEP_SAMPLES", 50)
    model = _spatial()
    before = _params(model)
    features = _features("trunk", (2, 4, 20, 20))
    targets, weights = _spatial_case()
    batches = build_batches(model, features, targets, weights, keep_weight=0.5, seed=3)
    _assert_params(model, before)
    assert len(batches) == 2 and batches[0].keep is None
    keep = batches[1]
    assert keep.centres and keep.features["trunk"].shape == (50, 4, 3, 3)
    assert (keep.target == IGNORE).all() and keep.target.shape == (50, 1, 1)
    np.testing.assert_allclose(keep.keep_share.numpy(), 0.01)  # 0.5 over 50 pixels
    # the same sample, drawn as the keep term draws it: unscribbled pixels, any slice
    free = np.flatnonzero(targets.reshape(-1) < 0)
    chosen = np.sort(np.random.default_rng(3).choice(free, size=50, replace=False))
    z, y, x = np.unravel_index(chosen, targets.shape)
    assert (targets[z, y, x] == IGNORE).all() and set(z) == {0, 1}
    whole = _whole_logits(model, features).float().log_softmax(1)
    torch.testing.assert_close(keep.keep[:, :, 0, 0], whole[z, :, y, x])
    anchored = build_batches(
        model, features, targets, weights, keep_weight=0.5, seed=3, anchor=_zero_anchor(model)
    )[-1]
    torch.testing.assert_close(anchored.keep, torch.full((50, 3, 1, 1), -float(np.log(3.0))))
    nothing = np.full((2, 20, 20), IGNORE, np.int64)
    assert build_batches(model, features, nothing, keep_weight=2.0) == []


# --- opaque models --------------------------------------------------------------------------


def test_opaque_batches_are_whole_scribbled_slices_with_the_keep_term_off_the_scribbles():
    model = _opaque()
    features = _features("input", (2, 1, 6, 7))
    targets = np.full((2, 6, 7), IGNORE, np.int64)
    targets[1, 0, 0], targets[1, 5, 6] = 2, 0
    weights = np.zeros(targets.shape, np.float32)
    weights[1, 0, 0] = weights[1, 5, 6] = 0.5
    batches = build_batches(model, features, targets, weights, keep_weight=0.5)
    assert len(batches) == 1  # slice 0 has no scribbles
    batch = batches[0]
    torch.testing.assert_close(batch.features["input"], features["input"][1:2])
    np.testing.assert_array_equal(batch.target.numpy(), targets[1:2])
    np.testing.assert_array_equal(batch.weight.numpy(), weights[1:2])
    assert batch.keep_share.dtype == torch.float32
    expected_share = np.where(targets[1:2] == IGNORE, 0.5 / 40, 0.0)
    np.testing.assert_allclose(batch.keep_share.numpy(), expected_share, rtol=1e-6)
    with torch.no_grad():
        expected_keep = model.head({"input": features["input"][1:2]}).log_softmax(1)
    torch.testing.assert_close(batch.keep, expected_keep)
    assert build_batches(model, features, targets)[0].keep is None


def test_dense_keep_term_with_a_single_unscribbled_pixel_gives_it_the_whole_weight():
    model = _opaque()
    features = _features("input", (1, 1, 1, 2))
    targets = np.array([[[1, IGNORE]]], np.int64)
    (batch,) = build_batches(model, features, targets, keep_weight=3.0)
    np.testing.assert_allclose(batch.keep_share.numpy(), [[[0.0, 3.0]]])


# --- the loss ---------------------------------------------------------------------------


def _pointwise_case() -> tuple[TorchModuleModel, Batch, np.ndarray, np.ndarray, np.ndarray]:
    """A point-wise batch of 6 pixels and the numpy values to check it with."""
    model = _pointwise()
    _trainable(model)
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 4, 1, 6, generator=gen)
    target = torch.tensor([[[0, 1, 2, 2, 1, 0]]])
    weight = torch.tensor([[[0.1, 0.2, 0.3, 0.1, 0.2, 0.1]]])
    f = feats[0, :, 0, :].numpy().astype(np.float64)  # [F, P]
    return (
        model,
        Batch({"trunk": feats}, target, weight),
        f,
        target[0, 0].numpy(),
        weight[0, 0].numpy(),
    )


def _head_params(model: TorchModuleModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The point-wise head's 1x1 convolution weight and bias."""
    params = dict(model.head_module.named_parameters())
    return params["0.weight"], params["0.bias"]


def _numpy_head(model: TorchModuleModel, f: np.ndarray) -> np.ndarray:
    weight, bias = _head_params(model)
    w = weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    b = bias.detach().numpy().astype(np.float64)
    return w @ f + b[:, None]  # [C, P]


def _grad_from_dlogits(dlogits: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 1x1 convolution's gradients: dW = dlogits f^T, db = sum over pixels."""
    return dlogits @ f.T, dlogits.sum(axis=1)


def _check_grads(model: TorchModuleModel, dw: np.ndarray, db: np.ndarray) -> None:
    weight, bias = _head_params(model)
    np.testing.assert_allclose(weight.grad.numpy()[:, :, 0, 0], dw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bias.grad.numpy(), db, rtol=1e-4, atol=1e-6)


def test_weighted_loss_is_the_weighted_sum_of_cross_entropies_with_its_gradient():
    model, batch, f, t, w = _pointwise_case()
    logits = _numpy_head(model, f)
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    nll = -log_p[t, np.arange(6)]
    onehot = np.eye(3)[:, t]
    loss, wrong = loss_and_gradients(model, [batch], n_scribbled=1000)
    assert loss == pytest.approx(float((w * nll).sum()), rel=1e-5)  # n_scribbled not used
    assert wrong == int((logits.argmax(axis=0) != t).sum())
    assert 0 < wrong < 6  # both outcomes occur in this batch
    _check_grads(model, *_grad_from_dlogits(w * (p - onehot), f))


def test_plain_loss_is_the_summed_cross_entropy_over_n_scribbled():
    model, batch, f, t, _ = _pointwise_case()
    batch.weight = None
    log_p = _log_softmax(_numpy_head(model, f))
    nll = -log_p[t, np.arange(6)]
    onehot = np.eye(3)[:, t]
    loss, _ = loss_and_gradients(model, [batch], n_scribbled=8)
    assert loss == pytest.approx(float(nll.sum() / 8), rel=1e-5)
    _check_grads(model, *_grad_from_dlogits((np.exp(log_p) - onehot) / 8, f))


def test_keep_term_adds_the_shared_kl_divergence_from_the_reference():
    model, batch, f, _, _ = _pointwise_case()
    batch.target = torch.full((1, 1, 6), IGNORE)
    batch.weight = None
    reference = torch.log_softmax(
        torch.randn(1, 3, 1, 6, generator=torch.Generator().manual_seed(5)), 1
    )
    share = torch.tensor([[[0.5, 1.0, 0.0, 2.0, 0.25, 1.0]]])
    batch.keep, batch.keep_share = reference, share
    log_p = _log_softmax(_numpy_head(model, f))
    q = np.exp(reference[0, :, 0, :].numpy().astype(np.float64))
    s = share[0, 0].numpy()
    kl = (q * (np.log(q) - log_p)).sum(axis=0)
    loss, wrong = loss_and_gradients(model, [batch], n_scribbled=1)
    assert loss == pytest.approx(float((s * kl).sum()), rel=1e-5)
    assert wrong == 0  # no scribbled pixels
    _check_grads(model, *_grad_from_dlogits(s * (np.exp(log_p) - q), f))


def test_loss_and_gradients_accumulate_over_batches():
    model, batch, f, t, w = _pointwise_case()
    log_p = _log_softmax(_numpy_head(model, f))
    once = float((w * -log_p[t, np.arange(6)]).sum())
    wrong_once = int((log_p.argmax(axis=0) != t).sum())
    loss, wrong = loss_and_gradients(model, [batch, batch], n_scribbled=1)
    assert loss == pytest.approx(2 * once, rel=1e-5)
    assert wrong == 2 * wrong_once
    onehot = np.eye(3)[:, t]
    _check_grads(model, *_grad_from_dlogits(2 * w * (np.exp(log_p) - onehot), f))


def test_violations_count_only_scribbled_pixels():
    model = _spatial()
    _trainable(model)
    features = _features("trunk", (1, 4, 5, 5))
    with torch.no_grad():
        predicted = model.head(features).argmax(1)[0].numpy()
    target = np.full((1, 5, 5), IGNORE, np.int64)
    target[0, 0, 0] = predicted[0, 0]  # right
    target[0, 1, 1] = (predicted[1, 1] + 1) % 3  # wrong
    target[0, 4, 2] = (predicted[4, 2] + 2) % 3  # wrong
    batch = Batch(features, torch.as_tensor(target))
    _, wrong = loss_and_gradients(model, [batch], n_scribbled=3)
    assert wrong == 2


def test_dense_batch_loss_counts_only_scribbled_pixels():
    model = _spatial()
    _trainable(model)
    features = _features("trunk", (1, 4, 5, 5), seed=4)
    target = np.full((1, 5, 5), IGNORE, np.int64)
    target[0, 0, 0], target[0, 2, 3], target[0, 4, 4] = 0, 2, 1
    weight = np.zeros(target.shape, np.float32)
    weight[0, 0, 0], weight[0, 2, 3], weight[0, 4, 4] = 0.5, 0.3, 0.2
    with torch.no_grad():
        log_p = _log_softmax(model.head(features)[0].numpy())
    ys, xs = np.nonzero(target[0] >= 0)
    nll = -log_p[target[0, ys, xs], ys, xs]
    batch = Batch(features, torch.as_tensor(target), torch.as_tensor(weight))
    loss, _ = loss_and_gradients(model, [batch], n_scribbled=3)
    assert loss == pytest.approx(float((weight[0, ys, xs] * nll).sum()), rel=1e-5)
    model.head_module.zero_grad()
    plain, _ = loss_and_gradients(model, [Batch(features, torch.as_tensor(target))], 3)
    assert plain == pytest.approx(float(nll.sum() / 3), rel=1e-5)


# --- build_batches: seeds, anchors and slices with background scribbles only ----------------


def test_pointwise_keep_batch_uses_the_seed_and_anchor_given_default_seed_zero(monkeypatch):
    monkeypatch.setattr(objective, "KEEP_SAMPLES", 5)  # a sample: the seed matters
    model = _pointwise()
    features = _features("trunk", (2, 4, 5, 6))
    targets, _, _ = _scribbled_targets()
    default = build_batches(model, features, targets, keep_weight=0.5)[-1]
    seeded = keep_batch(model, features, targets, 0.5, seed=0)
    assert torch.equal(default.features["trunk"], seeded.features["trunk"])
    torch.testing.assert_close(default.keep_share, seeded.keep_share)
    anchored = build_batches(
        model, features, targets, keep_weight=0.5, seed=2, anchor=_zero_anchor(model)
    )[-1]
    torch.testing.assert_close(anchored.keep, torch.full_like(anchored.keep, -float(np.log(3))))
    other = keep_batch(model, features, targets, 0.5, seed=2)
    assert torch.equal(anchored.features["trunk"], other.features["trunk"])
    assert not torch.equal(other.features["trunk"], seeded.features["trunk"])


def test_spatial_slices_with_only_background_scribbles_count():
    model = _spatial()
    features = _features("trunk", (3, 4, 20, 20))
    targets = np.full((3, 20, 20), IGNORE, np.int64)  # slice 0: nothing
    targets[1, 3, 10] = 0  # slice 1: background only
    targets[2, 19, 19] = 0  # slice 2: background only, in the corner
    weights = np.where(targets >= 0, 0.5, 0.0).astype(np.float32)
    (batch,) = build_batches(model, features, targets, weights)
    torch.testing.assert_close(batch.features["trunk"][0], features["trunk"][1, :, 2:5, 9:12])
    torch.testing.assert_close(
        batch.features["trunk"][1, :, :2, :2], features["trunk"][2, :, 18:, 18:]
    )
    np.testing.assert_array_equal(batch.target.numpy()[:, 0, 0], [0, 0])
    assert float(batch.weight.sum()) == 1.0


def test_opaque_batches_take_one_slice_each_and_the_anchor_for_the_keep_term():
    model = _opaque()
    features = _features("input", (3, 1, 4, 5))
    targets = np.full((3, 4, 5), IGNORE, np.int64)
    targets[1, 2, 2] = 0  # background only, in the middle slice of three
    batches = build_batches(model, features, targets, keep_weight=1.0, anchor=_zero_anchor(model))
    assert len(batches) == 1
    (batch,) = batches
    assert batch.weight is None
    torch.testing.assert_close(batch.features["input"], features["input"][1:2])
    torch.testing.assert_close(batch.keep, torch.full((1, 3, 4, 5), -float(np.log(3))))


def test_dense_keep_term_in_the_loss_is_the_shared_kl_per_pixel():
    model = _opaque()
    _trainable(model)
    features = _features("input", (1, 1, 3, 4), seed=6)
    targets = np.full((1, 3, 4), IGNORE, np.int64)
    targets[0, 1, 1] = 2
    (batch,) = build_batches(model, features, targets, keep_weight=1.0, anchor=_zero_anchor(model))
    with torch.no_grad():
        log_p = _log_softmax(model.head(features)[0].numpy())  # [C, 3, 4]
    q = np.full(3, 1 / 3)
    kl = (q[:, None, None] * (np.log(q)[:, None, None] - log_p)).sum(axis=0)  # [3, 4]
    free = targets[0] == IGNORE
    expected = -log_p[2, 1, 1] / 1 + (kl[free] / free.sum()).sum()
    loss, _ = loss_and_gradients(model, [batch], n_scribbled=1)
    assert loss == pytest.approx(float(expected), rel=1e-5)
