"""RefineSession: Algorithm 1, history, classes, devices, stacks, tiles and bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from _tiny_nets import disk_labels, disks_scene, fraction, scribble_disks

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.models.base import SegmentationModel
from napari_scribble_refine.core.models.module import TorchModuleModel
from napari_scribble_refine.core.optimiser import proximity
from napari_scribble_refine.core.session import RefineSession
from napari_scribble_refine.core.steps import RefineResult, RefineStep


def _dim_as_background(kinds: np.ndarray, which: list[int]) -> np.ndarray:
    """Scribbles saying: these dim disks are background; one bright disk is a nucleus."""
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(scribbles, kinds, 2, which, value=1)
    scribble_disks(scribbles, kinds, 1, [0], value=2)
    return scribbles


def _run(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


# --------------------------------------------------------------------------- basics
def test_prediction_is_almost_right(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    pred = session.predict()
    assert pred.shape == image.shape and pred.dtype == np.int32
    assert fraction(pred, kinds == 1, 1) > 0.95
    assert fraction(pred, kinds == 0, 0) > 0.95
    assert session.prediction.flags.writeable is False
    assert pred.flags.writeable


def test_refine_fixes_scribbled_and_similar_unscribbled_errors(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    before = session.predict()
    dim_labels, n_dim = disk_labels(kinds, 2)
    assert n_dim == 4
    assert fraction(before, kinds == 2, 1) > 0.5  # the network calls dim disks nuclei

    result = session.run(_dim_as_background(kinds, [0, 1]))

    assert isinstance(result, RefineResult)
    assert result.converged and result.violations == 0 and result.iterations > 0
    after = session.predict()
    np.testing.assert_array_equal(after, result.prediction)
    unscribbled_dim = np.isin(dim_labels, [3, 4])
    assert fraction(after, unscribbled_dim, 0) > 0.9  # shared head fixed them too
    assert fraction(after, kinds == 1, 1) > 0.85  # bright disks stay nuclei


def test_step_records(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config.replace(preview_every=2))
    steps, result = _run(session.refine(_dim_as_background(kinds, [0, 1])))
    assert all(isinstance(s, RefineStep) for s in steps)
    assert steps[-1].finished and not any(s.finished for s in steps[:-1])
    training = steps[:-1]
    assert [s.iteration for s in training] == list(range(1, len(training) + 1))
    for s in training:
        assert isinstance(s.loss, float) and np.isfinite(s.loss)
        assert s.n_scribbled == result.n_scribbled
        if s.iteration % 2 == 0:
            assert isinstance(s.prediction, np.ndarray) and s.prediction.shape == image.shape
        else:
            assert s.prediction is None
    assert isinstance(steps[-1].prediction, np.ndarray)
    assert steps[-1].violations == 0 and steps[-1].fraction_correct == 1.0
    assert result.iterations == len(training)


def test_correct_scribbles_take_zero_steps(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(scribbles, kinds, 1, [0, 1], value=2)
    scribbles[:3, :3] = 1
    before = session.predict()
    result = session.run(scribbles)
    assert result.iterations == 0 and result.converged
    assert not session.can_undo
    np.testing.assert_array_equal(session.predict(), before)


def test_empty_scribbles_are_a_no_op(model2, scene, config):
    image, _ = scene
    session = RefineSession(model2, image, config)
    before = session.predict()
    with pytest.warns(UserWarning, match="[Nn]o scribbles"):
        gen = session.refine(np.zeros(image.shape, dtype=np.int32))
    steps, result = _run(gen)
    assert result.iterations == 0 and result.stop_reason == "no_scribbles"
    assert "nothing" in result.message.lower()
    assert len(steps) == 1 and steps[0].finished
    np.testing.assert_array_equal(result.prediction, before)
    assert not session.can_undo


def test_stop_fraction_stops_at_the_first_step_that_reaches_it(model2, scene, config):
    """The loop stops as soon as ``1 - violations / n_scribbled >= stop_fraction``.

    A full run (``stop_fraction=1``) records the violations before every step; the run with
    ``stop_fraction=0.75`` follows the same path (same seed) and must stop at the first
    state whose fraction correct reaches 0.75, with that state's violations left over.
    """
    image, kinds = scene
    scribbles = _dim_as_background(kinds, [0, 1, 2, 3])
    slow = config.replace(learning_rate=0.01, momentum=0.9, max_iterations=200)
    steps, full = _run(RefineSession(model2, image, slow).refine(scribbles, previews=False))
    assert full.violations == 0
    n = full.n_scribbled
    violations = [s.violations for s in steps]  # state k: violations after k steps
    reached = [k for k, v in enumerate(violations) if 1 - v / n >= 0.75]
    k = reached[0]
    assert 0 < violations[k] < 0.25 * n and k < full.iterations  # stops early, not at zero

    result = RefineSession(model2, image, slow.replace(stop_fraction=0.75)).run(scribbles)
    assert result.stop_reason == "converged" and result.converged
    assert result.iterations == k
    assert result.violations == violations[k]


def test_max_iterations_bounds_the_loop(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config.replace(max_iterations=2, learning_rate=1e-4))
    result = session.run(_dim_as_background(kinds, [0, 1]))
    assert result.iterations == 2 and result.stop_reason == "max_iterations"


# --------------------------------------------------------------------------- loss details
def test_proximity_is_the_l2_distance_with_a_zero_gradient_at_the_anchor():
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    anchor = {"w": torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "b": torch.tensor([0.0, 1.0])}
    value = proximity([("w", w), ("b", b)], anchor)
    value.backward()
    # ||(0, 0, 3, 4, 1, -2)|| = sqrt(9 + 16 + 1 + 4) = sqrt(30); gradient (W - W0) / sqrt(30)
    assert float(value.detach()) == pytest.approx(30**0.5, rel=1e-6)
    torch.testing.assert_close(w.grad, torch.tensor([[0.0, 0.0], [3.0, 4.0]]) / 30**0.5)
    torch.testing.assert_close(b.grad, torch.tensor([1.0, -2.0]) / 30**0.5)

    p = torch.nn.Parameter(torch.ones(3, 2))
    at_anchor = proximity([("w", p)], {"w": torch.ones(3, 2)})
    at_anchor.backward()
    assert float(at_anchor.detach()) < 1e-6
    assert torch.equal(p.grad, torch.zeros(3, 2))  # finite, and exactly zero


def _head_weights(session: RefineSession) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in session.model.head_state()["weights"].items()}


def test_proximity_pulls_each_step_back_towards_the_pretrained_head(model2, scene, config):
    """With plain SGD the proximity term adds ``-lr * alpha * (W - W0) / ||W - W0||``.

    Its gradient is zero at the pre-trained head, so the first step is the same with and
    without it (and finite however large alpha is); the second step then differs by
    exactly that vector, computed here from the weights after one step.
    """
    image, kinds = scene
    scribbles = _dim_as_background(kinds, [0, 1, 2, 3])
    lr, alpha = 1e-3, 10.0
    plain = config.replace(learning_rate=lr, momentum=0.0, proximity_weight=0.0, max_iterations=1)

    def head_after(steps: int, weight: float) -> dict[str, torch.Tensor]:
        cfg = plain.replace(max_iterations=steps, proximity_weight=weight)
        session = RefineSession(model2, image, cfg)
        result = session.run(scribbles)
        assert result.iterations == steps and result.violations > 0
        return _head_weights(session)

    w0 = _head_weights(RefineSession(model2, image, plain))
    w1 = head_after(1, 0.0)
    one_step_with = head_after(1, alpha)
    for name in w0:
        assert torch.isfinite(one_step_with[name]).all()
        torch.testing.assert_close(one_step_with[name], w1[name], rtol=0, atol=1e-7)
    norm = float(torch.sqrt(sum(((w1[n] - w0[n]) ** 2).sum() for n in w0)))
    assert norm > 0
    without, with_proximity = head_after(2, 0.0), head_after(2, alpha)
    for name in w0:
        pull = -lr * alpha * (w1[name] - w0[name]) / norm
        torch.testing.assert_close(with_proximity[name] - without[name], pull, rtol=1e-3, atol=1e-7)


def test_scribble_zero_is_ignored_not_background(model2, scene, config):
    """Only scribbled pixels count: scribbling nucleus alone cannot push others to background."""
    image, kinds = scene
    session = RefineSession(model2, image, config)
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(scribbles, kinds, 2, [0], value=2)  # dim disk -> nucleus (already mostly)
    result = session.run(scribbles)
    assert result.n_scribbled == int((scribbles > 0).sum())
    assert fraction(session.predict(), kinds == 1, 1) > 0.95


# --------------------------------------------------------------------------- frozen parts
def test_trunk_and_batchnorm_stay_frozen(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    net = session.model.network
    head_ids = {id(p) for p in session.model.head_module.parameters()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    session.run(_dim_as_background(kinds, [0, 1]))
    assert not net.training
    assert all(not m.training for m in net.modules())
    after = net.state_dict()
    named = dict(net.named_parameters())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the head should have changed"
    for key in changed:
        assert key in named and id(named[key]) in head_ids, key
    for key in before:
        if "running_" in key:
            assert torch.equal(before[key], after[key])
    assert all(not p.requires_grad for p in net.parameters())


def test_session_does_not_modify_callers_model(model2, scene, config):
    image, kinds = scene
    before = {k: v.clone() for k, v in model2.network.state_dict().items()}
    RefineSession(model2, image, config).run(_dim_as_background(kinds, [0, 1]))
    for k, v in model2.network.state_dict().items():
        assert torch.equal(before[k], v)


# --------------------------------------------------------------------------- history
def test_undo_redo_reset_are_exact(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    p0 = session.predict()
    session.run(_dim_as_background(kinds, [0, 1]))
    p1 = session.predict()
    assert not np.array_equal(p0, p1)
    back = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(back, kinds, 2, [0, 1, 2, 3], value=2)  # dim disks are nuclei after all
    assert session.run(back).iterations > 0
    p2 = session.predict()
    assert session.history_labels == ["pre-trained", "refine", "refine"]

    assert session.undo()
    np.testing.assert_array_equal(session.predict(), p1)
    assert session.undo()
    np.testing.assert_array_equal(session.predict(), p0)
    assert not session.undo()
    assert session.redo()
    np.testing.assert_array_equal(session.predict(), p1)
    assert session.redo()
    np.testing.assert_array_equal(session.predict(), p2)
    assert not session.redo()

    assert session.reset()
    np.testing.assert_array_equal(session.predict(), p0)
    assert not session.reset()  # already pre-trained
    assert session.undo()  # reset is undoable
    np.testing.assert_array_equal(session.predict(), p2)


def test_scribbles_are_pinned_in_the_prediction_and_follow_history(model2, scene, config):
    image, kinds = scene
    one_step = config.replace(max_iterations=1, learning_rate=1e-4, region_growing=False)
    scribbles = _dim_as_background(kinds, [0, 1, 2, 3])
    marked, target = scribbles > 0, scribbles - 1
    raw = RefineSession(model2, image, one_step.replace(pin_scribbles=False))
    assert raw.run(scribbles).violations > 0  # one tiny step does not fit them
    assert np.any(raw.prediction[marked] != target[marked])

    session = RefineSession(model2, image, one_step)
    p0 = session.predict()
    result = session.run(scribbles)
    assert result.violations > 0  # the head is the same as without pinning ...
    np.testing.assert_array_equal(result.prediction[marked], target[marked])  # ... shown pinned
    np.testing.assert_array_equal(result.prediction[~marked], raw.prediction[~marked])
    scribbles[:] = 0  # the caller's later edits do not move the pins
    np.testing.assert_array_equal(session.predict(), result.prediction)
    assert session.undo()
    np.testing.assert_array_equal(session.predict(), p0)
    assert session.redo()
    np.testing.assert_array_equal(session.predict(), result.prediction)
    assert session.reset()
    np.testing.assert_array_equal(session.predict(), p0)


def test_erased_scribbles_are_unpinned_even_without_a_step(model2, scene, config):
    image, kinds = scene
    one_step = config.replace(max_iterations=1, learning_rate=1e-4)
    session = RefineSession(model2, image, one_step)
    wrong = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(wrong, kinds, 1, [0], value=1)  # "this bright nucleus is background"
    right = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(right, kinds, 1, [1], value=2)  # a nucleus the head already gets right
    first = session.run(wrong + right)
    assert first.iterations == 1
    assert np.all(session.prediction[wrong > 0] == 0)  # pinned, though the head disagrees
    second = session.run(right)  # the user erased the wrong stroke
    assert second.iterations == 0 and second.violations == 0
    raw = session.model.head(session.features).argmax(1)[0].numpy()
    np.testing.assert_array_equal(session.prediction[wrong > 0], raw[wrong > 0])
    assert np.any(session.prediction[wrong > 0] == 1)
    assert session.undo()  # back to the first refinement, with its pins
    np.testing.assert_array_equal(session.predict(), first.prediction)


def test_grown_scribbles_are_pinned(model2, scene, config):
    image, kinds = scene
    one_step = config.replace(max_iterations=1, learning_rate=1e-4, region_growing=True)
    session = RefineSession(model2, image, one_step)
    result = session.run(_dim_as_background(kinds, [0, 1]))
    grown = result.grown_scribbles
    assert grown is not None and np.count_nonzero(grown) > np.count_nonzero(
        _dim_as_background(kinds, [0, 1])
    )
    np.testing.assert_array_equal(result.prediction[grown > 0], grown[grown > 0] - 1)


def test_reset_restores_pretrained_weights_bit_for_bit(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    original = {k: v.clone() for k, v in session.model.head_state()["weights"].items()}
    session.run(_dim_as_background(kinds, [0, 1]))
    session.reset()
    for k, v in session.model.head_state()["weights"].items():
        assert torch.equal(v, original[k])


def test_new_refinement_clears_redo(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    session.run(_dim_as_background(kinds, [0, 1]))
    session.undo()
    assert session.can_redo
    session.run(_dim_as_background(kinds, [2, 3]))
    assert not session.can_redo


def test_cancel_keeps_weights_and_undo_restores(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config.replace(learning_rate=0.01))
    p0 = session.predict()
    w0 = {k: v.clone() for k, v in session.model.head_state()["weights"].items()}
    gen = session.refine(_dim_as_background(kinds, [0, 1, 2, 3]))
    for _ in range(3):
        step = next(gen)
        assert not step.finished
    gen.close()  # the GUI's Cancel
    w1 = session.model.head_state()["weights"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert session.can_undo
    assert session.undo()
    np.testing.assert_array_equal(session.predict(), p0)
    assert session.redo()
    for k, v in session.model.head_state()["weights"].items():
        assert torch.equal(v, w1[k])


def test_other_operation_supersedes_a_suspended_refinement(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config.replace(learning_rate=0.01))
    p0 = session.predict()
    gen = session.refine(_dim_as_background(kinds, [0, 1, 2, 3]))
    next(gen)
    session.undo()
    steps, result = _run(gen)
    assert result.stop_reason == "superseded"
    assert len(steps) == 1 and steps[0].finished
    np.testing.assert_array_equal(session.predict(), p0)


# --------------------------------------------------------------------------- classes
def test_multiclass_in_one_pass(model3, scene, config):
    image, kinds = scene
    session = RefineSession(model3, image, config)
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribbles[:4, :20] = 1
    scribble_disks(scribbles, kinds, 1, [0, 1], value=2)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=3)
    result = session.run(scribbles)
    assert result.converged and result.violations == 0
    pred = session.predict()
    assert set(np.unique(pred[scribbles > 0])) == {0, 1, 2}


def test_insert_class_absent_from_first_prediction(model3, scene, config):
    image, kinds = scene
    session = RefineSession(model3, image, config)
    assert not (session.predict() == 2).any()
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=3)  # dim disks are "other"
    scribble_disks(scribbles, kinds, 1, [0], value=2)
    result = session.run(scribbles)
    assert result.converged
    pred = session.predict()
    dim_labels, _ = disk_labels(kinds, 2)
    assert fraction(pred, dim_labels == 1, 2) > 0.9
    assert fraction(pred, np.isin(dim_labels, [3, 4]), 2) > 0.8  # unscribbled ones too
    assert fraction(pred, kinds == 1, 1) > 0.9


def test_add_class_then_refine_and_undo_across_it(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    p0 = session.predict()
    index = session.add_class("dim nucleus", init_from=1)
    assert index == 2 and session.class_names == ["background", "nucleus", "dim nucleus"]
    np.testing.assert_array_equal(session.predict(), p0)  # a copied channel changes nothing
    scribbles = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(scribbles, kinds, 2, [0, 1], value=index + 1)
    scribble_disks(scribbles, kinds, 1, [0], value=2)
    result = session.run(scribbles)
    assert result.converged
    p2 = session.predict()
    dim_labels, _ = disk_labels(kinds, 2)
    assert fraction(p2, np.isin(dim_labels, [3, 4]), 2) > 0.8

    assert session.undo()  # back to just after add_class
    assert session.n_classes == 3
    np.testing.assert_array_equal(session.predict(), p0)
    assert session.undo()  # back to the 2-class pre-trained head
    assert session.class_names == ["background", "nucleus"]
    np.testing.assert_array_equal(session.predict(), p0)
    assert session.model.network.final.weight.shape[0] == 2
    with pytest.raises(ValueError, match="classes"):
        session.refine(scribbles)  # value 3 is unknown again
    assert session.redo() and session.redo()
    np.testing.assert_array_equal(session.predict(), p2)
    session.reset()
    assert session.n_classes == 2
    np.testing.assert_array_equal(session.predict(), p0)


def test_add_class_rejects_bad_arguments(model2, scene, config):
    session = RefineSession(model2, scene[0], config)
    with pytest.raises(ValueError, match="already exists"):
        session.add_class("nucleus", 1)
    with pytest.raises(ValueError, match="init_from"):
        session.add_class("x", 5)
    assert session.n_classes == 2 and not session.can_undo


# --------------------------------------------------------------------------- devices, seeds
def test_device_is_exposed(model2, scene, config):
    session = RefineSession(model2, scene[0], config)
    assert session.device == torch.device("cpu")
    assert "cpu" in session.device_reason.lower()
    auto = RefineSession(model2, scene[0], config.replace(device="auto"))
    assert isinstance(auto.device_reason, str) and auto.device_reason.startswith("auto")


def test_unknown_device_is_rejected(model2, scene, config):
    with pytest.raises(ValueError, match="device"):
        RefineSession(model2, scene[0], config.replace(device="tpu7"))


def test_same_seed_same_predictions(unet2, scene, config):
    image, kinds = scene
    results = []
    for _ in range(2):
        model = TorchModuleModel(copy.deepcopy(unet2), ["background", "nucleus"], size_multiple=2)
        session = RefineSession(model, image, config.replace(seed=3))
        session.run(_dim_as_background(kinds, [0, 1]))
        results.append((session.predict(), session.model.head_state()["weights"]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k, v in results[0][1].items():
        assert torch.equal(v, results[1][1][k])


# --------------------------------------------------------------------------- geometry
def test_stack_scribbles_on_one_slice_fix_another(model2, config):
    rng = np.random.default_rng(11)
    first, kinds0 = disks_scene(rng, size=80, n_bright=3, n_dim=3)
    middle, _ = disks_scene(rng, size=80, n_bright=4, n_dim=0)
    last, kinds2 = disks_scene(rng, size=80, n_bright=3, n_dim=3)
    stack = np.stack([first, middle, last])
    session = RefineSession(model2, stack, config, rgb=False)
    assert session.image_info.is_3d
    assert next(iter(session.features.values())).shape[0] == 3
    before = session.predict()
    assert before.shape == stack.shape
    assert fraction(before[2], kinds2 == 2, 1) > 0.5
    scribbles = np.zeros(stack.shape, dtype=np.int32)
    scribble_disks(scribbles[0], kinds0, 2, [0, 1, 2], value=1)
    scribble_disks(scribbles[0], kinds0, 1, [0], value=2)
    result = session.run(scribbles)
    assert result.converged
    after = session.predict()
    assert fraction(after[2], kinds2 == 2, 0) > 0.8  # slice 2 never scribbled
    assert fraction(after[2], kinds2 == 1, 1) > 0.9


def test_pins_on_a_stack_and_across_add_class(model2, config):
    rng = np.random.default_rng(12)
    first, kinds0 = disks_scene(rng, size=64, n_bright=3, n_dim=3)
    last, _ = disks_scene(rng, size=64, n_bright=3, n_dim=3)
    stack = np.stack([first, last])
    session = RefineSession(
        model2, stack, config.replace(max_iterations=1, learning_rate=1e-4), rgb=False
    )
    scribbles = np.zeros(stack.shape, dtype=np.int32)
    scribble_disks(scribbles[0], kinds0, 2, [0, 1, 2], value=1)
    result = session.run(scribbles)
    assert result.violations > 0
    marked = scribbles > 0
    assert np.all(session.prediction[marked] == 0) and not marked[1].any()
    index = session.add_class("debris", init_from=0)
    np.testing.assert_array_equal(session.predict(), result.prediction)  # pins carried over
    assert session.undo() and session.n_classes == 2
    np.testing.assert_array_equal(session.predict(), result.prediction)
    assert session.redo() and session.n_classes == index + 1


def test_tiled_trunk_equals_untiled(model2, config):
    image, _ = disks_scene(np.random.default_rng(3), size=100, n_bright=6, n_dim=2)
    whole = RefineSession(model2, image, config)
    tiled = RefineSession(model2, image, config, tile_size=32, tile_halo=16)
    for key, value in whole.features.items():
        torch.testing.assert_close(tiled.features[key], value, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tiled.predict(), whole.predict())


def test_spatial_head_trains_on_pixel_items_with_the_same_loss(unet2, scene, config):
    image, kinds = scene
    model = TorchModuleModel(
        unet2, ["background", "nucleus"], head=["dec", "final"], size_multiple=2
    )
    assert model.trunk_is_cached and not model.head_is_pointwise and model.head_halo >= 1
    from napari_scribble_refine.core.objective import (
        build_batches,
        centre_logits,
        scribble_targets,
    )

    session = RefineSession(model, image, config)
    scribbles = _dim_as_background(kinds, [0, 1])
    targets = scribble_targets(scribbles)[None]
    batches = build_batches(session.model, session.features, targets)
    side = 2 * model.head_halo + 1
    assert all(b.centres and b.features["trunk"].shape[-2:] == (side, side) for b in batches)
    with torch.no_grad():
        crop_sum = sum(
            float(
                torch.nn.functional.cross_entropy(
                    centre_logits(session.model, b.features),
                    b.target,
                    ignore_index=-1,
                    reduction="sum",
                )
            )
            for b in batches
        )
        full = session.model.head(session.features)
        full_sum = float(
            torch.nn.functional.cross_entropy(
                full, torch.as_tensor(targets), ignore_index=-1, reduction="sum"
            )
        )
    assert crop_sum == pytest.approx(full_sum, rel=1e-5)
    result = session.run(scribbles)
    assert result.converged


def test_opaque_model_refines_with_full_forward(unet2, scene, config):
    image, kinds = scene
    model = TorchModuleModel(
        unet2, ["background", "nucleus"], head=["up", "final"], size_multiple=2
    )
    assert not model.trunk_is_cached  # the skip connection enters the head
    session = RefineSession(model, image, config)
    assert set(session.features) == {"input"}
    trunk_before = session.model.network.enc1[0].weight.clone()
    result = session.run(_dim_as_background(kinds, [0, 1]))
    assert result.converged
    assert torch.equal(session.model.network.enc1[0].weight, trunk_before)
    session.undo()
    np.testing.assert_array_equal(session.predict(), RefineSession(model, image, config).predict())


def test_rgb_image(unet2, config):
    gray, kinds = disks_scene(np.random.default_rng(2), size=64, n_bright=3)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    mean = torch.nn.Conv2d(3, 1, 1, bias=False)  # a colour front end: the channel mean
    torch.nn.init.constant_(mean.weight, 1 / 3)
    net = torch.nn.Sequential(mean, unet2)
    model = TorchModuleModel(net, ["background", "nucleus"], in_channels=3, size_multiple=2)
    session = RefineSession(model, rgb, config, rgb=True)
    assert session.spatial_shape == (64, 64)
    assert fraction(session.predict(), kinds == 1, 1) > 0.9


# --------------------------------------------------------------------------- inputs
def test_inputs_are_never_modified(model2, scene, config):
    image, kinds = scene
    image = image.copy()
    image.setflags(write=False)
    scribbles = _dim_as_background(kinds, [0, 1])
    scribbles.setflags(write=False)
    image_copy, scribbles_copy = image.copy(), scribbles.copy()
    session = RefineSession(model2, image, config.replace(region_growing=True))
    result = session.run(scribbles)
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(scribbles, scribbles_copy)
    assert result.grown_scribbles is not None
    assert result.n_scribbled >= int((scribbles > 0).sum())


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((32, 32), np.nan, dtype=np.float32), "NaN"),
        (np.where(np.eye(32) > 0, np.inf, 0.5).astype(np.float32), "infinite"),
        (np.full((32, 32), 0.3, dtype=np.float32), "constant"),
        (np.zeros((2, 3, 32, 32), dtype=np.float32), "4D|dimensions"),
    ],
)
def test_bad_images_are_rejected(model2, config, bad, match):
    with pytest.raises(ValueError, match=match):
        RefineSession(model2, bad, config)


def test_bad_scribbles_are_rejected(model2, scene, config):
    image, _ = scene
    session = RefineSession(model2, image, config)
    with pytest.raises(ValueError, match="shape"):
        session.refine(np.zeros((10, 10), dtype=np.int32))
    too_high = np.zeros(image.shape, dtype=np.int32)
    too_high[0, 0] = 5
    with pytest.raises(ValueError, match="classes"):
        session.refine(too_high)
    assert not session.can_undo


def test_no_torch_warnings_during_refine(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.run(_dim_as_background(kinds, [0]))


# --------------------------------------------------------------------------- instances
def test_instances_use_the_adapters_own_postprocessing(model2, scene, config):
    image, _ = scene
    session = RefineSession(model2, image, config)

    def own(class_map, logits, features):
        assert logits.shape[1] == 2 and "trunk" in features
        return (class_map > 0).astype(np.int32) * 7

    session.model.instances = own
    labels, classes = session.instances()
    assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 7}
    assert classes == {7: 1}


def test_instances_fall_back_to_generic_postprocessing(model2, scene, config):
    from scipy import ndimage

    image, kinds = scene
    session = RefineSession(model2, image, config)
    labels, classes = session.instances()
    assert labels.shape == image.shape
    # the disks are apart (no two touch), so each predicted nucleus blob is one instance
    blobs, _ = ndimage.label(session.prediction == 1)
    sizes = np.bincount(blobs.ravel())[1:]
    assert labels.max() == int((sizes >= 10).sum())  # class_map_to_instances' min_size
    np.testing.assert_array_equal(labels > 0, np.isin(blobs, np.flatnonzero(sizes >= 10) + 1))
    bright, n_bright = disk_labels(kinds, 1)
    for disk in range(1, n_bright + 1):  # each bright disk is (mostly) one instance
        ids = labels[bright == disk]
        assert np.bincount(ids).argmax() > 0 and np.mean(ids == np.bincount(ids).argmax()) > 0.9
    assert classes == dict.fromkeys(range(1, labels.max() + 1), 1)


def test_config_argument_overrides_for_one_run(model2, scene, config):
    image, kinds = scene
    session = RefineSession(model2, image, config)
    result = session.run(
        _dim_as_background(kinds, [0, 1]),
        config=config.replace(max_iterations=1, learning_rate=1e-5),
    )
    assert result.iterations == 1
    assert session.config.max_iterations == config.max_iterations


def test_default_config(model2, scene):
    session = RefineSession(model2, scene[0])
    assert isinstance(session.config, RefineConfig)
    assert session.class_names == ["background", "nucleus"]


@pytest.mark.parametrize("head", [None, ["dec", "final"]])
def test_head_runs_in_pieces_without_changing_the_result(monkeypatch, unet2, config, head):
    import napari_scribble_refine.core.final_prediction as final_prediction

    image = disks_scene(np.random.default_rng(4), size=100, n_bright=5)[0][:, :70]
    model = TorchModuleModel(unet2, ["background", "nucleus"], head=head, size_multiple=2)
    session = RefineSession(model, image, config)
    whole, whole_map = session.logits(), session.predict()
    monkeypatch.setattr(final_prediction, "HEAD_CHUNK_PIXELS", 400)
    torch.testing.assert_close(session.logits(), whole, rtol=1e-5, atol=1e-5)
    session._final_prediction.head_changed()  # force the class map to be recomputed in pieces
    np.testing.assert_array_equal(session.predict(), whole_map)


@pytest.mark.parametrize("crf_weight", [0.0, 3.0])
def test_kept_logits_change_no_prediction(monkeypatch, model2, scene, config, crf_weight):
    """The head runs once per state; its kept logits (and the pre-trained head's, kept per
    anchor) give what running the head for every use gives, across a class added and undo.
    """
    import napari_scribble_refine.core.final_prediction as final_prediction
    import napari_scribble_refine.core.kept_logits as kept_logits

    image, kinds = scene
    cfg = config.replace(trust_region=True, crf_weight=crf_weight, crf_weight_bright=crf_weight)
    first = _dim_as_background(kinds, [0, 1])
    second = np.zeros(kinds.shape, dtype=np.int32)
    scribble_disks(second, kinds, 2, [2], value=3)
    runs = []

    def trail() -> list[np.ndarray]:
        session = RefineSession(model2, image, cfg)
        shown = [session.predict()]
        runs.clear()
        session.run(first)
        shown.append(np.array(len(runs)))  # head runs for the refinement's prediction
        shown += [session.predict(), session.logits().numpy()]
        session.add_class("dim nucleus", init_from=1)
        session.run(second)
        shown += [session.predict(), session.logits().numpy()]
        assert session.undo() and session.undo()
        shown.append(session.predict())
        assert session.redo() and session.redo()
        return [*shown, session.predict()]

    def counted(*args, **kwargs):
        runs.append(1)
        return head_pieces(*args, **kwargs)

    head_pieces = final_prediction.head_pieces
    monkeypatch.setattr(final_prediction, "head_pieces", counted)
    kept = trail()
    assert kept[1] == 2  # each head once: the trust region, CRF and class map share them
    monkeypatch.setattr(kept_logits, "LOGITS_CACHE_PIXELS", 0)
    every_use = trail()
    assert every_use[1] == (3 if crf_weight == 0 else 4)
    for a, b in zip(kept[:1] + kept[2:], every_use[:1] + every_use[2:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_opaque_prediction_on_a_non_square_image_matches_the_network(unet2, config):
    image = disks_scene(np.random.default_rng(4), size=100, n_bright=5)[0][:, :70]
    model = TorchModuleModel(
        unet2, ["background", "nucleus"], head=["up", "final"], size_multiple=2
    )
    session = RefineSession(model, image, config)
    x = torch.from_numpy(session.model.normalise_image(image))[None, None]
    with torch.no_grad():
        expected = session.model.network(x)
    torch.testing.assert_close(session.logits(), expected, rtol=1e-5, atol=1e-5)


def test_hovernet_instances_on_a_stack():
    # The HoVer-Net adapter's instance rules are 2D; a (Z, Y, X) session applies them per slice.
    from napari_scribble_refine import load_model
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    planes = [synthetic_fluorescence((96, 96), seed=910_000 + i).image for i in range(3)]
    session = RefineSession(load_model("hovernet-fluo"), np.stack(planes), rgb=False)
    labels, classes = session.instances()
    assert labels.shape == (3, 96, 96)
    ids = set(np.unique(labels[labels > 0]).tolist())
    assert ids and ids == set(classes)
    for z in range(3):  # ids unique over the stack: no id appears in two slices
        others = np.delete(labels, z, axis=0)
        assert not set(np.unique(labels[z][labels[z] > 0]).tolist()) & set(
            np.unique(others[others > 0]).tolist()
        )


def test_colour_image_with_greyscale_model_is_rejected(model2, config):
    rgb = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="greyscale") as info:
        RefineSession(model2, rgb, config, rgb=True)
    assert "rgb2gray" in str(info.value)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_config_n_layers_sets_the_head_depth(n_layers):
    from napari_scribble_refine import load_model
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    model = load_model("hovernet-fluo")
    image = synthetic_fluorescence((64, 64), seed=910_100).image
    session = RefineSession(model, image, RefineConfig(n_layers=n_layers))

    def count(m):
        return sum(p.numel() for p in m.head_module.parameters())

    assert session.model.head_is_pointwise == (n_layers == 1)
    assert (session.model.head_halo > 0) == (n_layers == 3)
    assert (count(session.model) > count(model)) == (n_layers == 3)
    assert model.head_is_pointwise  # the caller's model keeps its own (default) depth


def test_rgba_drops_alpha_with_a_warning_and_predicts_as_rgb():
    """The alpha channel is not stain: an RGBA image segments exactly like its RGB part."""
    from napari_scribble_refine import load_model
    from napari_scribble_refine.synthetic.scenes import synthetic_he

    rgb = synthetic_he((96, 96), seed=5).image
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    model = load_model("hovernet-he")
    expected = RefineSession(model, rgb, RefineConfig(device="cpu")).predict()
    with pytest.warns(UserWarning, match="RGBA; the alpha channel is dropped"):
        session = RefineSession(model, rgba, RefineConfig(device="cpu"))
    assert session.image_info.n_channels == 3 and session.spatial_shape == (96, 96)
    np.testing.assert_array_equal(session.predict(), expected)
    assert rgba.shape == (96, 96, 4)  # the caller's array is untouched


@pytest.mark.parametrize("factor", [1e300, 1e-300])
def test_float64_images_at_extreme_scales_segment_like_the_unscaled_image(factor):
    """Percentile scaling in float64: 1e300 or 1e-300 does not overflow or vanish in float32."""
    from napari_scribble_refine import load_model
    from napari_scribble_refine.synthetic.scenes import synthetic_fluorescence

    image = synthetic_fluorescence((96, 96), seed=11).image.astype(np.float64)
    model = load_model("hovernet-fluo")
    expected = RefineSession(model, image, RefineConfig(device="cpu")).predict()
    assert expected.any()
    scaled = RefineSession(model, image * factor, RefineConfig(device="cpu")).predict()
    assert np.mean(scaled == expected) > 0.999


class _MinimalAdapter(SegmentationModel):
    """An adapter with the protocol's abstract members only (the declared defaults do the rest)."""

    head_is_pointwise = True

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.class_names = net, ["background", "nucleus"]

    @property
    def network(self) -> torch.nn.Module:
        return self.net

    @property
    def head_module(self) -> torch.nn.Module:
        return self.net.final

    def features(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(image, dtype=torch.float32, device=self.device)[None, None]
        net = self.net
        with torch.no_grad():
            e1 = net.enc1(x)
            up = net.up(net.enc2(net.pool(e1)))
            return {"dec": net.dec(torch.cat([up, e1], dim=1))}

    def head(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net.final(features["dec"])

    def add_class(self, name: str, init_from: int) -> None:
        raise ValueError("not supported")


def test_an_adapter_with_only_the_abstract_members_refines(unet2, scene, config):
    image, kinds = scene
    model = _MinimalAdapter(unet2)
    assert (model.trunk_halo, model.size_multiple) == (64, 1)  # the declared defaults
    session = RefineSession(model, image, config.replace(n_layers=3))  # a fixed head: 1 layer
    with torch.no_grad():
        own = unet2(torch.as_tensor(image, dtype=torch.float32)[None, None]).argmax(1)[0]
    np.testing.assert_array_equal(session.predict(), own.numpy())
    assert session.run(_dim_as_background(kinds, [0, 1])).converged
    assert fraction(session.predict(), disk_labels(kinds, 2)[0] == 1, 0) > 0.9
