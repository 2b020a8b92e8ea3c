"""Training building blocks shared by the two training scripts (``training/``), kept small and unit-tested.

- Losses: [`operator_l1_loss`] (stage 1, the neural operator at sampled HR points) and [`diffusion_l1_loss`] (stage 2,
  docs/method.md section 2: continuous ``sqrt(gamma)``, L1 on the noise), with the priors of [`compute_priors`].
- Learning-rate schedules: [`get_lr_scheduler`], the paper's schedule (``"paper"``: constant, then a cosine decay
  to a minimum) or any name of diffusers' ``get_scheduler``.
- Reproducible randomness: [`EpochShuffleSampler`] and [`seeded_generator`]: the data order and every random draw
  are functions of ``(seed, epoch, position)``, so a resumed run sees exactly what an uninterrupted one would.
- Checkpoints in the diffusers layout ``OUTPUT_DIR/checkpoint-<global step>``, written to a temporary folder and
  renamed when complete ([`save_checkpoint`], [`list_checkpoints`], [`resolve_resume_checkpoint`]), and the guard
  against writing into an unrelated run ([`check_output_dir`]).
- Validation: [`ValidationSet`], [`validate_operator`], [`validate_pipeline`] (PSNR / SSIM of
  [`~neurop_diff_diffusers.metrics`] and an ``LR | bicubic | prior | output | HR`` grid).
- [`push_folder_to_hub`]: ``create_repo`` + ``upload_folder``; the token comes from the environment only.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from diffusers.utils import make_image_grid
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .data import bicubic_degrade, pil_to_tensor, preprocess_hr, tensor_to_pil, to_uint8_levels
from .hub import HUB_IGNORE_PATTERNS, push_folder_to_hub
from .loading import load_frozen_operator, load_trained_model
from .metrics import to_unit_levels
from .models.neural_operator import GalerkinNeuralOperator
from .pipelines.pipeline_neurop_diff import bicubic_prior
from .scheduling import check_prediction_type, sample_continuous_noise_level
from .utils import TrainingSetupError, atomic_write_text, derive_seed, seeded_generator

#: Name of the marker file a training script writes into its output folder (script name, package version, args).
TRAINING_ARGS_FILE = "training_args.json"
#: Validation figures, one JSON object per line: ``{"step": ..., "psnr": ..., ...}``.
VALIDATION_HISTORY_FILE = "validation_history.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_CHECKPOINT_PREFIX = ".tmp-checkpoint-"
_OLD_CHECKPOINT_PREFIX = ".old-checkpoint-"
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


# ----------------------------------------------------------------------------------------------------------------
# Losses and priors
# ----------------------------------------------------------------------------------------------------------------
class NeuralOperatorQuery(nn.Module):
    """``forward(lr, coord, cell) = operator.query(lr, coord, cell)``: the operator at sampled points, as a module.

    Training goes through ``forward`` so that a distributed wrapper (DDP, prepared by Accelerate) sees the call.

    Args:
        operator: the [`GalerkinNeuralOperator`] being trained.
    """

    def __init__(self, operator: GalerkinNeuralOperator):
        super().__init__()
        self.operator = operator

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.operator.query(lr, coord, cell)


def operator_l1_loss(operator: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stage-1 loss: L1 between the operator's output at the sampled HR points and the HR pixels there.

    Args:
        operator: a [`GalerkinNeuralOperator`] (its ``query`` is used) or a module whose ``forward(lr, coord, cell)``
            returns ``(B, 3, Q)`` (a [`NeuralOperatorQuery`], possibly wrapped for distributed training).
        batch: a stage-1 batch (``collate_stage1``): ``lr`` ``(B, 3, h, w)``, ``coord`` ``(B, Q, 2)``, ``cell``
            ``(B, 2)``, ``gt`` ``(B, Q, 3)``, all in ``[-1, 1]``.

    Returns:
        The mean absolute error, a scalar tensor.

    Example:
        >>> from neurop_diff_diffusers.presets import build_neural_operator
        >>> batch = {"lr": torch.zeros(2, 3, 8, 8), "coord": torch.zeros(2, 5, 2), "cell": torch.full((2, 2), 0.1),
        ...          "gt": torch.zeros(2, 5, 3)}
        >>> operator_l1_loss(build_neural_operator("tiny"), batch).shape
        torch.Size([])
    """
    if isinstance(operator, GalerkinNeuralOperator):
        pred = operator.query(batch["lr"], batch["coord"], batch["cell"])
    else:
        pred = operator(batch["lr"], batch["coord"], batch["cell"])
    target = batch["gt"].transpose(1, 2).to(pred.dtype)  # (B, 3, Q)
    return F.l1_loss(pred.float(), target.float())


def diffusion_l1_loss(
    unet: nn.Module,
    hr: torch.Tensor,
    prior: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator | None = None,
    max_timestep: int | None = None,
    prediction_type: str = "epsilon",
    residual: bool = False,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Stage-2 loss, docs/method.md section 2: ``|| unet(cat(y_noisy, prior), sqrt_gamma) - eps ||_1``.

    Per sample, ``t ~ U{1..T}`` and ``sqrt_gamma ~ U(sqrt(gamma_{t-1}), sqrt(gamma_t))``
    ([`~neurop_diff_diffusers.scheduling.sample_continuous_noise_level`]), ``eps ~ N(0, I)`` and
    ``y_noisy = sqrt_gamma * y0 + sqrt(1 - sqrt_gamma^2) * eps``; the UNet receives the float ``sqrt_gamma`` as its
    timestep. The L1 is averaged over all elements.

    The defaults are the paper's. The other options are not in the paper (they let a small model learn the stage that
    adds detail; see ``docs/diffusion-parameterisation.md``):

    - ``prediction_type="v_prediction"``: the target is ``v = sqrt_gamma * eps - sqrt(1 - gamma) * y0``;
      ``"sample"``: the target is ``y0`` itself (diffusers' scheduler names).
    - ``residual=True``: the diffused variable is ``y0 = hr - prior`` (the pipeline adds the prior back), so a UNet
      that outputs zero with v- or x0-prediction returns the prior.
    - ``snr_gamma``: Min-SNR-gamma weighting (Hang et al. 2023): each sample's loss is weighted by
      ``min(SNR, gamma) / SNR`` (epsilon), ``min(SNR, gamma) / (SNR + 1)`` (v) or ``min(SNR, gamma)`` (sample),
      ``SNR = gamma_t / (1 - gamma_t)``; the weighted per-sample L1 is averaged over the batch.

    Args:
        unet: the denoiser (``UNet2DModel``-like, 6 input channels), possibly wrapped for distributed training.
        hr: HR images, ``(B, 3, H, W)`` in ``[-1, 1]``.
        prior: the conditioning priors at the same size (e.g. from [`compute_priors`]).
        alphas_cumprod: the scheduler's cumulative alphas ``gamma_t``, shape ``(T,)``.
        generator: CPU generator of the noise levels and of the noise (for reproducible training).
        max_timestep: train only on ``t <= max_timestep`` (``None``: all ``T`` steps, the method); see
            [`~neurop_diff_diffusers.scheduling.sample_continuous_noise_level`].
        prediction_type: ``"epsilon"`` (the paper), ``"v_prediction"`` or ``"sample"``.
        residual: diffuse ``hr - prior`` instead of ``hr`` (not in the paper).
        snr_gamma: the Min-SNR ``gamma`` (a positive number), or ``None`` for the plain mean (the paper).

    Returns:
        The loss, a float32 scalar tensor.

    Example:
        >>> from neurop_diff_diffusers import build_unet, default_scheduler
        >>> unet = build_unet("tiny")
        >>> hr, gen = torch.zeros(2, 3, 16, 16), torch.Generator().manual_seed(0)
        >>> loss = diffusion_l1_loss(unet, hr, hr, default_scheduler().alphas_cumprod, gen)
        >>> loss.shape
        torch.Size([])
        >>> ac = default_scheduler().alphas_cumprod
        >>> v_loss = diffusion_l1_loss(unet, hr, hr, ac, gen, prediction_type="v_prediction", residual=True)
    """
    if hr.shape != prior.shape:
        raise ValueError(f"`hr` {tuple(hr.shape)} and `prior` {tuple(prior.shape)} must have the same shape.")
    check_prediction_type(prediction_type)
    if snr_gamma is not None and not (isinstance(snr_gamma, (int, float)) and 0 < snr_gamma < math.inf):
        raise ValueError(f"`snr_gamma` must be a positive number or None, got {snr_gamma!r}.")
    batch_size = hr.shape[0]
    sqrt_gamma = sample_continuous_noise_level(alphas_cumprod, batch_size, generator, max_timestep)
    noise = randn_tensor(tuple(hr.shape), generator=generator, device=hr.device, dtype=hr.dtype)
    sqrt_gamma = sqrt_gamma.to(device=hr.device, dtype=hr.dtype)
    prior = prior.to(hr.dtype)
    y0 = hr - prior if residual else hr
    g = sqrt_gamma.view(batch_size, 1, 1, 1)
    sigma = (1.0 - g.square()).clamp_min(0.0).sqrt()
    y_noisy = g * y0 + sigma * noise
    pred = unet(torch.cat([y_noisy, prior], dim=1), sqrt_gamma).sample
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = g * noise - sigma * y0
    else:
        target = y0
    if snr_gamma is None:
        return F.l1_loss(pred.float(), target.float())
    per_sample = (pred.float() - target.float()).abs().mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(sqrt_gamma.float(), snr_gamma, prediction_type)).mean()


def min_snr_weights(sqrt_gamma: torch.Tensor, snr_gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., ICCV 2023) of noise levels ``sqrt(gamma_t)``.

    ``SNR = gamma / (1 - gamma)``; the weight is ``min(SNR, snr_gamma) / SNR`` for epsilon-prediction,
    ``min(SNR, snr_gamma) / (SNR + 1)`` for v-prediction and ``min(SNR, snr_gamma)`` for x0-prediction, so that
    every parameterisation weights the x0 error the same way.

    Args:
        sqrt_gamma: the noise levels, any shape.
        snr_gamma: the clamp, a positive number (5 is the usual value).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

    Example:
        >>> min_snr_weights(torch.tensor([0.5 ** 0.5]), 5.0, "v_prediction")  # SNR 1
        tensor([0.5000])
    """
    gamma = sqrt_gamma.double().square()
    snr = gamma / (1.0 - gamma).clamp_min(1e-12)
    clamped = torch.minimum(snr, torch.full_like(snr, float(snr_gamma)))
    if prediction_type == "epsilon":
        weight = clamped / snr.clamp_min(1e-12)
    elif prediction_type == "v_prediction":
        weight = clamped / (snr + 1.0)
    else:
        weight = clamped
    return weight.to(sqrt_gamma.dtype)


@torch.no_grad()
def compute_priors(
    operator: GalerkinNeuralOperator,
    lr_list: Sequence[torch.Tensor],
    hr_size: tuple[int, int],
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The operator's priors at the HR size for LR images of possibly different sizes, stacked (no gradient).

    LR images of the same size are batched together; every sample's Galerkin sums run over its own output pixels
    only, so grouping does not change the result.

    Args:
        operator: the (frozen) neural operator.
        lr_list: LR images ``(3, h_i, w_i)`` in ``[-1, 1]`` (a stage-2 batch's ``"lr"``).
        hr_size: ``(H, W)`` of the priors.
        chunk_size: output pixels per chunk of the streamed operator (``None``: its default).

    Returns:
        ``(B, 3, H, W)`` priors, on the operator's device and dtype, in input order.

    Example:
        >>> from neurop_diff_diffusers.presets import build_neural_operator
        >>> op = build_neural_operator("tiny")
        >>> compute_priors(op, [torch.zeros(3, 8, 8), torch.zeros(3, 5, 5)], (16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """
    if len(lr_list) == 0:
        raise ValueError("`lr_list` must not be empty.")
    param = next(operator.parameters())
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, lr in enumerate(lr_list):
        if lr.dim() != 3:
            raise ValueError(f"`lr_list[{i}]` must have shape (3, h, w), got {tuple(lr.shape)}.")
        groups.setdefault(tuple(lr.shape), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(lr_list)
    for members in groups.values():
        image = torch.stack([lr_list[i] for i in members]).to(device=param.device, dtype=param.dtype)
        priors = operator(image, tuple(hr_size), chunk_size=chunk_size).sample
        for i, prior in zip(members, priors):
            out[i] = prior
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------------------
# Learning-rate schedules
# ----------------------------------------------------------------------------------------------------------------
def paper_lr_lambda(
    num_training_steps: int, constant_fraction: float = 0.1, min_lr_ratio: float = 0.01
) -> Callable[[int], float]:
    """The paper's schedule as a multiplier of the initial learning rate (for ``LambdaLR``).

    Constant for the first ``constant_fraction`` of the steps (the paper: 0.1 M of 1 M iterations), then a cosine
    decay to ``min_lr_ratio`` (the paper: 1e-6 / 1e-4) at ``num_training_steps``; constant after that. The paper
    does not state the shape of its decay: the cosine is our choice.

    Args:
        num_training_steps: total scheduler steps.
        constant_fraction: fraction of the steps at the initial rate, in ``[0, 1]``.
        min_lr_ratio: final rate over initial rate, in ``[0, 1]``.

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
        name: ``"paper"``, or ``"linear"``, ``"cosine"``, ``"cosine_with_restarts"``, ``"polynomial"``,
            ``"constant"``, ``"constant_with_warmup"``, ``"piecewise_constant"``.
        optimizer: the optimizer; its ``lr`` is the initial rate.
        num_training_steps: total scheduler steps.
        num_warmup_steps: warm-up steps (diffusers' schedules only).
        constant_fraction: ``"paper"``: fraction of the steps at the initial rate.
        min_lr: ``"paper"``: final learning rate (absolute; the paper's 1e-6).
        step_rules: ``"piecewise_constant"``: diffusers' rule string, e.g. ``"1:1000,0.5:2000,0.25"``.

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


# ----------------------------------------------------------------------------------------------------------------
# Reproducible randomness
# ----------------------------------------------------------------------------------------------------------------
class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random order of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Call ``set_epoch`` before each epoch (Accelerate's prepared data loaders do). The same ``(seed, epoch)`` gives
    the same order in every process and after a restart, which is what mid-epoch resumption and sharding need.

    Args:
        num_samples: size of the dataset.
        seed: non-negative int.
        shuffle: ``False`` gives ``0, 1, 2, ...`` every epoch.

    Example:
        >>> s = EpochShuffleSampler(5, seed=0)
        >>> s.set_epoch(1)
        >>> sorted(s) == [0, 1, 2, 3, 4] and list(s) == list(s)
        True
    """

    _STREAM = 1

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = seeded_generator(self.seed, self._STREAM, self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def resume_position(global_step: int, num_batches_per_epoch: int, gradient_accumulation_steps: int) -> tuple[int, int]:
    """Where a run that has done ``global_step`` optimizer steps continues: ``(epoch, batches to skip in it)``.

    An epoch of ``n`` batches makes ``ceil(n / gradient_accumulation_steps)`` optimizer steps (Accelerate steps at
    the end of the data loader even when the last accumulation is incomplete).

    Args:
        global_step: optimizer steps done.
        num_batches_per_epoch: batches per epoch (per process).
        gradient_accumulation_steps: batches per optimizer step.

    Example:
        >>> resume_position(4, 3, 1), resume_position(3, 3, 2)
        ((1, 1), (1, 2))
    """
    steps_per_epoch = math.ceil(num_batches_per_epoch / gradient_accumulation_steps)
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    return epoch, step_in_epoch * gradient_accumulation_steps


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and the output folder
# ----------------------------------------------------------------------------------------------------------------
def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step of a checkpoint folder named ``checkpoint-<step>``.

    Example:
        >>> checkpoint_step("out/checkpoint-1200")
        1200
    """
    match = _CHECKPOINT_RE.match(Path(path).name)
    if match is None:
        raise TrainingSetupError(
            f"`--resume_from_checkpoint` must be a folder named checkpoint-<step> or 'latest', got {str(path)!r}."
        )
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints ``checkpoint-<step>`` of `output_dir`, oldest first.

    Checkpoints are written under a temporary name and renamed once complete (see [`save_checkpoint`]), so a
    folder with the final name is complete; partial ones (``.tmp-checkpoint-<step>``) are not listed.

    Args:
        output_dir: the training output folder (may not exist).
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint to resume from: ``None``, ``"latest"`` (the newest complete one, or ``None``) or a path.

    A relative path that does not exist as given is looked up in `output_dir` (``--resume_from_checkpoint
    checkpoint-500`` works, as in diffusers).

    Args:
        output_dir: the training output folder.
        resume_from_checkpoint: the argument's value.

    Raises:
        TrainingSetupError: a path that is not a complete checkpoint folder.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint).expanduser()
    if not path.is_dir() and not path.is_absolute():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise TrainingSetupError(
            f"`--resume_from_checkpoint` {resume_from_checkpoint!r}: no such checkpoint folder (looked in the current "
            f"directory and in {str(output_dir)!r}); pass 'latest' to resume from the newest one."
        )
    checkpoint_step(path)
    return path


def _on_main(accelerator: Any) -> bool:
    return accelerator is None or accelerator.is_main_process


def _wait(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the leftovers of checkpoints that were being written when a run died; returns what was removed.

    Args:
        output_dir: the training output folder.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith((_TMP_CHECKPOINT_PREFIX, _OLD_CHECKPOINT_PREFIX))
    ]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most `total_limit` remain; returns the deleted folders.

    Args:
        output_dir: the training output folder.
        total_limit: how many to keep (``None``: keep all).
    """
    if total_limit is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - total_limit)]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def save_checkpoint(
    accelerator: Any, output_dir: str | os.PathLike, global_step: int, total_limit: int | None = None
) -> Path:
    """``accelerator.save_state`` into ``OUTPUT_DIR/checkpoint-<global_step>``, atomically, then prune.

    The state is written to ``.tmp-checkpoint-<step>`` and renamed when complete, so a run killed while saving
    leaves the previous checkpoints intact and ``latest`` never picks a partial one. Call it on every process (the
    state of each process's random generators is saved by that process).

    Args:
        accelerator: the ``Accelerator``.
        output_dir: the training output folder.
        global_step: optimizer steps done.
        total_limit: keep at most this many checkpoints (the oldest are deleted after the new one is complete).

    Returns:
        The checkpoint folder.
    """
    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{global_step}"
    tmp = root / f"{_TMP_CHECKPOINT_PREFIX}{global_step}"
    if _on_main(accelerator):
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    _wait(accelerator)
    accelerator.save_state(str(tmp))
    _wait(accelerator)
    if _on_main(accelerator):
        _commit_folder(tmp, final)
        prune_checkpoints(root, total_limit)
    _wait(accelerator)
    return final


def _commit_folder(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first and deleted after the rename."""
    old = None
    if final.exists():
        old = final.with_name(_OLD_CHECKPOINT_PREFIX + final.name[len(CHECKPOINT_PREFIX) :])
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_training_args(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The marker file [`TRAINING_ARGS_FILE`] of `output_dir` as a dict, or ``None`` if there is none.

    Args:
        output_dir: the training output folder.
    """
    path = Path(output_dir) / TRAINING_ARGS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def check_output_dir(output_dir: str | os.PathLike, script: str, *, resuming: bool, overwrite: bool = False) -> None:
    """Refuse an output folder that holds something else than a run of `script` that may be continued.

    - a missing or empty folder is fine;
    - a non-empty folder without the marker [`TRAINING_ARGS_FILE`], or with the marker of another script, is refused
      (it is unrelated: choose another ``--output_dir``);
    - a run of the same script is fine when resuming (``--resume_from_checkpoint``); otherwise it is refused unless
      `overwrite` (``--overwrite_output_dir``), so that a new run never mixes its checkpoints with an old one's.

    Args:
        output_dir: the ``--output_dir``.
        script: the name of the training script (e.g. ``"train_neurop_diff"``).
        resuming: ``--resume_from_checkpoint`` was given.
        overwrite: ``--overwrite_output_dir`` was given.

    Raises:
        TrainingSetupError: the folder is refused; the message says why and what to do.
    """
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise TrainingSetupError(f"`--output_dir` {str(root)!r} is a file, not a folder.")
    if not root.is_dir() or not any(root.iterdir()):
        return
    marker = read_training_args(root)
    if marker is None:
        raise TrainingSetupError(
            f"`--output_dir` {str(root)!r} is not empty and holds no {TRAINING_ARGS_FILE}: it is not the output of "
            f"{script}.py. Choose an empty or new folder."
        )
    other = marker.get("script")
    if other != script:
        raise TrainingSetupError(
            f"`--output_dir` {str(root)!r} holds a run of {other or 'an unknown script'}, not of {script}.py. Choose "
            "another folder."
        )
    if not resuming and not overwrite:
        raise TrainingSetupError(
            f"`--output_dir` {str(root)!r} holds an earlier run of {script}.py: pass `--resume_from_checkpoint "
            "latest` to continue it, or `--overwrite_output_dir` to start a new run there (its checkpoints are "
            "deleted)."
        )


def write_training_args(
    output_dir: str | os.PathLike, script: str, args: dict[str, Any], resumed_from: str | None = None
) -> Path:
    """Write the marker file [`TRAINING_ARGS_FILE`]: script, package version, arguments, and the resumptions.

    Args:
        output_dir: the training output folder.
        script: the training script's name.
        args: the arguments (JSON-serialisable values; others are written as strings).
        resumed_from: the checkpoint this invocation resumed from, appended to the ``"resumed_from"`` list.
    """
    from . import __version__

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    previous = read_training_args(root) or {}
    history = list(previous.get("resumed_from", [])) if previous.get("script") == script else []
    if resumed_from is not None:
        history.append(resumed_from)
    payload = {
        "script": script,
        "package_version": __version__,
        "args": json.loads(json.dumps(args, default=str)),
        "resumed_from": history,
    }
    return atomic_write_text(root / TRAINING_ARGS_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def changed_args(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """The `keys` whose values differ between two argument dicts (after a JSON round trip), as ``{key: (old, new)}``.

    Example:
        >>> changed_args({"seed": 0, "lr": 1}, {"seed": 1, "lr": 1}, ["seed", "lr"])
        {'seed': (0, 1)}
    """
    old = json.loads(json.dumps(old, default=str))
    new = json.loads(json.dumps(new, default=str))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def append_validation_history(output_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record (``{"step": ..., metric: value}``) to [`VALIDATION_HISTORY_FILE`] in `output_dir`."""
    path = Path(output_dir) / VALIDATION_HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_validation_history(output_dir: str | os.PathLike, max_step: int | None = None) -> list[dict[str, Any]]:
    """The records of [`VALIDATION_HISTORY_FILE`] (step order, the last record of a step wins), up to `max_step`.

    Args:
        output_dir: the training output folder.
        max_step: drop records after this step (a resumed run repeats the steps after its checkpoint).
    """
    path = Path(output_dir) / VALIDATION_HISTORY_FILE
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            if max_step is None or record["step"] <= max_step:
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def truncate_validation_history(output_dir: str | os.PathLike, max_step: int) -> None:
    """Keep only the records of steps ``<= max_step`` (called when a run resumes from the checkpoint at that step)."""
    records = read_validation_history(output_dir, max_step)
    path = Path(output_dir) / VALIDATION_HISTORY_FILE
    if path.is_file():
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


# ----------------------------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------------------------
def _iter_column(dataset: Any, column: str, batch_size: int = 64) -> Iterator[Any]:
    """The values of a column, read a batch at a time (a whole column of encoded images may not fit in memory)."""
    for start in range(0, len(dataset), batch_size):
        yield from dataset[start : start + batch_size][column]


def drop_unreadable_images(dataset: Any, image_column: str = "image") -> tuple[Any, list[str]]:
    """Decode every image of a ``datasets.Dataset`` once; drop those that fail, with one counted warning.

    Local folders are already screened by their file headers when loaded; this also catches files whose header is
    valid but whose pixels are not (truncated files), and broken images of hub datasets, before training starts.

    Args:
        dataset: a ``datasets.Dataset`` with an image column.
        image_column: its name.

    Returns:
        ``(dataset without the unreadable images, their names)``.
    """
    import datasets as hf_datasets

    raw = dataset.cast_column(image_column, hf_datasets.Image(decode=False))
    names = dataset["file_name"] if "file_name" in dataset.column_names else [None] * len(dataset)
    bad: list[int] = []
    labels: list[str] = []
    for i, item in enumerate(_iter_column(raw, image_column)):
        item = item or {}
        try:
            source: Any = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]
            with PIL.Image.open(source) as image:
                image.convert("RGB").load()
        except Exception:  # any failure to decode means "unreadable"
            bad.append(i)
            labels.append(names[i] or item.get("path") or f"#{i}")
    if not bad:
        return dataset, []
    warnings.warn(
        f"Skipped {len(bad)} unreadable image(s) out of {len(dataset)}, e.g. {labels[:5]}.", UserWarning, stacklevel=2
    )
    keep = sorted(set(range(len(dataset))) - set(bad))
    return dataset.select(keep), labels


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ValidationSet:
    """Fixed validation pairs: HR images and their bicubic LR at one scale, tensors in ``[-1, 1]``.

    Args:
        hr: ``(N, 3, R, R)`` HR images.
        lr: ``(N, 3, r, r)`` their LR images (``r = round(R / scale)``).
        scale: the downscaling factor.
        names: one name per image (file names where known).
    """

    hr: torch.Tensor
    lr: torch.Tensor
    scale: float
    names: list[str] = field(default_factory=list)

    @classmethod
    def from_images(cls, images: Any, *, resolution: int, scale: float, num_images: int = 4) -> ValidationSet | None:
        """Build the set from the first images of a dataset spread evenly over it (``None`` if it is empty).

        HR images are prepared with [`~neurop_diff_diffusers.data.preprocess_hr`] at `resolution` and degraded with
        [`~neurop_diff_diffusers.data.bicubic_degrade`], as in training.

        Args:
            images: a ``datasets.Dataset`` with ``image`` (and optionally ``file_name``) columns, or PIL images.
            resolution: the HR side.
            scale: the downscaling factor (``>= 1``).
            num_images: how many images (at most the dataset's size).
        """
        n = len(images)
        k = min(int(num_images), n)
        if k <= 0:
            return None
        indices = sorted({int(i * n / k) for i in range(k)})
        hrs, names = [], []
        for i in indices:
            item = images[i]
            image = item["image"] if isinstance(item, dict) else item
            hrs.append(pil_to_tensor(preprocess_hr(image, resolution)))
            name = item.get("file_name") if isinstance(item, dict) else None
            names.append(name or f"#{i}")
        hr = torch.stack(hrs)
        return cls(hr=hr, lr=bicubic_degrade(hr, scale), scale=float(scale), names=names)


@dataclass
class ValidationResult:
    """Figures and picture of one validation.

    Args:
        metrics: mean figures, e.g. ``{"psnr": ..., "ssim": ..., "psnr_prior": ..., "psnr_bicubic": ...}``.
        grid: the image grid, one row per image: ``LR | bicubic | prior | (output |) HR``.
        columns: the column titles of the grid.
    """

    metrics: dict[str, float]
    grid: PIL.Image.Image
    columns: list[str]


def _figures(pred01: torch.Tensor, hr01: torch.Tensor, suffix: str) -> dict[str, float]:
    """Mean PSNR / SSIM with the evaluation's code (``image_metrics``, ``"rgb"`` protocol) on 8-bit-level images."""
    from .metrics import image_metrics, psnr  # imported here: torchmetrics (SSIM) is needed only for validation

    if min(hr01.shape[-2:]) <= 11:  # no room for the 11 x 11 SSIM window: PSNR alone
        return {f"psnr{suffix}": float(psnr(pred01, hr01).mean())}
    values = image_metrics(pred01, hr01, protocol="rgb")
    return {f"psnr{suffix}": float(values["psnr"].mean()), f"ssim{suffix}": float(values["ssim"].mean())}


def _grid(columns: list[torch.Tensor], size: tuple[int, int]) -> PIL.Image.Image:
    """Rows of ``[-1, 1]`` images; LR columns are shown enlarged with nearest-neighbour pixels."""
    images = []
    for row in range(columns[0].shape[0]):
        for column in columns:
            image = tensor_to_pil(column[row])
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), PIL.Image.NEAREST)
            images.append(image)
    return make_image_grid(images, rows=columns[0].shape[0], cols=len(columns))


def _names(val: ValidationSet) -> list[str]:
    """The images' names (their positions where the set has none)."""
    return val.names if len(val.names) == val.lr.shape[0] else [f"#{i}" for i in range(val.lr.shape[0])]


@torch.no_grad()
def validate_operator(operator: GalerkinNeuralOperator, val: ValidationSet) -> ValidationResult:
    """PSNR / SSIM of the operator's output (and of bicubic upsampling) against the HR images, and a grid.

    Scored as in the evaluation: images rounded to 8-bit levels, [`~neurop_diff_diffusers.metrics.image_metrics`].
    Keys: ``psnr``, ``ssim`` (the operator), ``psnr_bicubic``, ``ssim_bicubic``.

    Args:
        operator: the neural operator (evaluated as is: call ``.eval()`` first).
        val: the validation pairs.
    """
    size = tuple(val.hr.shape[-2:])
    param = next(operator.parameters())
    prior = operator(val.lr.to(device=param.device, dtype=param.dtype), size).sample.float().cpu()
    bicubic = bicubic_prior(val.lr, size)
    hr01 = to_unit_levels(val.hr)
    metrics = {**_figures(to_unit_levels(prior), hr01, ""), **_figures(to_unit_levels(bicubic), hr01, "_bicubic")}
    grid = _grid([val.lr, bicubic, prior.clamp(-1, 1), val.hr], size)
    return ValidationResult(metrics, grid, ["LR", "bicubic", "neural operator", "HR"])


@torch.no_grad()
def validate_pipeline(
    pipeline: Any, val: ValidationSet, *, num_inference_steps: int = 50, seed: int = 0
) -> ValidationResult:
    """Super-resolve the validation LR images with the pipeline (DDIM by default) and measure them.

    Keys of the metrics: ``psnr`` / ``ssim`` (the output), ``psnr_prior`` / ``ssim_prior`` (the conditioning prior
    alone), ``psnr_bicubic`` / ``ssim_bicubic``. As in [`~neurop_diff_diffusers.evaluation.evaluate`], the input is
    the LR on 8-bit levels, every output is rounded to 8-bit levels before it is scored, and the noise of an image is
    seeded with ``derive_seed(seed, name, scale)``: every validation of a run sees the same noise.

    Args:
        pipeline: a [`~neurop_diff_diffusers.NeurOpDiffPipeline`].
        val: the validation pairs.
        num_inference_steps: denoising steps.
        seed: seed of the initial noise.
    """
    size = tuple(val.hr.shape[-2:])
    device = pipeline.device
    generators = [seeded_generator(int(seed), str(name), float(val.scale)) for name in _names(val)]
    output = (
        pipeline(
            to_uint8_levels(val.lr),
            output_size=size,
            num_inference_steps=num_inference_steps,
            generator=generators,
            output_type="pt",
        )
        .images.float()
        .cpu()
    )
    prior = pipeline.compute_prior(val.lr.to(device), size).float().cpu()
    bicubic = bicubic_prior(val.lr, size)
    hr01 = to_unit_levels(val.hr)
    metrics = {
        **_figures(to_unit_levels(output * 2.0 - 1.0), hr01, ""),
        **_figures(to_unit_levels(prior), hr01, "_prior"),
        **_figures(to_unit_levels(bicubic), hr01, "_bicubic"),
    }
    grid = _grid([val.lr, bicubic, prior.clamp(-1, 1), output * 2.0 - 1.0, val.hr], size)
    return ValidationResult(metrics, grid, ["LR", "bicubic", "prior", "output", "HR"])


__all__ = [
    "HUB_IGNORE_PATTERNS",
    "LR_SCHEDULERS",
    "TRAINING_ARGS_FILE",
    "VALIDATION_HISTORY_FILE",
    "EpochShuffleSampler",
    "NeuralOperatorQuery",
    "TrainingSetupError",
    "ValidationResult",
    "ValidationSet",
    "append_validation_history",
    "changed_args",
    "check_output_dir",
    "checkpoint_step",
    "compute_priors",
    "derive_seed",
    "diffusion_l1_loss",
    "drop_unreadable_images",
    "get_lr_scheduler",
    "list_checkpoints",
    "load_frozen_operator",
    "load_trained_model",
    "operator_l1_loss",
    "paper_lr_lambda",
    "prune_checkpoints",
    "push_folder_to_hub",
    "read_training_args",
    "read_validation_history",
    "remove_incomplete_checkpoints",
    "resolve_resume_checkpoint",
    "resume_position",
    "save_checkpoint",
    "seeded_generator",
    "truncate_validation_history",
    "validate_operator",
    "validate_pipeline",
    "write_training_args",
]
