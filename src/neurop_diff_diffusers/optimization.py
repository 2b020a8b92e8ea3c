"""Inference speed options of a pipeline: reduced precision, channels-last memory, a few-step sampler, compilation.

All are opt-in and not in the paper; the README's "Speed" section measures what each gives on a CPU and a GPU. The
command line (``--dtype``, ``--channels-last``, ``--scheduler``), the evaluation and the benchmarks all go through
[`optimize_pipeline`].
"""

from __future__ import annotations

from typing import Any

import torch

from .scheduling import SCHEDULERS, make_scheduler

#: Names accepted for a pipeline's precision. ``bfloat16`` pays off on CPUs with bfloat16 units (AVX512-BF16 / AMX:
#: recent Xeon and EPYC) and on GPUs; ``float16`` on GPUs only (CPU float16 kernels are slow).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(value: Any, name: str = "dtype") -> torch.dtype | None:
    """A precision by name (``"float32"``, ``"bfloat16"``, ``"float16"``), a `torch.dtype` of those, or ``None``.

    Args:
        value (`str`, `torch.dtype` or `None`): the precision.
        name (`str`, defaults to ``"dtype"``): the argument's name, for the error message.

    Returns:
        `torch.dtype` or `None`: ``None`` for ``None`` (keep the pipeline's own).

    Example:
        >>> parse_dtype("bfloat16")
        torch.bfloat16
    """
    if value is None or (isinstance(value, torch.dtype) and value in DTYPES.values()):
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise ValueError(f"`{name}` must be one of {list(DTYPES)}, got {value!r}.")


def optimize_pipeline(
    pipeline: Any,
    dtype: str | torch.dtype | None = None,
    channels_last: bool = False,
    scheduler: str | None = None,
    compile: bool = False,
) -> Any:
    """Set a pipeline's inference options in place (validated first) and return it.

    Args:
        pipeline ([`NeurOpDiffPipeline`]): the pipeline.
        dtype (`str` or `torch.dtype`, *optional*): the UNet's precision (see [`DTYPES`]); the neural operator, the
            noise and the sampler stay in float32 (see [`NeurOpDiffPipeline`]). ``None``: unchanged.
        channels_last (`bool`, defaults to `False`): the UNet's weights in channels-last memory format (faster
            convolution kernels on CPUs and GPUs; float outputs change in the last bits).
        scheduler (`str`, *optional*): a sampler of [`~scheduling.SCHEDULERS`] with the pipeline's noise schedule and
            ``prediction_type`` (see [`~scheduling.make_scheduler`]). ``None``: unchanged.
        compile (`bool`, defaults to `False`): ``torch.compile`` the UNet in place (the first call then compiles:
            minutes on a CPU; later calls of the same size are faster).

    Returns:
        The same pipeline.

    Example:
        >>> from neurop_diff_diffusers.presets import build_pipeline
        >>> pipe = optimize_pipeline(build_pipeline("tiny"), dtype="bfloat16", channels_last=True, scheduler="unipc")
        >>> pipe.unet.dtype, type(pipe.scheduler).__name__
        (torch.bfloat16, 'UniPCMultistepScheduler')
    """
    dtype = parse_dtype(dtype)
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"`scheduler` must be one of {list(SCHEDULERS)}, got {scheduler!r}.")
    for flag, value in (("channels_last", channels_last), ("compile", compile)):
        if not isinstance(value, bool):
            raise TypeError(f"`{flag}` must be a bool, got {value!r}.")
    if dtype is not None:
        pipeline.to(dtype=dtype)
    if channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler)
    if compile:
        pipeline.unet.compile()
    return pipeline
