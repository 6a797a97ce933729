"""WeightAverage: the exponential moving average of weights that training can keep."""

from __future__ import annotations

import torch
from torch import nn

from geodetect.ema import WARMUP, WeightAverage


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_average_follows_the_decay_and_copies_integer_buffers():
    net = _net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    avg = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].num_batches_tracked.fill_(7)
    avg.update(net)
    d = min(0.9, 2 / (WARMUP + 1))  # warm-up decay of the first update
    w = net[0].weight
    expected = start["0.weight"] * d + w.detach() * (1 - d)
    assert torch.allclose(avg.shadow["0.weight"], expected)
    assert int(avg.shadow["1.num_batches_tracked"]) == 7
    for _ in range(200):  # long after the warm-up the decay is the configured one
        avg.update(net)
    assert avg.decay == 0.9 and torch.allclose(avg.shadow["0.weight"], w, atol=1e-6)


def test_averaged_copy_leaves_the_training_net_alone():
    net = _net()
    avg = WeightAverage(net, decay=0.99)
    before = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(5.0)
    avg.update(net)
    copy = avg.averaged(net)
    assert copy is not net
    assert torch.equal(net[0].weight, before + 5.0)
    assert not torch.allclose(copy[0].weight, net[0].weight)
    state = avg.state_dict()
    other = WeightAverage(_net(), decay=0.99)
    other.load_state_dict(state)
    assert other.updates == 1 and torch.equal(other.shadow["0.weight"], avg.shadow["0.weight"])
