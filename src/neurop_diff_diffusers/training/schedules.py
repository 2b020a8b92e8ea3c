"""Learning-rate schedules: the paper's (``"paper"``: constant, then a cosine decay to a minimum, docs/method.md
section 5) or any of diffusers' ``get_scheduler``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers.optimization import get_scheduler

from ..utils import TrainingSetupError

#: Names of the learning-rate schedules (``"paper"`` plus those of diffusers' ``get_scheduler``).
LR_SCHEDULERS = (
    "paper",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "piecewise_constant",
)


def paper_lr_lambda(
    num_training_steps: int, constant_fraction: float = 0.1, min_lr_ratio: float = 0.01
) -> Callable[[int], float]:
    """The paper's schedule as a multiplier of the initial learning rate (for ``LambdaLR``).

    Constant for the first ``constant_fraction`` of the steps (the paper: 0.1 M of 1 M iterations), then a cosine
    decay to ``min_lr_ratio`` (the paper: 1e-6 / 1e-4) at ``num_training_steps``; constant after that. The paper
    does not state the shape of its decay: the cosine is our choice.

    Args:
        num_training_steps (`int`): total scheduler steps.
        constant_fraction (`float`, defaults to `0.1`): fraction of the steps at the initial rate, in ``[0, 1]``.
        min_lr_ratio (`float`, defaults to `0.01`): final rate over initial rate, in ``[0, 1]``.

    Example:
        >>> f = paper_lr_lambda(100, 0.1, 0.01)
        >>> f(0), f(10), round(f(55), 3), f(100), f(200)
        (1.0, 1.0, 0.505, 0.01, 0.01)
    """
    if num_training_steps < 1:
        raise ValueError(f"`num_training_steps` must be >= 1, got {num_training_steps}.")
    if not 0.0 <= constant_fraction <= 1.0:
        raise ValueError(f"`constant_fraction` must be in [0, 1], got {constant_fraction}.")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"`min_lr_ratio` must be in [0, 1], got {min_lr_ratio}.")
    constant_steps = int(round(constant_fraction * num_training_steps))
    decay_steps = num_training_steps - constant_steps

    def lr_lambda(step: int) -> float:
        if step <= constant_steps:
            return 1.0
        if decay_steps <= 0 or step >= num_training_steps:
            return min_lr_ratio
        progress = (step - constant_steps) / decay_steps
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return lr_lambda


def get_lr_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    num_training_steps: int,
    num_warmup_steps: int = 0,
    constant_fraction: float = 0.1,
    min_lr: float = 1e-6,
    step_rules: str | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A learning-rate schedule by name: ``"paper"`` ([`paper_lr_lambda`]) or any of diffusers' ``get_scheduler``.

    With Accelerate on ``n`` processes the prepared scheduler steps ``n`` times per optimizer step: pass
    ``num_training_steps`` and ``num_warmup_steps`` multiplied by ``n``, as diffusers' scripts do.

    Args:
        name (`str`): ``"paper"``, or ``"linear"``, ``"cosine"``, ``"cosine_with_restarts"``, ``"polynomial"``,
            ``"constant"``, ``"constant_with_warmup"``, ``"piecewise_constant"``.
        optimizer (`torch.optim.Optimizer`): the optimizer; its ``lr`` is the initial rate.
        num_training_steps (`int`): total scheduler steps.
        num_warmup_steps (`int`, defaults to `0`): warm-up steps (diffusers' schedules only).
        constant_fraction (`float`, defaults to `0.1`): ``"paper"``: fraction of the steps at the initial rate.
        min_lr (`float`, defaults to `1e-06`): ``"paper"``: final learning rate (absolute; the paper's 1e-6).
        step_rules (`str | None`, *optional*): ``"piecewise_constant"``: diffusers' rule string, e.g.
            ``"1:1000,0.5:2000,0.25"``.

    Example:
        >>> opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4)
        >>> sched = get_lr_scheduler("paper", opt, num_training_steps=10)
        >>> sched.get_last_lr()
        [0.0001]
    """
    if name == "paper":
        base_lr = optimizer.param_groups[0]["lr"]
        if base_lr <= 0:
            raise TrainingSetupError(f"`--learning_rate` must be positive, got {base_lr}.")
        if min_lr > base_lr:
            raise TrainingSetupError(f"`--lr_min` ({min_lr}) must not exceed `--learning_rate` ({base_lr}).")
        lr_lambda = paper_lr_lambda(num_training_steps, constant_fraction, min_lr / base_lr)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    try:
        return get_scheduler(
            name,
            optimizer,
            step_rules=step_rules,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=num_training_steps,
        )
    except ValueError as err:
        raise TrainingSetupError(f"`--lr_scheduler` {name!r}: {err}") from None
