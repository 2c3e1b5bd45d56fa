"""What every sampler shares: the sampler config, the step output, and the base class.

A sampler (:class:`~mmldm.diffusion.ddpm.DDPMSampler`, :class:`~mmldm.diffusion.ddim.DDIMSampler`,
:class:`~mmldm.diffusion.dpm_solver.DPMSolverSampler`) knows the schedule, the timesteps it
visits and the prediction type, and turns one model output into the next, less noisy sample. It
knows nothing about conditioning: :func:`~mmldm.diffusion.sampling_loop.sample` calls ``model_fn(x_t, t)``, and
:mod:`mmldm.diffusion.guidance` builds that function from the conditional UNet.

Two optional fixes of the predicted x0 before it is used (alternatives; at most one):

* ``clip_x0 = (lo, hi)``: clamp x0_hat to the range the training latents occupied. Saturated
  samples (latents far outside the VQVAE's training range, decoded to blown-out images) come
  from early, very noisy x0 estimates overshooting; clamping them to the measured latent range
  is the fix used for this project (and the seed clamps x0 to [-1, 1], though only for display).
* ``dynamic_threshold = p`` (Imagen, Saharia et al. 2022, section 2.3): per sample, s = the
  p-quantile of |x0_hat|, s = max(s, 1) (and <= ``dynamic_threshold_max`` if set), then
  x0_hat = clamp(x0_hat, -s, s) / s. It assumes data in [-1, 1]; for latents, train on latents
  scaled to about that range. Imagen found it helps at large guidance weights.

When either is on, eps_hat is recomputed from the fixed x0_hat so that the pair stays consistent
with x_t (diffusers' DDIM ``use_clipped_model_output=True``, GLIDE's choice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from mmldm.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule, TimestepSpacing, inference_timesteps

ModelFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, C, h, w), t (B,) long) -> model output
Callback = Callable[[int, int, Tensor, Tensor], None]  # (step index, t, x_t, predicted x0)


@dataclass
class SamplerConfig:
    """How to sample (defaults: the ``paper`` profile, 1,000-step ancestral DDPM)."""

    name: Literal["ddpm", "ddim", "dpm_solver"] = "ddpm"
    num_inference_steps: int = 1000
    timestep_spacing: TimestepSpacing = "trailing"  # see schedule.inference_timesteps
    steps_offset: int = 0  # added to "leading" timesteps (Stable Diffusion uses 1)
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 = DDPM-like noise (Song et al. 2021 eq. 16)
    clip_x0: tuple[float, float] | None = None  # clamp x0_hat to this range (the latents' range)
    clip_to_latents: bool = False  # clamp x0_hat to the training latents' range (from the LDM checkpoint)
    dynamic_threshold: float | None = None  # Imagen percentile, e.g. 0.995; excludes clip_x0
    dynamic_threshold_max: float | None = None  # upper bound on Imagen's s (None: unbounded)

    def __post_init__(self):
        if (self.clip_x0 is not None or self.clip_to_latents) and self.dynamic_threshold is not None:
            raise ValueError("clip_x0 / clip_to_latents and dynamic_threshold are alternatives; set at most one")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


class StepOutput(NamedTuple):
    prev_sample: Tensor  # x at the next (less noisy) timestep
    pred_x0: Tensor  # the x0 estimate the step used (after clipping / thresholding)


def draw_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device then moved.

    Drawing on the generator's device means a CPU generator gives the same numbers whatever
    device the model runs on.
    """
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def dynamic_thresholding(x0: Tensor, percentile: float, max_value: float | None = None) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3), per sample."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs().float(), percentile, dim=1).to(x0.dtype)
    s = torch.clamp(s, min=1.0, max=max_value)  # s >= 1: plain clipping to [-1, 1] at worst
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.clamp(x0, -s, s) / s  # threshold to [-s, s], then divide by s


class Sampler:
    """What DDPM, DDIM and DPM-Solver++ share: the timesteps, and (x0_hat, eps_hat) from the model.

    ``step(model_output, i, x_t)`` moves from ``timesteps[i]`` to ``timesteps[i+1]`` (or to clean
    data after the last one) and returns a :class:`StepOutput`.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_inference_steps: int,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "trailing",
        steps_offset: int = 0,
        clip_x0: tuple[float, float] | None = None,
        dynamic_threshold: float | None = None,
        dynamic_threshold_max: float | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if clip_x0 is not None and dynamic_threshold is not None:
            raise ValueError("clip_x0 and dynamic_threshold are alternatives; set at most one")
        if clip_x0 is not None and not clip_x0[0] < clip_x0[1]:
            raise ValueError(f"clip_x0 must be (low, high) with low < high, got {clip_x0}")
        if dynamic_threshold is not None and not 0.0 < dynamic_threshold <= 1.0:
            raise ValueError(f"dynamic_threshold is a quantile in (0, 1], got {dynamic_threshold}")
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.clip_x0 = clip_x0
        self.dynamic_threshold = dynamic_threshold
        self.dynamic_threshold_max = dynamic_threshold_max
        self.timesteps = inference_timesteps(len(schedule), num_inference_steps, timestep_spacing, steps_offset)

    def __len__(self) -> int:
        return len(self.timesteps)

    def prev_timestep(self, i: int) -> int:
        """The timestep step i lands on; -1 after the last step (clean data, alpha_bar = 1)."""
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def predict_x0_eps(self, model_output: Tensor, x_t: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) from the model output, x0_hat clipped or thresholded if asked."""
        x0, eps = self.schedule.predict_x0_eps(model_output, x_t, t, self.prediction_type)
        if self.clip_x0 is None and self.dynamic_threshold is None:
            return x0, eps
        if self.clip_x0 is not None:
            x0 = x0.clamp(*self.clip_x0)
        else:
            x0 = dynamic_thresholding(x0, self.dynamic_threshold, self.dynamic_threshold_max)
        return x0, self.schedule.x0_to_eps(x0, x_t, t)

    def reset(self) -> None:
        """Forget any state kept between steps (multistep solvers); :func:`sample` calls it."""

    def step(
        self,
        model_output: Tensor,
        i: int,
        x_t: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> StepOutput:
        raise NotImplementedError
