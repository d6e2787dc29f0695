"""Refinement robustness: class-balanced loss, grown-pixel weights, keep term, growth cap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_nets import disk_labels, fraction, scribble_disks
from scipy import ndimage

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.objective import pixel_weights
from napari_scribble_refine.core.region_growing import grow_scribbles
from napari_scribble_refine.core.session import RefineSession


def test_pixel_weights_balance_classes_and_discount_grown_pixels():
    used = np.zeros((10, 50), np.int32)
    used[0, :40] = 1  # 40 background pixels
    used[5, :2] = 2  # 2 nucleus pixels (20:1)
    strokes = used.copy()
    strokes[0, 20:] = 0  # background pixels 20..39 were grown
    w = pixel_weights(used, strokes, RefineConfig(grown_weight=0.5))
    assert np.isclose(w.sum(), 1.0)
    assert np.isclose(w[used == 1].sum(), 0.5) and np.isclose(w[used == 2].sum(), 0.5)
    assert np.isclose(w[0, 0], 2 * w[0, 30])  # grown pixels weigh half
    assert (w[used == 0] == 0).all()
    plain = pixel_weights(used, strokes, RefineConfig(class_balanced=False, grown_weight=1.0))
    np.testing.assert_allclose(plain[used != 0], 1 / 42, rtol=1e-6)  # the paper's mean


def test_growth_cap_holds_per_stroke():
    image = np.zeros((80, 80), np.float32)
    image[40:, :] = 1.0  # two flat halves, so growth floods each half without a cap
    scribbles = np.zeros(image.shape, np.int32)
    scribbles[10, 10:15] = 1  # 5 px
    scribbles[60, 10:13] = 2  # 3 px
    scribbles[60, 60:70] = 2  # 10 px, a second stroke of the same class
    free = grow_scribbles(image, scribbles, threshold=0.5, max_distance=30)
    capped = grow_scribbles(image, scribbles, threshold=0.5, max_distance=30, max_grown_ratio=2)
    assert (free == 1).sum() > 500  # uncapped: a flood
    assert (capped == 1).sum() <= 5 * 3
    assert (capped == 2).sum() <= 13 * 3
    assert (capped == 1).sum() == 15 and (capped == 2).sum() == 39  # budgets are spent
    np.testing.assert_array_equal(capped[scribbles > 0], scribbles[scribbles > 0])
    assert set(np.unique(capped[image == 0])) <= {0, 1}  # no label crosses the edge
    # each stroke spends its own budget: the 3 px stroke adds 6, the 10 px stroke adds 20
    # (one budget for the whole class would let the long stroke take the short one's share)
    regions, n = ndimage.label(capped == 2)
    assert n == 2
    short, long = regions[60, 11], regions[60, 65]
    assert (regions == short).sum() == 3 + 6 and (regions == long).sum() == 10 + 20


def test_capped_growth_takes_the_most_similar_pixels_first():
    image = np.full((7, 7), 5.0, np.float32)  # far from the stroke: never grown into
    image[3, 3] = 0.50  # a one-pixel stroke; its four neighbours are all similar enough ...
    image[2, 3], image[4, 3], image[3, 2], image[3, 4] = 0.51, 0.53, 0.56, 0.58
    scribbles = np.zeros(image.shape, np.int32)
    scribbles[3, 3] = 2
    capped = grow_scribbles(
        image,
        scribbles,
        threshold=0.1,
        max_distance=3,
        intensity_range=(0.0, 1.0),
        max_grown_ratio=2,
    )
    expected = scribbles.copy()
    expected[2, 3] = expected[4, 3] = 2  # ... but the budget of 2 takes the two closest
    np.testing.assert_array_equal(capped, expected)


def test_balanced_loss_survives_20_to_1_background(model2, scene, config):
    image, kinds = scene
    scribbles = np.zeros(kinds.shape, np.int32)
    ys, xs = np.nonzero(kinds == 0)
    pick = np.random.default_rng(0).choice(ys.size, 800, replace=False)
    scribbles[ys[pick], xs[pick]] = 1  # lots of background
    scribble_disks(scribbles, kinds, 2, [0, 1, 2, 3], value=1)  # dim disks are background
    labels, _ = disk_labels(kinds, 1)
    nucleus = np.argwhere(labels == 1)[:40:2]  # 20 nucleus pixels
    scribbles[nucleus[:, 0], nucleus[:, 1]] = 2
    n_bg, n_fg = (scribbles == 1).sum(), (scribbles == 2).sum()
    assert n_bg >= 20 * n_fg
    cfg = config.replace(keep_weight=0.0, class_balanced=True)
    session = RefineSession(model2, image, cfg)
    nll = _pixel_nll(session, scribbles)
    balanced = np.mean([nll[scribbles == c].mean() for c in (1, 2)])  # mean of class means
    plain = nll[scribbles > 0].mean()
    assert abs(balanced - plain) > 0.2 * balanced  # the two losses differ here
    assert _first_loss(session, scribbles) == pytest.approx(balanced, rel=1e-4)
    session.undo()  # forget the step taken to read the loss
    result = session.run(scribbles)
    assert fraction(result.prediction, kinds == 1, 1) > 0.85  # bright disks stay nuclei
    assert fraction(result.prediction, kinds == 2, 0) > 0.85  # dim disks became background


def _pixel_nll(session: RefineSession, scribbles: np.ndarray) -> np.ndarray:
    """Each pixel's cross-entropy against its scribbled class under the current head."""
    log_p = torch.log_softmax(session.logits().double(), dim=1)[0].numpy()
    target = np.clip(scribbles - 1, 0, None)
    return -np.take_along_axis(log_p, target[None], axis=0)[0]


def _first_loss(session: RefineSession, scribbles: np.ndarray) -> float:
    """The loss the session reports for its first step (measured before any update)."""
    steps = session.refine(scribbles, previews=False)
    first = next(steps)
    steps.close()
    assert first.iteration == 1 and not first.finished
    return first.loss


def test_grown_pixels_weigh_grown_weight_in_the_session_loss(model2, scene, config):
    image, kinds = scene
    scribbles = np.zeros(kinds.shape, np.int32)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=1)
    scribble_disks(scribbles, kinds, 1, [0], value=2)
    cfg = config.replace(region_growing=True, grow_threshold=0.1, keep_weight=0.0)
    session = RefineSession(model2, image, cfg.replace(grown_weight=0.25))
    used, grown = session.prepare_scribbles(scribbles)
    assert grown is not None
    added = (used > 0) & (scribbles == 0)
    assert added.sum() > 0.5 * (scribbles > 0).sum()  # growth adds many pixels
    nll = _pixel_nll(session, used)
    weight = np.where(scribbles > 0, 1.0, 0.25)  # stroke pixels 1, grown pixels 1/4

    def loss(w: np.ndarray) -> float:  # class-balanced weighted mean, by hand
        return float(np.mean([(w * nll)[used == c].sum() / w[used == c].sum() for c in (1, 2)]))

    assert abs(loss(weight) - loss(np.ones_like(weight))) > 1e-3  # the weights matter here
    assert _first_loss(session, scribbles) == pytest.approx(loss(weight), rel=1e-4)


def test_keep_term_stops_single_class_strokes_flipping_the_image(model3, scene, config):
    """Strokes of one new class only: without the keep term every nucleus takes that class.

    The two runs differ only in ``keep_weight``: the session must hand it to the loss.
    """
    image, kinds = scene
    scribbles = np.zeros(kinds.shape, np.int32)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=3)  # two dim disks are "other"
    cfg = config.replace(learning_rate=0.05, momentum=0.0, max_iterations=300)
    free = RefineSession(model3, image, cfg.replace(keep_weight=0.0)).run(scribbles)
    assert free.violations == 0
    assert fraction(free.prediction, kinds == 1, 1) < 0.05  # the bright nuclei flipped too
    kept = RefineSession(model3, image, cfg.replace(keep_weight=10.0)).run(scribbles)
    assert kept.violations == 0
    assert fraction(kept.prediction, kinds == 1, 1) > 0.95  # bright disks stay nuclei
    assert fraction(kept.prediction, kinds == 0, 0) > 0.95
    assert fraction(kept.prediction, kinds == 2, 2) > 0.8  # the unscribbled dim disks too


def test_keep_term_is_flat_at_the_anchor_and_pulls_a_drifted_head_back(model2, scene, config):
    import torch

    from napari_scribble_refine.core.objective import build_batches, loss_and_gradients
    from napari_scribble_refine.core.optimiser import MomentumSGD

    image, kinds = scene
    session = RefineSession(model2, image, config)
    targets = np.full((1, *kinds.shape), -1, np.int64)  # nothing scribbled: keep term only
    anchor = {n: p.detach().clone() for n, p in session.model.head_module.named_parameters()}
    batches = build_batches(
        session.model, session.features, targets, keep_weight=1.0, seed=0, anchor=anchor
    )
    assert len(batches) == 1 and batches[0].keep is not None
    params = [p for p in session.model.head_module.parameters()]
    for p in params:
        p.requires_grad_(True)
    loss, wrong = loss_and_gradients(session.model, batches, 1)
    assert wrong == 0 and abs(loss) < 1e-6  # KL is zero at the anchor ...
    assert all(float(p.grad.abs().max()) < 1e-5 for p in params)  # ... and so is its gradient
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn(p.shape, generator=gen))  # drift away from the anchor
    drifted = sum(
        float((p.detach() - anchor[n]).norm())
        for n, p in session.model.head_module.named_parameters()
    )
    optimiser = MomentumSGD(params, lr=0.5, momentum=0.0)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        losses.append(loss_and_gradients(session.model, batches, 1)[0])
        optimiser.step()
    after = sum(
        float((p.detach() - anchor[n]).norm())
        for n, p in session.model.head_module.named_parameters()
    )
    assert losses[-1] < 0.5 * losses[0]
    assert after < drifted


def test_grown_pixels_that_look_like_the_class_they_leave_are_dropped(model3, scene):
    """``grow_similar``: a stroke correcting a bright disk grows over the disk, not the
    background around it, though the intensity threshold would let it flood both."""
    image, kinds = scene
    bright, _ = disk_labels(kinds, 1)
    disk = bright == 1
    cy, cx = (int(v) for v in np.argwhere(disk).mean(0))
    scribbles = np.zeros(kinds.shape, np.uint8)
    scribbles[cy - 1 : cy + 2, cx - 1 : cx + 2] = 3  # class 2 where the network says 1
    base = RefineConfig(
        device="cpu", grow_threshold=2.0, grow_max_distance=12, grow_cap=0, grow_similar=False
    )
    session = RefineSession(model3, image, base)
    assert fraction(session.predict(), disk, 1) > 0.9
    flooded, _ = session.prepare_scribbles(scribbles)
    kept, _ = session.prepare_scribbles(scribbles, base.replace(grow_similar=True))
    outside = (kinds == 0) & (session.predict() == 0)
    assert (flooded[outside] == 3).sum() > 100  # intensity alone floods the background
    assert (kept[outside] == 3).sum() <= 0.05 * (flooded[outside] == 3).sum()
    core = ndimage.binary_erosion(disk, iterations=2)  # the rim's features are mixed
    assert fraction(flooded, core, 3) == 1.0 and fraction(kept, core, 3) > 0.95
