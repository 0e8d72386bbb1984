"""What every widget that runs work in a thread shares: start a worker,
disable its buttons meanwhile, report errors in its status line."""
from __future__ import annotations

import napari
from napari.qt.threading import create_worker

from ..errors import PanoptemError


class WorkerMixin:
    """Needs ``self.status`` (a label) and ``self.worker`` (None when idle);
    the buttons disabled while running are ``self.buttons`` (a dict) if the
    widget has one, else ``self.run_button``."""

    worker = None

    def _buttons(self) -> list:
        buttons = getattr(self, "buttons", None)
        return list(buttons.values()) if buttons else [self.run_button]

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _fail(self, err: BaseException) -> None:
        msg = str(err) if isinstance(err, PanoptemError) else f"{type(err).__name__}: {err}"
        self.status.value = f"Error: {msg}"
        napari.utils.notifications.show_error(msg)

    def _finished(self) -> None:
        self.worker = None
        for b in self._buttons():
            b.enabled = True

    def _start(self, func, on_result, *args, **kwargs) -> None:
        for b in self._buttons():
            b.enabled = False
        self.worker = create_worker(func, *args, **kwargs, _start_thread=False,
                                    _connect={"returned": on_result, "errored": self._fail,
                                              "finished": self._finished})
        self.worker.start()
