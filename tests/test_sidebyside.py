"""Members side by side: how many at once, and a member process that dies (no training)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from geodetect.config import load_config
from geodetect.errors import GeodetectError
from geodetect.resume import run_identity
from geodetect.sidebyside import member_processes, run_members


def test_how_many_members_train_at_once():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert member_processes(0, 3, cpu, 1) == 3  # auto: all of them
    assert member_processes(2, 3, cpu, 1) == 2
    assert member_processes(8, 3, cpu, 1) == 3  # never more than the members
    assert member_processes(0, 1, cpu, 1) == 1
    assert member_processes(0, 3, gpu, 1) == 1  # one device: one by one
    assert member_processes(0, 3, cpu, 2) == 1  # under torchrun


def _killed(callback, out: str) -> Path:
    """A member killed from outside (the OOM killer) after one step of a healthy member."""
    if out == "dies":
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    for step in range(1, 200):
        callback({"epoch": 1, "epochs": 1, "step": step, "total_steps": 200, "loss": 1.0})
        time.sleep(0.1)  # 20 s in all
    return Path(out)


def test_a_member_process_that_dies_is_one_error_naming_it():
    """Killed while the other member goes on reporting: the caller gets a one-line error
    naming the member, and the other member is stopped too."""
    import multiprocessing as mp

    jobs = [{"out": "lives"}, {"out": "dies"}]
    t0 = time.monotonic()
    with pytest.raises(GeodetectError, match=r"member 2's training process died \(exit code -9\)"):
        run_members(_killed, jobs, 2, None, False)
    assert time.monotonic() - t0 < 15  # not after the healthy member's 20 s
    assert not mp.active_children()


def test_a_run_killed_side_by_side_resumes_one_by_one():
    """The died-member error advises member_processes: 1; the checkpoints must then still be
    this run's (how the members are spread over processes is not what the run is)."""

    def ident(overrides: dict) -> dict:
        return run_identity([], "labels.gpkg", None, load_config(None, overrides), 0)

    side = ident({"model.members": 3, "train.member_processes": 3})
    assert ident({"model.members": 3, "train.member_processes": 1}) == side
    assert ident({"model.members": 2, "train.member_processes": 3}) != side
