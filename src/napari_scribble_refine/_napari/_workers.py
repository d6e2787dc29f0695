"""Running engine work in napari thread workers, one task at a time.

The widget hands a plain function or generator to :class:`TaskRunner`; the runner wraps it
so that exceptions come back as :class:`Failed` results (shown as notifications by the
widget, never as tracebacks on the console). Cancelling sets :attr:`TaskRunner.cancelled`,
which the task's generator checks after each yield: it then stops, closes the engine's
generator in the worker thread and returns the state reached, so a cancelled refinement
leaves the session consistent and undoable. ``worker.quit()`` (napari calls it for every
running task when its window closes) would abandon the generator suspended mid-iteration;
the runner then closes it in the worker thread, with the same effect as Cancel. Handlers run
on the GUI thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from qtpy.QtCore import QEventLoop, Qt, QTimer


@dataclass
class Failed:
    """What a task returns instead of raising.

    Attributes
    ----------
    error : Exception
        The exception the task raised.
    """

    error: Exception

    @property
    def message(self) -> str:
        """One line for the user: the engine's message (with the type when it is empty)."""
        text = str(self.error).strip()
        return text or type(self.error).__name__


def _run_generator(gen: Generator, done: threading.Event):
    try:
        return (yield from gen)
    except Exception as error:  # noqa: BLE001 - every failure becomes a notification
        return Failed(error)
    finally:
        gen.close()
        done.set()


def _forward(gen: Generator):
    """Run ``gen`` in a worker: the worker then holds this generator, not ``gen`` itself."""
    return (yield from gen)


def _run_function(func: Callable[[], Any], done: threading.Event):
    try:
        return func()
    except Exception as error:  # noqa: BLE001 - every failure becomes a notification
        return Failed(error)
    finally:
        done.set()


class TaskRunner:
    """Runs one engine task at a time in a napari thread worker.

    Parameters
    ----------
    on_busy : callable
        Called with True when a task starts and False when it has finished (GUI thread).
    """

    def __init__(self, on_busy: Callable[[bool], None]) -> None:
        self._on_busy = on_busy
        self.closed = False
        self.worker = None
        self.name = ""
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._waiting: list[QEventLoop] = []

    @property
    def busy(self) -> bool:
        """Whether a task is running (or its handlers have not all run yet)."""
        return self.worker is not None

    def start(
        self,
        name: str,
        work: Callable[[], Any] | Generator,
        *,
        on_result: Callable[[Any], None],
        on_yielded: Callable[[Any], None] | None = None,
        on_failed: Callable[[Failed], None],
    ):
        """Start a task in a thread worker.

        Parameters
        ----------
        name : str
            What the task does, e.g. ``"refine"`` (shown while it runs).
        work : callable or generator
            A function of no arguments, or a generator whose yields reach ``on_yielded``.
        on_result : callable
            Called with the function's or generator's return value, unless it failed.
        on_yielded : callable, optional
            Called with each yielded value.
        on_failed : callable
            Called with a :class:`Failed` when the task raised.

        Returns
        -------
        napari.qt.threading.WorkerBase
            The started worker (tests wait on its ``finished`` signal).

        Raises
        ------
        RuntimeError
            If a task is already running.
        """
        if self.busy:
            raise RuntimeError(f"Busy: {self.name} is still running")
        self._cancel = threading.Event()
        self._done = threading.Event()
        if isinstance(work, Generator):
            task, done = _run_generator(work, self._done), self._done

            def abandoned() -> None:
                # quit() leaves the task suspended: close it now, in the worker thread
                task.close()
                done.set()  # also when it never started (then close() runs no finally)

            worker = create_worker(_forward, task)
            worker.aborted.connect(abandoned, Qt.ConnectionType.DirectConnection)
            if on_yielded is not None:
                worker.yielded.connect(on_yielded)
        else:
            worker = create_worker(_run_function, work, self._done)

        def returned(value: Any) -> None:
            if isinstance(value, Failed):
                on_failed(value)
            else:
                on_result(value)

        def finished() -> None:
            self.worker = None
            self._on_busy(False)
            for loop in self._waiting:
                loop.quit()

        worker.returned.connect(returned)
        worker.errored.connect(lambda error: on_failed(Failed(error)))
        worker.finished.connect(finished)
        self.worker = worker
        self.name = name
        self._on_busy(True)
        worker.start()
        return worker

    def run(
        self,
        name: str,
        work: Callable[[], Any] | Generator,
        *,
        on_result: Callable[[Any], None],
        on_yielded: Callable[[Any], None] | None = None,
        on_failed: Callable[[Failed], None],
        on_status: Callable[[str], None],
        wait: bool = False,
    ):
        """Start a task for the widget, unless it is closed or busy; handlers stop on close.

        Parameters
        ----------
        name : str
            What the task does (the status line says it while it runs).
        work : callable or generator
            See :meth:`start`.
        on_result, on_yielded, on_failed : callable
            See :meth:`start`; none is called once :attr:`closed` is set.
        on_status : callable
            Shows a line to the user (the task's name; "busy" when one runs).
        wait : bool
            Process Qt events until the task has finished.

        Returns
        -------
        napari.qt.threading.WorkerBase or None
            The worker, or None when nothing was started.
        """
        if self.closed:
            return None
        if self.busy:
            show_info(f"Busy {self.name}: wait or Cancel first")
            return None
        on_status(f"{name.capitalize()}…")
        worker = self.start(
            name,
            work,
            on_result=self._unless_closed(on_result),
            on_yielded=self._unless_closed(on_yielded) if on_yielded else None,
            on_failed=self._unless_closed(on_failed),
        )
        if wait:
            self.wait()
        return worker

    def _unless_closed(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        def guarded(value: Any) -> None:
            if not self.closed:
                handler(value)

        return guarded

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Process Qt events until no task runs (also one started when the last ended).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most.

        Returns
        -------
        bool
            True when idle.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.wait(left)
        return True

    def cancel(self) -> None:
        """Ask the running task to stop after its current step (a plain function runs on)."""
        self._cancel.set()

    def cancelled(self) -> bool:
        """Whether the current (or last) task was asked to stop (thread-safe).

        Returns
        -------
        bool
            True after :meth:`cancel`.
        """
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Process Qt events until the running task's handlers have all run.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (no limit when None).

        Returns
        -------
        bool
            True when no task is running any more.
        """
        if self.worker is None:
            return True
        loop = QEventLoop()
        if timeout is not None:
            timer = QTimer(loop)
            timer.setSingleShot(True)
            timer.timeout.connect(loop.quit)
            timer.start(int(timeout * 1000))
        self._waiting.append(loop)
        try:
            loop.exec()
        finally:
            self._waiting.remove(loop)
        return self.worker is None

    def stop(self, timeout: float = 10.0) -> bool:
        """Cancel the task and block until its thread has let go of the engine.

        Used when the widget closes: no Qt events are processed, so no handler touches a
        layer afterwards.

        Parameters
        ----------
        timeout : float
            Seconds to wait at most.

        Returns
        -------
        bool
            True when the thread finished within ``timeout``.
        """
        self.cancel()
        return self._done.wait(timeout)
