"""Undo / redo / reset of the head (``core/history.py``) on a real model's head.

Expected weights are the tensors the test itself wrote into the head, never values read back
through the history.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_nets import CLASSES2, TinyUNet

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.history import Constraints, HeadHistory, grown_anchor
from napari_scribble_refine.core.models.module import TorchModuleModel


@pytest.fixture
def model() -> TorchModuleModel:
    torch.manual_seed(0)
    return TorchModuleModel(TinyUNet(n_classes=2), CLASSES2, size_multiple=2)


def _weights(model: TorchModuleModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.head_module.named_parameters()}


def _set(model: TorchModuleModel, value: float) -> dict[str, torch.Tensor]:
    """Fill every head parameter with ``value``; return what was written."""
    with torch.no_grad():
        for p in model.head_module.parameters():
            p.fill_(value)
    return _weights(model)


def _assert_weights(model: TorchModuleModel, expected: dict[str, torch.Tensor]) -> None:
    now = _weights(model)
    assert now.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(now[name], value), name


def _two_entries_one_undone(model: TorchModuleModel) -> HeadHistory:
    """A history with entries "first" (weights 1) and "second" (weights 2), one step undone."""
    history = HeadHistory(model)
    _set(model, 1.0)
    history.push("first")
    _set(model, 2.0)
    history.push("second")
    history.undo()
    return history


def _constraints(value: int, pinned: bool) -> Constraints:
    scribbles = np.zeros((4, 4), np.int32)
    scribbles[0, 0] = value
    return Constraints(scribbles, pinned, RefineConfig())


def test_a_new_history_holds_only_the_pretrained_head(model):
    pretrained = _weights(model)
    history = HeadHistory(model)
    assert history.position == 0
    assert history.labels == ["pre-trained"]
    assert not history.can_undo and not history.can_redo
    assert history.is_pretrained
    assert history.constraints is None and history.pins is None
    assert history.anchor.keys() == pretrained.keys()
    for name, value in pretrained.items():
        assert torch.equal(history.anchor[name], value)
    assert history.undo() is False and history.redo() is False
    assert history.reset() is False  # already the pre-trained head
    assert history.labels == ["pre-trained"] and history.position == 0


def test_the_anchor_is_a_copy_that_later_changes_do_not_touch(model):
    pretrained = _weights(model)
    history = HeadHistory(model)
    _set(model, 3.0)
    for name, value in pretrained.items():
        assert torch.equal(history.anchor[name], value)


def test_undo_and_redo_restore_the_exact_weights_of_each_entry(model):
    pretrained = _weights(model)
    history = HeadHistory(model)
    first = _set(model, 1.0)
    history.push("first")
    second = _set(model, 2.0)
    history.push("second")
    assert history.labels == ["pre-trained", "first", "second"]
    assert history.position == 2 and history.can_undo and not history.can_redo
    assert not history.is_pretrained

    assert history.undo() is True
    assert history.position == 1 and history.can_undo and history.can_redo
    _assert_weights(model, first)
    assert history.undo() is True
    assert history.position == 0 and not history.can_undo and history.can_redo
    _assert_weights(model, pretrained)
    assert history.is_pretrained
    assert history.undo() is False
    _assert_weights(model, pretrained)

    assert history.redo() is True
    assert history.position == 1
    _assert_weights(model, first)
    assert history.redo() is True
    assert history.position == 2 and not history.can_redo
    _assert_weights(model, second)
    assert history.redo() is False
    assert history.position == 2
    _assert_weights(model, second)


def test_pushing_after_undo_drops_the_undone_entries(model):
    history = _two_entries_one_undone(model)
    third = _set(model, 3.0)
    history.push("third")
    assert history.labels == ["pre-trained", "first", "third"]
    assert history.position == 2 and not history.can_redo
    history.undo()
    history.redo()
    _assert_weights(model, third)


def test_a_live_entry_is_copied_when_the_history_next_needs_it(model):
    history = HeadHistory(model)
    history.push_live("refine")
    assert history.labels == ["pre-trained", "refine"] and history.position == 1
    assert not history.is_pretrained  # live weights are never "the pre-trained head"
    final = _set(model, 5.0)  # the refinement changes the weights in place afterwards
    assert history.undo() is True  # freezes the live weights before restoring entry 0
    _set(model, -1.0)
    assert history.redo() is True
    _assert_weights(model, final)  # the weights at undo time, not at push_live time


def test_freeze_copies_live_weights_once(model):
    history = HeadHistory(model)
    history.push_live("refine")
    frozen = _set(model, 4.0)
    history.freeze()
    _set(model, 7.0)
    history.freeze()  # already frozen: keeps the first copy
    history.undo()
    history.redo()
    _assert_weights(model, frozen)


def test_push_live_keeps_the_anchor_and_takes_the_given_constraints(model):
    history = HeadHistory(model)
    anchor = history.anchor
    pinned = _constraints(2, pinned=True)
    history.push_live("refine", pinned)
    assert history.anchor is anchor
    assert history.constraints is pinned
    assert history.pins is pinned.scribbles
    history.undo()
    assert history.constraints is None and history.pins is None


def test_push_carries_constraints_over_unless_given(model):
    history = HeadHistory(model)
    pinned = _constraints(2, pinned=True)
    history.push("refine", constraints=pinned)
    assert history.constraints is pinned
    history.push("edit")  # default: the current constraints carry over
    assert history.constraints is pinned
    history.push("clear", constraints=None)
    assert history.constraints is None and history.pins is None
    unpinned = _constraints(3, pinned=False)
    history.push("unpinned", constraints=unpinned)
    assert history.constraints is unpinned
    assert history.pins is None  # constraints that are not pinned pin nothing


def test_push_takes_a_new_anchor_only_when_given(model):
    history = HeadHistory(model)
    old = history.anchor
    history.push("plain")
    assert history.anchor is old
    new = {n: torch.full_like(p, 9.0) for n, p in old.items()}
    history.push("add class", anchor=new)
    assert history.anchor is new
    history.undo()
    assert history.anchor is old


def test_reset_restores_the_pretrained_head_as_a_new_undoable_entry(model):
    pretrained = _weights(model)
    history = HeadHistory(model)
    anchor = history.anchor
    changed = _set(model, 1.5)
    history.push("refine", constraints=_constraints(2, pinned=True))
    assert history.reset() is True
    assert history.labels == ["pre-trained", "refine", "reset"]
    assert history.position == 2 and history.can_undo and not history.can_redo
    _assert_weights(model, pretrained)
    assert history.is_pretrained
    assert history.anchor is anchor
    assert history.constraints is None and history.pins is None
    assert history.reset() is False  # nothing to reset now
    assert history.labels == ["pre-trained", "refine", "reset"]
    assert history.undo() is True
    _assert_weights(model, changed)
    assert not history.is_pretrained


def test_reset_freezes_a_live_entry_first(model):
    history = HeadHistory(model)
    history.push_live("refine")
    live = _set(model, 2.5)
    assert history.reset() is True
    history.undo()
    _assert_weights(model, live)


def test_reset_after_undo_drops_the_undone_entries(model):
    history = _two_entries_one_undone(model)
    assert history.reset() is True
    assert history.labels == ["pre-trained", "first", "reset"]


def test_push_live_after_a_push_moves_to_the_newest_entry(model):
    history = HeadHistory(model)
    first = _set(model, 1.0)
    history.push("first")
    history.push_live("refine")
    assert history.position == 2 and history.labels == ["pre-trained", "first", "refine"]
    assert not history.can_redo
    live = _set(model, 2.0)
    history.undo()
    _assert_weights(model, first)
    history.redo()
    _assert_weights(model, live)


@pytest.mark.filterwarnings("ignore:Undo history over its budget")
def _noise(shape: int | tuple[int, ...], seed: int) -> np.ndarray:
    """Scribble values that zlib cannot shrink, so the history keeps them as arrays."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_sparse_scribbles_of_past_states_are_kept_compressed(model):
    """Before: 1 byte per pixel per state (the soak: 211 MB for 873 states at 512²)."""
    history = HeadHistory(model, budget_mb=1024)
    rng = np.random.default_rng(0)
    states = []
    for i in range(200):
        marks = np.zeros((1024, 1024), np.uint8)
        ys, xs = rng.integers(0, 1024, (2, 40))
        for y, x in zip(ys, xs, strict=True):
            marks[y : y + 5, x : x + 60] = 1 + i % 3  # 40 strokes
        marks.setflags(write=False)
        states.append(marks)
        _set(model, float(i))
        history.push_live(f"refine {i}", Constraints(marks, True, RefineConfig()))
    assert history.dropped == 0
    assert history.nbytes < 2**20 + 200 * 20_000  # the current array and 199 packed ones
    assert history.pins is states[-1]  # the current state's array itself
    for i in (198, 150, 3):
        while history.position > i + 1:
            history.undo()
        pins = history.pins
        np.testing.assert_array_equal(pins, states[i])
        assert not pins.flags.writeable
    while history.redo():
        pass
    np.testing.assert_array_equal(history.pins, states[-1])


def test_the_history_keeps_to_its_memory_budget_dropping_the_oldest_states(model):
    """Each state below holds 1 MB of scribbles that do not compress; a 3.5 MB budget keeps
    three of them."""
    head_bytes = sum(p.numel() * 4 for p in model.head_module.parameters())
    assert head_bytes < 10_000  # the snapshots are small beside the scribbles
    history = HeadHistory(model, budget_mb=3.5)
    scribbles = [_noise((1024, 1024), i) for i in range(1, 6)]
    for i, marks in enumerate(scribbles, start=1):
        _set(model, float(i))
        history.push_live(f"refine {i}", Constraints(marks, True, RefineConfig()))
        if i <= 3:
            assert history.dropped == 0
    # states 4 and 5 each pushed the oldest refinement out, with a warning naming it
    assert history.labels == ["pre-trained", "refine 3", "refine 4", "refine 5"]
    assert history.dropped == 2
    assert 3 * 2**20 < history.nbytes <= 3.5 * 2**20
    live = _weights(model)
    assert history.undo() and history.undo()  # back to "refine 3" ...
    assert history.pins is scribbles[2]
    assert history.undo() and history.is_pretrained  # ... then straight to the pre-trained head
    assert not history.undo()
    history.redo(), history.redo(), history.redo()
    _assert_weights(model, live)


def test_dropping_states_warns_and_reset_still_restores_the_pretrained_head(model):
    pretrained = _weights(model)
    history = HeadHistory(model, budget_mb=1.5)
    big = Constraints(_noise((1024, 1024), 1), True, RefineConfig())
    _set(model, 1.0)
    history.push("first", constraints=big)
    _set(model, 2.0)
    other = Constraints(_noise((1024, 1024), 2), True, RefineConfig())
    with pytest.warns(UserWarning, match=r"budget of 1.5 MB: the oldest 1 state\(s\) \(first\)"):
        history.push("second", constraints=other)
    assert history.labels == ["pre-trained", "second"]
    assert history.reset()
    _assert_weights(model, pretrained)
    with pytest.raises(ValueError, match="budget_mb must be a number > 0"):
        HeadHistory(model, budget_mb=0)


def test_history_bytes_are_the_snapshots_anchor_and_scribbles_counted_once(model):
    head = sum(p.numel() * 4 for p in model.head_module.parameters())  # float32
    history = HeadHistory(model, budget_mb=0.5)  # budgets under 1 MB are fine
    assert history.nbytes == 2 * head  # the pre-trained snapshot and the anchor
    marks = Constraints(_noise((256, 256), 0), True, RefineConfig())
    _set(model, 1.0)
    history.push("first", constraints=marks)
    assert history.nbytes == 3 * head + 256 * 256
    _set(model, 2.0)
    history.push("second")  # carries the same scribbles over: not counted twice
    assert history.nbytes == 4 * head + 256 * 256


def test_exactly_at_budget_nothing_is_dropped_and_one_push_can_drop_several(model):
    head = sum(p.numel() * 4 for p in model.head_module.parameters())
    mb = 2**20
    exact = (5 * head + 3 * mb) / mb  # pre-trained, anchor and three 1 MB states
    history = HeadHistory(model, budget_mb=exact)
    for i in range(1, 4):
        _set(model, float(i))
        history.push(f"s{i}", constraints=Constraints(_noise(mb, i), True, RefineConfig()))
    assert history.dropped == 0 and history.nbytes == exact * mb
    _set(model, 4.0)
    with pytest.warns(UserWarning, match=r"the oldest 2 state\(s\) \(s1, s2\)"):
        history.push("s4", constraints=Constraints(_noise(2 * mb, 4), True, RefineConfig()))
    assert history.labels == ["pre-trained", "s3", "s4"]


def test_the_newest_state_is_kept_even_over_budget_and_the_warning_says_what_to_do(model):
    history = HeadHistory(model, budget_mb=0.001)  # smaller than one head snapshot
    big = Constraints(np.ones((512, 512), np.uint8), True, RefineConfig())
    _set(model, 1.0)
    history.push("only", constraints=big)  # over budget, but nothing older to drop
    assert history.labels == ["pre-trained", "only"] and history.dropped == 0
    _set(model, 2.0)
    expected = (
        "Undo history over its budget of 0.001 MB: the oldest 1 state(s) (only) can no longer "
        "be undone to; reset still restores the pre-trained model "
        "(RefineSession(history_budget_mb=...) keeps more)"
    )
    with pytest.warns(UserWarning) as caught:
        history.push("newer", constraints=big)
    assert [str(w.message) for w in caught] == [expected]
    assert history.labels == ["pre-trained", "newer"]


def test_grown_anchor_keeps_the_old_reference_and_appends_the_new_class_values():
    """A class added to the head: the old rows keep their reference, the new row is current."""
    head = torch.nn.Conv2d(4, 3, 1)  # grew from 2 to 3 output classes
    with torch.no_grad():
        head.weight.copy_(torch.arange(12.0).reshape(3, 4, 1, 1))
        head.bias.copy_(torch.tensor([10.0, 20.0, 30.0]))
    ref_weight = torch.full((2, 4, 1, 1), -1.0)
    anchor = {"weight": ref_weight}  # no reference for the bias yet
    grown = grown_anchor(anchor, head)
    expected = torch.cat([ref_weight, torch.arange(8.0, 12.0).reshape(1, 4, 1, 1)])
    assert torch.equal(grown["weight"], expected)
    assert torch.equal(grown["bias"], torch.tensor([10.0, 20.0, 30.0]))  # current, a copy
    with torch.no_grad():
        head.bias.fill_(0.0)
    assert torch.equal(grown["bias"], torch.tensor([10.0, 20.0, 30.0]))
    same = {"weight": torch.zeros(3, 4, 1, 1), "bias": torch.ones(3)}
    kept = grown_anchor(same, head)  # unchanged shapes keep the reference itself
    assert kept["weight"] is same["weight"] and kept["bias"] is same["bias"]


def test_grown_anchor_appends_along_the_axis_that_grew():
    head = torch.nn.Linear(3, 4)  # an input axis grew from 2 to 3 (axis 1)
    with torch.no_grad():
        head.weight.copy_(torch.arange(12.0).reshape(4, 3))
    anchor = {"weight": torch.zeros(4, 2), "bias": torch.zeros(4)}
    grown = grown_anchor(anchor, head)
    expected = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 5.0], [0.0, 0.0, 8.0], [0.0, 0.0, 11.0]])
    assert torch.equal(grown["weight"], expected)


def test_constraints_for_shares_equal_scribbles_and_copies_new_ones(model):
    history = HeadHistory(model)
    settings = RefineConfig(max_iterations=3)
    scribbles = np.zeros((4, 4), np.int64)
    scribbles[1, 2] = 2
    first = history.constraints_for(scribbles, True, settings, n_classes=2)
    assert first.scribbles.dtype == np.uint8 and not first.scribbles.flags.writeable
    assert np.array_equal(first.scribbles, scribbles) and first.scribbles is not scribbles
    assert first.pinned is True and first.settings is settings
    scribbles[0, 0] = 1  # the caller's later edit changes nothing in the constraints
    assert first.scribbles[0, 0] == 0
    history.push("first", constraints=first)
    again = history.constraints_for(first.scribbles.copy(), False, settings, n_classes=2)
    assert again.scribbles is first.scribbles and again.pinned is False
    other = history.constraints_for(scribbles, True, settings, n_classes=300)
    assert other.scribbles.dtype == np.int32 and other.scribbles is not first.scribbles
