from .pipeline_neurop_diff import DEFAULT_MAX_OUTPUT_PIXELS, NeurOpDiffPipeline, bicubic_prior
from .uncertainty import NeurOpDiffPipelineOutput

__all__ = ["DEFAULT_MAX_OUTPUT_PIXELS", "NeurOpDiffPipeline", "NeurOpDiffPipelineOutput", "bicubic_prior"]
