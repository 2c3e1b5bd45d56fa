"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 2).

DPM-Solver++ integrates the probability-flow ODE written for the data prediction x0_hat, in the
half log-SNR lambda_t = log(alpha_t / sigma_t), where alpha_t = sqrt(alpha_bar_t) and sigma_t =
sqrt(1 - alpha_bar_t) (the paper's VP notation). Its exact solution from s to t is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x0_hat(lambda) d lambda

and "2M" approximates x0_hat(lambda) linearly from the current and the previous step's
estimates (multistep: one model call per step, like DDIM). With h_i = lambda_{t_i} -
lambda_{t_{i-1}}, Algorithm 2 reads

    first step:  x_{t_1} = (sigma_{t_1} / sigma_{t_0}) x_{t_0} - alpha_{t_1} (e^{-h_1} - 1) x0_hat_0
                 (DPM-Solver++(1) = DDIM)
    then:        r_i = h_{i-1} / h_i
                 D_i = (1 + 1/(2 r_i)) x0_hat_{i-1} - 1/(2 r_i) x0_hat_{i-2}
                 x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i

The final step goes to clean data, sigma = 0, alpha = 1: lambda = +inf, h = inf and r = 0, so
the second-order correction is undefined; the last step is first order (diffusers'
``lower_order_final`` / ``final_sigmas_type="zero"``), where e^{-h} = 0 and the update is
exactly x0_hat. The clipping and thresholding options act on each x0_hat before it enters D_i.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmldm.diffusion.base_sampler import Sampler, StepOutput
from mmldm.diffusion.schedule import NoiseSchedule


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M), deterministic; first order on the first and on the final step."""

    def __init__(self, schedule: NoiseSchedule, num_inference_steps: int = 20, **kwargs):
        super().__init__(schedule, num_inference_steps, **kwargs)
        self._previous: tuple[int, Tensor, float] | None = None  # (step index, x0_hat, lambda) of the last step

    def reset(self) -> None:
        self._previous = None

    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        alpha_bar = self.schedule.alpha_bar(t)
        alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    def step(
        self,
        model_output: Tensor,
        i: int,
        x_t: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """x at ``timesteps[i]`` (s) -> x at ``timesteps[i+1]`` (t); deterministic, so no noise."""
        if i == 0:
            self.reset()
        s, t = int(self.timesteps[i]), self.prev_timestep(i)

        # 1. the data prediction x0_hat(x_s, s) (clipped or thresholded if configured)
        x0_hat, _ = self.predict_x0_eps(model_output, x_t, s)

        # 2. final step to sigma = 0: the first-order update (DDIM) with e^{-h} = 0 is x0_hat itself
        if t < 0:
            self._previous = None
            return StepOutput(x0_hat, x0_hat)

        # 3. alpha, sigma and lambda = log(alpha / sigma) at s and t; h = lambda_t - lambda_s
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(s)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(t)
        h = lambda_t - lambda_s

        # 4. D: x0_hat itself on the first step (Algorithm 2's first update); after that
        #    Algorithm 2's multistep combination, r = h_{i-1} / h_i,
        #    D = (1 + 1/(2r)) x0_hat_{i-1} - 1/(2r) x0_hat_{i-2}
        if self._previous is not None and self._previous[0] == i - 1:
            _, x0_before, lambda_before = self._previous
            r = (lambda_s - lambda_before) / h
            D = (1.0 + 1.0 / (2.0 * r)) * x0_hat - (1.0 / (2.0 * r)) * x0_before
        else:
            D = x0_hat

        # 5. the update of Algorithm 2: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D
        prev = (sigma_t / sigma_s) * x_t - alpha_t * math.expm1(-h) * D

        self._previous = (i, x0_hat, lambda_s)
        return StepOutput(prev, x0_hat)
