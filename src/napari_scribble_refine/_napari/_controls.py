"""The widget's composite controls: the class palette and the action buttons.

Neither knows layers or the engine; the widget wires them. (The settings form is
:mod:`._settings_form`.)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, ProgressBar, PushButton

from ._layers import scribble_colour_hex

if TYPE_CHECKING:
    from ..core.session import RefineSession

SHORTCUTS = {
    "predict": "Shift-P",
    "refine": "Shift-R",
    "undo": "Shift-Z",
    "redo": "Shift-Y",
    "commit": "Shift-C",
}
"""The widget's keys: action -> napari key binding."""


def _text_on(colour: str) -> str:
    """Black or white, whichever reads better on a ``#rrggbb`` background."""
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


class ClassPalette(Container):
    """One coloured, checkable button per class; clicking one chooses what the brush marks.

    Parameters
    ----------
    on_select : callable
        Called with the class index when the user clicks a button.
    """

    def __init__(self, on_select: Callable[[int], None]) -> None:
        super().__init__(layout="horizontal", labels=False, label="Brush")
        self.tooltip = "The class the brush, new points and new boxes mark."
        self._on_select = on_select
        self.selected = 1

    def set_classes(self, class_names: list[str]) -> None:
        """Show one button per class.

        Parameters
        ----------
        class_names : list of str
            Class names, index 0 = background.
        """
        self.clear()
        for index, name in enumerate(class_names):
            button = PushButton(text=name, tooltip=f"Paint '{name}' (scribble value {index + 1})")
            button.native.setCheckable(True)
            colour = scribble_colour_hex(index)
            button.native.setStyleSheet(
                f"QPushButton {{ border: 2px solid {colour}; padding: 2px 6px; }}"
                f"QPushButton:checked {{ background-color: {colour}; color: {_text_on(colour)}; }}"
            )
            button.changed.connect(partial(self._clicked, index))
            self.append(button)
        self.show_selected(min(self.selected, len(class_names) - 1))

    def _clicked(self, index: int, *_: Any) -> None:
        self._on_select(index)

    def show_selected(self, index: int) -> None:
        """Check the button of one class (without calling back).

        Parameters
        ----------
        index : int
            Class index.
        """
        self.selected = index
        for i, button in enumerate(self):
            button.native.blockSignals(True)
            button.native.setChecked(i == index)
            button.native.blockSignals(False)


def row(*widgets: Any) -> Container:
    """Lay widgets out side by side, without labels.

    Parameters
    ----------
    *widgets
        magicgui widgets.

    Returns
    -------
    magicgui.widgets.Container
        The row.
    """
    return Container(widgets=list(widgets), layout="horizontal", labels=False)


class ActionButtons:
    """The widget's buttons, the progress bar beside Cancel, and when each is enabled."""

    def __init__(self) -> None:
        keys = SHORTCUTS
        self.add_class = PushButton(
            text="Add class",
            tooltip="Add the named class to the model as a copy of the class chosen above "
            "(undoable); paint it, then Refine.",
        )
        self.predict = PushButton(
            text="Predict",
            tooltip=f"Segment the image with the current model ({keys['predict']}).",
        )
        self.refine = PushButton(
            text="Refine",
            tooltip=f"Fine-tune the model's head on your scribbles ({keys['refine']}).",
        )
        self.cancel = PushButton(
            text="Cancel", tooltip="Stop after the current step; the result stays undoable."
        )
        self.undo = PushButton(text="Undo", tooltip=f"Undo the last refinement ({keys['undo']}).")
        self.redo = PushButton(text="Redo", tooltip=f"Redo the undone refinement ({keys['redo']}).")
        self.reset = PushButton(
            text="Reset model", tooltip="Forget all refinements: back to the pre-trained model."
        )
        self.commit = PushButton(
            text="Commit",
            tooltip="Copy the nuclei and their types into a layer of your own "
            f"({keys['commit']}); later refinements leave it alone.",
        )
        self.export = PushButton(
            text="Export…",
            tooltip="Write the nuclei as TIFF labels, a CSV of types and GeoJSON polygons.",
        )
        self.apply = PushButton(
            text="Apply to others",
            tooltip="Predict the other open images with the tuned model; each keeps its own "
            "session to refine further.",
        )
        self.save_model = PushButton(
            text="Save model…",
            tooltip="Save the tuned model to a file; Model > From file… loads it again.",
        )
        self.progress = ProgressBar(value=0, min=0, max=1)
        self.progress.tooltip = "Refinement steps taken of the most (max_iterations)."

    def rows(self) -> list[Container]:
        """Return the rows of buttons under the settings, in order."""
        return [
            row(self.predict, self.refine),
            row(self.progress, self.cancel),
            row(self.undo, self.redo, self.reset),
            row(self.commit, self.export),
            row(self.save_model, self.apply),
        ]

    def update(
        self,
        *,
        busy: bool,
        refining: bool,
        has_image: bool,
        session: RefineSession | None,
        shown: bool,
        others: bool,
    ) -> None:
        """Enable what can be done now.

        Parameters
        ----------
        busy : bool
            A task is running.
        refining : bool
            The running task is a refinement (Cancel stops it).
        has_image : bool
            An image is chosen.
        session : RefineSession or None
            The chosen image's session.
        shown : bool
            The chosen image's nuclei are shown (Commit, Export).
        others : bool
            Other images are open (Apply to others).
        """
        idle = not busy
        changed = session is not None and session.history_position > 0
        self.predict.enabled = idle and has_image
        self.refine.enabled = idle and has_image
        self.cancel.enabled = busy and refining
        self.undo.enabled = idle and bool(session is not None and session.can_undo)
        self.redo.enabled = idle and bool(session is not None and session.can_redo)
        self.reset.enabled = idle and changed  # nothing to reset right after Predict
        self.add_class.enabled = idle and session is not None
        self.commit.enabled = idle and shown
        self.export.enabled = idle and shown
        savable = session is not None and bool(session.model.save_suffixes)
        self.save_model.enabled = idle and savable
        self.apply.enabled = idle and changed and others
