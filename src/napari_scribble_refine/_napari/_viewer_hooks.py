"""What the widget hooks into napari: its keys, the layer list's events and its own closing.

Connected together when the widget is built and let go together when it closes, so that a
closed widget leaves no key binding or event connection behind.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject

from ._controls import SHORTCUTS

if TYPE_CHECKING:
    import napari
    from qtpy.QtWidgets import QWidget


class _CloseWatcher(QObject):
    """Calls back when the widget leaves its dock (napari re-parents it to None on close)."""

    def __init__(self, target: QObject, on_close: Callable[[], None]) -> None:
        super().__init__(target)
        self._on_close = on_close
        target.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        kind = event.type()
        if kind == QEvent.Type.Close or (kind == QEvent.Type.ParentChange and obj.parent() is None):
            self._on_close()
        return False


def named_binding(action: str, run: Callable[[str], None]) -> Callable[[Any], None]:
    """Return a key binding that calls ``run(action)``.

    napari looks up key bindings by their function's ``__name__`` on every key press, so the
    binding is a named function (a ``functools.partial`` has no name and breaks every
    shortcut of the viewer).

    Parameters
    ----------
    action : str
        The action, e.g. ``"refine"``.
    run : callable
        Runs an action by name.

    Returns
    -------
    callable
        A function of the viewer, named ``scribble_refine_<action>``.
    """

    def binding(viewer: Any = None) -> None:
        run(action)

    binding.__name__ = binding.__qualname__ = f"scribble_refine_{action}"
    return binding


class ViewerHooks:
    """The widget's key bindings, layer-list connections and close detection.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    native : QWidget
        The widget's Qt widget (watched for closing).
    run_action : callable
        Runs a widget action by name (see :data:`~._controls.SHORTCUTS`).
    on_layers_changed : callable
        Called when layers are added, removed or reordered.
    on_close : callable
        A bound method, called when the widget closes or is deleted (held weakly, so that
        the hooks do not keep the widget alive).
    on_gone : callable
        Called instead of ``on_close`` when the widget was garbage-collected before Qt
        deleted its controls (stops what could still reach them).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        native: QWidget,
        *,
        run_action: Callable[[str], None],
        on_layers_changed: Callable[..., None],
        on_close: Callable[[], None],
        on_gone: Callable[[], None],
    ) -> None:
        self._viewer = viewer
        self._on_layers_changed = on_layers_changed
        layers = viewer.layers
        self._events = (layers.events.inserted, layers.events.removed, layers.events.reordered)
        for event in self._events:
            event.connect(on_layers_changed)
        for action, key in SHORTCUTS.items():
            viewer.bind_key(key, named_binding(action, run_action), overwrite=True)
        self._close_watcher = _CloseWatcher(native, on_close)
        # Closing the viewer deletes the widget without a close event of its own: shut down
        # then, or a pending live update (or a task's result) would reach deleted controls.
        owner = weakref.WeakMethod(on_close)

        def destroyed(*_: Any) -> None:
            close = owner()
            if close is not None:
                close()
            else:
                on_gone()

        native.destroyed.connect(destroyed)

    def disconnect(self) -> None:
        """Unbind the keys and leave the layer list's events."""
        for key in SHORTCUTS.values():
            self._viewer.bind_key(key, None)
        for event in self._events:
            event.disconnect(self._on_layers_changed)
