"""SemFlowScheduler: the rectified-flow ODE between images and anchor masks.

Time convention (the only one in this project): ``t`` in [0, 1], **t = 0 is the image, t = 1 is the mask**,

    x_t = t * mask + (1 - t) * image,        dx/dt = mask - image.

The network sees ``timestep = t * num_train_timesteps``. Segmentation integrates forward (t: 0 -> 1),
synthesis backward (t: 1 -> 0). ``prediction_type`` says what the network outputs:

- ``"velocity"`` (the paper): ``v = mask - image`` directly, ``C`` channels.
- ``"endpoints"``: ``2C`` channels, the predicted mask end then the predicted image end. The velocity is
  derived towards the end we are heading for, ``(mask_hat - x_t) / (1 - t)`` forward and
  ``(x_t - image_hat) / t`` backward, so one forward Euler step from t=0 returns exactly ``mask_hat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

DIRECTIONS = ("segment", "synthesize")


@dataclass
class SemFlowSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor` of shape `(N, C, H, W)`): the state at the next time of the integration.
    """

    prev_sample: torch.Tensor


class SemFlowScheduler(SchedulerMixin, ConfigMixin):
    """Euler (default) or Heun integrator of the SemFlow ODE.

    Args:
        num_train_timesteps: scale of the network's time input, ``timestep = t * num_train_timesteps``.
        prediction_type: ``"velocity"`` or ``"endpoints"`` (see the module docstring).
        solver: ``"euler"`` (one network call per step) or ``"heun"`` (second order, two calls per step).
    """

    order = 1
    _compatibles = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, prediction_type: str = "velocity", solver: str = "euler"):
        if prediction_type not in ("velocity", "endpoints"):
            raise ValueError(f"prediction_type must be 'velocity' or 'endpoints', got {prediction_type!r}.")
        if solver not in ("euler", "heun"):
            raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}.")
        self.order = 2 if solver == "heun" else 1
        self.init_noise_sigma = 1.0  # the ODE starts from data, never from scaled noise
        self.num_inference_steps: Optional[int] = None
        self.direction = "segment"
        self.time_grid = torch.linspace(0.0, 1.0, 2)  # knots t_0..t_N in integration order
        self.timesteps = self.time_grid[:-1] * num_train_timesteps
        self._step_index = 0
        self._first_derivative: Optional[torch.Tensor] = None  # Heun: slope at the start of the step
        self._start_sample: Optional[torch.Tensor] = None

    # ----------------------------------------------------------------------------------------------------- time
    def set_timesteps(
        self,
        num_inference_steps: int,
        device: Union[str, torch.device, None] = None,
        direction: str = "segment",
    ) -> None:
        """Sets ``timesteps``, the network's time inputs in call order, for ``num_inference_steps`` steps.

        Euler calls the network at ``t_0..t_{N-1}``; Heun adds a corrector call at the end of every step,
        so ``len(timesteps) == 2N`` network calls.
        """
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        if direction not in DIRECTIONS:
            raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {direction!r}.")
        grid = torch.linspace(0.0, 1.0, num_inference_steps + 1, dtype=torch.float64)
        if direction == "synthesize":
            grid = grid.flip(0)
        self.time_grid = grid.float().to(device)
        times = grid[:-1]
        if self.config.solver == "heun":
            # predictor at t_i, corrector at t_{i+1}: t_0, t_1, t_1, t_2, t_2, ..., t_N.
            times = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
        self.timesteps = (times * self.config.num_train_timesteps).float().to(device)
        self.num_inference_steps = num_inference_steps
        self.direction = direction
        self._step_index = 0
        self._first_derivative = None
        self._start_sample = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[Union[float, torch.Tensor]] = None):
        """The state goes to the network unscaled (kept for diffusers' scheduler API)."""
        return sample

    # ------------------------------------------------------------------------------------------------- training
    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Builds ``x_t = t * mask + (1 - t) * image`` for training.

        Args:
            original_samples: the image end ``(N, C, H, W)``.
            noise: the mask end ``(N, C, H, W)`` (the anchor image, possibly perturbed).
            timesteps: ``(N,)`` network times ``t * num_train_timesteps``.
        """
        t = (timesteps.float() / self.config.num_train_timesteps).to(original_samples.dtype)
        t = t.reshape(-1, *([1] * (original_samples.ndim - 1)))
        return t * noise + (1 - t) * original_samples

    def get_target(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Regression target for the network: ``mask - image`` (velocity) or ``[mask, image]`` (endpoints, 2C)."""
        if self.config.prediction_type == "velocity":
            return mask - image
        return torch.cat([mask, image], dim=1)

    # ---------------------------------------------------------------------------------------------- integration
    def velocity(self, model_output: torch.Tensor, t: float, sample: torch.Tensor, forward: bool) -> torch.Tensor:
        """dx/dt at time ``t`` (in [0, 1]) from the network output."""
        if self.config.prediction_type == "velocity":
            return model_output
        mask_hat, image_hat = model_output.chunk(2, dim=1)
        # Head for the end we integrate towards; at that very end (Heun's corrector) use the other one.
        eps = 1e-4
        if (forward and 1 - t > eps) or t < eps:
            return (mask_hat - sample) / (1 - t)
        return (sample - image_hat) / t

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> Union[SemFlowSchedulerOutput, tuple]:
        """One network call's update of the state ``sample`` ``(N, C, H, W)``."""
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if self._step_index >= len(self.timesteps):
            raise ValueError("`step` was called more times than there are timesteps; call `set_timesteps` again.")
        t = float(timestep) / self.config.num_train_timesteps
        forward = self.direction == "segment"
        v = self.velocity(model_output, t, sample, forward)

        if self.config.solver == "euler":
            i = self._knot_index()
            dt = self.time_grid[i + 1] - self.time_grid[i]
            if self.config.prediction_type == "endpoints" and (1 - t if forward else t) > 1e-4:
                # The same Euler step written as a move towards the predicted end; lerp lands on it exactly
                # when the step reaches the end (weight 1), e.g. 1-step segmentation returns mask_hat itself.
                end = model_output.chunk(2, dim=1)[0 if forward else 1]
                prev_sample = torch.lerp(sample, end, (dt.abs() / (1 - t if forward else t)).item())
            else:
                prev_sample = sample + dt * v
        elif self._first_derivative is None:  # Heun predictor
            i = self._knot_index()
            dt = self.time_grid[i + 1] - self.time_grid[i]
            self._first_derivative, self._start_sample = v, sample
            prev_sample = sample + dt * v
        else:  # Heun corrector: average the slopes at both ends of the step
            i = self._knot_index()
            dt = self.time_grid[i + 1] - self.time_grid[i]
            prev_sample = self._start_sample + dt * 0.5 * (self._first_derivative + v)
            self._first_derivative, self._start_sample = None, None

        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        if not return_dict:
            return (prev_sample,)
        return SemFlowSchedulerOutput(prev_sample=prev_sample)

    def _knot_index(self) -> int:
        """Index of the knot the current call sits on."""
        # Heun calls come in pairs (predictor at t_i, corrector at t_{i+1}) that both belong to step i.
        return self._step_index if self.config.solver == "euler" else self._step_index // 2

    def __len__(self) -> int:
        return self.config.num_train_timesteps
