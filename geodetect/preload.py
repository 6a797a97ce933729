"""Importing a heavy module in a thread while the network runs.

A fresh `geodetect infer` needs GeoPandas (and pandas) only to build and write the detections,
at the end: 0.3 s of imports that pyogrio forces anyway. Started beside the first tiles, whose
network calls release the GIL, the import is done by the time the detections need it.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable


def preload(name: str) -> Callable[[], None]:
    """Start importing `name` in a daemon thread; the returned function waits for it.

    Call the waiter before anything else imports the module or what it imports, so no
    two threads import into each other (a no-op when the module is already loaded)."""
    if name in sys.modules:
        return lambda: None
    errors: list[BaseException] = []

    def run() -> None:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # re-raised, with its traceback, by the waiter
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"preload-{name}", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return wait
