from .pipeline_neurop_diff import DEFAULT_MAX_OUTPUT_PIXELS, NeurOpDiffPipeline, bicubic_prior

__all__ = ["DEFAULT_MAX_OUTPUT_PIXELS", "NeurOpDiffPipeline", "bicubic_prior"]
