"""Our samplers against two peers: diffusers' schedulers, and the exact answer on Gaussian data.

Peer 1, diffusers (a test-only dependency): the same schedule, the same model outputs (a fixed
deterministic fake model), the same noise -> the same alphas_cumprod, the same timesteps and the
same step outputs to 1e-5. Both are fed the same x_t at every step (ours), so each step is
compared on its own and errors cannot pile up. diffusers keeps its schedule in float32, we in
float64; the two alphas_cumprod agree to 1e-6. Timestep spacing is "trailing" (our default; the
one all three diffusers schedulers compute alike) plus DDIM/DDPM "leading" with steps_offset=1
(Stable Diffusion's convention). Every diffusers scheduler is told clip_sample=False (its default
clips x0 to [-1, 1]) and, for DDIM, set_alpha_to_one=True (the last step lands on clean data).

Peer 2, the truth: for data x0 ~ N(mu, s^2) the optimal denoiser is known in closed form, so
sampling with it must return samples with mean mu and std s, whatever the sampler.
"""

from __future__ import annotations

import pytest
import torch

from mmldm.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    NoiseSchedule,
    SamplerConfig,
    make_sampler,
    sample,
)

DIFFUSERS_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}
BETAS = dict(beta_start=0.0015, beta_end=0.0195)
# diffusers 0.42 + numpy 2 warn inside DPMSolverMultistepScheduler.set_timesteps; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def fake_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed, deterministic, non-linear stand-in for a trained network."""
    return 0.8 * torch.sin(1.3 * x + t / 300.0) + 0.1 * x


def make_peer(diffusers, kind, schedule, prediction, n, **extra):
    extra = {"timestep_spacing": "trailing", **extra}
    common = dict(
        num_train_timesteps=1000,
        beta_schedule=DIFFUSERS_SCHEDULE[schedule],
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        **BETAS,
    )
    if kind == "ddpm":
        peer = diffusers.DDPMScheduler(clip_sample=False, **common, **extra)
    elif kind == "ddim":
        peer = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common, **extra)
    else:
        peer = diffusers.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            lower_order_final=True,
            final_sigmas_type="zero",
            **common,
            **extra,
        )
    peer.set_timesteps(n)
    return peer


def make_ours(kind, schedule, prediction, n, **extra):
    cls = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm": DPMSolverSampler}[kind]
    return cls(NoiseSchedule(1000, schedule, **BETAS), n, prediction_type=prediction, **extra)


def compare_steps(ours, peer, kind, eta=0.0, model=fake_model, shape=(2, 3, 4, 4)):
    """Step both from the same x_t with the same model output and noise; return #steps compared."""
    assert ours.timesteps.tolist() == peer.timesteps.tolist()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(ours.timesteps.tolist()):
        out = model(x, t)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(1000 + i))
        if kind == "ddpm":  # diffusers' DDPM draws its own noise: give it a generator seeded alike
            theirs = peer.step(out, t, x, generator=torch.Generator().manual_seed(1000 + i)).prev_sample
        elif kind == "ddim":
            theirs = peer.step(
                out, t, x, eta=eta, variance_noise=noise if eta > 0 else None, use_clipped_model_output=True
            ).prev_sample
        else:
            theirs = peer.step(out, t, x).prev_sample
        mine = ours.step(out, i, x, noise=noise).prev_sample
        torch.testing.assert_close(mine, theirs, **TOL, msg=lambda m, i=i, t=t: f"step {i} (t={t}): {m}")
        x = mine
    return len(ours.timesteps)


@pytest.mark.parametrize("schedule", list(DIFFUSERS_SCHEDULE))
def test_same_alphas_cumprod(diffusers, schedule):
    peer = make_peer(diffusers, "ddim", schedule, "epsilon", 10)
    ours = NoiseSchedule(1000, schedule, **BETAS)
    torch.testing.assert_close(ours.alphas_cumprod, peer.alphas_cumprod.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction", list(DIFFUSERS_PREDICTION))
@pytest.mark.parametrize("schedule", list(DIFFUSERS_SCHEDULE))
@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpm"])
def test_steps_match_diffusers(diffusers, kind, schedule, prediction):
    n = 20
    assert (
        compare_steps(
            make_ours(kind, schedule, prediction, n), make_peer(diffusers, kind, schedule, prediction, n), kind
        )
        == n
    )


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_with_noise_matches_diffusers(diffusers, prediction):
    ours = make_ours("ddim", "scaled_linear", prediction, 25, eta=0.7)
    compare_steps(ours, make_peer(diffusers, "ddim", "scaled_linear", prediction, 25), "ddim", eta=0.7)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_leading_spacing_with_offset_matches_diffusers(diffusers, kind):
    ours = make_ours(kind, "scaled_linear", "epsilon", 50, timestep_spacing="leading", steps_offset=1)
    peer = make_peer(diffusers, kind, "scaled_linear", "epsilon", 50, timestep_spacing="leading", steps_offset=1)
    assert ours.timesteps[0] == 981 and ours.timesteps[-1] == 1
    compare_steps(ours, peer, kind)


def test_paper_setting_1000_step_ddpm_matches_diffusers(diffusers):
    ours = make_ours("ddpm", "scaled_linear", "epsilon", 1000)
    assert (
        compare_steps(ours, make_peer(diffusers, "ddpm", "scaled_linear", "epsilon", 1000), "ddpm", shape=(1, 1, 2, 2))
        == 1000
    )


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_clipped_x0_matches_diffusers(diffusers, kind):
    ours = make_ours(kind, "scaled_linear", "epsilon", 20, clip_x0=(-1.0, 1.0))
    x = torch.randn(2, 3, 4, 4)
    assert ours.schedule.eps_to_x0(fake_model(x, 999), x, 999).abs().max() > 10  # the clip is active
    peer = make_peer(diffusers, kind, "scaled_linear", "epsilon", 20)
    peer.register_to_config(clip_sample=True, clip_sample_range=1.0)
    compare_steps(ours, peer, kind)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpm"])
def test_dynamic_thresholding_matches_diffusers(diffusers, kind):
    ours = make_ours(kind, "scaled_linear", "epsilon", 20, dynamic_threshold=0.9, dynamic_threshold_max=1.5)
    peer = make_peer(
        diffusers,
        kind,
        "scaled_linear",
        "epsilon",
        20,
        thresholding=True,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=1.5,
    )
    compare_steps(ours, peer, kind)


# -- peer 2: Gaussian data with its exact denoiser ------------------------------------------------

MU, STD = 0.5, 0.6


def gaussian_denoiser(schedule: NoiseSchedule, prediction_type: str):
    """The exact E[target | x_t] for x0 ~ N(MU, STD^2), written out independently of the schedule's
    conversions: with a = alpha_bar_t and D = a STD^2 + 1 - a = Var(x_t),
    E[x0 | x_t] = MU + sqrt(a) STD^2 / D (x_t - sqrt(a) MU),  E[eps | x_t] = sqrt(1-a) / D (x_t - sqrt(a) MU)."""

    def model_fn(x_t, t):
        a = schedule.alphas_cumprod[t.cpu()].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        d = a * STD**2 + 1 - a
        centred = x_t - a.sqrt() * MU
        x0 = MU + a.sqrt() * STD**2 / d * centred
        eps = (1 - a).sqrt() / d * centred
        return {"epsilon": eps, "sample": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]

    return model_fn


@pytest.mark.parametrize("schedule", ["scaled_linear", "cosine"])
@pytest.mark.parametrize("name,eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_1000_stochastic_steps_recover_gaussian_data(name, eta, schedule):
    sched = NoiseSchedule(1000, schedule)
    sampler = make_sampler(SamplerConfig(name=name, num_inference_steps=1000, eta=eta), sched, "epsilon")
    x = sample(gaussian_denoiser(sched, "epsilon"), sampler, (64, 1, 16, 16), torch.Generator().manual_seed(0))
    # 16,384 values: the mean's standard error is 0.005, the std's relative standard error 0.6 %.
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(STD, rel=0.03)


def test_respaced_ddpm_converges_with_steps():
    sched = NoiseSchedule()
    stds = []
    for steps in (20, 100, 1000):
        sampler = DDPMSampler(sched, steps)
        x = sample(gaussian_denoiser(sched, "epsilon"), sampler, (64, 1, 16, 16), torch.Generator().manual_seed(0))
        assert x.mean().item() == pytest.approx(MU, abs=0.02)
        stds.append(x.std().item())
    assert stds[0] < stds[1] < stds[2] == pytest.approx(STD, rel=0.03)


def affine_map(sampler, model_fn):
    """A deterministic sampler with a linear denoiser maps x_T to k * x_T + c, exactly: run it on
    x_T = 0 and 1. For x_T ~ N(0, 1) the samples are then exactly N(c, k^2): no sampling noise."""
    x_T = torch.tensor([0.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1)
    out = sample(model_fn, sampler, (2, 1, 1, 1), None, x_T=x_T, dtype=torch.float64)
    return out[0].item(), (out[1] - out[0]).item()


@pytest.mark.parametrize("schedule", ["scaled_linear", "cosine"])
def test_deterministic_samplers_converge_to_gaussian_data(schedule):
    # DDIM is first order; DPM-Solver++(2M) second order, so it must be closer at equal steps.
    # Neither is exact at few steps: the last step returns E[x0 | x_t_last], which lacks
    # Var(x0 | x_t_last) (e.g. 4 % of the std from t = 19 with 50 trailing steps).
    sched = NoiseSchedule(1000, schedule)
    model_fn = gaussian_denoiser(sched, "epsilon")
    errors = {}
    for name, steps in [
        ("ddim", 10),
        ("ddim", 50),
        ("ddim", 200),
        ("ddim", 1000),
        ("dpm_solver", 10),
        ("dpm_solver", 50),
        ("dpm_solver", 200),
    ]:
        mean, std = affine_map(make_sampler(SamplerConfig(name=name, num_inference_steps=steps), sched), model_fn)
        assert mean == pytest.approx(MU, abs=0.01), (name, steps)
        errors[name, steps] = abs(std - STD)
    assert errors["ddim", 10] > errors["ddim", 50] > errors["ddim", 200] > errors["ddim", 1000]
    assert errors["ddim", 1000] < 0.01 * STD
    assert errors["dpm_solver", 10] > errors["dpm_solver", 50] > errors["dpm_solver", 200]
    assert errors["dpm_solver", 200] < 0.015 * STD
    for steps in (10, 50, 200):
        assert errors["dpm_solver", steps] < errors["ddim", steps]


@pytest.mark.parametrize("name,steps", [("ddim", 30), ("dpm_solver", 15)])
def test_prediction_types_give_the_same_deterministic_sample(name, steps):
    # With the exact denoiser, eps, v and x0 outputs describe the same estimate, so a
    # deterministic sampler must produce the same sample from the same starting noise.
    sched = NoiseSchedule(1000, "scaled_linear")
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = []
    for prediction_type in ("epsilon", "v", "sample"):
        sampler = make_sampler(SamplerConfig(name=name, num_inference_steps=steps), sched, prediction_type)
        results.append(
            sample(gaussian_denoiser(sched, prediction_type), sampler, x_T.shape, None, x_T=x_T, dtype=torch.float64)
        )
    torch.testing.assert_close(results[1], results[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(results[2], results[0], rtol=1e-9, atol=1e-9)


def test_clip_x0_bounds_the_output():
    sched = NoiseSchedule()
    sampler = DDIMSampler(sched, 20, clip_x0=(-0.2, 0.3))
    x = sample(gaussian_denoiser(sched, "epsilon"), sampler, (4, 1, 8, 8), torch.Generator().manual_seed(0))
    assert x.min().item() >= -0.2 - 1e-6 and x.max().item() <= 0.3 + 1e-6  # last step returns x0_hat


# -- the loop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,steps", [("ddpm", 12), ("ddim", 7), ("dpm_solver", 9)])
def test_callback_is_called_once_per_step(name, steps):
    sched = NoiseSchedule()
    sampler = make_sampler(SamplerConfig(name=name, num_inference_steps=steps), sched)
    calls = []
    x = sample(
        gaussian_denoiser(sched, "epsilon"),
        sampler,
        (2, 1, 4, 4),
        torch.Generator().manual_seed(0),
        callback=lambda i, t, x_t, x0: calls.append((i, t, x_t.shape, x0.shape)),
    )
    assert [c[0] for c in calls] == list(range(steps))
    assert [c[1] for c in calls] == sampler.timesteps.tolist()
    assert all(c[2] == x.shape and c[3] == x.shape for c in calls)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_generator_seeding_is_reproducible(name):
    sched = NoiseSchedule()
    sampler = make_sampler(SamplerConfig(name=name, num_inference_steps=10, eta=1.0), sched)
    model_fn = gaussian_denoiser(sched, "epsilon")

    def run(seed):
        return sample(model_fn, sampler, (3, 1, 4, 4), torch.Generator().manual_seed(seed))

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # The steps' noise matters too, not only the starting noise: same x_T, different generators.
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    d = sample(model_fn, sampler, (3, 1, 4, 4), torch.Generator().manual_seed(1), x_T=x_T)
    e = sample(model_fn, sampler, (3, 1, 4, 4), torch.Generator().manual_seed(2), x_T=x_T)
    assert not torch.allclose(d, e)


def test_sampler_config_validation():
    with pytest.raises(ValueError):
        SamplerConfig(clip_x0=(-1.0, 1.0), dynamic_threshold=0.995)
    with pytest.raises(ValueError):
        DDIMSampler(NoiseSchedule(), 10, clip_x0=(1.0, -1.0))
    with pytest.raises(ValueError):
        DDIMSampler(NoiseSchedule(), 10, prediction_type="v_prediction")
    with pytest.raises(ValueError):
        make_sampler(SamplerConfig(num_inference_steps=2000), NoiseSchedule())
