"""Ancestral DDPM sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

Each step samples x_{t-1} ~ p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0 = x0_hat): the forward
process' posterior with the model's x0 estimate plugged in. With all T = 1,000 steps this is the
paper's Algorithm 2 (and the seed's sampler). With fewer steps it is "respaced" DDPM (Nichol &
Dhariwal 2021, section 4): a step from t to an earlier t' uses the one-step alpha of that jump,

    alpha_t := alpha_bar_t / alpha_bar_t',    beta_t := 1 - alpha_t,

which is what diffusers' ``DDPMScheduler`` does after ``set_timesteps(n)``. The variance is the
posterior's ("fixed small", sigma_t^2 = beta_tilde_t), as in diffusers' default and the seed.

Why eq. 7 and not eq. 11: eq. 11, mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) /
sqrt(alpha_t), is eq. 7 with eq. 15 substituted in. They agree unless x0_hat is clipped (see
:mod:`mmldm.diffusion.base_sampler`); going through eq. 7 lets the clipping take effect.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmldm.diffusion.base_sampler import Sampler, StepOutput, draw_noise
from mmldm.diffusion.schedule import NoiseSchedule


class DDPMSampler(Sampler):
    """Ancestral sampler; 1,000 steps by default, any n <= T with respacing."""

    def __init__(self, schedule: NoiseSchedule, num_inference_steps: int = 1000, **kwargs):
        super().__init__(schedule, num_inference_steps, **kwargs)

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

        # 1. alphas and betas of this (possibly respaced) step: alpha_t = alpha_bar_t / alpha_bar_prev
        alpha_bar_t = self.schedule.alpha_bar(t)
        alpha_bar_prev = self.schedule.alpha_bar(t_prev)  # 1.0 after the last step
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1.0 - alpha_t

        # 2. x0_hat from the model output: eq. 15, x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        #    (or the v / x0 equivalents), then clipped or thresholded if configured
        x0_hat, _ = self.predict_x0_eps(model_output, x_t, t)

        # 3. posterior mean, eq. 7:
        #    mu_tilde = sqrt(alpha_bar_prev) beta_t / (1 - alpha_bar_t) * x0
        #             + sqrt(alpha_t) (1 - alpha_bar_prev) / (1 - alpha_bar_t) * x_t
        coef_x0 = math.sqrt(alpha_bar_prev) * beta_t / (1.0 - alpha_bar_t)
        coef_xt = math.sqrt(alpha_t) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
        mean = coef_x0 * x0_hat + coef_xt * x_t

        # 4. posterior variance, eq. 7: beta_tilde_t = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t
        #    (zero on the last step, where alpha_bar_prev = 1)
        variance = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * beta_t

        # 5. sample x_{t-1} ~ N(mu_tilde, beta_tilde I), eq. 6 (Algorithm 2: z = 0 on the last step)
        if variance > 0.0:
            z = noise if noise is not None else draw_noise(x_t, generator)
            prev = mean + math.sqrt(variance) * z
        else:
            prev = mean
        return StepOutput(prev, x0_hat)
