"""The evaluation protocol's settings: the scales of the paper's tables and the training distribution's range.

Example:
    >>> from neurop_diff_diffusers.evaluation.settings import DEFAULT_SCALES, MAX_IN_DISTRIBUTION_SCALE
    >>> [s for s in DEFAULT_SCALES if s > MAX_IN_DISTRIBUTION_SCALE]
    [9.0, 10.0]
"""

#: Scales of the paper's continuous-SR table (Table 3): 2 to 8 in the training distribution, 9 and 10 out of it.
DEFAULT_SCALES: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0)
#: Largest scale of the training distribution (docs/method.md section 1: `s ~ U(1, 8]`).
MAX_IN_DISTRIBUTION_SCALE = 8.0
