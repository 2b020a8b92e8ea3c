"""Whole scenes out of core: a GeoTIFF streamed window by window from disk to disk, in parallel, resumable, COG out.

The scene engine behind [`upscale_geotiff`] and ``neurop-diff upscale scene.tif``:

- **Windows.** The LR scene is cut into a grid of cores of at most ``window`` px a side; each window is its core
  plus a ``halo`` of LR pixels on every side (clipped at the scene's border), read with a windowed read. The halo is
  context for the encoder and the operator and the overlap in which neighbouring windows are blended.
- **Coordinates.** A window computes every output pixel whose centre falls inside its LR crop, and each output pixel
  keeps the coordinate it has in the whole scene: output row ``i`` of an ``H -> H_out`` scene is centred at LR row
  ``(i + 0.5) * H / H_out``, expressed relative to the crop in the operator's ``[-1, 1]`` convention
  (``models/coordinates.py``), with the scene's cell. A window that covers the whole scene is the whole-scene pass.
- **Blending.** Overlapping window outputs are averaged with separable raised-cosine weights that ramp across each
  overlap (never 0), so there are no seams.
- **Streaming.** Windows are done row of windows by row of windows; output rows that no later window touches are
  final and written at once. Peak memory is the model, the windows in flight and a strip accumulator of
  ``(bands + 1) x (window + 2 halo) * scale_y rows x output width`` float32 values: it depends on the window size
  and the output *width*, never on the scene's area.
- **Deterministic.** Window ``k`` draws its noise from ``derive_seed(seed, "scene-window", k)`` and every window is
  computed with one intra-op thread on the CPU (several windows run at once in worker threads), so the output does
  not depend on the number of processes or workers, their order, or a restart.
- **Resume.** Each finished window's output is saved (atomically) in a work folder beside the output,
  ``.<name>.neurop-diff-scene/``, with ``journal.json`` recording the settings (model fingerprint, output size,
  steps, sampler, dtype, seed, strength, prior only, samples, window, halo, value range, input file and a hash of its
  bytes). The same call after a crash or SIGKILL continues from the windows done; a journal of other settings is
  never mixed in (``ValueError`` naming the differences; ``restart=True`` / ``--restart`` discards it). The folder is
  removed when the output is committed. The resume state is checked as hostile input (a folder this tool made, never
  a link, locked for the whole run; the journal against its schema; each window file from its ``.npy`` header, never
  through a link): see ``journal``.
- **Stop.** With a stop flag (``stop=threading.Event()``; the CLI sets it on SIGINT / SIGTERM) every worker checks
  it after each denoising step: the run ends within the steps in flight, the finished windows stay in the work
  folder, no output is written and [`~neurop_diff_diffusers.jobs.stopping.RunStopped`] is raised; the same call
  resumes. Progress counts denoising steps (windows x steps per window), so even a one-window scene has an ETA.
- **Parallel.** Under ``accelerate launch`` the windows left to do are split between the processes; the main process
  assembles the output when all are done: one file, bit-identical to one process.
- **Output.** A tiled (512 px), DEFLATE-compressed, pixel-interleaved Cloud-Optimized GeoTIFF with internal
  overviews (the input's factors when it has some), BigTIFF when the size needs it, with the input's CRS,
  georeferencing (transform, GCPs, RPCs on the output grid:
  [`~neurop_diff_diffusers.io.rasters.output_georeferencing`]), nodata / mask and band metadata (as ``io/geo.py``
  describes).
- **Inputs.** Checked from the header first ([`~neurop_diff_diffusers.io.rasters.check_header`]); read by
  [`read_block`]: a palette raster expanded to RGB, 32 / 64-bit values kept for a float64 stretch, NaN / infinite
  values invalid (one warning when undeclared; masked in the output). An alpha band is upscaled with nearest
  neighbour; a window whose model output holds NaN / inf raises ``NonFiniteOutputError`` (nothing written).
- **Values.** ``value_range``: ``"minmax"`` (default: ``uint8`` 0..255, other dtypes the per-band min-max over valid
  pixels, today's behaviour), a fixed range ``"0,10000"``, or a per-band percentile stretch ``"p2,p98"`` (from a
  histogram pass over the valid pixels, never loading the scene). The output is mapped back to the input's units;
  input values outside the stretch are clipped and counted in a warning.
- **Uncertainty.** With ``num_samples=N`` (CLI ``--uncertainty N``) every window is sampled ``N`` times (the seeds
  drawn from the window's own, [`~neurop_diff_diffusers.pipelines.uncertainty.sample_seeds`]): the window's output is
  the samples' mean and its uncertainty map the standard deviation over the samples (``ddof=0``) averaged over the
  model's three channels (by default over flipped inputs and pooled over a small Gaussian), as ``pipe(...,
  num_samples=N, prior=...)`` returns them for the window's prior (flipped with the window, not recomputed). The maps
  are saved with each window (one more plane in its file, so a resumed run gives the same bytes), blended with the
  image's weights and written as a second COG, [`uncertainty_path`] (``<output stem>.uncertainty.tif``): float32, one
  band, georeferenced exactly like the output, committed just before it (a failed run leaves neither). The map is on
  the model's ``[0, 1]`` scale, i.e. the value range (the ``NEUROP_DIFF_STRETCH`` tag: ``low`` -> 0, ``high`` -> 1, per
  band) mapped to 0..1: a value ``u`` is ``u * (high - low)`` in the input's units of a band.

The modules, one concept each: ``plan`` (window geometry; the input's header, checked once: [`plan_raster`]),
``statistics`` (value ranges, the statistics pass that is also the damage scan), ``options`` (a run's options,
checked once), ``window`` (one window through the model), ``workers`` (windows in threads), ``journal`` (journal and
fingerprint), ``job`` (a planned scene), ``assemble`` (strip blending, nodata rows), ``cog`` (the COG copy, the
commit of two files), ``dry_run`` (the estimate from one denoising step) and ``engine`` (prepare, run, the
``accelerate`` split, [`upscale_geotiff`]).

Example:
    >>> plan = ScenePlan.create((1000, 700), (2000, 1400), window=256, halo=16)
    >>> plan.grid, len(plan.windows())
    ((4, 3), 12)
"""

from ...io.paths import uncertainty_path
from .cog import assemble_and_commit
from .dry_run import dry_run
from .engine import prepare_scene, run_scene, tqdm_progress, upscale_geotiff, upscale_scene
from .job import SceneJob
from .journal import work_folder
from .options import SceneOptions
from .plan import (
    DEFAULT_HALO,
    DEFAULT_WINDOW,
    RasterPlan,
    ScenePlan,
    SceneWindow,
    core_bounds,
    output_start,
    plan_raster,
    ramp_weights,
)
from .statistics import SceneStatistics, ValueRange, parse_value_range, scene_statistics
from .window import window_seed
from .workers import compute_windows

__all__ = [
    "DEFAULT_HALO",
    "DEFAULT_WINDOW",
    "RasterPlan",
    "SceneJob",
    "SceneOptions",
    "ScenePlan",
    "SceneStatistics",
    "SceneWindow",
    "ValueRange",
    "assemble_and_commit",
    "compute_windows",
    "core_bounds",
    "dry_run",
    "output_start",
    "parse_value_range",
    "plan_raster",
    "prepare_scene",
    "ramp_weights",
    "run_scene",
    "scene_statistics",
    "tqdm_progress",
    "uncertainty_path",
    "upscale_geotiff",
    "upscale_scene",
    "window_seed",
    "work_folder",
]
