"""The checks of a [`~neurop_diff_diffusers.pipelines.NeurOpDiffPipeline`] call's arguments, all made before any
work (one clear TypeError / ValueError naming the argument), and of what its step callback returns.

Example:
    >>> import torch
    >>> from neurop_diff_diffusers.pipelines.call_checks import check_generator
    >>> check_generator([torch.Generator()], 2)
    Traceback (most recent call last):
    ...
    ValueError: `generator` is a list of 1; it must have one per image (2).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import torch

from .scheduling import check_eta


def check_generator(generator: Any, batch_size: int) -> None:
    """Validate a pipeline call's ``generator``: ``None``, a ``torch.Generator`` or a list of one per image.

    Args:
        generator (`Any`): the value to check.
        batch_size (`int`): the number of images.

    Raises:
        TypeError: for anything else (e.g. an int seed: pass ``torch.Generator().manual_seed(seed)``).
        ValueError: for a list whose length is not ``batch_size``.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(f"`generator` is a list of {len(generator)}; it must have one per image ({batch_size}).")
        return
    raise TypeError(
        "`generator` must be a torch.Generator, a list of them (one per image) or None, got "
        f"{type(generator).__name__}; for a seed pass torch.Generator().manual_seed(seed)."
    )


def callback_tensor(outputs: Any, name: str, current: torch.Tensor) -> torch.Tensor:
    """The tensor ``name`` that a step callback returned (``current`` if it returned none), checked: a dict of
    tensors of the shape, dtype and device of the ones it replaces.

    Args:
        outputs (`Any`): what ``callback_on_step_end`` returned (``None`` or a dict).
        name (`str`): the tensor's name (``"latents"`` or ``"prior"``).
        current (`torch.Tensor`): the tensor it may replace.

    Returns:
        `torch.Tensor`: the returned tensor in ``current``'s dtype, or ``current``.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.pipelines.call_checks import callback_tensor
        >>> callback_tensor({"prior": torch.ones(2)}, "latents", torch.zeros(2)).tolist()
        [0.0, 0.0]
    """
    if outputs is None:
        return current
    if not isinstance(outputs, dict):
        raise TypeError(f"`callback_on_step_end` must return a dict of tensors or None, got {type(outputs).__name__}.")
    if name not in outputs:
        return current
    value = outputs[name]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`callback_on_step_end` returned {name!r} as a {type(value).__name__}, not a tensor.")
    if value.shape != current.shape or value.device != current.device or not value.is_floating_point():
        raise ValueError(
            f"`callback_on_step_end` returned {name!r} of shape {tuple(value.shape)} on {value.device}; it must "
            f"keep shape {tuple(current.shape)} on {current.device}, floating point."
        )
    return value.to(current.dtype)


class CallArguments(NamedTuple):
    """The checked arguments of one [`~neurop_diff_diffusers.pipelines.NeurOpDiffPipeline.__call__`] (its step 1),
    the pipeline's defaults filled in."""

    tensor_inputs: list[str]
    eta: float
    strength: float
    num_inference_steps: int
    tile_size: int | None
    tile_overlap: int
    num_samples: int | None
    uncertainty_sigma: float
    data_consistency_steps: int


def check_call_inputs(
    num_inference_steps: int,
    eta: float,
    max_output_pixels: int | None,
    output_size: tuple[int, int],
    num_train_timesteps: int,
    callback_on_step_end_tensor_inputs: list[str],
    allowed_tensor_inputs: list[str],
    tile_size: int | None = None,
    tile_overlap: int = 0,
    downsampling_factor: int = 1,
) -> None:
    """Validate the arguments of a pipeline call that do not concern the image (the pipeline's ``check_inputs``).

    Args:
        num_inference_steps (`int`): denoising steps, in ``[1, num_train_timesteps]``.
        eta (`float`): DDIM's eta, in ``[0, 1]``.
        max_output_pixels (`int` or `None`): pixel budget of one output image (``None``: no limit).
        output_size (`tuple[int, int]`): ``(height, width)`` of the output.
        num_train_timesteps (`int`): the scheduler's number of training timesteps.
        callback_on_step_end_tensor_inputs (`list[str]`): the tensors asked for by the step callback.
        allowed_tensor_inputs (`list[str]`): the tensors the step callback may ask for.
        tile_size (`int`, *optional*): side of the denoising tiles (``None``: no tiling).
        tile_overlap (`int`, defaults to `0`): minimum overlap of neighbouring tiles, at most ``tile_size // 2``.
        downsampling_factor (`int`, defaults to `1`): the UNet's downsampling factor; ``tile_size`` must be a
            multiple of it.

    Raises:
        TypeError: if ``num_inference_steps`` is not an integer, or ``max_output_pixels`` neither an integer nor
            ``None``.
        ValueError: if ``tile_size``, ``tile_overlap``, ``num_inference_steps`` or ``eta`` is out of range, the
            output exceeds ``max_output_pixels``, or ``callback_on_step_end_tensor_inputs`` names a tensor not in
            ``allowed_tensor_inputs``.
    """
    if tile_size is not None:
        if (
            isinstance(tile_size, bool)
            or not isinstance(tile_size, numbers.Integral)
            or tile_size < downsampling_factor
        ):
            raise ValueError(f"`tile_size` must be an int >= {downsampling_factor} or None, got {tile_size!r}.")
        if tile_size % downsampling_factor:
            raise ValueError(
                f"`tile_size` must be a multiple of the UNet's downsampling factor {downsampling_factor}, "
                f"got {tile_size}."
            )
        if (
            isinstance(tile_overlap, bool)
            or not isinstance(tile_overlap, numbers.Integral)
            or not 0 <= tile_overlap <= tile_size // 2
        ):
            raise ValueError(f"`tile_overlap` must be an int in [0, {tile_size // 2}], got {tile_overlap!r}.")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise TypeError(f"`num_inference_steps` must be an int, got {type(num_inference_steps).__name__}.")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"`num_inference_steps` must be in [1, {num_train_timesteps}], got {num_inference_steps}.")
    check_eta(eta)
    if max_output_pixels is not None and (
        isinstance(max_output_pixels, bool) or not isinstance(max_output_pixels, numbers.Integral)
    ):
        raise TypeError(
            f"`max_output_pixels` must be a positive int or None (no limit), got {type(max_output_pixels).__name__}."
        )
    if max_output_pixels is not None and max_output_pixels < 1:
        raise ValueError(f"`max_output_pixels` must be >= 1 or None (no limit), got {max_output_pixels}.")
    h, w = output_size
    if max_output_pixels is not None and h * w > max_output_pixels:
        raise ValueError(
            f"The output of {h}x{w} = {h * w} pixels exceeds the pixel budget `max_output_pixels` = "
            f"{max_output_pixels}; pass a larger `max_output_pixels=` to the pipeline call to allow it."
        )
    unknown = [k for k in callback_on_step_end_tensor_inputs if k not in allowed_tensor_inputs]
    if unknown:
        raise ValueError(f"`callback_on_step_end_tensor_inputs` has {unknown}; allowed: {allowed_tensor_inputs}.")


__all__ = ["CallArguments", "callback_tensor", "check_call_inputs", "check_generator"]
