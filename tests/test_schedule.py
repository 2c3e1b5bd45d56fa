"""Noise schedules, the forward process, the eps / x0 / v conversions and the training loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmldm.config import from_dict
from mmldm.diffusion.objectives import diffusion_loss, min_snr_weight, training_target
from mmldm.diffusion.schedule import DiffusionConfig, NoiseSchedule, inference_timesteps

SCHEDULES = ("linear", "scaled_linear", "cosine")


def test_paper_default_is_the_seeds_schedule():
    # The seed's LinearNoiseScheduler: linspace(beta_start ** 0.5, beta_end ** 0.5, 1000) ** 2,
    # beta 0.0015 -> 0.0195 (diffusers calls this "scaled_linear").
    cfg = DiffusionConfig()
    sched = NoiseSchedule.from_config(cfg)
    seed_betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    assert cfg.beta_schedule == "scaled_linear" and cfg.num_train_timesteps == 1000
    torch.testing.assert_close(sched.betas, seed_betas, rtol=0, atol=1e-15)
    assert sched.betas[0].item() == pytest.approx(0.0015) and sched.betas[-1].item() == pytest.approx(0.0195)


def test_linear_betas_are_linear():
    sched = NoiseSchedule(1000, "linear", beta_start=1e-4, beta_end=0.02)
    diffs = sched.betas.diff()
    torch.testing.assert_close(diffs, torch.full_like(diffs, (0.02 - 1e-4) / 999))


@pytest.mark.parametrize("name", SCHEDULES)
def test_alphas_cumprod_decreasing_in_unit_interval(name):
    sched = NoiseSchedule(1000, name)
    a = sched.alphas_cumprod
    assert torch.all(a > 0) and torch.all(a < 1)
    assert torch.all(a.diff() < 0)
    torch.testing.assert_close(a, torch.cumprod(1 - sched.betas, 0))
    torch.testing.assert_close(sched.snr, a / (1 - a))


def test_cosine_follows_closed_form_and_is_clipped():
    T, s = 1000, 0.008
    sched = NoiseSchedule(T, "cosine", cosine_s=s, max_beta=0.999)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # alpha_bar of our index t is the paper's alpha_bar(t + 1) = f(t + 1) / f(0), until the clip
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T - 1)], dtype=torch.float64)
    torch.testing.assert_close(sched.alphas_cumprod[:-1], expected, rtol=1e-10, atol=0)
    assert sched.betas.max().item() == pytest.approx(0.999)
    assert sched.betas[-1].item() == pytest.approx(0.999)  # f(T) = 0 would make beta_T = 1
    assert torch.all(sched.betas[:-1] < 0.999)


@pytest.mark.parametrize("name", SCHEDULES)
def test_add_noise_has_the_right_marginal(name):
    sched = NoiseSchedule(1000, name)
    g = torch.Generator().manual_seed(0)
    mu, std, n = 0.7, 0.5, 40_000
    x0 = mu + std * torch.randn(n, generator=g, dtype=torch.float64)
    for t in (0, 100, 500, 999):
        x_t = sched.add_noise(x0, torch.randn(n, generator=g, dtype=torch.float64), t)
        a = sched.alphas_cumprod[t].item()
        assert x_t.mean().item() == pytest.approx(math.sqrt(a) * mu, abs=0.02)
        assert x_t.var().item() == pytest.approx(a * std**2 + 1 - a, rel=0.03)


def test_add_noise_per_sample_timesteps_match_scalar():
    sched = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 500, 999])
    batched = sched.add_noise(x0, eps, t)
    for i in range(3):
        torch.testing.assert_close(batched[i], sched.add_noise(x0[i : i + 1], eps[i : i + 1], int(t[i]))[0])


@pytest.mark.parametrize("name", SCHEDULES)
def test_conversions_invert_each_other(name):
    sched = NoiseSchedule(1000, name)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 600, 998, 999])
    x_t = sched.add_noise(x0, eps, t)
    v = sched.velocity(x0, eps, t)
    torch.testing.assert_close(sched.eps_to_x0(eps, x_t, t), x0)
    torch.testing.assert_close(sched.x0_to_eps(x0, x_t, t), eps)
    torch.testing.assert_close(sched.v_to_x0(v, x_t, t), x0)
    torch.testing.assert_close(sched.v_to_eps(v, x_t, t), eps)
    for prediction_type in ("epsilon", "v", "sample"):
        target = training_target(sched, x0, eps, t, prediction_type)
        x0_hat, eps_hat = sched.predict_x0_eps(target, x_t, t, prediction_type)
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, eps)


def test_min_snr_weight_values():
    snr = torch.tensor([0.1, 1.0, 5.0, 20.0], dtype=torch.float64)
    gamma = 5.0
    torch.testing.assert_close(
        min_snr_weight(snr, gamma, "epsilon"), torch.tensor([1, 1, 1, 0.25], dtype=torch.float64)
    )
    torch.testing.assert_close(
        min_snr_weight(snr, gamma, "v"), torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 21], dtype=torch.float64)
    )
    torch.testing.assert_close(min_snr_weight(snr, gamma, "sample"), torch.tensor([0.1, 1, 5, 5], dtype=torch.float64))


def _errors_in_every_space(sched, prediction_types=("epsilon", "v", "sample")):
    """A fixed x0 estimate error expressed as each prediction type's output at the same x_t."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 300, 500, 700, 900, 999])
    x_t = sched.add_noise(x0, eps, t)
    x0_hat = x0 + 0.1 * torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64)
    eps_hat = sched.x0_to_eps(x0_hat, x_t, t)
    outputs = {"epsilon": eps_hat, "v": sched.velocity(x0_hat, eps_hat, t), "sample": x0_hat}
    return x0, eps, t, x0_hat, outputs


@pytest.mark.parametrize("name", SCHEDULES)
def test_min_snr_loss_is_the_same_x0_loss_for_all_prediction_types(name):
    # Hang et al. 2023: weighted, every parameterisation's loss is min(SNR, gamma) * ||x0 - x0_hat||^2.
    sched = NoiseSchedule(1000, name)
    x0, eps, t, x0_hat, outputs = _errors_in_every_space(sched)
    gamma = 5.0
    x0_mse = (x0_hat - x0).pow(2).flatten(1).mean(1)
    expected = (torch.clamp(sched.snr[t], max=gamma) * x0_mse).mean()
    for prediction_type, out in outputs.items():
        loss = diffusion_loss(sched, out, x0, eps, t, prediction_type, min_snr_gamma=gamma)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5), prediction_type


def test_unweighted_loss_is_plain_mse():
    sched = NoiseSchedule()
    x0, eps, t, _, outputs = _errors_in_every_space(sched)
    for prediction_type, out in outputs.items():
        target = training_target(sched, x0, eps, t, prediction_type)
        loss = diffusion_loss(sched, out.float(), x0.float(), eps.float(), t, prediction_type)
        assert loss.item() == pytest.approx(F.mse_loss(out, target).item(), rel=1e-5)


def test_inference_timesteps_spacings():
    assert inference_timesteps(1000, 50, "trailing").tolist() == list(range(999, 0, -20))
    assert inference_timesteps(1000, 50, "leading").tolist() == list(range(980, -1, -20))
    assert inference_timesteps(1000, 50, "leading", steps_offset=1).tolist() == list(range(981, 0, -20))
    assert inference_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    for spacing in ("trailing", "leading", "linspace"):
        assert inference_timesteps(1000, 1000, spacing).tolist() == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        inference_timesteps(1000, 1001)
    with pytest.raises(ValueError):
        inference_timesteps(1000, 1000, "leading", steps_offset=1)
    with pytest.raises(ValueError):
        inference_timesteps(1000, 10, "uniform")


def test_configs_load_strictly():
    cfg = from_dict(DiffusionConfig, {"beta_schedule": "cosine", "prediction_type": "v", "min_snr_gamma": 5})
    assert cfg.min_snr_gamma == 5.0 and NoiseSchedule.from_config(cfg).beta_schedule == "cosine"
    from mmldm.errors import ConfigError

    with pytest.raises(ConfigError):
        from_dict(DiffusionConfig, {"prediction_type": "v_prediction"})
    with pytest.raises(ConfigError):
        from_dict(DiffusionConfig, {"beta_shedule": "cosine"})
