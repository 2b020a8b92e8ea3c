"""Image quality metrics: fidelity (PSNR, SSIM, LPIPS), detail without a reference (NIQE, high-frequency energy) and
trust in the detail (agreement with the LR, hallucination classes).

Example:
    >>> import torch
    >>> from neurop_diff_diffusers.metrics import psnr
    >>> round(float(psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1))), 2)
    20.0
"""

from .detail import hf_energy_ratio, load_niqe_model, niqe, niqe_availability, niqe_available, niqe_model_file
from .quality import (
    LPIPS_ALEXNET_WEIGHTS,
    PROTOCOLS,
    SSIM_KERNEL_SIZE,
    SSIM_SIGMA,
    image_metrics,
    load_lpips,
    lpips_availability,
    lpips_weights_file,
    protocol_kwargs,
    psnr,
    quantize_8bit,
    rgb_to_y,
    ssim,
    to_unit_levels,
)
from .trust import correctness, lr_agreement, trust_metrics

__all__ = [
    "LPIPS_ALEXNET_WEIGHTS",
    "PROTOCOLS",
    "SSIM_KERNEL_SIZE",
    "SSIM_SIGMA",
    "correctness",
    "hf_energy_ratio",
    "image_metrics",
    "load_lpips",
    "load_niqe_model",
    "lpips_availability",
    "lpips_weights_file",
    "lr_agreement",
    "niqe",
    "niqe_availability",
    "niqe_available",
    "niqe_model_file",
    "protocol_kwargs",
    "psnr",
    "quantize_8bit",
    "rgb_to_y",
    "ssim",
    "to_unit_levels",
    "trust_metrics",
]
