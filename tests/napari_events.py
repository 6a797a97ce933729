"""Real Qt mouse and key events on napari's canvas (for the GUI tests under xvfb).

Events go through Qt -> vispy -> napari exactly as a user's do; only the world -> screen
mapping is computed here (2-D camera: centre and zoom).
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QKeyEvent, QMouseEvent
from qtpy.QtWidgets import QApplication

LEFT, NONE = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton


class Canvas:
    def __init__(self, viewer):
        self.viewer = viewer
        self.native = viewer.window._qt_viewer.canvas.native  # noqa: SLF001 - test only

    def px(self, world) -> QPoint:
        """Canvas pixel of a world (row, col) point."""
        cam = self.viewer.camera
        r, c = (np.asarray(world, float)[-2:] - np.asarray(cam.center)[-2:]) * cam.zoom
        w, h = self.native.width(), self.native.height()
        return QPoint(int(round(c + w / 2)), int(round(r + h / 2)))

    def _send(self, kind, p: QPoint, button=NONE, buttons=NONE, mods=None) -> None:
        mods = mods or Qt.KeyboardModifier.NoModifier
        gp = QPointF(self.native.mapToGlobal(p))
        QApplication.sendEvent(
            self.native, QMouseEvent(kind, QPointF(p), gp, button, buttons, mods)
        )
        QApplication.processEvents()

    def move(self, world, held: bool = False) -> None:
        self._send(QEvent.Type.MouseMove, self.px(world), NONE, LEFT if held else NONE)

    def click(self, world) -> None:
        p = self.px(world)
        self._send(QEvent.Type.MouseMove, p)
        self._send(QEvent.Type.MouseButtonPress, p, LEFT, LEFT)
        self._send(QEvent.Type.MouseButtonRelease, p, LEFT, NONE)

    def double_click(self, world) -> None:
        self.click(world)
        p = self.px(world)
        self._send(QEvent.Type.MouseButtonDblClick, p, LEFT, LEFT)
        self._send(QEvent.Type.MouseButtonRelease, p, LEFT, NONE)

    def drag(self, start, end, steps: int = 6) -> None:
        start, end = np.asarray(start, float), np.asarray(end, float)
        self.move(start)
        self._send(QEvent.Type.MouseButtonPress, self.px(start), LEFT, LEFT)
        for t in np.linspace(0, 1, steps + 1)[1:]:
            self.move(start + (end - start) * t, held=True)
        self._send(QEvent.Type.MouseButtonRelease, self.px(end), LEFT, NONE)

    def polygon(self, corners) -> None:
        """add-polygon mode: a click per corner, a double-click on the last."""
        for c in corners[:-1]:
            self.click(c)
        self.double_click(corners[-1])

    def key(self, text: str, ctrl: bool = False, shift: bool = False) -> None:
        key = getattr(Qt.Key, f"Key_{text.upper()}")
        mods = Qt.KeyboardModifier.NoModifier
        if ctrl:
            mods |= Qt.KeyboardModifier.ControlModifier
        if shift:
            mods |= Qt.KeyboardModifier.ShiftModifier
            text = text.upper()
        for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            ev = QKeyEvent(kind, key, mods, "" if ctrl else text)
            QApplication.sendEvent(self.native, ev)
            QApplication.processEvents()
