"""The refinement's guards: trust region, one class per nucleus, the edge-aware CRF."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from _tiny_nets import fraction, scribble_disks

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.edge_crf import CRF_MAX_PIXELS, box_mean, crf_applies, mean_field
from napari_scribble_refine.core.postprocess import type_by_instance
from napari_scribble_refine.core.session import RefineSession
from napari_scribble_refine.core.trust_region import accepted_changes
from napari_scribble_refine.core.type_spreading import spread_types


def _describe(features: np.ndarray):
    return lambda mask: features[:, mask]


def test_local_change_is_kept_within_the_strokes_reach():
    before = np.zeros((40, 120), np.int32)
    after = before.copy()
    after[10:30, 5:115] = 1  # the tuned head turned a long band into nucleus
    scribbles = np.zeros_like(before)
    scribbles[20, 10:20] = 2  # a 10 px nucleus stroke at the band's left end
    accept = accepted_changes(before, after, scribbles, reach=1.0, min_reach=4)
    assert accept[20, 12] and accept[20, 28]  # within one stroke extent (10 px)
    assert not accept[20, 40] and not accept[20, 110]  # farther along the band: reverted
    assert not accept[~(after == 1)].any()  # nothing unchanged is "accepted"


def test_local_change_keeps_only_pixels_that_look_like_the_correction():
    before = np.zeros((30, 60), np.int32)
    after = before.copy()
    after[5:25, 2:30] = 1  # one changed region: a missed nucleus (x 10-30) and background
    scribbles = np.zeros_like(before)
    scribbles[15, 12:28] = 2  # a 16 px stroke in the missed nucleus
    features = np.zeros((2, 30, 60), np.float32)
    features[0, 5:25, 10:30] = 1.0  # the nucleus looks like nucleus; x 2-10 like background
    means = {0: np.zeros(2)}
    kept = accepted_changes(
        before, after, scribbles, _describe(features), means, reach=3.0, local_similar=True
    )
    assert kept[5:25, 10:30].all()  # the missed nucleus: looks like the corrected pixels
    assert not kept[5:25, 2:10].any()  # background-looking pixels beside it stay background
    whole = accepted_changes(before, after, scribbles, _describe(features), means, reach=3.0)
    assert whole[5:25, 2:30].all()  # without the test the touching change is kept whole


def test_far_change_is_kept_only_when_it_looks_like_the_correction():
    before = np.zeros((40, 120), np.int32)
    before[5:15, 60:70] = 1  # a nucleus the pre-trained head found
    after = before.copy()
    after[25:35, 5:15] = 1  # the stroke's own error, fixed
    after[25:35, 50:60] = 1  # a look-alike, far away
    after[25:35, 95:105] = 1  # a region that looks like background
    scribbles = np.zeros_like(before)
    scribbles[30, 8:12] = 2
    features = np.zeros((2, 40, 120), np.float32)
    features[0, 25:35, 5:15] = 1.0  # the corrected pixels' look
    features[0, 25:35, 50:60] = 0.9
    prob = np.full(before.shape, 0.95, np.float32)
    means = {0: np.zeros(2), 1: np.array([0.0, 1.0])}
    accept = accepted_changes(before, after, scribbles, _describe(features), means, prob)
    assert accept[25:35, 5:15].all()  # local
    assert accept[25:35, 50:60].all()  # looks like the correction: spread
    assert not accept[25:35, 95:105].any()  # looks like background: reverted
    unsure = prob.copy()
    unsure[25:35, 50:60] = 0.55
    accept = accepted_changes(before, after, scribbles, _describe(features), means, unsure)
    assert not accept[25:35, 50:60].any()  # the tuned head is not confident there
    local_only = accepted_changes(
        before, after, scribbles, _describe(features), means, prob, spread=False
    )
    assert not local_only[25:35, 50:60].any()


def test_trust_region_holds_confident_far_pixels(model2, scene, config):
    image, kinds = scene
    scribbles = np.zeros(kinds.shape, np.int32)
    scribble_disks(scribbles, kinds, 1, [0], value=1)  # "this bright disk is background"
    # a hard push with nothing to hold the rest: the head flips other bright disks too
    hard = config.replace(keep_weight=0.0, learning_rate=0.2, momentum=0.9, max_iterations=80)
    others = (kinds == 1) & ndi_label_except(kinds, scribbles)
    free = RefineSession(model2, image, hard).run(scribbles)
    assert fraction(free.prediction, others, 1) < 0.5  # the mechanism below is needed
    held = RefineSession(model2, image, hard.replace(trust_region=True, spread=False))
    result = held.run(scribbles)
    assert fraction(result.prediction, others, 1) > 0.98  # far nuclei stay nuclei
    assert np.all(result.prediction[scribbles == 1] == 0)


def ndi_label_except(kinds: np.ndarray, scribbles: np.ndarray) -> np.ndarray:
    """Pixels of disks that carry no scribble."""
    from scipy import ndimage as ndi

    lab, _ = ndi.label(kinds > 0)
    hit = np.unique(lab[scribbles > 0])
    return ~np.isin(lab, hit[hit > 0])


def test_type_stroke_retypes_the_whole_instance():
    instances = np.zeros((20, 40), np.int32)
    instances[2:12, 2:12] = 1
    instances[2:12, 20:30] = 2
    classes = np.where(instances > 0, 1, 0).astype(np.int32)
    classes[2:5, 2:12] = 2  # a few pixels of instance 1 already say class 2
    classes[2:12, 24:30] = 3  # instance 2: majority 3 (60 of 100 pixels)
    scribbles = np.zeros_like(classes)
    scribbles[8, 4:7] = 3 + 1  # three pixels: "instance 1 is class 3"
    out = type_by_instance(instances, classes, scribbles)
    assert np.all(out[instances == 1] == 3)  # retyped whole by the stroke
    assert np.all(out[instances == 2] == 3)  # no stroke: its majority
    assert np.all(out[instances == 0] == 0)
    assert classes[2, 2] == 2  # the input is not modified
    no_stroke = type_by_instance(instances, classes)
    assert np.all(no_stroke[instances == 1] == 1)  # majority 1 (70 of 100)


def test_box_mean_matches_average_pooling():
    x = torch.rand(3, 23, 31, dtype=torch.float64)
    for radius in (1, 4, 15):
        ref = F.avg_pool2d(
            x[None], 2 * radius + 1, stride=1, padding=radius, count_include_pad=False
        )[0]
        torch.testing.assert_close(box_mean(x, radius), ref)


def test_crf_moves_an_uncertain_boundary_onto_the_image_edge():
    guide = torch.zeros(40, 80)
    guide[:, 40:] = 1.0  # a strong vertical edge at x = 40
    p1 = torch.full((40, 80), 0.2)
    p1[:, :46] = 0.65  # the head's nucleus overshoots the edge by 6 px, unsure
    log_probs = torch.stack([1 - p1, p1]).log()
    scribbles = np.zeros((40, 80), np.int32)
    scribbles[20, 70] = 2  # one pixel scribbled as nucleus far right: kept as scribbled
    q = mean_field(log_probs, guide, scribbles, weight=6.0, radius=8, eps=0.01, iterations=5)
    decided = q.argmax(0)
    assert (decided[:, :40] == 1).all()  # the nucleus side of the edge stays nucleus
    assert (decided[:, 40:46] == 0).all()  # the overshoot across the edge is removed
    assert decided[20, 70] == 1
    flat = mean_field(log_probs, guide, None, weight=0.0)
    torch.testing.assert_close(flat, log_probs.softmax(0))


def test_session_type_stroke_retypes_one_nucleus_whole(model3, scene, config):
    image, kinds = scene
    session = RefineSession(model3, image, config)
    before = session.predict()
    from scipy import ndimage as ndi

    disks, _ = ndi.label(kinds == 1)
    target = disks == 1
    assert fraction(before, target, 1) > 0.9  # the model calls the bright disk "nucleus"
    scribbles = np.zeros(kinds.shape, np.int32)
    ys, xs = np.nonzero(ndi.binary_erosion(target, iterations=2))
    scribbles[ys[:6], xs[:6]] = 3  # a few pixels: "this nucleus is 'other'"
    tiny = config.replace(max_iterations=1, learning_rate=1e-6)  # the head barely moves
    typed = session.run(scribbles, config=tiny.replace(type_by_instance=True))
    assert fraction(typed.prediction, target, 2) > 0.9  # the whole nucleus is retyped
    others = (kinds == 1) & ~target
    assert fraction(typed.prediction, others, 1) > 0.9  # the other nuclei keep their type
    session.reset()
    plain = session.run(scribbles, config=tiny)
    assert fraction(plain.prediction, target, 2) < 0.2  # without it, only the pins change


def _four_nuclei() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances 1-4 in a row, all typed class 1, and features: 1, 2 look alike, 3, 4 not."""
    instances = np.zeros((20, 80), np.int32)
    features = np.zeros((3, 20, 80), np.float32)
    looks = [(1.0, 0.0), (0.9, 0.1), (0.0, 1.0), (0.1, 0.9)]
    for i, (a, b) in enumerate(looks):
        instances[5:15, 5 + 20 * i : 15 + 20 * i] = i + 1
        features[0, instances == i + 1] = a
        features[1, instances == i + 1] = b
    features[2] = (instances == 0) * 5.0  # background looks like neither
    class_map = (instances > 0).astype(np.int32)
    return instances, class_map, features


def test_type_stroke_spreads_to_look_alike_nuclei_only():
    instances, class_map, features = _four_nuclei()
    scribbles = np.zeros_like(class_map)
    scribbles[10, 7:13] = 3  # class 2 on nucleus 1
    typed = type_by_instance(instances, class_map, scribbles)
    out = spread_types(instances, typed, scribbles, _describe(features))
    assert (out[instances == 1] == 2).all()  # the scribbled nucleus, retyped whole
    assert (out[instances == 2] == 2).all()  # its look-alike follows
    assert (out[instances >= 3] == 1).all()  # nuclei unlike it keep their class
    assert (out[instances == 0] == 0).all()  # background is never typed
    # a stricter margin keeps the look-alike unless it is much nearer
    strict = spread_types(instances, typed, scribbles, _describe(features), margin=0.01)
    assert (strict[instances == 2] == 1).all()


def test_type_spreading_without_type_strokes_changes_nothing():
    instances, class_map, features = _four_nuclei()
    scribbles = np.zeros_like(class_map)
    scribbles[0, :] = 1  # background strokes only
    scribbles[10, 7:13] = 2  # and a nucleus stroke of the class the nuclei already have
    out = spread_types(instances, class_map, scribbles, _describe(features))
    np.testing.assert_array_equal(out, class_map)


def test_free_types_keeps_far_type_changes_but_not_far_nucleus_changes(model3, scene, config):
    """``free_types``: the trust region guards nucleus/background changes only."""
    image, kinds = scene
    from scipy import ndimage as ndi

    disks, _ = ndi.label(kinds == 1)
    scribbles = np.zeros(kinds.shape, np.int32)
    scribble_disks(scribbles, kinds, 1, [0], value=3)  # "this bright disk is 'other'"
    scribbles[:3, :] = 1  # and a background stroke along the top edge
    hard = config.replace(keep_weight=0.0, learning_rate=0.2, momentum=0.9, max_iterations=80)
    others = (kinds == 1) & ndi_label_except(kinds, scribbles)
    free = RefineSession(model3, image, hard).run(scribbles)
    assert fraction(free.prediction, others, 2) > 0.5  # the head retypes far disks too
    guarded = hard.replace(trust_region=True, spread=False)
    held = RefineSession(model3, image, guarded).run(scribbles)
    assert fraction(held.prediction, others, 1) > 0.9  # the trust region reverts them
    loose = RefineSession(model3, image, guarded.replace(free_types=True)).run(scribbles)
    retyped = others & (free.prediction == 2)
    assert fraction(loose.prediction, retyped, 2) > 0.98  # far type changes are kept
    lost = others & (free.prediction == 0)  # far nucleus pixels the head dropped
    assert lost.any() and fraction(loose.prediction, lost, 0) == 0  # those stay nucleus
    assert disks.max() > 1


def test_the_crf_weight_follows_whether_nuclei_are_bright_or_dark():
    from napari_scribble_refine.core import RefineConfig, load_model
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence, synthetic_he

    settings = RefineConfig(crf_weight=3.0, crf_weight_bright=0.5, device="cpu")
    cases = [
        ("hovernet-fluo", synthetic_fluorescence((128, 128), seed=1), True, 0.5),
        ("hovernet-he", synthetic_he((128, 128), seed=1), False, 3.0),
    ]
    for name, sample, bright, weight in cases:
        session = RefineSession(load_model(name), sample.image, settings)
        session.predict()
        final = session._final_prediction
        assert final.bright_nuclei() is bright
        assert final.crf_weight(settings) == weight
        assert final.crf_weight(settings.replace(crf_weight_bright=3.0)) == 3.0
    # the weight reaches the CRF: off for bright nuclei gives what no CRF at all gives
    sample = synthetic_fluorescence((128, 128), seed=1)
    scribbles = np.zeros(sample.instances.shape, np.uint8)
    scribbles[sample.instances == 1] = 2
    scribbles[:3, :20] = 1
    results = []
    off = {"crf_weight": 0.0, "crf_weight_bright": 0.0}
    half = {"crf_weight": 0.5}  # 0.5 for bright and dark nuclei
    for changes in ({"crf_weight_bright": 0.0}, off, {"crf_weight_bright": 3.0}, {}, half):
        session = RefineSession(
            load_model("hovernet-fluo"), sample.image, settings.replace(**changes)
        )
        results.append(session.run(scribbles).prediction)
    np.testing.assert_array_equal(results[0], results[1])
    assert (results[0] != results[2]).any()
    np.testing.assert_array_equal(results[3], results[4])  # bright: 0.5, not crf_weight's 3
    assert (results[3] != results[2]).any()


def test_the_crf_runs_when_on_and_slices_fit_its_limit():
    on = RefineConfig(crf_weight=3.0, crf_weight_bright=0.0)
    assert crf_applies(on, (CRF_MAX_PIXELS // 4096, 4096))
    assert crf_applies(on, (7, CRF_MAX_PIXELS // 4096, 4096))  # per slice of a stack
    assert not crf_applies(on, (CRF_MAX_PIXELS // 4096 + 1, 4096))  # too large: skipped
    assert not crf_applies(None, (64, 64))  # nothing tuned yet
    assert not crf_applies(on.replace(crf_weight=0.0), (64, 64))
    assert crf_applies(RefineConfig(crf_weight=0.0, crf_weight_bright=1.0), (64, 64))
