"""EMA of weights: the update rule, the warm-up, swapping in for sampling, state round trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmldm.train.ema import EMA, EMAConfig


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2))


def set_params(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_update_without_warmup_is_the_exponential_average():
    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema = EMA(model, decay=0.9, warmup=False)
    expected = {n: p.clone() for n, p in start.items()}
    for value in [1.0, -2.0, 0.5, 3.0]:
        set_params(model, value)
        ema.update(model)
        for n in expected:
            expected[n] = 0.9 * expected[n] + 0.1 * value
    for n, s in ema.shadow.items():
        torch.testing.assert_close(s, expected[n])
    assert ema.num_updates == 4


def test_constant_weights_are_approached_geometrically():
    model = tiny_model()
    ema = EMA(model, decay=0.5, warmup=False)
    start = {n: s.clone() for n, s in ema.shadow.items()}
    set_params(model, 2.0)
    for _ in range(10):
        ema.update(model)
    for n, s in ema.shadow.items():  # shadow = d^n start + (1 - d^n) target
        torch.testing.assert_close(s, 0.5**10 * start[n] + (1 - 0.5**10) * 2.0)


def test_warmup_decay_schedule():
    ema = EMA(tiny_model(), decay=0.5, warmup=True)
    decays = []
    for _ in range(12):
        decays.append(ema.current_decay())
        ema.update(tiny_model())
    expected = [min(0.5, (1 + n) / (10 + n)) for n in range(12)]
    assert decays == pytest.approx(expected)
    assert decays[0] == pytest.approx(0.1) and decays[-1] == 0.5
    assert EMA(tiny_model(), decay=0.9999, warmup=False).current_decay() == 0.9999


def test_first_warmup_update_mostly_takes_the_new_weights():
    model = tiny_model()
    ema = EMA(model, decay=0.9999)
    start = {n: s.clone() for n, s in ema.shadow.items()}
    set_params(model, 1.0)
    ema.update(model)
    for n, s in ema.shadow.items():
        torch.testing.assert_close(s, 0.1 * start[n] + 0.9 * 1.0)


def test_copy_to_and_swapped_in_restores_the_live_weights():
    model = tiny_model()
    ema = EMA(model, decay=0.0, warmup=False)  # decay 0: the shadow is the last weights seen
    set_params(model, 5.0)
    ema.update(model)
    set_params(model, -1.0)
    with ema.swapped_in(model) as m:
        assert all(torch.all(p == 5.0) for p in m.parameters())
    assert all(torch.all(p == -1.0) for p in model.parameters())
    with pytest.raises(RuntimeError):
        with ema.swapped_in(model):
            raise RuntimeError("sampling failed")
    assert all(torch.all(p == -1.0) for p in model.parameters())  # restored on error too
    other = tiny_model(seed=1)
    ema.copy_to(other)
    assert all(torch.all(p == 5.0) for p in other.parameters())


def test_state_dict_round_trip():
    model = tiny_model()
    ema = EMA(model, decay=0.99)
    for v in (1.0, 2.0, 3.0):
        set_params(model, v)
        ema.update(model)
    state = ema.state_dict()
    fresh = EMA(tiny_model(seed=2), decay=0.5, warmup=False)
    fresh.load_state_dict(state)
    assert (fresh.decay, fresh.warmup, fresh.num_updates) == (0.99, True, 3)
    for n in ema.shadow:
        assert torch.equal(fresh.shadow[n], ema.shadow[n])
    set_params(model, 4.0)
    ema.update(model)
    fresh.update(model)  # both continue identically (same warm-up position)
    for n in ema.shadow:
        assert torch.equal(fresh.shadow[n], ema.shadow[n])
    with pytest.raises(KeyError):
        EMA(nn.Linear(3, 4)).load_state_dict(state)


def test_shadow_is_float32_for_low_precision_models():
    model = tiny_model().to(torch.bfloat16)
    ema = EMA(model)
    assert all(s.dtype == torch.float32 for s in ema.shadow.values())
    ema.update(model)
    ema.copy_to(model)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_from_config():
    ema = EMA.from_config(tiny_model(), EMAConfig(decay=0.995, warmup=False))
    assert ema.decay == 0.995 and not ema.warmup
    assert EMAConfig() == EMAConfig(decay=0.9999, warmup=True)
