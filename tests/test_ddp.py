"""ddp: a 2-process gloo group on CPU (the torchrun code path without GPUs)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from geodetect import ddp

torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for each process."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def _helpers_worker(rank: int, world: int, port: int, out: str) -> None:
    torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    with ddp.distributed(torch.device("cpu")) as (info, dev):
        torch.manual_seed(0)
        net = ddp.wrap_model(torch.nn.Linear(3, 1), dev)
        x, y = _data()
        half = slice(rank * 4, rank * 4 + 4)  # each rank sees half the batch
        torch.nn.functional.mse_loss(net(x[half]), y[half]).backward()
        result = {
            "info": (info.rank, info.world_size, info.is_main),
            "grad": ddp.unwrap(net).weight.grad.clone(),
            "mean": ddp.all_reduce_mean(float(rank)),
            "sum": ddp.all_reduce_sum(torch.tensor([1.0, rank])).tolist(),
            "obj": ddp.broadcast_object({"split": [rank, 7]}),
            "seed": ddp.rank_seed(5),
            "wrapped": type(net).__name__,
        }
        ddp.barrier()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def test_gloo_group_averages_gradients_and_shares_values(tmp_path):
    mp.spawn(_helpers_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    x, y = _data()
    torch.nn.functional.mse_loss(net(x), y).backward()  # full batch in one process
    for i in range(2):
        assert r[i]["info"] == (i, 2, i == 0)
        assert r[i]["wrapped"] == "DistributedDataParallel"
        torch.testing.assert_close(r[i]["grad"], net.weight.grad)
        assert r[i]["mean"] == pytest.approx(0.5)
        assert r[i]["sum"] == [2.0, 1.0]
        assert r[i]["obj"] == {"split": [0, 7]}  # rank 0's
    assert r[0]["seed"] != r[1]["seed"]


def test_single_process_is_a_no_op(monkeypatch):
    for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK"]:
        monkeypatch.delenv(k, raising=False)
    with ddp.distributed(torch.device("cpu")) as (info, dev):
        assert not info.enabled and info.is_main and dev == torch.device("cpu")
        net = torch.nn.Linear(2, 1)
        assert ddp.wrap_model(net, dev) is net
        assert ddp.all_reduce_mean(3.0) == 3.0
        assert ddp.broadcast_object([1]) == [1]
        assert ddp.rank_seed(5) == 5


def test_too_many_ranks_for_the_gpus_is_a_clean_error():
    from geodetect.errors import DeviceError

    n = torch.cuda.device_count()
    with pytest.raises(DeviceError, match="--nproc-per-node"):
        ddp.rank_device(torch.device("cuda"), n)
