"""Training losses: stage 1 (the operator at sampled HR points) and stage 2 (docs/method.md section 2), and the
frozen operator's priors of a batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..models.neural_operator import GalerkinNeuralOperator
from ..pipelines.scheduling import check_prediction_type, sample_continuous_noise_level


class NeuralOperatorQuery(nn.Module):
    """``forward(lr, coord, cell) = operator.query(lr, coord, cell)``: the operator at sampled points, as a module.

    Training goes through ``forward`` so that a distributed wrapper (DDP, prepared by Accelerate) sees the call.

    Args:
        operator (`GalerkinNeuralOperator`): the [`GalerkinNeuralOperator`] being trained.
    """

    def __init__(self, operator: GalerkinNeuralOperator):
        super().__init__()
        self.operator = operator

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.operator.query(lr, coord, cell)


def operator_l1_loss(operator: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stage-1 loss: L1 between the operator's output at the sampled HR points and the HR pixels there.

    Args:
        operator (`nn.Module`): a [`GalerkinNeuralOperator`] (its ``query`` is used) or a module whose ``forward(lr,
            coord, cell)`` returns ``(B, 3, Q)`` (a [`NeuralOperatorQuery`], possibly wrapped for distributed
            training).
        batch (`dict[str, torch.Tensor]`): a stage-1 batch (``collate_stage1``): ``lr`` ``(B, 3, h, w)``, ``coord``
            ``(B, Q, 2)``, ``cell`` ``(B, 2)``, ``gt`` ``(B, Q, 3)``, all in ``[-1, 1]``.

    Returns:
        The mean absolute error, a scalar tensor.

    Example:
        >>> from neurop_diff_diffusers.runtime.presets import build_neural_operator
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
    ([`~neurop_diff_diffusers.pipelines.scheduling.sample_continuous_noise_level`]), ``eps ~ N(0, I)`` and
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
        unet (`nn.Module`): the denoiser (``UNet2DModel``-like, 6 input channels), possibly wrapped for distributed
            training.
        hr (`torch.Tensor`): HR images, ``(B, 3, H, W)`` in ``[-1, 1]``.
        prior (`torch.Tensor`): the conditioning priors at the same size (e.g. from [`compute_priors`]).
        alphas_cumprod (`torch.Tensor`): the scheduler's cumulative alphas ``gamma_t``, shape ``(T,)``.
        generator (`torch.Generator | None`, *optional*): CPU generator of the noise levels and of the noise (for
            reproducible training).
        max_timestep (`int | None`, *optional*): train only on ``t <= max_timestep`` (``None``: all ``T`` steps, the
            method); see [`~neurop_diff_diffusers.pipelines.scheduling.sample_continuous_noise_level`].
        prediction_type (`str`, defaults to `'epsilon'`): ``"epsilon"`` (the paper), ``"v_prediction"`` or
            ``"sample"``.
        residual (`bool`, defaults to `False`): diffuse ``hr - prior`` instead of ``hr`` (not in the paper).
        snr_gamma (`float | None`, *optional*): the Min-SNR ``gamma`` (a positive number), or ``None`` for the plain
            mean (the paper).

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
        sqrt_gamma (`torch.Tensor`): the noise levels, any shape.
        snr_gamma (`float`): the clamp, a positive number (5 is the usual value).
        prediction_type (`str`, defaults to `'epsilon'`): ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

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
        operator (`GalerkinNeuralOperator`): the (frozen) neural operator.
        lr_list (`Sequence[torch.Tensor]`): LR images ``(3, h_i, w_i)`` in ``[-1, 1]`` (a stage-2 batch's ``"lr"``).
        hr_size (`tuple[int, int]`): ``(H, W)`` of the priors.
        chunk_size (`int | None`, *optional*): output pixels per chunk of the streamed operator (``None``: its
            default).

    Returns:
        ``(B, 3, H, W)`` priors, on the operator's device and dtype, in input order.

    Example:
        >>> from neurop_diff_diffusers.runtime.presets import build_neural_operator
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
