"""Undo / redo / reset of a model's head: a linear list of exact weight snapshots."""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .config import RefineConfig
from .models.base import HeadState, SegmentationModel

Anchor = dict[str, torch.Tensor]
"""The proximity term's reference W: head parameter name -> pre-trained value."""

_KEEP = object()
"""``push``'s default for ``constraints``: carry the current entry's over."""

DEFAULT_BUDGET_MB = 1024.0
"""Default memory budget of one undo history (about 15 states of an 8192² image)."""


def _nbytes(value: object) -> int:
    """Bytes held by a tensor, an array, or the tensors inside (nested) dicts of them."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0  # class names and other small bookkeeping


def grown_anchor(anchor: Anchor, head: torch.nn.Module) -> Anchor:
    """Return the proximity reference of a head whose output layer just grew (a new class).

    Parameters
    ----------
    anchor : Anchor
        The reference before the class was added.
    head : torch.nn.Module
        The head with its new class.

    Returns
    -------
    Anchor
        Per parameter: the old reference where the shape is unchanged (the current value
        where there was none), else the old reference with the new part's current values
        appended along the axis that grew.
    """
    grown = {}
    for pname, p in head.named_parameters():
        ref = anchor.get(pname)
        current = p.detach().clone()
        if ref is None or ref.shape == current.shape:
            grown[pname] = current if ref is None else ref
            continue
        axis = next(
            i for i, (a, b) in enumerate(zip(ref.shape, current.shape, strict=True)) if a != b
        )
        extra = current.narrow(axis, ref.shape[axis], current.shape[axis] - ref.shape[axis])
        grown[pname] = torch.cat([ref.to(current.device), extra], dim=axis)
    return grown


@dataclass(frozen=True, eq=False)
class Constraints:
    """The scribbles a head state was tuned on, and how its prediction uses them.

    Attributes
    ----------
    scribbles : numpy.ndarray
        Read-only scribbles (0 none, c + 1 class c; grown ones included).
    pinned : bool
        Show them as their class over the prediction (``RefineConfig.pin_scribbles``).
    settings : RefineConfig
        The refinement's settings (its trust-region, CRF and instance-typing settings
        decide the prediction).
    """

    scribbles: np.ndarray
    pinned: bool
    settings: RefineConfig


@dataclass(frozen=True)
class _Packed:
    """Constraints of a state the cursor is not on, their scribbles zlib-compressed.

    Scribbles are mostly zeros, so a 512² array of 262 KB packs into a few KB; only the
    current state's are kept as an array (and any that would not shrink).
    """

    data: bytes
    shape: tuple[int, ...]
    dtype: np.dtype
    pinned: bool
    settings: RefineConfig

    @classmethod
    def pack(cls, constraints: Constraints) -> _Packed:
        """Compress the scribbles of ``constraints``."""
        marks = np.ascontiguousarray(constraints.scribbles)
        return cls(
            zlib.compress(marks.tobytes(), 1),
            marks.shape,
            marks.dtype,
            constraints.pinned,
            constraints.settings,
        )

    def unpack(self) -> Constraints:
        """Return the constraints with a new read-only scribble array."""
        marks = np.frombuffer(zlib.decompress(self.data), self.dtype).reshape(self.shape)
        return Constraints(marks, self.pinned, self.settings)  # frombuffer: read-only


@dataclass
class _Entry:
    label: str
    state: HeadState | None  # None: the model's live weights, not yet copied
    anchor: Anchor
    constraints: Constraints | _Packed | None = None  # scribbles this state was tuned on


class HeadHistory:
    """Snapshots of a model's head after each change, with a cursor for undo and redo.

    Entry 0 is the pre-trained head; it is never modified, so resetting restores it
    bit for bit. The newest entry may be *live*: the weights a running refinement is
    changing, copied only when the history next needs them.

    The snapshots and their scribbles are kept within a memory budget. The current state's
    scribbles are an array (1 byte per pixel); the other states' are zlib-compressed (a
    few KB for a 512² image). When a new entry takes the history over the budget, the
    oldest states after the pre-trained one are dropped, with a warning that says so (undo
    then goes back less far; reset still restores the pre-trained head).

    Parameters
    ----------
    model : SegmentationModel
        The model whose head is tracked.
    budget_mb : float
        The budget in MB (at least the pre-trained state and the newest one are kept).
    """

    def __init__(self, model: SegmentationModel, budget_mb: float = DEFAULT_BUDGET_MB) -> None:
        if not budget_mb > 0:
            raise ValueError(f"budget_mb must be a number > 0, got {budget_mb!r}")
        self._budget = float(budget_mb) * 2**20
        self.dropped = 0
        self._model = model
        anchor = {n: p.detach().clone() for n, p in model.head_module.named_parameters()}
        self._entries = [_Entry("pre-trained", model.head_state(), anchor)]
        self._pos = 0

    # ------------------------------------------------------------------ queries
    @property
    def position(self) -> int:
        """Index of the current entry (0 = pre-trained)."""
        return self._pos

    @property
    def labels(self) -> list[str]:
        """What each entry was created by, oldest first."""
        return [e.label for e in self._entries]

    @property
    def can_undo(self) -> bool:
        """True when there is an earlier state."""
        return self._pos > 0

    @property
    def can_redo(self) -> bool:
        """True when an undone state can be restored."""
        return self._pos < len(self._entries) - 1

    @property
    def anchor(self) -> Anchor:
        """Pre-trained head parameters matching the current head's shapes."""
        return self._entries[self._pos].anchor

    @property
    def constraints(self) -> Constraints | None:
        """The scribbles the current state was tuned on (None: none)."""
        entry = self._entries[self._pos]
        if isinstance(entry.constraints, _Packed):
            entry.constraints = entry.constraints.unpack()
        return entry.constraints

    @property
    def pins(self) -> np.ndarray | None:
        """Scribbles (0 none, c + 1 class c) pinned over the current state's prediction."""
        c = self.constraints
        return c.scribbles if c is not None and c.pinned else None

    @property
    def is_pretrained(self) -> bool:
        """True when the current state is entry 0 or a reset to it, unchanged since."""
        entry = self._entries[self._pos]
        return entry.state is not None and (self._pos == 0 or entry.state is self._entries[0].state)

    # ------------------------------------------------------------------ changes
    def freeze(self) -> None:
        """Copy live weights into the current entry, if it is live."""
        entry = self._entries[self._pos]
        if entry.state is None:
            entry.state = self._model.head_state()

    def _leave(self) -> None:
        """Freeze the current entry and pack its scribbles: the cursor is about to move."""
        self.freeze()
        entry = self._entries[self._pos]
        if isinstance(entry.constraints, Constraints):
            packed = _Packed.pack(entry.constraints)
            if len(packed.data) < entry.constraints.scribbles.nbytes:  # only when it saves
                entry.constraints = packed

    def push_live(self, label: str, constraints: Constraints | None = None) -> None:
        """Start a new entry for weights about to change in place (a refinement).

        Parameters
        ----------
        label : str
            What makes the change.
        constraints : Constraints, optional
            The scribbles the new state is tuned on (kept as given).
        """
        anchor = self.anchor
        self._leave()
        self._truncate()
        self._entries.append(_Entry(label, None, anchor, constraints))
        self._pos += 1
        self._keep_to_budget()

    def constraints_for(
        self, scribbles: np.ndarray, pinned: bool, settings: RefineConfig, n_classes: int
    ) -> Constraints:
        """Return the constraints of a new state, sharing the current state's equal scribbles.

        Parameters
        ----------
        scribbles : numpy.ndarray
            The scribbles a refinement runs over (0 none, c + 1 class c).
        pinned : bool
            Show them as their class over the prediction.
        settings : RefineConfig
            The refinement's settings.
        n_classes : int
            The model's classes (the copy's dtype: 1 byte per pixel below 255 classes).

        Returns
        -------
        Constraints
            With the current state's array when the scribbles are equal, else a read-only
            copy (later edits of the caller's array change nothing).
        """
        current = self.constraints
        if current is not None and np.array_equal(current.scribbles, scribbles):
            marks = current.scribbles  # one array between equal entries
        else:
            marks = scribbles.astype(np.uint8 if n_classes < 255 else np.int32)
            marks.setflags(write=False)
        return Constraints(marks, bool(pinned), settings)

    def push(
        self,
        label: str,
        anchor: Anchor | None = None,
        constraints: Constraints | None | object = _KEEP,
    ) -> None:
        """Record the model's current head as a new entry (copied now).

        Parameters
        ----------
        label : str
            What made the change.
        anchor : Anchor, optional
            A new proximity reference (after a class was added); default: unchanged.
        constraints : Constraints or None, optional
            The scribbles of the new state (None: none); by default the current ones carry
            over.
        """
        carried = self.constraints if constraints is _KEEP else constraints
        anchor = self.anchor if anchor is None else anchor
        self._leave()
        self._truncate()
        self._entries.append(_Entry(label, self._model.head_state(), anchor, carried))  # type: ignore[arg-type]
        self._pos += 1
        self._keep_to_budget()

    def undo(self) -> bool:
        """Restore the previous entry.

        Returns
        -------
        bool
            False when there was nothing to undo.
        """
        if not self.can_undo:
            return False
        self._leave()
        self._pos -= 1
        self._restore()
        return True

    def redo(self) -> bool:
        """Restore the next entry.

        Returns
        -------
        bool
            False when there was nothing to redo.
        """
        if not self.can_redo:
            return False
        self._leave()
        self._pos += 1
        self._restore()
        return True

    def reset(self) -> bool:
        """Restore the pre-trained head as a new (undoable) entry.

        Returns
        -------
        bool
            False when the head already is the pre-trained one.
        """
        if self.is_pretrained:
            return False
        self._leave()
        self._truncate()
        first = self._entries[0]
        self._entries.append(_Entry("reset", first.state, first.anchor))
        self._pos += 1
        self._restore()
        self._keep_to_budget()
        return True

    @property
    def nbytes(self) -> int:
        """Bytes the history holds (shared arrays and snapshots counted once)."""
        seen: set[int] = set()
        total = 0
        for entry in self._entries:
            state = entry.state if entry.state is not None else self._model.head_state()
            parts = [state, entry.anchor]
            if isinstance(entry.constraints, _Packed):
                total += len(entry.constraints.data)
            elif entry.constraints is not None:
                parts.append(entry.constraints.scribbles)
            for part in parts:
                if part is not None and id(part) not in seen:
                    seen.add(id(part))
                    total += _nbytes(part)
        return total

    def _keep_to_budget(self) -> None:
        """Drop the oldest states after the pre-trained one while over the budget."""
        dropped = []
        while self._pos > 1 and self.nbytes > self._budget:  # keep 0 and the newest
            dropped.append(self._entries.pop(1).label)
            self._pos -= 1
        if dropped:
            self.dropped += len(dropped)
            warnings.warn(
                f"Undo history over its budget of {self._budget / 2**20:g} MB: the oldest "
                f"{len(dropped)} state(s) ({', '.join(dropped)}) can no longer be undone to; "
                "reset still restores the pre-trained model (RefineSession(history_budget_mb"
                "=...) keeps more)",
                UserWarning,
                stacklevel=3,
            )

    def _truncate(self) -> None:
        del self._entries[self._pos + 1 :]

    def _restore(self) -> None:
        state = self._entries[self._pos].state
        assert state is not None
        self._model.load_head_state(state)
