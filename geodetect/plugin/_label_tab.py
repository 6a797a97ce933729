"""The Label tab: scene, classes, the drawing tools, undo/redo, files and samples."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QWidget,
)

if TYPE_CHECKING:
    from geodetect.plugin._dock import GeodetectWidget

TOOL_BUTTONS = (
    ("pan", "Pan"),
    ("positive", "Draw positive"),
    ("negative", "Draw negative"),
    ("edit", "Edit"),
)


class LabelTab(QWidget):
    def __init__(self, dock: GeodetectWidget):
        super().__init__()
        self.dock = dock
        form = QFormLayout(self)
        self.scene_box = QComboBox()
        form.addRow("scene", self.scene_box)
        self.start = QPushButton("Start labelling this scene")
        self.start.clicked.connect(lambda: dock.ensure_label_layers())
        form.addRow(self.start)

        self.class_list = QListWidget()
        self.class_list.setToolTip("checked = the class has a front (heading)")
        self.class_list.itemChanged.connect(self._on_item)
        self.class_list.currentRowChanged.connect(lambda _: dock.on_current_class())
        form.addRow("classes (✓ = front)", self.class_list)
        row = QHBoxLayout()
        self.class_name = QLineEdit()
        self.class_name.setPlaceholderText("new class")
        self.add_button, self.remove_button = QPushButton("Add"), QPushButton("Remove")
        self.add_button.clicked.connect(lambda: dock.add_class(self.class_name.text()))
        self.remove_button.clicked.connect(lambda: dock.remove_class(self.current_class()))
        for x in (self.class_name, self.add_button, self.remove_button):
            row.addWidget(x)
        form.addRow(row)

        row = QHBoxLayout()
        self.tools = QButtonGroup(self)
        self.tools.setExclusive(True)
        self.tool_buttons: dict[str, QPushButton] = {}
        for tool, text in TOOL_BUTTONS:
            b = QPushButton(text)
            b.setCheckable(True)
            b.setToolTip(
                {
                    "pan": "pan and zoom; no label layer takes the mouse",
                    "positive": "drag along the object, back to front",
                    "negative": "click the corners of an area with no object; double-click ends",
                    "edit": "select, move, delete (Del) positives; r f w keys",
                }[tool]
            )
            b.clicked.connect(lambda _=False, t=tool: dock.set_tool(t))
            self.tools.addButton(b)
            self.tool_buttons[tool] = b
            row.addWidget(b)
        self.tool_buttons["pan"].setChecked(True)
        form.addRow(row)
        self.width_ratio = QDoubleSpinBox()
        self.width_ratio.setRange(0.05, 1.0)
        self.width_ratio.setSingleStep(0.05)
        self.width_ratio.setValue(0.45)
        form.addRow("width / length", self.width_ratio)
        row = QHBoxLayout()
        self.undo_button, self.redo_button = QPushButton("Undo"), QPushButton("Redo")
        self.undo_button.clicked.connect(lambda: dock.undo())
        self.redo_button.clicked.connect(lambda: dock.redo())
        row.addWidget(self.undo_button)
        row.addWidget(self.redo_button)
        form.addRow(row)
        self.counts = QLabel("no labels")
        form.addRow(self.counts)
        self.autosave_status = QLabel("")
        self.autosave_status.setWordWrap(True)
        form.addRow(self.autosave_status)
        row = QHBoxLayout()
        self.save_button, self.load_button = QPushButton("Save…"), QPushButton("Load…")
        self.samples_button = QPushButton("Samples")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop making samples (kills the samples process)")
        self.cancel_button.setEnabled(False)
        self.save_button.clicked.connect(lambda: dock.save_labels())
        self.load_button.clicked.connect(lambda: dock.load_labels())
        self.samples_button.clicked.connect(lambda: dock.show_samples())
        self.cancel_button.clicked.connect(lambda: dock.cancel_job())
        for x in (self.save_button, self.load_button, self.samples_button, self.cancel_button):
            row.addWidget(x)
        form.addRow(row)

    def running(self, on: bool) -> None:
        """A samples job runs: Samples off, its Cancel on."""
        self.samples_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)

    def show_tool(self, tool: str) -> None:
        self.tool_buttons[tool].setChecked(True)

    def fill_classes(self, classes: dict[str, bool]) -> None:
        current = self.current_class()
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for name, front in classes.items():
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if front else Qt.Unchecked)
            self.class_list.addItem(item)
        names = list(classes)
        self.class_list.setCurrentRow(names.index(current) if current in names else 0)
        self.class_list.blockSignals(False)

    def current_class(self) -> str:
        item = self.class_list.currentItem() if self.class_list.count() else None
        return item.text() if item is not None else ""

    def set_current_class(self, name: str) -> None:
        items = self.class_list.findItems(name, Qt.MatchExactly)
        if items:
            self.class_list.setCurrentItem(items[0])

    def _on_item(self, item: QListWidgetItem) -> None:
        self.dock.set_front(item.text(), item.checkState() == Qt.Checked)
