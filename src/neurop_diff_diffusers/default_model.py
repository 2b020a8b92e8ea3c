"""The embedded default model: a small NeurOp-Diff trained on UCMerced, shipped inside the package (offline)."""

from __future__ import annotations

from pathlib import Path

import torch

from .pipelines.pipeline_neurop_diff import NeurOpDiffPipeline
from .utils import check_device

#: Folder of the embedded pipeline (``save_pretrained`` layout) inside the installed package.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "neurop-diff-ucmerced"


def has_default_model() -> bool:
    """Whether this installation ships the embedded model."""
    return (DEFAULT_MODEL_PATH / "model_index.json").is_file()


def load_default_pipeline(
    device: str | torch.device | None = None, torch_dtype: torch.dtype | None = None
) -> NeurOpDiffPipeline:
    """The embedded default model as a [`NeurOpDiffPipeline`], loaded offline from ``DEFAULT_MODEL_PATH``.

    Args:
        device: where to move the pipeline (default: CPU).
        torch_dtype: e.g. ``torch.float16`` on a GPU.

    Raises:
        ValueError: if ``device`` is not available on this machine (the message lists the available ones).
        FileNotFoundError: if this installation ships no embedded model.

    Example:
        >>> from neurop_diff_diffusers import has_default_model, load_default_pipeline
        >>> pipe = load_default_pipeline() if has_default_model() else None
    """
    if device is not None:
        device = check_device(device)
    if not has_default_model():
        raise FileNotFoundError(
            f"No embedded model ships with this version (looked in {DEFAULT_MODEL_PATH}). Pass a trained pipeline "
            "folder or hub id instead (CLI: --model PATH_OR_HUB_ID; 'preset:tiny' gives an untrained one)."
        )
    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    pipe = NeurOpDiffPipeline.from_pretrained(DEFAULT_MODEL_PATH, **kwargs)
    return pipe.to(device) if device is not None else pipe
