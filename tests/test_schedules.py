"""Schedules against torch.optim.lr_scheduler and closed forms; spec validation."""
import math

import pytest

from minigrad_pfa.optim.schedules import (Constant, Cosine, EpochPiecewise, LinearWarmup,
                                          MultiStep, build_schedule)


def _torch_lrs(torch, make_scheduler, base, n):
    """The lr PyTorch uses in each of n scheduler periods (read before each step)."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base)
    sched = make_scheduler(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("base,milestones,gamma,epochs", [
    (0.01, [20, 30], 0.5, 40),            # E1 (MNIST)
    (0.1, [100, 150, 200], 0.1, 250),     # E2 (CIFAR-10 ResNet-20)
    (0.1, [5, 7], 0.1, 8),                # F1
    (0.1, [3, 3, 6], 0.3, 9),             # a repeated milestone counts twice
])
def test_multistep_matches_torch(base, milestones, gamma, epochs):
    torch = pytest.importorskip("torch")
    expected = _torch_lrs(torch, lambda o: torch.optim.lr_scheduler.MultiStepLR(
        o, milestones=milestones, gamma=gamma), base, epochs)
    s = MultiStep(base, milestones, gamma)
    for e in range(epochs):
        assert math.isclose(s.value(e, step=7, steps_per_epoch=10), expected[e],
                            rel_tol=1e-15), e


def test_multistep_published_values_by_hand():
    s = build_schedule({"type": "multistep", "base": 0.01, "milestones": [20, 30],
                        "gamma": 0.5})
    assert [s.value(e) for e in (0, 19, 20, 29, 30, 39)] == [0.01, 0.01, 0.005, 0.005,
                                                             0.0025, 0.0025]


@pytest.mark.parametrize("min_value", [0.0, 1e-3])
def test_cosine_per_epoch_matches_torch(min_value):
    torch = pytest.importorskip("torch")
    total = 12
    expected = _torch_lrs(torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=total, eta_min=min_value), 0.1, total + 1)
    s = Cosine(0.1, total, min_value)
    for e in range(total + 1):
        assert math.isclose(s.value(e), expected[e], rel_tol=1e-12, abs_tol=1e-15), e
    assert s.value(total + 5) == min_value          # stays at the floor after the end


def test_cosine_per_step_matches_torch_stepped_per_batch():
    torch = pytest.importorskip("torch")
    total, spe = 3, 7
    expected = _torch_lrs(torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=total * spe), 0.2, total * spe)
    s = build_schedule({"type": "cosine", "base": 0.2, "total_epochs": total,
                        "per_step": True})
    got = [s.value(e, k, spe) for e in range(total) for k in range(spe)]
    for i, (a, b) in enumerate(zip(got, expected)):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), i
    # per epoch (the default) ignores the step inside the epoch
    assert Cosine(0.2, total).value(1, 5, spe) == Cosine(0.2, total).value(1)


def test_linear_warmup_matches_torch_linearlr():
    torch = pytest.importorskip("torch")
    w = 10
    expected = _torch_lrs(torch, lambda o: torch.optim.lr_scheduler.LinearLR(
        o, start_factor=1.0 / w, end_factor=1.0, total_iters=w - 1), 0.1, 25)
    s = LinearWarmup(Constant(0.1), warmup_steps=w)
    spe = 4                                          # global step = epoch * 4 + step
    got = [s.value(i // spe, i % spe, spe) for i in range(25)]
    for i, (a, b) in enumerate(zip(got, expected)):
        assert math.isclose(a, b, rel_tol=1e-12), i


def test_linear_warmup_scales_the_inner_schedule():
    s = build_schedule({"type": "warmup", "warmup_steps": 4,
                        "inner": {"type": "multistep", "base": 1.0, "milestones": [1],
                                  "gamma": 0.5}})
    # steps_per_epoch 2: global steps 0..3 are warm-up, epoch 1 starts at step 2
    assert [s.value(e, k, 2) for e in range(3) for k in range(2)] == [
        0.25, 0.5, 0.5 * 0.75, 0.5, 0.5, 0.5]
    assert LinearWarmup(Constant(1.0), 0).value(0) == 1.0


def test_weight_decay_schedule_of_the_published_runs():
    """"wd 0.03 -> 9e-5": 0.03 during epoch 0 only, 9e-5 from epoch 1 on, every step."""
    s = build_schedule({"type": "piecewise", "values": [0.03, 9e-5], "boundaries": [1]})
    assert [s.value(0, k, 938) for k in (0, 500, 937)] == [0.03] * 3
    assert [s.value(e, k, 938) for e in (1, 2, 39) for k in (0, 937)] == [9e-5] * 6
    s3 = EpochPiecewise([1.0, 2.0, 3.0], [2, 5])
    assert [s3.value(e) for e in range(7)] == [1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0]


def test_bare_number_is_constant_and_spec_round_trips():
    assert build_schedule(1e-4).value(17, 3, 10) == 1e-4
    specs = [{"type": "constant", "value": 0.5},
             {"type": "multistep", "base": 0.1, "milestones": [100, 150], "gamma": 0.1},
             {"type": "cosine", "base": 0.1, "total_epochs": 5, "min_value": 0.0,
              "per_step": True},
             {"type": "warmup", "inner": {"type": "constant", "value": 0.5},
              "warmup_steps": 3},
             {"type": "piecewise", "values": [0.005, 1e-4], "boundaries": [1]}]
    for spec in specs:
        assert build_schedule(spec).to_spec() == spec


@pytest.mark.parametrize("spec,key", [
    ({"base": 0.1}, "type"),
    ({"type": "exponential", "base": 0.1}, "exponential"),
    ({"type": "multistep", "base": 0.1}, "milestones"),
    ({"type": "multistep", "base": 0.1, "milestones": [20], "gama": 0.5}, "gama"),
    ({"type": "multistep", "base": 0.1, "milestones": [20.5]}, "milestones"),
    ({"type": "multistep", "base": 0.1, "milestones": 20}, "milestones"),
    ({"type": "multistep", "base": "0.1", "milestones": [20]}, "base"),
    ({"type": "multistep", "base": 0.1, "milestones": [20], "gamma": 0.0}, "gamma"),
    ({"type": "cosine", "base": 0.1, "total_epochs": 0}, "total_epochs"),
    ({"type": "cosine", "base": 0.1, "total_epochs": 5, "per_step": 1}, "per_step"),
    ({"type": "warmup", "inner": 0.1, "warmup_steps": -1}, "warmup_steps"),
    ({"type": "warmup", "inner": {"type": "multistep", "base": 0.1}, "warmup_steps": 5},
     "milestones"),
    ({"type": "piecewise", "values": [0.03, 9e-5], "boundaries": [1, 2]}, "values"),
    ({"type": "piecewise", "values": [0.03, 9e-5, 1e-5], "boundaries": [2, 1]},
     "boundaries"),
    ({"type": "piecewise", "values": [0.03, -1.0], "boundaries": [1]}, "values\\[1\\]"),
    ({"type": "constant", "value": float("nan")}, "value"),
])
def test_bad_specs_name_the_key(spec, key):
    with pytest.raises(ValueError, match=key):
        build_schedule(spec)


def test_bad_position_is_an_error():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Constant(1.0).value(0, 0, 0)
    with pytest.raises(ValueError, match="epoch"):
        MultiStep(1.0, [1]).value(-1)
