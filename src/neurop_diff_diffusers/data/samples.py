"""Training samples: stage 1 (neural-operator patches, the SRNO recipe) and stage 2 (diffusion crops).

All tensors are float in ``[-1, 1]``, images channel-first. LR images are made with
[`~neurop_diff_diffusers.data.bicubic_degrade`] (PIL-equivalent 8-bit bicubic), and query coordinates / cells with
[`~neurop_diff_diffusers.models.coordinates.make_coord`] / [`~neurop_diff_diffusers.models.coordinates.make_cell`],
the helpers the
operator uses. The random draws come from a ``torch.Generator``: the same generator state gives the same sample, and
the dataset wrappers seed one generator per ``(seed, epoch, index)``, so a seed reproduces the whole sample stream
whatever the number of DataLoader workers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any

import PIL.Image
import torch

from ..models.coordinates import make_cell, make_coord
from ..pipelines.image_processing import round_half_up
from ..utils import seeded_generator
from .degradation import bicubic_degrade, check_scale
from .preprocessing import pil_to_tensor, preprocess_hr

DEFAULT_LR_PATCH = 48
DEFAULT_NUM_QUERIES = 2304
STAGE1_SCALE_RANGE = (1.0, 4.0)
"""Stage-1 scale range, SRNO's U(1, 4): the HR patch ``round(48 * 4) = 192`` px fits a 256 px image."""
STAGE2_SCALE_RANGE = (1.0, 8.0)
"""Stage-2 scale range, the paper's ``s ~ U(1, 8]`` (docs/method.md section 1)."""


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def _check_scale_range(scale_min: float, scale_max: float) -> tuple[float, float]:
    scale_min, scale_max = check_scale(scale_min, "scale_min"), check_scale(scale_max, "scale_max")
    if scale_min > scale_max:
        raise ValueError(f"Need 1 <= `scale_min` <= `scale_max`, got scale_min={scale_min}, scale_max={scale_max}.")
    return scale_min, scale_max


def _check_image(hr: torch.Tensor) -> None:
    if not isinstance(hr, torch.Tensor) or not hr.is_floating_point() or hr.dim() != 3:
        raise TypeError(f"`hr` must be a float tensor (C, H, W) in [-1, 1], got {getattr(hr, 'shape', type(hr))}.")


def sample_scale(scale_min: float, scale_max: float, generator: torch.Generator | None = None) -> float:
    """Draw a scale uniformly from ``(scale_min, scale_max]`` (exactly `scale_max` when the two are equal).

    Args:
        scale_min (`float`): lower end (excluded), ``>= 1``.
        scale_max (`float`): upper end (included), ``>= scale_min``.
        generator (`torch.Generator | None`, *optional*): source of randomness.

    Example:
        >>> 1.0 < sample_scale(1.0, 8.0, torch.Generator().manual_seed(0)) <= 8.0
        True
    """
    scale_min, scale_max = _check_scale_range(scale_min, scale_max)
    u = torch.rand((), generator=generator, dtype=torch.float64).item()  # in [0, 1)
    return scale_max - (scale_max - scale_min) * u


def random_crop(image: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly placed ``size x size`` crop of a ``(C, H, W)`` image.

    Args:
        image (`torch.Tensor`): the image, both sides ``>= size``.
        size (`int`): side of the crop.
        generator (`torch.Generator | None`, *optional*): source of randomness (row offset drawn first, then column
            offset).

    Example:
        >>> random_crop(torch.zeros(3, 10, 12), 4).shape
        torch.Size([3, 4, 4])
    """
    height, width = image.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"`size` must lie in [1, {min(height, width)}] for an image of {height}x{width}, got {size}.")
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator).item())
    return image[..., top : top + size, left : left + size]


def random_dihedral(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flip / rot90 augmentation: horizontal flip, vertical flip and transpose, each with probability 1/2.

    Together they give the 8 symmetries of the square with equal probability (the SRNO / LIIF augmentation).

    Args:
        image (`torch.Tensor`): ``(..., H, W)`` tensor; square images keep their shape, others may come out ``W x H``.
        generator (`torch.Generator | None`, *optional*): source of randomness (three draws).

    Example:
        >>> random_dihedral(torch.zeros(3, 5, 5)).shape
        torch.Size([3, 5, 5])
    """
    hflip, vflip, transpose = (torch.rand(3, generator=generator) < 0.5).tolist()
    if hflip:
        image = image.flip(-1)
    if vflip:
        image = image.flip(-2)
    if transpose:
        image = image.transpose(-2, -1)
    return image


def stage1_hr_patch_range(lr_patch: int, scale_min: float, scale_max: float) -> tuple[int, int]:
    """Smallest and largest HR patch side of stage-1 samples: ``round(lr_patch * s)`` (half up) at the two ends.

    Args:
        lr_patch (`int`): the LR patch side.
        scale_min (`float`): the smallest scale.
        scale_max (`float`): the largest scale.

    Example:
        >>> stage1_hr_patch_range(48, 1, 4)
        (48, 192)
    """
    return round_half_up(lr_patch * scale_min), round_half_up(lr_patch * scale_max)


def make_stage1_sample(
    hr: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    lr_patch: int = DEFAULT_LR_PATCH,
    scale_min: float = STAGE1_SCALE_RANGE[0],
    scale_max: float = STAGE1_SCALE_RANGE[1],
    num_queries: int = DEFAULT_NUM_QUERIES,
    augment: bool = True,
) -> dict[str, Any]:
    """One neural-operator training sample (the SRNO recipe) from an HR image.

    Draws ``s ~ U(scale_min, scale_max]``, crops a random HR patch of ``round(lr_patch * s)`` px (rounded half up),
    applies [`random_dihedral`] (if `augment`), downsamples the patch to exactly ``lr_patch x lr_patch`` with
    [`~neurop_diff_diffusers.data.bicubic_degrade`] (8-bit, as SRNO's PIL resize), and samples `num_queries` distinct
    HR pixels with their centre coordinates and values.

    The image must hold the largest possible patch, ``round(lr_patch * scale_max)`` px: otherwise a ValueError is
    raised (whatever the drawn scale, so that a run fails at once, not at a rare draw); the scale is never clamped.

    Args:
        hr (`torch.Tensor`): HR image, float ``(3, H, W)`` in ``[-1, 1]``.
        generator (`torch.Generator | None`, *optional*): source of randomness; draws in this order: scale, crop,
            augmentation, query points.
        lr_patch (`int`, defaults to `DEFAULT_LR_PATCH`): side of the LR patch (SRNO: 48).
        scale_min (`float`, defaults to `STAGE1_SCALE_RANGE[0]`): lower end of the scale range, ``>= 1``.
        scale_max (`float`, defaults to `STAGE1_SCALE_RANGE[1]`): upper end of the scale range.
        num_queries (`int`, defaults to `DEFAULT_NUM_QUERIES`): HR query points per sample, at most ``round(lr_patch *
            scale_min) ** 2`` (default 2304 = 48^2).
        augment (`bool`, defaults to `True`): apply the flip / rot90 augmentation.

    Returns:
        ``{"lr": (3, lr_patch, lr_patch), "coord": (Q, 2), "cell": (2,), "gt": (Q, 3), "scale": float}``: `coord` are
        the queried pixel centres in ``[-1, 1]`` (row first) of the HR patch, `cell` is ``(2 / h_hr, 2 / w_hr)``,
        `gt` the HR values there (``[-1, 1]``), `scale` the drawn ``s`` (the exact size ratio is
        ``round(lr_patch * s) / lr_patch``).

    Example:
        >>> sample = make_stage1_sample(torch.rand(3, 256, 256) * 2 - 1, generator=torch.Generator().manual_seed(0))
        >>> sample["lr"].shape, sample["coord"].shape, sample["gt"].shape
        (torch.Size([3, 48, 48]), torch.Size([2304, 2]), torch.Size([2304, 3]))
    """
    _check_image(hr)
    lr_patch = _check_positive_int(lr_patch, "lr_patch")
    num_queries = _check_positive_int(num_queries, "num_queries")
    scale_min, scale_max = _check_scale_range(scale_min, scale_max)
    smallest, largest = stage1_hr_patch_range(lr_patch, scale_min, scale_max)
    if largest > min(hr.shape[-2:]):
        raise ValueError(
            f"`hr` of {hr.shape[-2]}x{hr.shape[-1]} px is too small for HR patches of up to round({lr_patch} * "
            f"{scale_max:g}) = {largest} px: lower `scale_max` or `lr_patch`, or use larger images."
        )
    if num_queries > smallest**2:
        raise ValueError(f"`num_queries` must be at most {smallest**2} (the smallest HR patch), got {num_queries}.")

    scale = sample_scale(scale_min, scale_max, generator)
    hr_size = round_half_up(lr_patch * scale)
    patch = random_crop(hr, hr_size, generator)
    if augment:
        patch = random_dihedral(patch, generator)
    lr = bicubic_degrade(patch, size=(lr_patch, lr_patch))
    chosen = torch.randperm(hr_size * hr_size, generator=generator)[:num_queries]
    coord = make_coord((hr_size, hr_size), dtype=hr.dtype).reshape(-1, 2)[chosen]
    gt = patch.reshape(patch.shape[0], -1).t()[chosen]
    cell = make_cell((hr_size, hr_size), dtype=hr.dtype)[0]
    return {"lr": lr.contiguous(), "coord": coord, "cell": cell, "gt": gt.contiguous(), "scale": scale}


def make_stage2_sample(
    hr: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    resolution: int = 256,
    scale_min: float = STAGE2_SCALE_RANGE[0],
    scale_max: float = STAGE2_SCALE_RANGE[1],
    augment: bool = True,
) -> dict[str, Any]:
    """One diffusion training sample: an HR crop and its LR at a random scale ``s ~ U(1, 8]``.

    Crops a random ``resolution x resolution`` HR patch (the whole image when it is that size), applies
    [`random_dihedral`] (if `augment`), draws ``s ~ U(scale_min, scale_max]`` and makes the LR of
    ``round(resolution / s)`` px with [`~neurop_diff_diffusers.data.bicubic_degrade`] (8-bit, PIL-equivalent).
    The neural-operator prior is then computed from the LR at the HR size.

    Args:
        hr (`torch.Tensor`): HR image, float ``(3, H, W)`` in ``[-1, 1]``, both sides ``>= resolution``.
        generator (`torch.Generator | None`, *optional*): source of randomness; draws in this order: crop,
            augmentation, scale.
        resolution (`int`, defaults to `256`): side of the HR crop (the paper: 256; smaller for CPU work).
        scale_min (`float`, defaults to `STAGE2_SCALE_RANGE[0]`): lower end of the scale range (excluded), ``>= 1``.
        scale_max (`float`, defaults to `STAGE2_SCALE_RANGE[1]`): upper end (included).
        augment (`bool`, defaults to `True`): apply the flip / rot90 augmentation.

    Returns:
        ``{"hr": (3, R, R), "lr": (3, h, w), "scale": float}``, with ``(h, w) = round(R / s)`` (rounded half up).

    Example:
        >>> sample = make_stage2_sample(torch.rand(3, 64, 64) * 2 - 1, resolution=64, generator=None)
        >>> sample["hr"].shape, sample["lr"].shape[-1] <= 64
        (torch.Size([3, 64, 64]), True)
    """
    _check_image(hr)
    resolution = _check_positive_int(resolution, "resolution")
    scale_min, scale_max = _check_scale_range(scale_min, scale_max)
    if resolution > min(hr.shape[-2:]):
        raise ValueError(f"`resolution`={resolution} is larger than `hr` ({hr.shape[-2]}x{hr.shape[-1]} px).")
    crop = random_crop(hr, resolution, generator)
    if augment:
        crop = random_dihedral(crop, generator)
    scale = sample_scale(scale_min, scale_max, generator)
    return {"hr": crop.contiguous(), "lr": bicubic_degrade(crop, scale).contiguous(), "scale": scale}


def collate_stage1(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch stage-1 samples: every entry stacked along a new first dimension.

    Args:
        samples (`Sequence[dict[str, Any]]`): outputs of [`make_stage1_sample`] with the same `lr_patch` and
            `num_queries`.

    Returns:
        ``{"lr": (B, 3, P, P), "coord": (B, Q, 2), "cell": (B, 2), "gt": (B, Q, 3), "scale": (B,)}``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> batch = collate_stage1([make_stage1_sample(torch.zeros(3, 200, 200), generator=g) for _ in range(2)])
        >>> batch["coord"].shape
        torch.Size([2, 2304, 2])
    """
    if not samples:
        raise ValueError("`samples` must not be empty.")
    batch = {key: torch.stack([s[key] for s in samples]) for key in ("lr", "coord", "cell", "gt")}
    batch["scale"] = torch.tensor([float(s["scale"]) for s in samples])
    return batch


def collate_stage2(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch stage-2 samples whose LR images may differ in size.

    Args:
        samples (`Sequence[dict[str, Any]]`): outputs of [`make_stage2_sample`] with the same `resolution`.

    Returns:
        ``{"hr": (B, 3, R, R) tensor, "lr": list of B tensors (3, h_i, w_i), "scale": (B,) tensor}``.

    Example:
        >>> batch = collate_stage2([make_stage2_sample(torch.zeros(3, 32, 32), resolution=32) for _ in range(3)])
        >>> batch["hr"].shape, len(batch["lr"])
        (torch.Size([3, 3, 32, 32]), 3)
    """
    if not samples:
        raise ValueError("`samples` must not be empty.")
    return {
        "hr": torch.stack([s["hr"] for s in samples]),
        "lr": [s["lr"] for s in samples],
        "scale": torch.tensor([float(s["scale"]) for s in samples]),
    }


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, epoch, index)`` ([`~neurop_diff_diffusers.utils.derive_seed`]).

    Args:
        seed (`int`): non-negative int of the run.
        epoch (`int`): non-negative epoch number.
        index (`int`): non-negative example index.

    Example:
        >>> a = torch.rand(1, generator=sample_generator(0, 0, 5))
        >>> bool(a == torch.rand(1, generator=sample_generator(0, 0, 5)))
        True
    """
    return seeded_generator(int(seed), int(epoch), int(index))


class _HRImageDataset(torch.utils.data.Dataset):
    """Shared part of the stage datasets: HR tensors from a dataset of images, one generator per sample."""

    make_sample: Callable[..., dict[str, Any]]

    def __init__(self, images: Any, *, hr_resolution: int | None = 256, seed: int = 0, **sample_kwargs: Any):
        if not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
            raise TypeError(f"`images` must be a datasets.Dataset or a sequence, got {type(images).__name__}.")
        if hr_resolution is not None:
            _check_positive_int(hr_resolution, "hr_resolution")
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
        inspect.signature(self.make_sample).bind(None, **sample_kwargs)  # unknown keywords fail here, not later
        self.images = images
        self.hr_resolution = hr_resolution
        self.seed = int(seed)
        self.epoch = 0
        self.sample_kwargs = sample_kwargs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.make_sample(self.hr_image(index), generator=self.generator(index), **self.sample_kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: samples depend on ``(seed, epoch, index)``.

        With ``persistent_workers=True`` DataLoader workers keep their own copy; build a new DataLoader per epoch then.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, Integral) or epoch < 0:
            raise ValueError(f"`epoch` must be a non-negative int, got {epoch!r}.")
        self.epoch = int(epoch)

    def hr_image(self, index: int) -> torch.Tensor:
        """The HR image `index` as a float ``(3, H, W)`` tensor in ``[-1, 1]`` (after `preprocess_hr` if set)."""
        item = self.images[index]
        image = item["image"] if isinstance(item, dict) else item
        if isinstance(image, PIL.Image.Image):
            if self.hr_resolution is not None:
                image = preprocess_hr(image, self.hr_resolution)
            return pil_to_tensor(image)
        _check_image(image)
        return image

    def generator(self, index: int) -> torch.Generator:
        """The generator of sample `index` in the current epoch."""
        return sample_generator(self.seed, self.epoch, index)


class Stage1Dataset(_HRImageDataset):
    """Stage-1 (neural operator) samples of [`make_stage1_sample`] over a dataset of HR images.

    Use with ``torch.utils.data.DataLoader(..., collate_fn=collate_stage1)``.

    Args:
        images: a ``datasets.Dataset`` with an ``image`` column (e.g. [`~neurop_diff_diffusers.data.load_rs_dataset`]),
            or a sequence of PIL images or ``(3, H, W)`` tensors in ``[-1, 1]``.
        hr_resolution: PIL images first go through [`~neurop_diff_diffusers.data.preprocess_hr`] at this size
            (``None``: used as they are).
        seed: non-negative int; with the epoch (see ``set_epoch``) and the index it fixes every sample.
        **sample_kwargs: `lr_patch`, `scale_min`, `scale_max`, `num_queries`, `augment` of [`make_stage1_sample`].

    Example:
        >>> data = Stage1Dataset([torch.zeros(3, 256, 256)] * 4, seed=0)
        >>> batch = collate_stage1([data[0], data[1]])
        >>> batch["lr"].shape
        torch.Size([2, 3, 48, 48])
    """

    make_sample = staticmethod(make_stage1_sample)


class Stage2Dataset(_HRImageDataset):
    """Stage-2 (diffusion) samples of [`make_stage2_sample`] over a dataset of HR images.

    Use with ``torch.utils.data.DataLoader(..., collate_fn=collate_stage2)``.

    Args:
        images: a ``datasets.Dataset`` with an ``image`` column, or a sequence of PIL images or ``(3, H, W)`` tensors
            in ``[-1, 1]``.
        hr_resolution: PIL images first go through [`~neurop_diff_diffusers.data.preprocess_hr`] at this size
            (``None``: used as they are).
        seed: non-negative int; with the epoch (see ``set_epoch``) and the index it fixes every sample.
        **sample_kwargs: `resolution`, `scale_min`, `scale_max`, `augment` of [`make_stage2_sample`].

    Example:
        >>> data = Stage2Dataset([torch.zeros(3, 64, 64)] * 2, resolution=64)
        >>> collate_stage2([data[0], data[1]])["hr"].shape
        torch.Size([2, 3, 64, 64])
    """

    make_sample = staticmethod(make_stage2_sample)
