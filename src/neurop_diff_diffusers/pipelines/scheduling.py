"""The authors' noise schedule and the continuous noise level of the SR3-style UNet (docs/method.md section 2)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from .image_processing import round_half_up

#: The authors' schedule: T = 2000, linear betas 1e-6 .. 1e-2, epsilon prediction, no clipping.
PAPER_SCHEDULER_CONFIG = {
    "num_train_timesteps": 2000,
    "beta_start": 1e-6,
    "beta_end": 1e-2,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
}


#: What the UNet predicts (diffusers' scheduler field ``prediction_type``); the paper's is ``"epsilon"``.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: Any, name: str = "prediction_type") -> str:
    """Validate a parameterisation: one of [`PREDICTION_TYPES`].

    Args:
        prediction_type (`Any`): the value to check.
        name (`str`, defaults to ``"prediction_type"``): the argument's name, for the error message.

    Returns:
        `str`: ``prediction_type`` itself.

    Raises:
        ValueError: if ``prediction_type`` is not one of [`PREDICTION_TYPES`].

    Example:
        >>> check_prediction_type("v_prediction")
        'v_prediction'
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`{name}` must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}.")
    return prediction_type


def default_scheduler(
    kind: str = "ddim", prediction_type: str = "epsilon", **schedule: Any
) -> DDIMScheduler | DDPMScheduler:
    """The authors' scheduler: DDIM (leading spacing, ``set_alpha_to_one``) or DDPM ancestral sampling.

    Args:
        kind (`str`, defaults to ``"ddim"``): ``"ddim"`` (default) or ``"ddpm"``.
        prediction_type (`str`, defaults to ``"epsilon"``): what the UNet predicts: ``"epsilon"`` (the paper),
            ``"v_prediction"`` or ``"sample"`` (not in the paper; see the training script's ``--prediction_type``).
            Saved in the scheduler's config, so that a saved pipeline samples the way it was trained.
        schedule (`Any`, *optional*): other noise-schedule fields (``num_train_timesteps``, ``beta_start``, ...)
            replacing the authors'.

    Returns:
        `DDIMScheduler` or `DDPMScheduler`: a new scheduler, by ``kind``.

    Raises:
        ValueError: if ``kind`` is neither ``"ddim"`` nor ``"ddpm"``, or ``prediction_type`` is not one of
            [`PREDICTION_TYPES`].

    Example:
        >>> default_scheduler().config.num_train_timesteps
        2000
        >>> default_scheduler(prediction_type="v_prediction").config.prediction_type
        'v_prediction'
    """
    config = {**PAPER_SCHEDULER_CONFIG, **schedule, "prediction_type": check_prediction_type(prediction_type)}
    if kind == "ddim":
        return DDIMScheduler(**config, set_alpha_to_one=True, timestep_spacing="leading")
    if kind == "ddpm":
        return DDPMScheduler(**config, timestep_spacing="leading", variance_type="fixed_small")
    raise ValueError(f"`kind` must be 'ddim' or 'ddpm', got {kind!r}.")


#: Sampler names accepted by [`make_scheduler`] (and the CLI's / evaluation's / benchmark's ``--scheduler``):
#: ``ddim`` (the paper's), ``ddpm`` (ancestral), ``dpm++2m`` (DPM-Solver++ 2M, multistep, deterministic),
#: ``dpm++2m-sde`` (its stochastic SDE variant) and ``unipc`` (UniPC, 2nd order). The last three are not in the
#: paper: few-step samplers from diffusers, measured on the embedded model in the README.
SCHEDULERS = ("ddim", "ddpm", "dpm++2m", "dpm++2m-sde", "unipc")


def make_scheduler(name: str, like: SchedulerMixin | None = None) -> SchedulerMixin:
    """A sampler by name, with the noise schedule and ``prediction_type`` of ``like`` (a pipeline's scheduler).

    The betas, the number of training timesteps and what the UNet predicts come from ``like`` (``None``: the
    authors' schedule with epsilon prediction), so any sampler of [`SCHEDULERS`] samples the model it was trained
    for; only the way the reverse process is integrated changes. ``ddim`` and ``ddpm`` are built exactly as
    [`default_scheduler`] builds them.

    Args:
        name (`str`): one of [`SCHEDULERS`].
        like (`SchedulerMixin`, *optional*): the scheduler whose schedule and ``prediction_type`` are kept.

    Returns:
        `SchedulerMixin`: a new scheduler (``like`` is not modified).

    Raises:
        ValueError: if ``name`` is not one of [`SCHEDULERS`].

    Example:
        >>> from neurop_diff_diffusers.pipelines.scheduling import default_scheduler, make_scheduler
        >>> fast = make_scheduler("dpm++2m", default_scheduler(prediction_type="v_prediction"))
        >>> type(fast).__name__, fast.config.prediction_type, fast.config.num_train_timesteps
        ('DPMSolverMultistepScheduler', 'v_prediction', 2000)
    """
    if name not in SCHEDULERS:
        raise ValueError(f"`scheduler` must be one of {list(SCHEDULERS)}, got {name!r}.")
    config = dict(PAPER_SCHEDULER_CONFIG)
    if like is not None:
        config.update({k: like.config[k] for k in PAPER_SCHEDULER_CONFIG if k in like.config})
        if like.config.get("trained_betas") is not None:
            config["trained_betas"] = like.config["trained_betas"]
    if name in ("ddim", "ddpm"):
        return default_scheduler(name, config.pop("prediction_type"), **config)
    config.pop("clip_sample")
    if name == "unipc":
        return UniPCMultistepScheduler(**config, solver_order=2, timestep_spacing="linspace")
    algorithm = "sde-dpmsolver++" if name == "dpm++2m-sde" else "dpmsolver++"
    return DPMSolverMultistepScheduler(**config, algorithm_type=algorithm, solver_order=2, timestep_spacing="linspace")


def scheduler_name(scheduler: SchedulerMixin) -> str:
    """The [`SCHEDULERS`] name of a scheduler that [`make_scheduler`] could have built (else its class name).

    Args:
        scheduler (`SchedulerMixin`): a scheduler.

    Returns:
        `str`: a name of [`SCHEDULERS`], or the scheduler's class name when it is none of them.

    Example:
        >>> from neurop_diff_diffusers.pipelines.scheduling import default_scheduler, scheduler_name
        >>> scheduler_name(default_scheduler())
        'ddim'
    """
    kind = type(scheduler).__name__
    if kind == "DPMSolverMultistepScheduler":
        return "dpm++2m-sde" if scheduler.config.algorithm_type.startswith("sde") else "dpm++2m"
    return {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "UniPCMultistepScheduler": "unipc"}.get(kind, kind)


def check_strength(strength: Any, name: str = "strength") -> float:
    """Validate a sampling strength: a real number in ``(0, 1]``.

    Args:
        strength (`Any`): the value to check.
        name (`str`, defaults to ``"strength"``): the argument's name, for the error message.

    Returns:
        `float`: ``strength`` as a float.

    Raises:
        ValueError: naming the argument and the allowed range.

    Example:
        >>> check_strength(0.5)
        0.5
    """
    if isinstance(strength, bool) or not isinstance(strength, Real) or not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"`{name}` must be a number in (0, 1], got {strength!r}.")
    return float(strength)


def check_eta(eta: Any, name: str = "eta") -> float:
    """Validate DDIM's `eta`: a real number in ``[0, 1]`` (0: deterministic DDIM; 1: DDPM-like steps).

    Args:
        eta (`Any`): the value to check.
        name (`str`, defaults to ``"eta"``): the argument's name, for the error message.

    Returns:
        `float`: ``eta`` as a float.

    Raises:
        ValueError: naming the argument and the allowed range.

    Example:
        >>> check_eta(1)
        1.0
    """
    if isinstance(eta, bool) or not isinstance(eta, Real) or not (math.isfinite(eta) and 0.0 <= float(eta) <= 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {eta!r}.")
    return float(eta)


def strength_steps(strength: float, num_inference_steps: int) -> int:
    """How many of the ``num_inference_steps`` timesteps a sampling `strength` runs: the last
    ``round(strength * num_inference_steps)`` (half up), at least one.

    Args:
        strength (`float`): a number in ``(0, 1]`` (see [`check_strength`]).
        num_inference_steps (`int`): the scheduler's number of timesteps.

    Returns:
        `int`: the number of steps, between 1 and ``num_inference_steps``.

    Example:
        >>> strength_steps(0.04, 50), strength_steps(0.001, 50), strength_steps(1.0, 50)
        (2, 1, 50)
    """
    return min(max(round_half_up(strength * num_inference_steps), 1), num_inference_steps)


def noise_level(alphas_cumprod: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
    """``sqrt(alphas_cumprod[t])``, the SR3 noise level of discrete step ``t`` (linearly interpolated for float t).

    Args:
        alphas_cumprod (`torch.Tensor`): the scheduler's cumulative alphas, shape ``(T,)``.
        timestep (`torch.Tensor`, `float` or `int`): a (possibly fractional) timestep in ``[0, T - 1]``.

    Returns:
        `torch.Tensor`: the noise level, a float32 scalar tensor.
    """
    t = torch.as_tensor(timestep, dtype=torch.float64).reshape(())
    t = t.clamp(0, alphas_cumprod.shape[0] - 1)
    lo = int(torch.floor(t))
    hi = min(lo + 1, alphas_cumprod.shape[0] - 1)
    frac = float(t) - lo
    gamma = alphas_cumprod[lo].double() * (1 - frac) + alphas_cumprod[hi].double() * frac
    return gamma.sqrt().float()


def sample_continuous_noise_level(
    alphas_cumprod: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    max_timestep: int | None = None,
) -> torch.Tensor:
    """Training noise levels: ``t ~ U{1..T}``, then ``sqrt_gamma ~ U(sqrt(gamma_{t-1}), sqrt(gamma_t))`` per sample.

    ``gamma_0 = 1``, ``gamma_t = alphas_cumprod[t - 1]``. Returns a float32 tensor of shape ``(batch_size,)``.

    Args:
        alphas_cumprod (`torch.Tensor`): the scheduler's cumulative alphas, shape ``(T,)``.
        batch_size (`int`): number of samples.
        generator (`torch.Generator`, *optional*): optional torch generator (CPU) for reproducibility.
        max_timestep (`int`, *optional*): draw ``t ~ U{1..max_timestep}`` instead (``None``: ``T``, the method). Not
            in the paper: for fine-tuning a model on the low noise levels that a pipeline `strength` below 1 runs
            through.

    Returns:
        `torch.Tensor`: the noise levels ``sqrt_gamma``, float32, shape ``(batch_size,)``.

    Raises:
        ValueError: if ``max_timestep`` is not an integer in ``[1, T]``.

    Example:
        >>> from neurop_diff_diffusers import default_scheduler, sample_continuous_noise_level
        >>> ac = default_scheduler().alphas_cumprod
        >>> bool((sample_continuous_noise_level(ac, 4, max_timestep=400) >= ac[399].sqrt()).all())
        True
    """
    num_steps = alphas_cumprod.shape[0]
    if max_timestep is None:
        max_timestep = num_steps
    if isinstance(max_timestep, bool) or not isinstance(max_timestep, int) or not 1 <= max_timestep <= num_steps:
        raise ValueError(f"`max_timestep` must be an integer in [1, {num_steps}], got {max_timestep!r}.")
    gammas = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod.double().cpu()])
    sqrt_gammas = gammas.sqrt()
    t = torch.randint(1, max_timestep + 1, (batch_size,), generator=generator)
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    high, low = sqrt_gammas[t - 1], sqrt_gammas[t]
    return (low + (high - low) * u).float()
