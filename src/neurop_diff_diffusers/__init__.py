"""NeurOp-Diff for diffusers: continuous super-resolution of remote-sensing images."""

__version__ = "0.1.0"

import diffusers as _diffusers

from .coordinates import make_cell, make_coord
from .default_model import DEFAULT_MODEL_PATH, has_default_model, load_default_pipeline
from .hub import make_hub_ready
from .image_processing import check_scale, postprocess_images, preprocess_images, resolve_output_size, round_half_up
from .models import DEFAULT_CHUNK_SIZE, GalerkinNeuralOperator, GalerkinNeuralOperatorOutput
from .pipelines import DEFAULT_MAX_OUTPUT_PIXELS, NeurOpDiffPipeline, bicubic_prior
from .pipelines.tiling import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE
from .presets import PRESETS, build_neural_operator, build_pipeline, build_unet
from .scheduling import default_scheduler, noise_level, sample_continuous_noise_level

# `DiffusionPipeline.from_pretrained` looks the class named in model_index.json up in the `diffusers` namespace:
# make ours findable there once this package is imported.
for _cls in (NeurOpDiffPipeline, GalerkinNeuralOperator):
    if not hasattr(_diffusers, _cls.__name__):
        setattr(_diffusers, _cls.__name__, _cls)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "DEFAULT_MODEL_PATH",
    "DEFAULT_TILE_OVERLAP",
    "DEFAULT_TILE_SIZE",
    "PRESETS",
    "GalerkinNeuralOperator",
    "GalerkinNeuralOperatorOutput",
    "NeurOpDiffPipeline",
    "bicubic_prior",
    "build_neural_operator",
    "build_pipeline",
    "build_unet",
    "check_scale",
    "default_scheduler",
    "has_default_model",
    "load_default_pipeline",
    "make_hub_ready",
    "make_cell",
    "make_coord",
    "noise_level",
    "postprocess_images",
    "preprocess_images",
    "resolve_output_size",
    "round_half_up",
    "sample_continuous_noise_level",
]
