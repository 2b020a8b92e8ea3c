"""The ``neurop-diff`` command line (``python -m neurop_diff_diffusers.cli`` runs it too).

Example:
    >>> from neurop_diff_diffusers.cli import main
    >>> callable(main)
    True
"""

from .commands import main

__all__ = ["main"]
