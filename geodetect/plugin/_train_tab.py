"""The Train tab: epochs, output folder, the cloud channel, Train / Cancel and progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

if TYPE_CHECKING:
    from geodetect.plugin._dock import GeodetectWidget


class TrainTab(QWidget):
    def __init__(self, dock: GeodetectWidget):
        super().__init__()
        form = QFormLayout(self)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(20)
        form.addRow("epochs", self.epochs)
        self.out = QLineEdit()
        self.out.setPlaceholderText("<scene folder>/geodetect_model")
        form.addRow("output folder", self.out)
        self.config = QLineEdit()
        self.config.setPlaceholderText("defaults (or a YAML like `geodetect train --config`)")
        form.addRow("config", self.config)
        self.use_cloud = QCheckBox("use the point cloud (elevation channel)")
        form.addRow(self.use_cloud)
        row = QHBoxLayout()
        self.train_button, self.cancel_button = QPushButton("Train"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.train_button.clicked.connect(lambda: dock.start_training())
        self.cancel_button.clicked.connect(lambda: dock.cancel_job())
        row.addWidget(self.train_button)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        form.addRow(self.progress)
        self.loss = QLabel("")
        form.addRow(self.loss)

    def show_progress(self, state: dict) -> None:
        total = int(state.get("total_steps") or 0)
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(int(state.get("step") or 0), total))
        parts = []
        if int(state.get("members") or 1) > 1:  # an ensemble trains its members one by one
            parts.append(f"member {state.get('member')}/{state['members']}")
        if "epoch" in state:
            parts.append(f"epoch {state['epoch']}/{state.get('epochs', '?')}")
        if state.get("loss") is not None:
            parts.append(f"loss {float(state['loss']):.4f}")
        self.loss.setText("  ".join(parts))

    def running(self, on: bool) -> None:
        self.train_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)
        if on:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
