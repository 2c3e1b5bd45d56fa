"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

DDIM keeps DDPM's marginals q(x_t | x0) but uses a non-Markovian forward process whose reverse
step can skip timesteps and be deterministic. From t to the previous visited timestep t' it is
eq. 12 (alpha here is the paper's alpha, i.e. our alpha_bar):

    x_t' = sqrt(alpha_bar_t') * x0_hat                           "predicted x0"
         + sqrt(1 - alpha_bar_t' - sigma_t^2) * eps_hat          "direction pointing to x_t"
         + sigma_t * z                                           "random noise"

    sigma_t(eta) = eta * sqrt((1 - alpha_bar_t') / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_t')   (eq. 16)

eta = 0 gives the deterministic DDIM sampler; eta = 1 gives DDPM's posterior variance. Any number
of steps works. The step after the last visited timestep lands on alpha_bar = 1, i.e. returns
x0_hat (diffusers' ``set_alpha_to_one=True``).

One difference from diffusers: the previous timestep is the next one in ``timesteps`` (diffusers
uses t - T // n, which is the same for "leading" and "trailing" spacing whenever n divides T).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmldm.diffusion.base_sampler import Sampler, StepOutput, draw_noise
from mmldm.diffusion.schedule import NoiseSchedule


class DDIMSampler(Sampler):
    """DDIM, any number of steps; ``eta`` scales the per-step noise (0: deterministic)."""

    def __init__(self, schedule: NoiseSchedule, num_inference_steps: int = 50, eta: float = 0.0, **kwargs):
        super().__init__(schedule, num_inference_steps, **kwargs)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def step(
        self,
        model_output: Tensor,
        i: int,
        x_t: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """x_t at ``timesteps[i]`` -> x at ``timesteps[i+1]``; ``noise`` overrides the generator."""
        t, t_prev = int(self.timesteps[i]), self.prev_timestep(i)

        # 1. alpha_bar at this and the previous visited timestep (1.0 after the last step)
        alpha_bar_t = self.schedule.alpha_bar(t)
        alpha_bar_prev = self.schedule.alpha_bar(t_prev)

        # 2. "predicted x0" f_theta(x_t) of eq. 12 (eq. 9): x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t),
        #    and eps_hat; if x0_hat is clipped, eps_hat is re-derived from it
        x0_hat, eps_hat = self.predict_x0_eps(model_output, x_t, t)

        # 3. sigma_t(eta), eq. 16
        sigma = self.eta * math.sqrt(
            (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev)
        )

        # 4. "direction pointing to x_t" of eq. 12
        direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps_hat

        # 5. x_{t'} without the random noise, eq. 12
        prev = math.sqrt(alpha_bar_prev) * x0_hat + direction

        # 6. "random noise" sigma_t z of eq. 12
        if sigma > 0.0:
            z = noise if noise is not None else draw_noise(x_t, generator)
            prev = prev + sigma * z
        return StepOutput(prev, x0_hat)
