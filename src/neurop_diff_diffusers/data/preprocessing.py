"""HR image preparation (the paper's centre crop + downsample) and PIL <-> tensor conversion.

Model tensors are float ``(3, H, W)`` (or NCHW) in ``[-1, 1]``: 8-bit level ``k`` maps to ``k / 127.5 - 1``.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .degradation import DEFAULT_VALUE_RANGE, from_uint8_levels, to_uint8_levels

UNDERSIZED_POLICIES = ("pad", "keep", "error")


def pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """Convert a PIL image to a float tensor ``(3, H, W)`` in ``[-1, 1]`` (converted to RGB first).

    Args:
        image (`PIL.Image.Image`): the image; any mode PIL can convert to RGB.

    Example:
        >>> pil_to_tensor(PIL.Image.new("RGB", (4, 2), (255, 0, 0)))[:, 0, 0].tolist()
        [1.0, -1.0, -1.0]
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"`image` must be a PIL.Image.Image, got {type(image).__name__}.")
    array = np.array(image.convert("RGB"), dtype=np.uint8)
    return from_uint8_levels(torch.from_numpy(array).permute(2, 0, 1), DEFAULT_VALUE_RANGE)


def tensor_to_pil(tensor: torch.Tensor) -> PIL.Image.Image:
    """Convert a float tensor ``(3, H, W)`` in ``[-1, 1]`` to an RGB PIL image (rounded to 8-bit levels, clamped).

    Args:
        tensor (`torch.Tensor`): the image tensor, ``(3, H, W)`` or ``(1, 3, H, W)``.

    Example:
        >>> tensor_to_pil(torch.zeros(3, 2, 4)).size
        (4, 2)
    """
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"`tensor` must have shape (3, H, W) or (1, 3, H, W), got {tuple(tensor.shape)}.")
    levels = to_uint8_levels(tensor.detach().float().cpu(), DEFAULT_VALUE_RANGE)
    return PIL.Image.fromarray(levels.permute(1, 2, 0).numpy())


def center_crop(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Crop the centre ``size = (width, height)`` of `image` (offsets rounded down).

    Args:
        image (`PIL.Image.Image`): the image, at least `size` in both dimensions.
        size (`tuple[int, int]`): ``(width, height)`` of the crop, PIL's order.

    Example:
        >>> center_crop(PIL.Image.new("RGB", (257, 250)), (250, 250)).size
        (250, 250)
    """
    width, height = size
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def mirror_pad(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Pad `image` to ``size = (width, height)`` by mirroring it about its borders (no interpolation).

    The padding is split evenly, the extra pixel (if any) at the right / bottom; the border pixel itself is not
    repeated (numpy's ``"reflect"`` mode).

    Args:
        image (`PIL.Image.Image`): the image, at most `size` in both dimensions.
        size (`tuple[int, int]`): ``(width, height)`` of the result, PIL's order.

    Example:
        >>> mirror_pad(PIL.Image.new("RGB", (256, 253)), (256, 256)).size
        (256, 256)
    """
    width, height = size
    array = np.asarray(image)
    pad_w, pad_h = width - image.width, height - image.height
    pad = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)] + [(0, 0)] * (array.ndim - 2)
    return PIL.Image.fromarray(np.pad(array, pad, mode="reflect"))


def preprocess_hr(image: PIL.Image.Image, resolution: int = 256, *, undersized: str = "pad") -> PIL.Image.Image:
    """Prepare an HR image as in the paper (docs/method.md section 6): centre square crop, downsample to `resolution`.

    - Both sides ``>= resolution``: crop the centre square of side ``min(W, H)`` and, if larger than `resolution`,
      downsample it with PIL's antialiased bicubic (AID 600 and RSSCN7 400 -> 256). No distortion: the crop is square.
    - A side ``< resolution``: the image is never upsampled. Each side is centre-cropped to at most `resolution`, then
      `undersized` decides: ``"pad"`` (default) mirrors the image about its borders up to ``resolution x resolution``,
      so UCMerced's odd 247-255 px images come out 256 x 256 with a few mirrored rows or columns and real pixels
      everywhere else; ``"keep"`` returns the centre square of side ``min(W, H)`` (smaller than `resolution`);
      ``"error"`` raises a ValueError.

    Args:
        image (`PIL.Image.Image`): the HR image; converted to RGB.
        resolution (`int`, defaults to `256`): side of the square result, a positive int.
        undersized (`str`, defaults to `'pad'`): ``"pad"``, ``"keep"`` or ``"error"``: what to do when a side is
            smaller than `resolution`.

    Returns:
        An RGB PIL image of ``resolution x resolution`` (or smaller with ``undersized="keep"``).

    Example:
        >>> preprocess_hr(PIL.Image.new("RGB", (600, 600))).size
        (256, 256)
        >>> preprocess_hr(PIL.Image.new("RGB", (256, 247))).size
        (256, 256)
    """
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"`image` must be a PIL.Image.Image, got {type(image).__name__}.")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"`resolution` must be a positive int, got {resolution!r}.")
    if undersized not in UNDERSIZED_POLICIES:
        raise ValueError(f"`undersized` must be one of {UNDERSIZED_POLICIES}, got {undersized!r}.")
    image = image.convert("RGB")
    side = min(image.size)
    if side >= resolution:
        square = center_crop(image, (side, side))
        return square if side == resolution else square.resize((resolution, resolution), PIL.Image.BICUBIC)
    if undersized == "error":
        raise ValueError(
            f"`image` of {image.width}x{image.height} px is smaller than `resolution`={resolution}; images are never "
            "upsampled: pass undersized='pad' or 'keep', or a smaller resolution."
        )
    if undersized == "keep":
        return center_crop(image, (side, side))
    cropped = center_crop(image, (min(image.width, resolution), min(image.height, resolution)))
    return mirror_pad(cropped, (resolution, resolution))
