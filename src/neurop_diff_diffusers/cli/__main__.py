"""``python -m neurop_diff_diffusers.cli`` (and ``accelerate launch -m neurop_diff_diffusers.cli``)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
