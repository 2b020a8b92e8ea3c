"""Validation and conversion of user images (PIL, numpy, torch, lists of them) to model tensors and back."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor

#: What the pipelines accept as ``image``.
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[PIL.Image.Image | np.ndarray | torch.Tensor]

OUTPUT_TYPES = ("pil", "np", "pt")

#: Largest output side, in pixels, whatever the pixel budget: a larger `scale` is refused before any size is computed.
MAX_OUTPUT_SIDE = 1 << 20
#: Float inputs may exceed ``[0, 1]`` by this much (rounding of a float32 conversion, e.g. ``1.0000001``): clipped.
RANGE_TOLERANCE = 1e-6


#: PIL modes of 16-bit unsigned greyscale images (16-bit PNG / TIFF), scaled by 1 / 65535.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: PIL modes that carry an alpha channel (dropped, with a warning).
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def pil_to_array(image: PIL.Image.Image, name: str = "image") -> np.ndarray:
    """A PIL image as an ``(H, W, 3)`` array: ``uint8`` for 8-bit modes, ``float32`` in ``[0, 1]`` for the others.

    - 8-bit modes (``RGB``, ``L``, ``P``, ``CMYK``, ...) are converted to RGB.
    - 16-bit greyscale (modes ``I;16``, ``I;16B``, ...: 16-bit PNG / TIFF) is divided by 65535, the range of its
      type, and repeated on three channels: never clipped.
    - 32-bit float greyscale (mode ``F``) must already lie in ``[0, 1]``.
    - 32-bit integer greyscale (mode ``I``) has no known range and is refused.
    - An alpha channel (``RGBA``, ``LA``, ``P`` with transparency, ...) is dropped with a ``UserWarning``: the colour
      of transparent pixels is kept as it is.

    Args:
        image (`PIL.Image.Image`): the PIL image.
        name (`str`, defaults to ``"image"``): the argument (or file) name used in messages.

    Returns:
        `np.ndarray`: the ``(H, W, 3)`` array, ``uint8`` or ``float32`` as above.

    Raises:
        ValueError: for mode ``I``, a mode ``F`` image outside ``[0, 1]``, or an image without pixels.

    Example:
        >>> import PIL.Image
        >>> pil_to_array(PIL.Image.new("I;16", (3, 2), 65535)).max()
        np.float32(1.0)
    """
    if image.width == 0 or image.height == 0:
        raise ValueError(f"`{name}` has no pixels (size {image.size}).")
    mode = image.mode
    if mode in HIGH_BIT_DEPTH_MODES:
        grey = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        _check_range(torch.from_numpy(np.array(grey)), name)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode in ("I", "I;32", "I;32B", "I;32L"):
        raise ValueError(
            f"`{name}` is a PIL image of mode {mode!r} (32-bit integer greyscale), whose value range is unknown; "
            "convert it to 8-bit or 16-bit (mode 'I;16'), or pass a float numpy array in [0, 1]."
        )
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        warnings.warn(
            f"`{name}` has an alpha channel (mode {mode!r}); it is dropped and the result is RGB.",
            UserWarning,
            stacklevel=3,
        )
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _one_to_tensor(image: Any, name: str) -> torch.Tensor:
    """One image (or an already batched array/tensor) to ``(B, 3, H, W)`` float32 in ``[0, 1]``."""
    if isinstance(image, PIL.Image.Image):
        array = pil_to_array(image, name)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
        return tensor.float() / 255.0 if array.dtype == np.uint8 else tensor.float()
    if isinstance(image, np.ndarray):
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise ValueError(f"`{name}` as a numpy array must be HWC or NHWC, got shape {image.shape}.")
        if image.shape[-1] != 3:
            raise ValueError(
                f"`{name}` as a numpy array must have 3 channels last (HWC RGB), got shape {image.shape}."
            )
        if image.dtype == np.uint8:
            tensor = torch.from_numpy(np.array(image, copy=True)).float() / 255.0
        elif np.issubdtype(image.dtype, np.floating):
            tensor = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))
        else:
            raise TypeError(
                f"`{name}` as a numpy array must be uint8 or float in [0, 1], got dtype {image.dtype}; scale other "
                "integer types to [0, 1] first."
            )
        return _check_range(tensor.permute(0, 3, 1, 2), name)
    if isinstance(image, torch.Tensor):
        if image.device.type == "meta":
            raise ValueError(f"`{name}` is a tensor on the meta device, which holds no values; pass a real tensor.")
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4:
            raise ValueError(f"`{name}` as a torch tensor must be CHW or NCHW, got shape {tuple(image.shape)}.")
        if image.shape[1] != 3:
            raise ValueError(
                f"`{name}` as a torch tensor must have 3 channels (NCHW RGB), got {image.shape[1]} "
                f"(shape {tuple(image.shape)})."
            )
        if image.dtype == torch.uint8:
            tensor = image.float() / 255.0
        elif image.is_floating_point():
            tensor = image.detach().float()
        else:
            raise TypeError(f"`{name}` as a torch tensor must be float in [0, 1] or uint8, got {image.dtype}.")
        return _check_range(tensor, name)
    raise TypeError(
        f"`{name}` must be a PIL image, a numpy array, a torch tensor or a list of them, got {type(image).__name__}."
    )


def _check_range(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.numel() == 0:
        raise ValueError(f"`{name}` has no pixels (shape {tuple(tensor.shape)}).")
    lo, hi = float(tensor.min()), float(tensor.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"`{name}` values must be in [0, 1] (floats) or 0..255 (uint8); got range [{lo:.9g}, {hi:.9g}]."
        )
    if lo < 0.0 or hi > 1.0:  # float rounding, within RANGE_TOLERANCE
        tensor = tensor.clamp(0.0, 1.0)
    return tensor


def preprocess_images(image: ImageInput, name: str = "image") -> torch.Tensor:
    """Convert user input to a batch ``(B, 3, H, W)`` float32 tensor in ``[0, 1]``.

    PIL images of any 8-bit mode (L, P, CMYK, ...) are converted to RGB, 16-bit greyscale (``I;16``) is divided by
    65535 and float greyscale (``F``) taken as it is (see [`pil_to_array`]); an alpha channel is dropped with a
    warning. numpy arrays are HWC / NHWC, uint8 or float
    in ``[0, 1]``; torch tensors are CHW / NCHW, float in ``[0, 1]`` or uint8. A list is a batch; its images must share
    one size.

    Args:
        image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them): the input image(s).
        name (`str`, defaults to ``"image"``): the argument name used in error messages.

    Returns:
        `torch.Tensor`: the batch, float32, shape ``(B, 3, H, W)``, values in ``[0, 1]``.

    Raises:
        ValueError: for an empty list, images of a batch with different sizes, a wrong shape or number of channels,
            values outside ``[0, 1]`` (floats), NaN or infinite values, or an image without pixels.
        TypeError: for an input of another type, or a numpy array or torch tensor of another dtype.

    Example:
        >>> import PIL.Image
        >>> preprocess_images([PIL.Image.new("L", (5, 4)), PIL.Image.new("I;16", (5, 4))]).shape
        torch.Size([2, 3, 4, 5])
    """
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError(f"`{name}` is an empty list: pass at least one image.")
        tensors = [_one_to_tensor(item, f"{name}[{i}]") for i, item in enumerate(image)]
        sizes = {tuple(t.shape[-2:]) for t in tensors}
        if len(sizes) > 1:
            raise ValueError(
                f"All images of a batch in `{name}` must have the same size, got sizes (H, W) {sorted(sizes)}; "
                "call the pipeline once per size."
            )
        return torch.cat(tensors, dim=0).contiguous()
    # Contiguous NCHW whatever the source layout, so that every input kind takes the same kernels (same numbers).
    return _one_to_tensor(image, name).contiguous()


class NonFiniteOutputError(ValueError):
    """The model's output holds NaN or infinite values: nothing is returned (and nothing written)."""


def check_finite_output(sample: torch.Tensor) -> torch.Tensor:
    """Raise [`NonFiniteOutputError`] if ``sample`` holds NaN or infinite values, else return it.

    Postprocessing would clamp them into a black (NaN) or saturated (inf) image without a word; the pipeline calls
    this on its output before postprocessing, so every path (the API, the CLI, batch mode, the web app, GeoTIFFs)
    refuses such an output.

    Args:
        sample (`torch.Tensor`): the model's output.

    Returns:
        `torch.Tensor`: ``sample`` unchanged.

    Raises:
        NonFiniteOutputError: with the count of bad values.

    Example:
        >>> try:
        ...     check_finite_output(torch.tensor([float("nan"), 0.0]))
        ... except NonFiniteOutputError as err:
        ...     print(str(err)[:57])
        the model's output holds NaN or infinite values (1 of 2);
    """
    bad = ~torch.isfinite(sample)
    if bool(bad.any()):
        raise NonFiniteOutputError(
            f"the model's output holds NaN or infinite values ({int(bad.sum())} of {sample.numel()}); no image is "
            "produced. Its weights may be damaged, or float16 overflowed (use float32 or bfloat16)."
        )
    return sample


def postprocess_images(
    sample: torch.Tensor, output_type: str = "pil"
) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Model-space images ``(B, 3, H, W)`` in ``[-1, 1]`` to ``"pil"`` (list), ``"np"`` (NHWC) or ``"pt"`` (NCHW).

    Values are clamped to ``[0, 1]`` after denormalising.

    Args:
        sample (`torch.Tensor`): the model output in ``[-1, 1]``.
        output_type (`str`, defaults to ``"pil"``): one of ``"pil"``, ``"np"``, ``"pt"``.

    Returns:
        `list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`: the images, by ``output_type`` (``"np"`` and
        ``"pt"``: values in ``[0, 1]``).

    Raises:
        ValueError: if ``output_type`` is not one of [`OUTPUT_TYPES`].
    """
    check_output_type(output_type)
    processor = VaeImageProcessor(do_resize=False, do_normalize=True)
    return processor.postprocess(sample.float(), output_type=output_type)


def check_output_type(output_type: str) -> None:
    """Raise ``ValueError`` unless ``output_type`` is one of ``OUTPUT_TYPES``.

    Args:
        output_type (`str`): the value to check.

    Raises:
        ValueError: if ``output_type`` is not one of [`OUTPUT_TYPES`].
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")


def check_scale(scale: float, name: str = "scale") -> float:
    """Validate a scale factor (up or down): a finite real number ``>= 1``.

    Args:
        scale (`float`): the factor to check.
        name (`str`, defaults to ``"scale"``): the argument name used in the error message.

    Returns:
        `float`: `scale` as a Python float.

    Raises:
        TypeError: if `scale` is not a real number.
        ValueError: if `scale` is not finite or smaller than 1.

    Example:
        >>> check_scale(2)
        2.0
    """
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"`{name}` must be a real number >= 1, got {type(scale).__name__}.")
    scale = float(scale)
    if not math.isfinite(scale) or scale < 1.0:
        raise ValueError(f"`{name}` must be a finite number >= 1, got {scale}.")
    return scale


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)``: the rounding of every size in this package (not Python's half-to-even ``round``).

    Args:
        x (`float`): the number to round.

    Returns:
        `int`: ``floor(x + 0.5)``.

    Example:
        >>> round_half_up(2.5), round(2.5)
        (3, 2)
    """
    return math.floor(x + 0.5)


def resolve_output_size(
    input_size: tuple[int, int], scale: float | None = None, output_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The output ``(height, width)``: ``round(h * s) x round(w * s)`` (half up) for ``scale``, or ``output_size``.

    Exactly one of the two must be given.

    Args:
        input_size (`tuple[int, int]`): ``(h, w)`` of the LR input.
        scale (`float`, *optional*): a finite real number >= 1.
        output_size (`tuple[int, int]`, *optional*): two positive ints ``(height, width)``.

    Returns:
        `tuple[int, int]`: the output ``(height, width)``.

    Raises:
        ValueError: if both or neither of ``scale`` and ``output_size`` are given, ``scale`` is not finite or
            smaller than 1, ``output_size`` is not two positive ints, or an output side would exceed
            [`MAX_OUTPUT_SIDE`].
        TypeError: if ``scale`` is not a real number.

    Example:
        >>> resolve_output_size((100, 60), scale=3.7)
        (370, 222)
    """
    if (scale is None) == (output_size is None):
        raise ValueError("Pass exactly one of `scale` or `output_size` (height, width); got both or neither.")
    if scale is not None:
        scale = check_scale(scale)
        h, w = input_size
        if max(h, w) * scale > MAX_OUTPUT_SIDE:
            raise ValueError(
                f"`scale` {scale:.6g} is too large for an input of {h}x{w}: output sides are at most "
                f"{MAX_OUTPUT_SIDE} pixels, so `scale` must be in [1, {MAX_OUTPUT_SIDE / max(h, w):.6g}]."
            )
        return round_half_up(h * scale), round_half_up(w * scale)
    ok = (
        isinstance(output_size, (tuple, list))
        and len(output_size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in output_size)
    )
    if not ok:
        raise ValueError(f"`output_size` must be two positive ints (height, width), got {output_size!r}.")
    if max(output_size) > MAX_OUTPUT_SIDE:
        raise ValueError(f"`output_size` sides must be at most {MAX_OUTPUT_SIDE} pixels, got {tuple(output_size)}.")
    return int(output_size[0]), int(output_size[1])
