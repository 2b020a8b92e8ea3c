"""Deprecated home of the training building blocks: they live in [`neurop_diff_diffusers.training`] since 0.2.

This module re-exports them so that ``from neurop_diff_diffusers.training_utils import ...`` keeps working for one
release.
"""

from .training import *  # noqa: F403
from .training import __all__  # noqa: F401
