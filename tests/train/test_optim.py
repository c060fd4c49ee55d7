import math

import pytest
import torch
from torch import nn

from fmmm.train.optim import OptimConfig, build_optimizer, build_scheduler, lr_factor


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    factors = [lr_factor(s, 100, 10, 0.1) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[100] == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only_and_honours_no_weight_decay():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.pos = nn.Parameter(torch.zeros(3, 4))
            self.scale = nn.Parameter(torch.ones(()))
            self.frozen = nn.Parameter(torch.ones(4, 4), requires_grad=False)

        def no_weight_decay(self):
            return {"pos"}

    net = Net()
    decay, no_decay = build_optimizer(net, OptimConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.linear.weight)}
    expected = {
        id(net.linear.bias),
        id(net.norm.weight),
        id(net.norm.bias),
        id(net.pos),
        id(net.scale),
    }
    assert {id(p) for p in no_decay["params"]} == expected


def test_scheduler_sets_peak_lr_after_warmup():
    net = nn.Linear(2, 2)
    cfg = OptimConfig(lr=1e-3, warmup_steps=4)
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, cfg, total_steps=20)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "field,value", [("lr", 0.0), ("betas", [0.9]), ("grad_clip", -1.0), ("min_lr_ratio", 2.0)]
)
def test_invalid_optim_values_are_rejected_naming_the_key(field, value):
    with pytest.raises(ValueError, match=f"optim.{field}"):
        OptimConfig(**{field: value})
