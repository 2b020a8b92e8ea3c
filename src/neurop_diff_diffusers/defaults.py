"""Defaults and choices shared by the pipeline and the front-ends, in a module without imports: the command line and
the web app read them without loading torch.

Example:
    >>> from neurop_diff_diffusers.defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_TILE_SIZE
    >>> DEFAULT_TILE_SIZE, DEFAULT_MAX_OUTPUT_PIXELS == 4096 * 4096
    (512, True)
"""

#: Tiles of this many pixels a side by default: outputs larger than this on either side are denoised in tiles.
DEFAULT_TILE_SIZE = 512
#: Overlap of neighbouring tiles, in pixels (at most a quarter of the tile).
DEFAULT_TILE_OVERLAP = 64
#: Default pixel budget of one output image (height x width); raise it with ``max_output_pixels``.
DEFAULT_MAX_OUTPUT_PIXELS = 4096 * 4096
#: The UNet precisions the command line and the web app offer (``auto``: the fastest one computed natively).
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
#: The samplers the command line and the web app offer.
SCHEDULER_CHOICES = ("ddim", "ddpm", "dpm++2m", "dpm++2m-sde", "unipc")
