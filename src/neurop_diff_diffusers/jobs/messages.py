"""One-line messages of the file jobs: library argument names shown as the command's flags, names escaped.

Example:
    >>> from neurop_diff_diffusers.jobs.messages import one_line
    >>> one_line(ValueError("`tile_size` must be >= 64"))
    '--tile-size must be >= 64'
"""

from __future__ import annotations

import sys

from ..file_safety import printable

#: Python argument names in library messages -> the flags that set them.
_FLAG_NAMES = {
    "`num_inference_steps`": "--steps",
    "`tile_size`": "--tile-size",
    "`tile_overlap`": "--tile-overlap",
    "`max_output_pixels`": "--max-pixels",
    "pass a larger `max_output_pixels=` to the pipeline call to allow it": "raise --max-pixels to allow it",
    "`output_size`": "--size",
    "`scale`": "--scale",
    "`strength`": "--strength",
    "`device`": "--device",
    "overwrite=True (CLI: --overwrite)": "--overwrite",
}


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when empty), with Python argument names as CLI flags and
    control characters escaped ([`~neurop_diff_diffusers.file_safety.printable`]).

    Args:
        err: the exception.

    Example:
        >>> one_line(ValueError("`num_inference_steps` must be >= 1\\nmore"))
        '--steps must be >= 1'
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for name, flag in _FLAG_NAMES.items():
        text = text.replace(name, flag)
    return printable(text)


def print_warning(text: str) -> None:
    """Print ``neurop-diff: warning: TEXT`` on stderr: one line (a file name's newline escaped, never a second line).

    Args:
        text: the warning, which may name files.
    """
    print(f"neurop-diff: warning: {printable(text)}", file=sys.stderr)


def os_reason(err: OSError) -> str:
    """``Permission denied`` rather than ``[Errno 13] Permission denied: '/x'`` (the caller names the file itself).

    Args:
        err: the operating-system error.
    """
    return err.strerror or one_line(err)
