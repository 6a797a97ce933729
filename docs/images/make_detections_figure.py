"""The README's picture: run notebooks/quickstart.ipynb with its full settings, keep its figure.

From the repository root (about ten minutes on a laptop CPU):
    .venv/bin/python docs/images/make_detections_figure.py
writes docs/images/detections.jpg (the notebook's "detections on the test scene" figure, as a
JPEG: an aerial scene is ten times smaller than as a PNG).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nbclient
import nbformat
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("detections.jpg")


def main() -> None:
    os.environ.pop("GEODETECT_NOTEBOOK_QUICK", None)  # full settings
    os.environ["GEODETECT_CONFIGS"] = str(ROOT / "configs")
    os.environ["MPLBACKEND"] = "Agg"
    work = Path(tempfile.mkdtemp(prefix="geodetect-figure-"))
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    with Image.open(work / "quickstart_out" / "detections.png") as im:
        im.convert("RGB").save(OUT, quality=85, optimize=True)
    shutil.rmtree(work, ignore_errors=True)
    print(OUT)


if __name__ == "__main__":
    main()
