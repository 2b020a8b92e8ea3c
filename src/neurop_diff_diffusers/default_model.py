"""The embedded default model (re-exported from [`~neurop_diff_diffusers.loading`], its home since 0.2)."""

from .loading import DEFAULT_MODEL_PATH, has_default_model, load_default_pipeline

__all__ = ["DEFAULT_MODEL_PATH", "has_default_model", "load_default_pipeline"]
