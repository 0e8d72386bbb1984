"""What every dock shares: a scrollable, unlabelled outer column (groups of labelled
controls, buttons, a full-width status line), a Help button that shows the dock's
README section, and work in a worker thread with its buttons disabled meanwhile."""
from __future__ import annotations

import napari
from magicgui.widgets import Container, PushButton
from napari.qt.threading import create_worker

from ..errors import PanoptemError
from ._forms import status_label


def _fresh_threads() -> None:
    """Every job in a thread of its own: Qt's pool keeps finished threads for reuse, and
    PyTorch's backward pass (fine-tuning, training) crashed in a thread that had run
    inference before."""
    from qtpy.QtCore import QThreadPool
    QThreadPool.globalInstance().setExpiryTimeout(0)


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

    def _while_open(self, slot):
        """``slot`` for a worker's signals, doing nothing once the dock is closed (the viewer
        closed mid-run): its Qt widgets are deleted, and touching them aborted the process."""
        def call(*args):
            if getattr(self, "_closed", False):
                return None
            try:
                return slot(*args)
            except RuntimeError as e:  # deleted before ``destroyed`` was delivered
                if "has been deleted" not in str(e):
                    raise
        return call

    def _on_closed(self, *_) -> None:
        """The dock's widget is gone: a running job stops at its next step, its results unseen."""
        self._closed = True
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def _fail(self, err: BaseException) -> None:
        from ._advice import control_labels, dock_words
        msg = dock_words(str(err), control_labels(self)) if isinstance(err, PanoptemError) else \
            f"{type(err).__name__}: {err}"
        self.status.value = f"Error: {msg}"
        napari.utils.notifications.show_error(msg)

    def _finished(self) -> None:
        self.worker = None
        if not getattr(self, "_adding", False):  # else once the result layers are in (Dock.add_layers)
            self._enable()

    def _enable(self) -> None:
        for b in self._buttons():
            b.enabled = True

    def _start(self, func, on_result, *args, **kwargs) -> None:
        """Run ``func(*args, **kwargs)`` in a worker thread; ``on_result(result)`` then runs
        in the GUI thread (keep it to putting results into layers and widgets)."""
        for b in self._buttons():
            b.enabled = False
        _fresh_threads()
        self.worker = create_worker(func, *args, **kwargs, _start_thread=False,
                                    _connect={"returned": self._while_open(on_result),
                                              "errored": self._while_open(self._fail),
                                              "finished": self._while_open(self._finished)})
        self.worker.start()


class Dock(WorkerMixin, Container):
    """Base of the panoptem docks; ``help_title`` is the README heading Help shows."""

    help_title = ""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        _scroll_contents(self.native)
        self.viewer = viewer
        self.status = status_label()
        self.worker = None
        self.help_dialog = None
        self.help_button = PushButton(text="Help", name="help",
                                      tooltip=f"Show the README section on {self.help_title or 'this module'}.")
        self.help_button.changed.connect(self.show_help)
        follow_layers(viewer, self)
        self.native.destroyed.connect(self._on_closed)

    @property
    def running(self) -> bool:
        """Busy: a worker runs, or its result layers are still being added."""
        return self.worker is not None or getattr(self, "_adding", False)

    def add_layers(self, layers: list, done=None) -> None:
        """Add prepared layers one per turn of the event loop (napari's own work for each new
        layer is the only main-thread cost left), then call ``done(added_layers)``."""
        from qtpy.QtCore import QTimer
        todo, added = list(layers), []
        self._adding = True

        def step():
            if getattr(self, "_closed", False):  # the viewer closed meanwhile
                return
            if todo:
                added.append(self.viewer.add_layer(todo.pop(0)))
                QTimer.singleShot(10, step)  # timers, input and painting get their turn in between
                return
            self._adding = False
            if self.worker is None:  # the run ended while its layers went in: its buttons come back now
                self._enable()
            if done is not None:
                done(added)
        step()

    def show_help(self) -> None:
        """Open a window with this dock's README section (pictures included in a checkout)."""
        from qtpy.QtWidgets import QDialog, QTextBrowser, QVBoxLayout

        from ._help import help_section, readme_dir
        try:
            md = help_section(self.help_title)
        except PanoptemError as e:
            self._fail(e)
            return
        dlg = QDialog(self.native)
        dlg.setWindowTitle(f"panoptem: {self.help_title}")
        browser = QTextBrowser(dlg)
        browser.setOpenExternalLinks(True)
        folder = readme_dir()
        if folder is not None:
            browser.setSearchPaths([str(folder)])
        browser.setMarkdown(md)
        lay = QVBoxLayout(dlg)
        lay.addWidget(browser)
        dlg.resize(720, 640)
        dlg.show()
        self.help_dialog = dlg


def _scroll_contents(outer) -> None:
    """Move ``outer``'s layout (and every widget added to it later) into a scroll area that
    fills ``outer``: the dock can then be shorter than its contents. (napari docks a
    magicgui widget's ``native`` QWidget, so magicgui's own ``scrollable`` is lost there.)"""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget
    contents = QWidget()
    contents.setLayout(outer.layout())  # Qt detaches the layout from ``outer`` and keeps it working
    scroll = QScrollArea(outer)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    scroll.setWidget(contents)
    scroll.setMinimumHeight(40)  # below the scroll bar's own minimum: many docks stack on a small screen
    lay = QVBoxLayout(outer)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(scroll)
    contents.layout().addStretch(1)  # stays last (magicgui inserts before it): extra height goes below
    outer.scroll_area = scroll


def follow_layers(viewer, widget) -> None:
    """Refresh ``widget``'s layer pickers when layers are added or removed, until its Qt
    widget is deleted."""
    def refresh(*_):
        try:
            widget.reset_choices()
        except RuntimeError:  # the Qt widget is gone but ``destroyed`` has not been delivered yet
            pass

    events = (viewer.layers.events.inserted, viewer.layers.events.removed)
    for ev in events:
        ev.connect(refresh)

    def forget(*_):
        for ev in events:
            try:
                ev.disconnect(refresh)
            except (ValueError, RuntimeError):
                pass

    widget.native.destroyed.connect(forget)
