"""The widget's composite controls: refinement settings, the class palette, the action buttons.

None knows layers or the engine beyond
:class:`~napari_scribble_refine.core.config.RefineConfig`; the widget wires them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    Container,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..core.config import RefineConfig
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


class RefineSettings(Container):
    """Refinement parameters with good defaults; the rarely changed ones fold away.

    The settings map onto :class:`RefineConfig` (paper names in brackets), plus two that
    shape point and box feedback.
    """

    def __init__(self) -> None:
        super().__init__(labels=True)
        d = RefineConfig()
        self.iterations = SpinBox(
            label="Iterations (M)", value=d.max_iterations, min=1, max=10_000,
            tooltip="The most optimiser steps one Refine takes.",
        )  # fmt: skip
        self.learning_rate = FloatSpinBox(
            label="Learning rate (η)", value=d.learning_rate, min=1e-5, max=10.0, step=0.01,
            tooltip="Step size of the head's fine-tuning.",
        )  # fmt: skip
        self.alpha = FloatSpinBox(
            label="Proximity (α)", value=d.proximity_weight, min=0.0, max=100.0, step=0.01,
            tooltip="How strongly the tuned head is kept near the pre-trained one.",
        )  # fmt: skip
        for box in (self.learning_rate, self.alpha):
            box.native.setDecimals(4)
        self.region_growing = CheckBox(
            text="Region growing", value=d.region_growing,
            tooltip="Spread each scribble to similar neighbouring pixels before refining.",
        )  # fmt: skip
        self.grow_threshold = FloatSpinBox(
            label="Growing threshold (T)", value=d.grow_threshold, min=0.0, max=1.0, step=0.01,
            tooltip="Largest intensity step (image range scaled to 0-1) a scribble grows over.",
        )  # fmt: skip
        self.show_advanced = CheckBox(
            text="Advanced settings", value=False, tooltip="Show rarely changed settings."
        )
        self.n_layers = SpinBox(
            label="Layers to tune (l)", value=d.n_layers, min=1, max=20,
            tooltip="How many of the network's final layers are fine-tuned.",
        )  # fmt: skip
        self.momentum = FloatSpinBox(
            label="Momentum", value=d.momentum, min=0.0, max=0.99, step=0.05,
            tooltip="SGD momentum (0 = the paper's plain SGD).",
        )  # fmt: skip
        self.stop_fraction = FloatSpinBox(
            label="Stop when correct", value=d.stop_fraction, min=0.01, max=1.0, step=0.05,
            tooltip="Stop once this fraction of scribbled pixels is predicted as its class.",
        )  # fmt: skip
        self.grow_max_distance = SpinBox(
            label="Growing reach (px)", value=d.grow_max_distance, min=0, max=1000,
            tooltip="How far a grown scribble may reach from its stroke.",
        )  # fmt: skip
        self.pin_scribbles = CheckBox(
            text="Show scribbles in the result", value=d.pin_scribbles,
            tooltip="Scribbled (and grown) pixels keep their class in the refined prediction,"
            " even where the tuned layers predict otherwise.",
        )  # fmt: skip
        self.trust_region = CheckBox(
            text="Change only near strokes and look-alikes", value=d.trust_region,
            tooltip="Keep the tuned layers' changes where they touch a stroke of their class or"
            " look like what a stroke corrected; elsewhere the pre-trained result stays.",
        )  # fmt: skip
        self.follow_edges = CheckBox(
            text="Follow image edges", value=d.crf_weight > 0,
            tooltip="An edge-aware CRF aligns the result with the image's edges and settles"
            " uncertain pixels by their neighbours.",
        )  # fmt: skip
        self.type_by_instance = CheckBox(
            text="One class per nucleus", value=d.type_by_instance,
            tooltip="Every nucleus takes the class scribbled on it, else its majority class"
            " (models with several nucleus classes).",
        )  # fmt: skip
        self.point_radius = SpinBox(
            label="Point radius (px)", value=3, min=0, max=100,
            tooltip="Radius of the disk each point constrains.",
        )  # fmt: skip
        self.box_ring = SpinBox(
            label="Box ring (px)", value=3, min=0, max=100,
            tooltip="Width of the background ring outside each box.",
        )  # fmt: skip
        self.seed = SpinBox(
            label="Seed", value=d.seed, min=0, max=2**31 - 1, tooltip="Random seed."
        )
        self.advanced = Container(
            widgets=[
                self.n_layers,
                self.momentum,
                self.stop_fraction,
                self.grow_max_distance,
                self.pin_scribbles,
                self.trust_region,
                self.follow_edges,
                self.type_by_instance,
                self.point_radius,
                self.box_ring,
                self.seed,
            ],
            labels=True,
            visible=False,
        )
        self.extend(
            [
                self.iterations,
                self.learning_rate,
                self.alpha,
                self.region_growing,
                self.grow_threshold,
                self.show_advanced,
                self.advanced,
            ]
        )
        self.show_advanced.changed.connect(self._on_show_advanced)
        self.region_growing.changed.connect(self._on_growing)
        self.margins = (0, 0, 0, 0)

    _NAMES = (
        "iterations",
        "learning_rate",
        "alpha",
        "region_growing",
        "grow_threshold",
        "n_layers",
        "momentum",
        "stop_fraction",
        "grow_max_distance",
        "pin_scribbles",
        "trust_region",
        "follow_edges",
        "type_by_instance",
        "point_radius",
        "box_ring",
        "seed",
    )

    def _on_show_advanced(self, shown: bool) -> None:
        self.advanced.visible = shown

    def _on_growing(self, on: bool) -> None:
        self.grow_threshold.enabled = on

    def apply(self, **settings: Any) -> None:
        """Set some settings by name.

        Parameters
        ----------
        **settings
            Any of ``iterations``, ``learning_rate``, ``alpha``, ``region_growing``,
            ``grow_threshold``, ``n_layers``, ``momentum``, ``stop_fraction``,
            ``grow_max_distance``, ``pin_scribbles``, ``trust_region``, ``follow_edges``,
            ``type_by_instance``, ``point_radius``, ``box_ring``, ``seed``.

        Raises
        ------
        TypeError
            If a name is unknown.
        """
        unknown = set(settings) - set(self._NAMES)
        if unknown:
            raise TypeError(f"Unknown setting(s) {sorted(unknown)}; valid: {sorted(self._NAMES)}")
        for name, value in settings.items():
            getattr(self, name).value = value

    def config(self, device: str) -> RefineConfig:
        """Return the settings as a refinement configuration.

        Parameters
        ----------
        device : str
            The device chosen in the widget.

        Returns
        -------
        RefineConfig
            A validated configuration.
        """
        return RefineConfig(
            max_iterations=self.iterations.value,
            learning_rate=self.learning_rate.value,
            momentum=self.momentum.value,
            proximity_weight=self.alpha.value,
            n_layers=self.n_layers.value,
            stop_fraction=self.stop_fraction.value,
            region_growing=self.region_growing.value,
            grow_threshold=self.grow_threshold.value,
            grow_max_distance=self.grow_max_distance.value,
            pin_scribbles=self.pin_scribbles.value,
            trust_region=self.trust_region.value,
            crf_weight=RefineConfig.crf_weight if self.follow_edges.value else 0.0,
            type_by_instance=self.type_by_instance.value,
            seed=self.seed.value,
            device=device,
        )


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
