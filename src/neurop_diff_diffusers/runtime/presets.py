"""Model sizes: ``"paper"`` (docs/method.md sections 3-4), ``"small"`` (CPU training), ``"tiny"`` (tests, demos)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers import UNet2DModel

from ..models.neural_operator import GalerkinNeuralOperator
from ..pipelines.pipeline_neurop_diff import NeurOpDiffPipeline
from ..pipelines.scheduling import default_scheduler

# The SR3 noise-level embedding: sin | cos of sqrt(gamma) * 10000^(-i/half), no flip, no frequency shift.
_SR3_EMBEDDING = {"time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 0}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "neural_operator": {
            "encoder_channels": 64,
            "encoder_num_blocks": 16,
            "width": 256,
            "num_heads": 16,
            "num_galerkin_blocks": 2,
            "head_channels": 256,
        },
        "unet": {
            "sample_size": 256,
            "in_channels": 6,
            "out_channels": 3,
            "block_out_channels": (64, 128, 128, 256, 256, 512),
            "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
            "layers_per_block": 1,
            "norm_num_groups": 16,
            "attention_head_dim": None,
            "dropout": 0.2,
            **_SR3_EMBEDDING,
        },
    },
    # Sized for CPU training (the embedded default model): a few hours on 2 cores, a few MB of weights.
    "small": {
        "neural_operator": {
            "encoder_channels": 32,
            "encoder_num_blocks": 4,
            "width": 64,
            "num_heads": 8,
            "num_galerkin_blocks": 2,
            "head_channels": 64,
        },
        "unet": {
            "sample_size": 64,
            "in_channels": 6,
            "out_channels": 3,
            "block_out_channels": (32, 64, 64, 128),
            "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
            "layers_per_block": 1,
            "norm_num_groups": 16,
            "attention_head_dim": None,
            "dropout": 0.0,
            **_SR3_EMBEDDING,
        },
    },
    "tiny": {
        "neural_operator": {
            "encoder_channels": 16,
            "encoder_num_blocks": 2,
            "width": 32,
            "num_heads": 4,
            "num_galerkin_blocks": 2,
            "head_channels": 32,
        },
        "unet": {
            "sample_size": 32,
            "in_channels": 6,
            "out_channels": 3,
            "block_out_channels": (16, 32, 32),
            "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "attention_head_dim": None,
            "dropout": 0.0,
            **_SR3_EMBEDDING,
        },
    },
}


def _preset(preset: str) -> dict[str, dict[str, Any]]:
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}.")
    return copy.deepcopy(PRESETS[preset])


def build_neural_operator(preset: str = "paper", seed: int | None = 0) -> GalerkinNeuralOperator:
    """A randomly initialised [`GalerkinNeuralOperator`] of the given preset, in eval mode (as `from_pretrained`
    returns models; a training loop calls ``.train()`` itself).

    Args:
        preset (`str`, defaults to ``"paper"``): ``"paper"``, ``"small"`` (CPU training) or ``"tiny"``.
        seed (`int` or `None`, defaults to `0`): seed of the initialisation (``None``: the global torch RNG).

    Raises:
        ValueError: if ``preset`` is not a key of [`PRESETS`].
    """
    config = _preset(preset)["neural_operator"]
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return GalerkinNeuralOperator(**config).eval()


def build_unet(preset: str = "paper", seed: int | None = 0) -> UNet2DModel:
    """A randomly initialised SR3-style [`UNet2DModel`] (6 input channels) of the given preset, in eval mode (no
    dropout at inference, as `from_pretrained` returns it; a training loop calls ``.train()`` itself).

    Args:
        preset (`str`, defaults to ``"paper"``): ``"paper"``, ``"small"`` (CPU training) or ``"tiny"``.
        seed (`int` or `None`, defaults to `0`): seed of the initialisation (``None``: the global torch RNG).

    Raises:
        ValueError: if ``preset`` is not a key of [`PRESETS`].
    """
    config = _preset(preset)["unet"]
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed + 1)
        return UNet2DModel(**config).eval()


def build_pipeline(preset: str = "tiny", seed: int = 0) -> NeurOpDiffPipeline:
    """A randomly initialised [`NeurOpDiffPipeline`] with the authors' DDIM scheduler, its models in eval mode
    (it behaves as a saved and reloaded one does).

    Args:
        preset (`str`, defaults to ``"tiny"``): ``"paper"`` (about 2 M operator + 40+ M UNet parameters),
            ``"small"`` (the embedded model's sizes, for CPU training) or ``"tiny"`` (a few hundred thousand).
        seed (`int`, defaults to `0`): seed of the initialisation: the same seed gives the same weights.

    Raises:
        ValueError: if ``preset`` is not a key of [`PRESETS`].

    Example:
        >>> from neurop_diff_diffusers.runtime.presets import build_pipeline
        >>> pipe = build_pipeline("tiny", seed=0)
        >>> pipe.unet.config.in_channels
        6
    """
    return NeurOpDiffPipeline(
        unet=build_unet(preset, seed),
        neural_operator=build_neural_operator(preset, seed),
        scheduler=default_scheduler("ddim"),
    )
