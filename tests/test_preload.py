"""preload: a module imported in a thread while the network runs."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from geodetect.preload import preload


def test_preload_imports_in_the_background_and_reraises(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "slow_mod.py").write_text("import time\ntime.sleep(0.2)\nVALUE = 7\n")
    (tmp_path / "broken_mod.py").write_text(textwrap.dedent("raise ValueError('bad module')\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    wait = preload("slow_mod")
    wait()
    assert sys.modules["slow_mod"].VALUE == 7
    assert preload("slow_mod") is not wait  # loaded: a waiter that does nothing
    preload("slow_mod")()
    with pytest.raises(ValueError, match="bad module"):
        preload("broken_mod")()
    monkeypatch.delitem(sys.modules, "slow_mod")
