"""SemFlowScheduler: the rectified-flow ODE between images and anchor masks.

Time convention (the only one in this project): ``t`` in [0, 1], **t = 0 is the image, t = 1 is the mask**,

    x_t = t * mask + (1 - t) * image,        dx/dt = mask - image.

The network sees ``timestep = t * num_train_timesteps``. Segmentation integrates forward (t: 0 -> 1),
synthesis backward (t: 1 -> 0). ``prediction_type`` says what the network outputs:

- ``"velocity"`` (the paper): ``v = mask - image`` directly, ``C`` channels.
- ``"endpoints"``: ``2C`` channels, the predicted mask end then the predicted image end. The velocity is
  derived towards the end we are heading for, ``(mask_hat - x_t) / (1 - t)`` forward and
  ``(x_t - image_hat) / t`` backward, so one forward Euler step from t=0 returns exactly ``mask_hat``.

Custom schedules (``set_timesteps(timesteps=...)`` or ``sigmas=...``, so that diffusers' ``retrieve_timesteps`` can
drive this scheduler): unlike a diffusion schedule, which always runs from noise to data, this ODE has two data
ends and runs either way. A custom schedule lists the times at which the network is called, in call order, and
must run in the integration's ``direction``:

- ``sigmas`` are times ``t`` in [0, 1] (SemFlow's ``t``, not a noise level); ``timesteps`` are the same times in
  network units, ``t * num_train_timesteps``. Give one or the other.
- ``direction="segment"``: strictly increasing values in [0, 1); the end ``t = 1`` (the mask) is appended.
  ``direction="synthesize"``: strictly decreasing values in (0, 1]; the end ``t = 0`` (the image) is appended.
  The end itself is never a call time, so leave it out.
- Starting later than the start end (e.g. ``sigmas=[0.5, 0.75]`` for segmentation) means the sample passed to the
  first ``step`` is the state at that time, ``x_0.5 = 0.5 * mask + 0.5 * image``; the ODE is not stochastic, so
  nothing else changes.
- ``num_inference_steps`` is the number of steps (``len(sigmas)``); Heun makes two network calls per step, so
  ``len(timesteps) == 2 * num_inference_steps`` as in diffusers' ``HeunDiscreteScheduler``.

``timestep_spacing`` (config) picks the default schedule of ``set_timesteps(num_inference_steps)``:

- ``"linspace"`` (default): ``N`` steps evenly spaced in ``t``; each call moves the state to the next knot.
- ``"official"``: the integer grid of the authors' code (github.com/wang-chaoyang/SemFlow), for their checkpoints.
  With ``T = num_train_timesteps`` and ``r = T // N``, the calls are ``k * r`` (segmentation, ``0, 40, ..., 960``
  for ``N = 25``) or ``T - k * r`` (synthesis, ``1000, 960, ..., 40``) for ``k = 0 .. M - 1``, where
  ``M = len(arange(1, T, r))``; every call moves the state by ``1 / M`` (``x += v / M`` forward, ``x -= v / M``
  backward). ``M = ceil((T - 1) / r)`` equals ``N`` for
  ``N`` in 1-5, 8-10, 20, 25, 27, 37, 40, 50, 100 (``T = 1000``); for other ``N`` the authors' loop makes ``M > N``
  calls (``N = 7`` gives 8), and so does this one. Where ``N`` divides ``T`` it is ``"linspace"`` up to float
  rounding. Euler only.

``stochastic_sampling`` (config, synthesis only; diffusers' ``FlowMatchEulerDiscreteScheduler`` has the same flag):
every Euler step of a synthesis moves to the predicted image end and back out along a *fresh* draw of the mask end,
``x_{t'} = (1 - t') * image_hat + t' * noise``, instead of along the mask end that the current state implies. The
pipeline passes that draw to ``step`` as ``noise`` (only it knows which channels hold noise and which the mask). Each
step forgets the start's noise and re-predicts a conditional mean: on the CamVid model the samples follow the layout
more closely but are smoother and vary less between seeds (README). Segmentation ignores the flag and stays
deterministic.

``step`` finds its place in the schedule from its ``timestep`` argument (like diffusers' ``index_for_timestep``); the
internal counter ``step_index`` is only a fast path and tells Heun's two calls at the same time apart.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

DIRECTIONS = ("segment", "synthesize")
TIMESTEP_SPACINGS = ("linspace", "official")
_TIMESTEP_TOLERANCE = 1e-3  # network units: timesteps closer than this are the same call time


@dataclass
class SemFlowSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor` of shape `(N, C, H, W)`): the state at the next time of the integration.
    """

    prev_sample: torch.Tensor


def as_positive_int(value, name: str) -> int:
    """``value`` as a Python int if it is a positive integer of any kind (int, NumPy integer, 0-d integer tensor);
    a ValueError naming ``name`` otherwise (bools and floats such as ``4.0`` are refused)."""
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
        if number is not None and number >= 1:
            return int(number)
    raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")


class SemFlowScheduler(SchedulerMixin, ConfigMixin):
    """Euler (default) or Heun integrator of the SemFlow ODE.

    Args:
        num_train_timesteps: scale of the network's time input, ``timestep = t * num_train_timesteps``.
        prediction_type: ``"velocity"`` or ``"endpoints"`` (see the module docstring).
        solver: ``"euler"`` (one network call per step) or ``"heun"`` (second order, two calls per step).
        timestep_spacing: ``"linspace"`` or ``"official"`` (the authors' integer grid; see the module docstring).
        stochastic_sampling: re-draw the mask end's noise at every synthesis step (see the module docstring);
            needs ``prediction_type="endpoints"`` and the Euler solver.

    ``step`` computes in float32 (float64 stays float64) and returns the state in the dtype of its ``sample``, so a
    bf16/fp16 network may feed an fp32 state.
    """

    order = 1
    _compatibles = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, prediction_type: str = "velocity", solver: str = "euler",
                 timestep_spacing: str = "linspace", stochastic_sampling: bool = False):
        if prediction_type not in ("velocity", "endpoints"):
            raise ValueError(f"prediction_type must be 'velocity' or 'endpoints', got {prediction_type!r}.")
        if solver not in ("euler", "heun"):
            raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}.")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
        if timestep_spacing == "official" and solver != "euler":
            raise ValueError("timestep_spacing='official' is the authors' Euler loop; use solver='euler'.")
        if stochastic_sampling and (prediction_type != "endpoints" or solver != "euler"):
            raise ValueError("stochastic_sampling needs prediction_type='endpoints' (a predicted image end to restart "
                             "from) and solver='euler'.")
        self.order = 2 if solver == "heun" else 1
        self.init_noise_sigma = 1.0  # the ODE starts from data, never from scaled noise
        self.num_inference_steps: Optional[int] = None
        self.direction = "segment"
        self.time_grid = torch.linspace(0.0, 1.0, 2)  # knots t_0..t_N in integration order
        self.timesteps = self.time_grid[:-1] * num_train_timesteps
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._first_derivative: Optional[torch.Tensor] = None  # Heun: slope at the start of the step
        self._start_sample: Optional[torch.Tensor] = None

    @classmethod
    def _get_compatibles(cls):
        # A scheduler is always compatible with itself; diffusers only finds classes that live in `diffusers`.
        return [cls] + [c for c in super()._get_compatibles() if c is not cls]

    # ------------------------------------------------------------------------------------------ position
    @property
    def step_index(self) -> Optional[int]:
        """Index into ``timesteps`` of the next network call; ``None`` until the first ``step`` after
        ``set_timesteps``."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """Index into ``timesteps`` of the first call, when a pipeline set it with ``set_begin_index``."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Makes the first ``step`` after ``set_timesteps`` start at ``timesteps[begin_index]`` (as diffusers'
        schedulers do for image-to-image pipelines). Call it after ``set_timesteps``."""
        if isinstance(begin_index, bool):
            raise ValueError(f"`begin_index` must be an integer index into `timesteps`; got {begin_index!r}.")
        try:
            begin_index = operator.index(begin_index)
        except TypeError:
            raise ValueError(f"`begin_index` must be an integer index into `timesteps`; got {begin_index!r}.") from None
        if not 0 <= begin_index < len(self.timesteps):
            raise ValueError(f"`begin_index` must be in [0, {len(self.timesteps) - 1}]; got {begin_index}.")
        if self.config.solver == "heun" and begin_index % 2:
            raise ValueError("With the Heun solver, `begin_index` must be even: odd indices are corrector calls.")
        self._begin_index = begin_index

    @property
    def sigmas(self) -> torch.Tensor:
        """The knots ``t_0..t_N`` in [0, 1] in integration order, end included (SemFlow's time, not a noise level)."""
        return self.time_grid

    # ----------------------------------------------------------------------------------------------- time
    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        direction: str = "segment",
        timesteps: Optional[Sequence[float]] = None,
        sigmas: Optional[Sequence[float]] = None,
    ) -> None:
        """Sets ``timesteps``, the network's time inputs in call order.

        Args:
            num_inference_steps: number of steps, spaced evenly in ``t``. Any positive integer (NumPy ints too).
                With a custom schedule it may be left out (it is then its length) or must equal its length.
            device: where ``timesteps`` and ``time_grid`` live.
            direction: ``"segment"`` (t: 0 -> 1) or ``"synthesize"`` (t: 1 -> 0).
            timesteps: a custom schedule in network units ``t * num_train_timesteps`` (see the module docstring).
            sigmas: a custom schedule as times ``t`` in [0, 1] (see the module docstring).

        Euler calls the network at ``t_0..t_{N-1}``; Heun adds a corrector call at the end of every step,
        so ``len(timesteps) == 2N`` network calls.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {direction!r}.")
        if timesteps is not None and sigmas is not None:
            raise ValueError("Pass only one of `timesteps` (network units) or `sigmas` (times t in [0, 1]).")
        if timesteps is None and sigmas is None:
            if num_inference_steps is None:
                raise ValueError("Pass `num_inference_steps`, or a custom schedule as `timesteps` or `sigmas`.")
            num_inference_steps = as_positive_int(num_inference_steps, "num_inference_steps")
            if self.config.timestep_spacing == "official":
                self._set_official_timesteps(num_inference_steps, device, direction)
                return
            grid = torch.linspace(0.0, 1.0, num_inference_steps + 1, dtype=torch.float64)
            if direction == "synthesize":
                grid = grid.flip(0)
        else:
            grid = self._custom_grid(timesteps, sigmas, direction)
            if num_inference_steps is not None and as_positive_int(
                num_inference_steps, "num_inference_steps"
            ) != len(grid) - 1:
                raise ValueError(f"`num_inference_steps`={num_inference_steps} differs from the custom schedule's "
                                 f"length {len(grid) - 1}; leave it out or make them agree.")
            num_inference_steps = len(grid) - 1
        self.time_grid = grid.float().to(device)
        times = grid[:-1]
        if self.config.solver == "heun":
            # predictor at t_i, corrector at t_{i+1}: t_0, t_1, t_1, t_2, t_2, ..., t_N.
            times = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
        self.timesteps = (times * self.config.num_train_timesteps).float().to(device)
        self.num_inference_steps = num_inference_steps
        self.direction = direction
        self._step_index = None
        self._begin_index = None
        self._first_derivative = None
        self._start_sample = None

    def _set_official_timesteps(self, num_inference_steps: int, device, direction: str) -> None:
        """The authors' integer grid (``timestep_spacing="official"``, see the module docstring): the network is
        called at ``k * r`` (forward) or ``T - k * r`` (backward), ``r = T // N``, and ``time_grid`` holds the state's
        knots ``k / M``, so that every call moves the state by ``1 / M``."""
        total = self.config.num_train_timesteps
        ratio = total // num_inference_steps
        if ratio < 1:
            raise ValueError(f"timestep_spacing='official' needs num_inference_steps <= num_train_timesteps "
                             f"({total}); got {num_inference_steps}.")
        calls = torch.arange(0, total - 1, ratio, dtype=torch.float64)  # == arange(1, T, r) - 1
        knots = torch.linspace(0.0, 1.0, len(calls) + 1, dtype=torch.float64)
        if direction == "synthesize":
            calls, knots = total - calls, knots.flip(0)
        self.time_grid = knots.float().to(device)
        self.timesteps = calls.float().to(device)
        self.num_inference_steps = num_inference_steps
        self.direction = direction
        self._step_index = None
        self._begin_index = None
        self._first_derivative = None
        self._start_sample = None

    def _custom_grid(self, timesteps, sigmas, direction: str) -> torch.Tensor:
        """Knots ``t_0..t_N`` (float64) from a custom schedule of call times; the end is appended."""
        name = "sigmas" if sigmas is not None else "timesteps"
        values = sigmas if sigmas is not None else timesteps
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().double().numpy()
        try:
            t = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be a 1-D sequence of numbers; got {values!r}.") from None
        if t.ndim != 1 or t.size == 0:
            raise ValueError(f"`{name}` must be a non-empty 1-D sequence of numbers; got shape {t.shape}.")
        if not np.isfinite(t).all():
            raise ValueError(f"`{name}` must be finite; got {t.tolist()}.")
        if sigmas is None:
            t = t / self.config.num_train_timesteps
        unit = "" if sigmas is not None else f" (t * {self.config.num_train_timesteps} in network units)"
        if t.min() < 0 or t.max() > 1:
            raise ValueError(f"`{name}` must lie in t = [0, 1]{unit}; got {values!r}.")
        forward = direction == "segment"
        end = 1.0 if forward else 0.0
        steps = np.diff(t)
        if forward and not (steps > 0).all():
            raise ValueError(f"For direction='segment' (t: 0 -> 1, image -> mask) `{name}` must increase strictly; "
                             f"got {values!r}. A decreasing schedule runs towards the image: pass "
                             "direction='synthesize'.")
        if not forward and not (steps < 0).all():
            raise ValueError(f"For direction='synthesize' (t: 1 -> 0, mask -> image) `{name}` must decrease "
                             f"strictly; got {values!r}. An increasing schedule runs towards the mask: pass "
                             "direction='segment'.")
        if (t == end).any():
            raise ValueError(f"`{name}` lists the call times only: the end t = {end:g} is appended for "
                             f"direction={direction!r}, so leave it out; got {values!r}."
                             + (" To run towards the image, pass direction='synthesize'." if forward else
                                " To run towards the mask, pass direction='segment'."))
        return torch.cat([torch.from_numpy(t), torch.tensor([end], dtype=torch.float64)])

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

    def index_for_timestep(
        self, timestep: Union[float, torch.Tensor], schedule_timesteps: Optional[torch.Tensor] = None
    ) -> int:
        """Index into ``timesteps`` (or ``schedule_timesteps``) of the call at network time ``timestep``.

        Heun's corrector of step i and predictor of step i+1 share the time ``t_{i+1}``: the corrector is chosen
        while a predictor step is pending, the predictor otherwise.
        """
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        value = self._timestep_value(timestep)
        matches = ((schedule.double().cpu() - value).abs() <= _TIMESTEP_TOLERANCE).nonzero().flatten().tolist()
        if not matches:
            raise ValueError(
                f"timestep {value:g} is not in this schedule (direction={self.direction!r}, first "
                f"{[round(float(x), 4) for x in schedule[:5]]}...): pass one of `scheduler.timesteps` (network time "
                f"t * {self.config.num_train_timesteps}), or call `set_timesteps` for the schedule you want."
            )
        if len(matches) > 1 and self.config.solver == "heun":
            want_corrector = self._first_derivative is not None
            for m in matches:
                if (m % 2 == 1) == want_corrector:
                    return m
        return matches[0]

    @staticmethod
    def _timestep_value(timestep: Union[float, torch.Tensor]) -> float:
        if isinstance(timestep, torch.Tensor):
            flat = timestep.detach().reshape(-1)
            if flat.numel() == 0 or not bool((flat == flat[0]).all()):
                raise ValueError("`timestep` must be one time for the whole batch (a number, or a tensor whose "
                                 f"elements are all equal); got {timestep!r}.")
            return float(flat[0])
        if isinstance(timestep, (numbers.Real, np.number)) and not isinstance(timestep, bool):
            return float(timestep)
        raise ValueError(f"`timestep` must be a number or a tensor; got {type(timestep).__name__}.")

    def _find_place(self, timestep: Union[float, torch.Tensor]) -> int:
        """The index of this call: the counter when ``timestep`` is where it points, else looked up."""
        i = self._step_index
        if i is None and self._begin_index is not None:
            i = self._begin_index
        if i is not None and i < len(self.timesteps):
            if abs(float(self.timesteps[i]) - self._timestep_value(timestep)) <= _TIMESTEP_TOLERANCE:
                return i
        i = self.index_for_timestep(timestep)
        if self.config.solver == "heun":
            if i % 2 == 1 and self._first_derivative is None:
                raise ValueError(f"timestep {self._timestep_value(timestep):g} is a Heun corrector call, but no "
                                 "predictor call came before it: step through `scheduler.timesteps` in order.")
            if i % 2 == 0:  # a new step starts: drop a predictor that was never corrected
                self._first_derivative, self._start_sample = None, None
        return i

    def _check_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        c = sample.shape[1] if sample.ndim >= 2 else None
        if c is None or model_output.ndim != sample.ndim or model_output.shape[2:] != sample.shape[2:]:
            raise ValueError(f"`model_output` {tuple(model_output.shape)} does not match `sample` "
                             f"{tuple(sample.shape)}: both must be (N, channels, ...) with the same spatial size.")
        if self.config.prediction_type == "endpoints" and model_output.shape[1] != 2 * c:
            raise ValueError(
                f"prediction_type='endpoints' needs a model output with 2C = {2 * c} channels (the predicted mask "
                f"end, then the predicted image end) for a state with C = {c} channels; got "
                f"{model_output.shape[1]} channels. Check that the UNet's out_channels is twice its in_channels, "
                "or use prediction_type='velocity' for a C-channel output."
            )
        if self.config.prediction_type == "velocity" and model_output.shape[1] != c:
            raise ValueError(
                f"prediction_type='velocity' needs a model output with as many channels as the state (C = {c}); got "
                f"{model_output.shape[1]}. A 2C-channel output is an 'endpoints' model: build the scheduler with "
                "prediction_type='endpoints'."
            )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        return_dict: bool = True,
        noise: Optional[torch.Tensor] = None,
    ) -> Union[SemFlowSchedulerOutput, tuple]:
        """One network call's update of the state ``sample`` ``(N, C, H, W)``.

        ``noise`` ``(N, C, H, W)``: with ``stochastic_sampling``, a fresh draw of the mask end (t = 1) for a synthesis
        step; the state moves to ``(1 - t') * image_hat + t' * noise``. Required there, ignored everywhere else.

        ``timestep`` must be one of ``timesteps``: it says where in the schedule this call is. The update is
        computed in float32 and returned in ``sample``'s dtype. After the last call of the schedule the integration
        is finished, and another ``step`` raises a ValueError until ``set_timesteps`` starts a new one (diffusers'
        schedulers fail there with an ``IndexError``).
        """
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if self._step_index is not None and self._step_index >= len(self.timesteps):
            end = "t = 1, the mask" if self.direction == "segment" else "t = 0, the image"
            raise ValueError(
                f"The integration is finished: all {len(self.timesteps)} calls of this schedule were stepped and the "
                f"state is at its end ({end}); there is no time after the last timestep. Call `set_timesteps` to "
                "integrate again (it also resets the scheduler for a new image)."
            )
        self._check_model_output(model_output, sample)
        i = self._find_place(timestep)
        self._step_index = i
        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        state, output = sample.to(compute_dtype), model_output.to(compute_dtype)
        t = float(self.timesteps[i]) / self.config.num_train_timesteps
        forward = self.direction == "segment"
        v = self.velocity(output, t, state, forward)
        knot = i if self.config.solver == "euler" else i // 2
        dt = (self.time_grid[knot + 1] - self.time_grid[knot]).to(state.device)

        next_t = float(self.time_grid[knot + 1])
        stochastic = self.config.stochastic_sampling and not forward and next_t > 0  # the last step lands on image_hat
        if stochastic and noise is None:
            raise ValueError("stochastic_sampling: pass `noise`, a fresh draw of the mask end (the t = 1 state) with "
                             "the sample's shape, to every synthesis `step` but the last.")
        if stochastic and tuple(noise.shape) != tuple(sample.shape):
            raise ValueError(f"`noise` {tuple(noise.shape)} must have the sample's shape {tuple(sample.shape)}.")

        if stochastic:
            image_hat = output.chunk(2, dim=1)[1]
            prev_sample = torch.lerp(image_hat, noise.to(compute_dtype), next_t)
        elif self.config.solver == "euler":
            if self.config.prediction_type == "endpoints" and (1 - t if forward else t) > 1e-4:
                # The same Euler step written as a move towards the predicted end; lerp lands on it exactly
                # when the step reaches the end (weight 1), e.g. 1-step segmentation returns mask_hat itself.
                end = output.chunk(2, dim=1)[0 if forward else 1]
                prev_sample = torch.lerp(state, end, (dt.abs() / (1 - t if forward else t)).item())
            else:
                prev_sample = state + dt * v
        elif i % 2 == 0:  # Heun predictor
            self._first_derivative, self._start_sample = v, state
            prev_sample = state + dt * v
        else:  # Heun corrector: average the slopes at both ends of the step
            prev_sample = self._start_sample + dt * 0.5 * (self._first_derivative + v)
            self._first_derivative, self._start_sample = None, None

        self._step_index = i + 1
        prev_sample = prev_sample.to(sample.dtype)
        if not return_dict:
            return (prev_sample,)
        return SemFlowSchedulerOutput(prev_sample=prev_sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
