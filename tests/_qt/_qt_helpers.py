"""Helpers shared by the widget tests."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt


def truth_scribbles(types: np.ndarray, every: int = 6) -> np.ndarray:
    """Scribbles that follow the ground truth on every ``every``-th row (value = class + 1)."""
    scribbles = np.zeros(types.shape, np.uint8)
    rows = np.zeros(types.shape, bool)
    rows[..., ::every, :] = True
    scribbles[rows] = types[rows] + 1
    return scribbles


def click(qtbot, button, widget=None) -> None:
    """Click a magicgui button with the mouse; with ``widget``, wait until its task is done."""
    assert button.enabled, f"{button.text} is disabled"
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)
    if widget is not None:
        widget.wait()


def press(qtbot, target, shortcut: str) -> None:
    """Press a napari-style shortcut such as ``"Shift-R"`` on a Qt widget."""
    modifier, key = shortcut.split("-")
    assert modifier == "Shift"
    qtbot.keyClick(target, getattr(Qt.Key, f"Key_{key}"), Qt.KeyboardModifier.ShiftModifier)
