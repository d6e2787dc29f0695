"""The refinement settings form, generated from :class:`RefineConfig`'s fields.

One control per field, named as the field (``max_iterations``), of the field's type, with
its default, and with the numpydoc "Parameters" text of ``RefineConfig`` as its tooltip. A
few settings show; the rest fold away under "Advanced settings". Values are not limited by
the controls: the config checks them, and its own message says what is wrong.
"""

from __future__ import annotations

import ast
import difflib
import html
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox
from magicgui.widgets.bases import ValueWidget
from superqt import QCollapsible

from ..core.config import RefineConfig
from ._tasks import Feedback

SHOWN = ("max_iterations", "learning_rate", "proximity_weight", "region_growing", "grow_threshold")
"""The settings shown by default (the paper's M, eta, alpha and region growing with T)."""

NOT_IN_FORM = ("device",)
"""Fields set elsewhere in the widget (the Device picker)."""

PROMPT_SETTINGS = {
    "point_radius": "Radius (px) of the disk each point of a Points layer constrains.",
    "box_ring": "Width (px) of the background ring outside each box of a Shapes layer.",
}
"""Settings of the point and box feedback (:class:`~._tasks.Feedback`), not of the config."""

NEEDS = {
    "grow_threshold": "region_growing",
    "grow_max_distance": "region_growing",
    "grow_cap": "region_growing",
    "grown_weight": "region_growing",
    "grow_similar": "region_growing",
    "trust_reach": "trust_region",
    "local_similar": "trust_region",
    "spread": "trust_region",
    "spread_confidence": "trust_region",
    "spread_margin": "trust_region",
    "type_spread_margin": "type_spread",
    "type_prior_weight": "type_classifier",
}
"""Settings that matter only when a switch is on (disabled while it is off)."""

_SYMBOLS = {"eta": "η", "alpha": "α", "lambda": "λ"}
_INT_RANGE = (-1_000_000, 2**31 - 1)
_FLOAT_RANGE = (-10_000.0, 10_000.0)


def parameter_docs(cls: type) -> dict[str, tuple[str, str]]:
    """Read the numpydoc "Parameters" section of a class's docstring.

    Parameters
    ----------
    cls : type
        The class (e.g. :class:`RefineConfig`).

    Returns
    -------
    dict of str to (str, str)
        Parameter name -> (its type text, its description as one paragraph).
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, tuple[str, str]] = {}
    try:
        start = lines.index("Parameters") + 2
    except ValueError:
        return docs
    name, kind, text = None, "", []
    for line, following in zip(lines[start:], [*lines[start + 1 :], ""], strict=True):
        if following.startswith("---"):  # the next section's title
            break
        if line and not line.startswith(" "):
            if name is not None:
                docs[name] = (kind, " ".join(text))
            name, _, kind = (part.strip() for part in line.partition(":"))
            text = []
        elif line.strip():
            text.append(line.strip())
    if name is not None:
        docs[name] = (kind, " ".join(text))
    return docs


def _plain(text: str) -> str:
    """Drop reStructuredText markup: ``x`` -> x, :mod:`~a.b` -> b."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _label(name: str, description: str) -> str:
    """Return the field's name, readable, with the paper's symbol when the text has one."""
    label = name.replace("_", " ").capitalize()
    symbol = re.match(r"(\w|eta|alpha|lambda), ", description)
    return f"{label} ({_SYMBOLS.get(symbol[1], symbol[1])})" if symbol else label


def _tooltip(name: str, default: Any, description: str) -> str:
    text = html.escape(_plain(description) or "A refinement setting.")
    return f"<qt><b>{name}</b> (default {html.escape(repr(default))}): {text}</qt>"


def _choices(kind: str) -> list[str] | None:
    """Return the values of a numpydoc set type such as ``{"sgd", "adam"}``, else None."""
    if not (kind.startswith("{") and kind.endswith("}")):
        return None
    try:
        return [str(v) for v in ast.literal_eval(f"[{kind[1:-1]}]")]
    except (ValueError, SyntaxError):
        return None


def _step(default: float) -> float:
    return 10.0 ** math.floor(math.log10(abs(default))) if default else 0.01


def make_control(name: str, kind: str, default: Any, label: str, tooltip: str) -> ValueWidget:
    """Return the control for one setting of type ``kind`` (``"bool"``, ``"int"``, ...).

    Parameters
    ----------
    name : str
        The setting's name (the control's name).
    kind : str
        The field's type; a string field whose docstring type lists its values (``{"a",
        "b"}``) becomes a choice.
    default : Any
        Its default.
    label : str
        Its label.
    tooltip : str
        Its tooltip.

    Returns
    -------
    magicgui.widgets.bases.ValueWidget
        A check box, spin box, choice or text box; numbers are not limited to the valid
        range, which the config checks.
    """
    common = {"name": name, "value": default, "tooltip": tooltip}
    if kind == "bool":
        return CheckBox(text=label, **common)
    if kind == "int":
        return SpinBox(label=label, min=_INT_RANGE[0], max=_INT_RANGE[1], **common)
    if kind == "float":
        low, high = _FLOAT_RANGE
        box = FloatSpinBox(label=label, min=low, max=high, step=_step(default), **common)
        box.native.setDecimals(4)
        return box
    if kind.startswith("{"):
        return ComboBox(label=label, choices=_choices(kind), **common)
    return LineEdit(label=label, **common)


class RefineSettings(Container):
    """The refinement settings: one control per :class:`RefineConfig` field, and two more.

    Parameters
    ----------
    on_invalid : callable, optional
        Called with the config's own message when a change makes the settings invalid
        (the widget shows it in its status line).

    Attributes
    ----------
    inputs : dict of str to ValueWidget
        The control of each setting, by name (config fields, then ``point_radius`` and
        ``box_ring``).
    advanced : magicgui.widgets.Container
        The settings under "Advanced settings".
    collapsible : superqt.QCollapsible
        The fold that holds :attr:`advanced`.
    """

    def __init__(self, on_invalid: Callable[[str], None] | None = None) -> None:
        super().__init__(labels=True)
        self._on_invalid = on_invalid
        docs = parameter_docs(RefineConfig)
        self.inputs: dict[str, ValueWidget] = {}
        for field in fields(RefineConfig):
            if field.name in NOT_IN_FORM:
                continue
            kind = field.type if isinstance(field.type, str) else field.type.__name__
            doc_kind, description = docs.get(field.name, ("", ""))
            if kind == "str" and _choices(doc_kind):
                kind = doc_kind
            default = field.default if field.default is not MISSING else None
            self.inputs[field.name] = make_control(
                field.name,
                kind,
                default,
                _label(field.name, description),
                _tooltip(field.name, default, description),
            )
        for name, description in PROMPT_SETTINGS.items():
            default = getattr(Feedback, name)
            self.inputs[name] = make_control(
                name, "int", default, _label(name, ""), _tooltip(name, default, description)
            )
        self.extend([self.inputs[name] for name in SHOWN])
        self.advanced = Container(
            widgets=[w for name, w in self.inputs.items() if name not in SHOWN], labels=True
        )
        self.collapsible = QCollapsible("Advanced settings")
        self.collapsible.setToolTip("Rarely changed settings (hover one for what it does).")
        self.collapsible.addWidget(self.advanced.native)
        self.native.layout().addWidget(self.collapsible)
        for name, switch in NEEDS.items():
            if name in self.inputs and switch in self.inputs:
                self.inputs[switch].changed.connect(self._enable_dependants)
        for control in self.inputs.values():
            control.changed.connect(self._check)
        self._enable_dependants()
        self.margins = (0, 0, 0, 0)

    @property
    def names(self) -> list[str]:
        """Every setting's name."""
        return list(self.inputs)

    def _enable_dependants(self, *_: Any) -> None:
        for name, switch in NEEDS.items():
            if name in self.inputs and switch in self.inputs:
                self.inputs[name].enabled = bool(self.inputs[switch].value)

    def values(self) -> dict[str, Any]:
        """Return the value of every setting, by name."""
        return {name: control.value for name, control in self.inputs.items()}

    def apply(self, **settings: Any) -> None:
        """Set some settings by name.

        Parameters
        ----------
        **settings
            Any of :attr:`names`: a :class:`RefineConfig` field (but ``device``),
            ``point_radius`` or ``box_ring``.

        Raises
        ------
        TypeError
            If a name is unknown (the message suggests the closest names).
        """
        unknown = sorted(set(settings) - set(self.inputs))
        if unknown:
            hints = {
                name: difflib.get_close_matches(name, self.inputs, n=1, cutoff=0.5)
                for name in unknown
            }
            hint = "; ".join(f"{n}: did you mean {m[0]}?" for n, m in hints.items() if m)
            raise TypeError(
                f"Unknown setting(s) {unknown}{f' ({hint})' if hint else ''}; "
                f"valid: {', '.join(self.inputs)}"
            )
        for name, value in settings.items():
            self.inputs[name].value = value

    def config(self, device: str = "auto") -> RefineConfig:
        """Return the settings as a refinement configuration.

        Parameters
        ----------
        device : str
            The device chosen in the widget.

        Returns
        -------
        RefineConfig
            The configuration.

        Raises
        ------
        ValueError, TypeError
            With the config's own message when a setting is not valid.
        """
        values = self.values()
        for name in PROMPT_SETTINGS:
            values.pop(name)
        return RefineConfig(**values, device=device)

    def _check(self, *_: Any) -> None:
        """Mark the setting the config rejects, and report its message."""
        try:
            self.config()
        except (ValueError, TypeError) as error:
            wrong = re.search(r"RefineConfig\.(\w+)", str(error))
            self._mark(wrong[1] if wrong else None)
            if self._on_invalid is not None:
                self._on_invalid(str(error))
        else:
            self._mark(None)

    def _mark(self, wrong: str | None) -> None:
        for name, control in self.inputs.items():
            control.native.setStyleSheet("border: 2px solid #e03030;" if name == wrong else "")
