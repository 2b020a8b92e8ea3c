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

#: The settings behind ``--preset`` of the command line and the web app. ``fast`` (the default) is the measured fast
#: path: 25 DDIM steps (README, "Speed": within 0.001 dB / 0.0005 SSIM of 50 float32 steps on the 147 held-out
#: images, where 20 steps lose 0.0012 SSIM), the UNet in the fastest precision this machine computes natively
#: (``auto``: float32 where bfloat16 is only emulated) with channels-last weights, and the model's own back-projection
#: default. ``paper`` is the paper's recipe: 50 steps, a float32 contiguous UNet and no back-projection onto the input.
#: A flag given explicitly wins over the preset.
SETTING_PRESETS: dict[str, dict[str, object]] = {
    "fast": {"steps": 25, "dtype": "auto", "channels_last": True, "data_consistency": None},
    "paper": {"steps": 50, "dtype": "float32", "channels_last": False, "data_consistency": 0},
}
DEFAULT_SETTING_PRESET = "fast"
#: The default preset's settings, as the command line, batch mode and the web app start from them.
DEFAULT_SETTINGS = SETTING_PRESETS[DEFAULT_SETTING_PRESET]
