"""A planned scene: its input, output, windows, statistics and settings ([`SceneJob`])."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...io.paths import uncertainty_path
from ...io.rasters import RasterHeader
from .options import SceneOptions
from .plan import ScenePlan
from .statistics import SceneStatistics, ValueRange


@dataclass
class SceneJob:
    """A scene planned by [`~neurop_diff_diffusers.jobs.scene.engine.prepare_scene`]: what
    [`~neurop_diff_diffusers.jobs.scene.engine.run_scene`] and the dry run need.

    Args:
        src_path (`Path`): the input GeoTIFF.
        dst_path (`Path`): the output COG.
        plan (`ScenePlan`): the windows.
        stats (`SceneStatistics`): the stretch, from the statistics pass.
        model_bands (`list[int]`): the 0-based bands through the model.
        options (`SceneOptions`): how the scene is run.
        folder (`Path`): the work folder (journal and finished windows).
        header (`RasterHeader | None`, *optional*): the input's header.
    """

    src_path: Path
    dst_path: Path
    plan: ScenePlan
    stats: SceneStatistics
    model_bands: list[int]
    options: SceneOptions
    folder: Path
    header: RasterHeader | None = None

    @property
    def seed(self) -> int:
        """The seed of the windows' noise."""
        return self.options.seed

    @property
    def value_range(self) -> ValueRange:
        """How input values map to ``[0, 1]``."""
        return self.options.value_range

    @property
    def pipe_kwargs(self) -> dict[str, Any]:
        """Each window's pipeline call arguments (with ``num_samples`` when set): what the journal records."""
        return self.options.call_kwargs

    @property
    def num_samples(self) -> int | None:
        """Samples per window (``num_samples``), or ``None``: one sample, no uncertainty map."""
        return self.options.num_samples

    @property
    def uncertainty_path(self) -> Path | None:
        """Where the uncertainty map goes (``<output stem>.uncertainty.tif``), or ``None`` without samples."""
        return None if self.num_samples is None else uncertainty_path(self.dst_path)

    @property
    def alpha_bands(self) -> tuple[int, ...]:
        """The 0-based alpha bands of the input (upscaled with nearest neighbour), from its header."""
        return self.header.alpha_bands if self.header is not None else ()

    @property
    def planes(self) -> int:
        """Planes of a window's file and of the strip accumulator: the bands, plus the map with samples."""
        return len(self.stats.stretch.low) + int(self.num_samples is not None)

    def describe(self) -> str:
        """The window plan, in a few lines."""
        plan = self.plan
        rows, cols = plan.grid
        bands = len(self.stats.stretch.low)
        strip = plan.strip_rows()
        planes = f"{bands} + 1 map" if self.num_samples is not None else f"{bands}"
        lines = [
            f"scene {plan.size[0]}x{plan.size[1]} px ({bands} bands) -> {plan.out_size[0]}x{plan.out_size[1]} px "
            "(height x width)",
            f"windows: {rows} x {cols} = {rows * cols} (core <= {plan.window} px + halo {plan.halo} px, LR)",
            f"strip accumulator: ({planes} + 1) x {strip} x {plan.out_size[1]} float32 = "
            f"{megabytes(strip_bytes(plan, self.planes)):.0f} MB",
            f"value range: {self.value_range} "
            f"(low {_fmt(self.stats.stretch.low)}, high {_fmt(self.stats.stretch.high)})",
        ]
        if self.num_samples is not None:
            out_h, out_w = plan.out_size
            lines.append(
                f"uncertainty map: {self.uncertainty_path} ({out_h}x{out_w} px, 1 band float32 = "
                f"{megabytes(out_h * out_w * 4):.0f} MB before compression; {self.num_samples} samples per window, "
                "on the model's 0..1 scale)"
            )
        return "\n".join(lines)


def _fmt(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:g}" for v in values)


def megabytes(n: float) -> float:
    return n / 2**20


def strip_bytes(plan: ScenePlan, bands: int) -> int:
    """Bytes of the strip accumulator and its weights (the part of the memory bound that grows with the width).

    Args:
        plan (`ScenePlan`): the windows.
        bands (`int`): planes accumulated: the output's bands, plus one for an uncertainty map.
    """
    return (bands + 1) * plan.strip_rows() * plan.out_size[1] * 4
