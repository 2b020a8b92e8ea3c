"""Inference speed options of a pipeline: reduced precision, channels-last memory, a few-step sampler, compilation.

All are opt-in and not in the paper; the README's "Speed" section measures what each gives on a CPU and a GPU. The
command line (``--dtype``, ``--channels-last``, ``--scheduler``), the evaluation and the benchmarks all go through
[`optimize_pipeline`].
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..pipelines.scheduling import SCHEDULERS, make_scheduler
from .hardware import SlowPrecisionWarning, auto_dtype, slow_precision_warning

#: Names accepted for a pipeline's precision. ``bfloat16`` pays off only on CPUs with bfloat16 units (the
#: ``avx512_bf16`` / ``amx_bf16`` flags: Intel Xeon from Cooper Lake, AMD from Zen 4; elsewhere it is emulated,
#: 4.5x-72x slower than float32) and on GPUs; ``float16`` on GPUs only (CPU float16 kernels are slow). ``"auto"``
#: (see [`resolve_dtype`]) picks the fastest of them for the pipeline's device.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The name that lets the hardware choose (see [`~neurop_diff_diffusers.runtime.hardware.choose_dtype`]).
AUTO_DTYPE = "auto"


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


def resolve_dtype(value: Any, device: str | torch.device = "cpu", name: str = "dtype") -> torch.dtype | None:
    """[`parse_dtype`], with ``"auto"``: the fastest precision of ``device`` on this machine.

    ``auto`` is bfloat16 on a CPU whose bfloat16 units torch uses (``avx512_bf16`` / ``amx_bf16``, not capped by
    ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``) and on CUDA GPUs with bfloat16, float16 on other CUDA GPUs,
    float32 elsewhere (see [`~neurop_diff_diffusers.runtime.hardware.auto_dtype`], and ``neurop-diff info`` for its
    reason).

    Args:
        value (`str`, `torch.dtype` or `None`): a name of [`DTYPES`], ``"auto"``, a `torch.dtype` of those or ``None``.
        device (`str` or `torch.device`, defaults to ``"cpu"``): where the pipeline runs.
        name (`str`, defaults to ``"dtype"``): the argument's name, for the error message.

    Returns:
        `torch.dtype` or `None`.

    Raises:
        ValueError: naming the argument and the allowed values.
    """
    if isinstance(value, str) and value == AUTO_DTYPE:
        return DTYPES[auto_dtype(str(torch.device(device))).dtype]
    try:
        return parse_dtype(value, name)
    except ValueError:
        raise ValueError(f"`{name}` must be one of {[AUTO_DTYPE, *DTYPES]}, got {value!r}.") from None


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
        dtype (`str` or `torch.dtype`, *optional*): the UNet's precision (see [`DTYPES`]), or ``"auto"``: the fastest
            on the pipeline's device (see [`resolve_dtype`]); the neural operator, the noise and the sampler stay in
            float32 (see [`NeurOpDiffPipeline`]). ``None``: unchanged. An explicit ``bfloat16`` on a CPU without
            bfloat16 units warns ([`~neurop_diff_diffusers.runtime.hardware.SlowPrecisionWarning`]).
        channels_last (`bool`, defaults to `False`): the UNet's weights in channels-last memory format (faster
            convolution kernels on CPUs and GPUs; float outputs change in the last bits).
        scheduler (`str`, *optional*): a sampler of [`~scheduling.SCHEDULERS`] with the pipeline's noise schedule and
            ``prediction_type`` (see [`~scheduling.make_scheduler`]). ``None``: unchanged.
        compile (`bool`, defaults to `False`): ``torch.compile`` the UNet in place (the first call then compiles:
            minutes on a CPU; later calls of the same size are faster).

    Returns:
        The same pipeline.

    Example:
        >>> from neurop_diff_diffusers.runtime.presets import build_pipeline
        >>> pipe = optimize_pipeline(build_pipeline("tiny"), dtype="bfloat16", channels_last=True, scheduler="unipc")
        >>> pipe.unet.dtype, type(pipe.scheduler).__name__
        (torch.bfloat16, 'UniPCMultistepScheduler')
    """
    device = getattr(pipeline, "device", None) or torch.device("cpu")
    explicit = dtype
    dtype = resolve_dtype(dtype, device)
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"`scheduler` must be one of {list(SCHEDULERS)}, got {scheduler!r}.")
    for flag, value in (("channels_last", channels_last), ("compile", compile)):
        if not isinstance(value, bool):
            raise TypeError(f"`{flag}` must be a bool, got {value!r}.")
    if explicit in ("bfloat16", torch.bfloat16):
        message = slow_precision_warning("bfloat16", str(device))
        if message is not None:
            warnings.warn(message, SlowPrecisionWarning, stacklevel=2)
    if dtype is not None:
        pipeline.to(dtype=dtype)
    if channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler)
    if compile:
        pipeline.unet.compile()
    return pipeline


def parse_setting(text: str) -> dict[str, Any]:
    """A speed setting written ``SAMPLER:STEPS[:DTYPE[:cl][:compile]]`` (the benchmarks' ``--configs``), as a dict.

    Args:
        text (`str`): e.g. ``"ddim:50"`` (the paper's sampler, float32) or ``"unipc:20:bfloat16:cl"`` (UniPC, 20 steps,
            a bfloat16 UNet in channels-last memory); ``:compile`` adds ``torch.compile``.

    Returns:
        `dict`: ``name`` (``text``), ``scheduler``, ``steps``, ``dtype`` (a name of [`DTYPES`], default ``float32``),
        ``channels_last`` and ``compile``; the last four are [`optimize_pipeline`]'s arguments.

    Raises:
        ValueError: naming the field that is wrong and its allowed values.

    Example:
        >>> parse_setting("unipc:20:bfloat16:cl")["channels_last"], parse_setting("ddim:50")["dtype"]
        (True, 'float32')
    """
    parts = text.split(":") if isinstance(text, str) else []
    if not 2 <= len(parts) <= 5:
        raise ValueError(f"a speed setting is SAMPLER:STEPS[:DTYPE[:cl][:compile]], got {text!r}.")
    scheduler, steps = parts[0], parts[1]
    dtype = parts[2] if len(parts) > 2 else "float32"
    flags = parts[3:]
    if scheduler not in SCHEDULERS:
        raise ValueError(f"the sampler of {text!r} must be one of {list(SCHEDULERS)}.")
    if not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"the steps of {text!r} must be a positive integer.")
    if dtype not in DTYPES:
        raise ValueError(f"the precision of {text!r} must be one of {list(DTYPES)}.")
    if any(flag not in ("cl", "compile") for flag in flags) or len(set(flags)) != len(flags):
        raise ValueError(f"the fields after the precision in {text!r} can only be 'cl' and 'compile', once each.")
    return {
        "name": text,
        "scheduler": scheduler,
        "steps": int(steps),
        "dtype": dtype,
        "channels_last": "cl" in flags,
        "compile": "compile" in flags,
    }
