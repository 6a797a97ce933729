"""The Detect tab: model, threshold, detect in scene or in view, accept / reject."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

if TYPE_CHECKING:
    from geodetect.plugin._dock import GeodetectWidget


class DetectTab(QWidget):
    def __init__(self, dock: GeodetectWidget):
        super().__init__()
        form = QFormLayout(self)
        self.model = QLineEdit()
        self.model.setPlaceholderText("model.pt (filled in after training)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.model)
        row.addWidget(browse)
        form.addRow("model", row)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.3)
        form.addRow("score threshold", self.threshold)
        row = QHBoxLayout()
        self.scene_button = QPushButton("Detect in scene")
        self.view_button = QPushButton("Detect in view")
        self.scene_button.clicked.connect(lambda: dock.run_detection(region=False))
        self.view_button.clicked.connect(lambda: dock.run_detection(region=True))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: dock.cancel_job())
        for b in (self.scene_button, self.view_button, self.cancel_button):
            row.addWidget(b)
        form.addRow(row)
        row = QHBoxLayout()
        self.accept_button, self.reject_button = (
            QPushButton("Accept (a)"),
            QPushButton("Reject (x)"),
        )
        self.accept_button.clicked.connect(lambda: dock.accept_selected())
        self.reject_button.clicked.connect(lambda: dock.reject_selected())
        row.addWidget(self.accept_button)
        row.addWidget(self.reject_button)
        form.addRow(row)
        self.status = QLabel("")
        form.addRow(self.status)

    def running(self, on: bool) -> None:
        self.scene_button.setEnabled(not on)
        self.view_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model", "", "geodetect model (*.pt)")
        if path:
            self.model.setText(path)
