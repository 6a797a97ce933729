"""ddp: a 2-process gloo group on CPU (the torchrun code path without GPUs)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from geodetect import ddp
from geodetect.config import load_config

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
            "mean": ddp.all_reduce_mean(float(rank), torch.device("cpu")),
            "sum": ddp.all_reduce_sum(torch.tensor([1.0, rank]), torch.device("cpu")).tolist(),
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
        assert ddp.all_reduce_mean(3.0, torch.device("cpu")) == 3.0
        assert ddp.broadcast_object([1]) == [1]
        assert ddp.rank_seed(5) == 5


def test_too_many_ranks_for_the_gpus_is_a_clean_error():
    from geodetect.errors import DeviceError

    n = torch.cuda.device_count()
    with pytest.raises(DeviceError, match="--nproc-per-node"):
        ddp.rank_device(torch.device("cuda"), n)


# ------------------------------------------------------------------ geodetect train on 2 ranks


def _train_worker(rank: int, world: int, port: int, data: tuple, out: str, log: str) -> None:
    torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    from geodetect.training import train

    wrapped = []
    plain_wrap = ddp.wrap_model

    def spy(net, device, **kw):
        res = plain_wrap(net, device, **kw)
        wrapped.append(type(res).__name__)
        return res

    ddp.wrap_model = spy  # train calls ddp.wrap_model: record that it got a DDP module
    config = load_config(
        None,
        {
            "train.epochs": 8,
            "train.chips_per_epoch": 256,
            "train.batch_size": 8,
            "model.width": 16,
            "infer.tile": 256,
            "infer.overlap": 112,
        },
    )
    image, labels = data
    train(
        images=[image],
        labels=labels,
        pointclouds=None,
        config=config,
        out_dir=out,
        device="cpu",
        seed=0,
        resume=False,
        progress=False,
    )
    with open(log, "a") as f:
        f.write(f"{rank} {','.join(wrapped)}\n")


@pytest.mark.slow
def test_two_rank_gloo_training_gives_a_model_that_detects(sample_small, tmp_path):
    from geodetect.evaluation import evaluate
    from geodetect.inference import infer

    out, log = tmp_path / "run", tmp_path / "ranks.log"
    data = (str(sample_small.image), str(sample_small.labels))
    mp.spawn(_train_worker, args=(2, free_port(), data, str(out), str(log)), nprocs=2, join=True)
    ranks = dict(line.split() for line in log.read_text().splitlines())
    assert ranks == {"0": "DistributedDataParallel", "1": "DistributedDataParallel"}
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    det = tmp_path / "det.gpkg"
    infer(out / "model.pt", [sample_small.image], out=det, device="cpu", threshold=0.2)
    metrics = evaluate(pred=det, truth=sample_small.truth, iou=0.3)
    recall = max(c["recall"] or 0 for c in metrics["classes"].values())
    assert recall > 0.2, metrics  # it detects: some class is found at least in part


def test_reductions_move_tensors_to_the_runs_device(monkeypatch):
    """A fake process group whose all_reduce records the tensor's device: it must be the run's
    device (here `meta`, standing in for cuda:N), not the CPU tensor the caller holds."""
    import numpy as np

    from geodetect.config import TrainConfig
    from geodetect.training import _hard_negative_weights

    class Reached(Exception):
        pass

    seen = []

    def fake_all_reduce(t, op=None):
        seen.append(t.device)
        raise Reached  # a meta tensor cannot come back to the CPU: stop here

    monkeypatch.setattr(ddp, "_active", lambda: True)
    monkeypatch.setattr(ddp.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(ddp.dist, "all_reduce", fake_all_reduce)
    run_device = torch.device("meta")
    with pytest.raises(Reached):
        ddp.all_reduce_sum(torch.ones(3, dtype=torch.float64), run_device)
    with pytest.raises(Reached):
        ddp.all_reduce_mean(1.5, run_device)
    with pytest.raises(Reached):
        _hard_negative_weights(np.ones(2), np.ones(2), np.ones(2), TrainConfig(), run_device)
    assert seen == [run_device] * 3
