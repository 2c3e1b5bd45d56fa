"""The denoising loop, and the factory that picks a sampler by name.

    sampler = make_sampler(cfg.sampler, NoiseSchedule.from_config(cfg.diffusion), "sample")
    z0 = sample(model_fn, sampler, (B, C, h, w), torch.Generator().manual_seed(0))

:func:`sample` starts from Gaussian noise x_T and, for each timestep t the sampler visits (high
to low), calls ``model_fn(x_t, t)`` and the sampler's ``step`` to get x_{t-1}; the samplers
(:mod:`~mmldm.diffusion.ddpm`, :mod:`~mmldm.diffusion.ddim`, :mod:`~mmldm.diffusion.dpm_solver`)
hold the equations. Conditioning and guidance live in ``model_fn``
(:func:`mmldm.diffusion.guidance.guided_model_fn`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmldm.diffusion.base_sampler import Callback, ModelFn, Sampler, SamplerConfig, draw_noise
from mmldm.diffusion.ddim import DDIMSampler
from mmldm.diffusion.ddpm import DDPMSampler
from mmldm.diffusion.dpm_solver import DPMSolverSampler
from mmldm.diffusion.schedule import NoiseSchedule


def make_sampler(cfg: SamplerConfig, schedule: NoiseSchedule, prediction_type: str = "epsilon") -> Sampler:
    """The sampler ``cfg.name`` names, for a model trained with ``prediction_type``."""
    common = dict(
        num_inference_steps=cfg.num_inference_steps,
        prediction_type=prediction_type,
        timestep_spacing=cfg.timestep_spacing,
        steps_offset=cfg.steps_offset,
        clip_x0=cfg.clip_x0,
        dynamic_threshold=cfg.dynamic_threshold,
        dynamic_threshold_max=cfg.dynamic_threshold_max,
    )
    if cfg.name == "ddpm":
        return DDPMSampler(schedule, **common)
    if cfg.name == "ddim":
        return DDIMSampler(schedule, eta=cfg.eta, **common)
    if cfg.name == "dpm_solver":
        return DPMSolverSampler(schedule, **common)
    raise ValueError(f"unknown sampler {cfg.name!r}; use ddpm, ddim or dpm_solver")


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    sampler: Sampler,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    callback: Callback | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Run ``sampler`` from pure noise to a sample of ``shape`` = (B, C, h, w); returns x_0.

    ``generator`` seeds the starting noise and every stochastic step, so the same seed gives the
    same batch (draws happen on the generator's device, see :func:`draw_noise`). ``x_T`` replaces
    the starting noise. ``callback(i, t, x_t, x0_hat)`` is called once per step with the step
    index, the timestep, the sample entering the step and the model's x0 estimate from it (for
    the interactive notebook: watch the estimate sharpen as t falls).
    """
    device = torch.device(device) if device is not None else (x_T.device if x_T is not None else torch.device("cpu"))
    if x_T is None:
        x = draw_noise(torch.empty(shape, device=device, dtype=dtype), generator)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T.to(device=device, dtype=dtype)
    sampler.reset()
    batch = shape[0]
    for i, t in enumerate(sampler.timesteps.tolist()):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        out = sampler.step(model_fn(x, t_batch), i, x, generator=generator)
        if callback is not None:
            callback(i, t, x, out.pred_x0)
        x = out.prev_sample
    return x
