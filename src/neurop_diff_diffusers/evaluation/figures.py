"""The evaluation's figures: comparison figures (each method's output beside the LR and the HR, with a zoomed crop)
and per-pixel trust maps, drawn from the panels that [`~neurop_diff_diffusers.evaluation.run.evaluate`] collects.

Example:
    >>> import numpy as np
    >>> from neurop_diff_diffusers.evaluation.figures import make_figure, stack_figures
    >>> image = np.zeros((32, 32, 3), np.uint8)
    >>> stack_figures([make_figure([("LR", image), ("HR", image)])] * 2).height > 2 * 64
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from ..metrics.quality import to_unit_levels
from .methods import METHOD_LABELS, EvaluationRun, EvaluationScoring


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return PIL.ImageFont.load_default()


def _zoom_box(hr: np.ndarray, fraction: float = 0.25) -> tuple[int, int, int, int]:
    """The most textured `fraction`-sized square of the HR (highest gradient energy on a coarse grid)."""
    height, width = hr.shape[:2]
    side = max(8, int(round(min(height, width) * fraction)))
    gray = hr.astype(np.float64).mean(axis=2)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    best, box = -1.0, (0, 0, side, side)
    step = max(1, side // 2)
    for top in range(0, height - side + 1, step):
        for left in range(0, width - side + 1, step):
            value = float(energy[top : top + side - 1, left : left + side - 1].sum())
            if value > best:
                best, box = value, (left, top, left + side, top + side)
    return box


def make_figure(panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> PIL.Image.Image:
    """A comparison figure: the panels side by side, a zoomed crop of each below (like the paper's Figures 3-5).

    The crop is the most textured quarter-size square of the last panel (the HR), marked in red in the top row and
    magnified with nearest-neighbour interpolation in the bottom row.

    Args:
        panels (`Sequence[tuple[str, np.ndarray]]`): `(label, image)` pairs, images `(H, W, 3)` uint8 of one size;
            the last one is the reference (HR). A label has up to three lines (`"\\n"`-separated).
        title (`str`, *optional*): a line written above the panels.

    Returns:
        `PIL.Image.Image`: the RGB figure.

    Example:
        >>> import numpy as np
        >>> from neurop_diff_diffusers.evaluation.figures import make_figure
        >>> image = np.zeros((32, 32, 3), np.uint8)
        >>> make_figure([("LR", image), ("HR", image)], title="x2").mode
        'RGB'
    """
    if not panels:
        raise ValueError("`panels` must not be empty.")
    height, width = panels[0][1].shape[:2]
    if any(p.shape[:2] != (height, width) or p.dtype != np.uint8 for _, p in panels):
        raise ValueError("`panels` must hold uint8 (H, W, 3) images of one size.")
    left, top, right, bottom = _zoom_box(panels[-1][1])
    font_size = max(10, min(16, width // 12))
    font = _font(font_size)
    lines = max(2, *(min(3, len(label.split("\n"))) for label, _ in panels))
    label_h, title_h, gap = lines * (font_size + 2) + 4, (font_size + 10) if title else 0, 4
    columns = len(panels)
    figure = PIL.Image.new(
        "RGB", (columns * width + (columns + 1) * gap, title_h + label_h + 2 * height + 3 * gap), "white"
    )
    draw = PIL.ImageDraw.Draw(figure)
    if title:
        draw.text((gap, 4), title, fill="black", font=font)
    for column, (label, array) in enumerate(panels):
        x = gap + column * (width + gap)
        y = title_h + label_h
        for line, text in enumerate(label.split("\n")[:3]):
            draw.text((x, title_h + 2 + line * (font_size + 2)), text, fill="black", font=font)
        image = PIL.Image.fromarray(array)
        figure.paste(image, (x, y))
        draw.rectangle((x + left, y + top, x + right - 1, y + bottom - 1), outline=(255, 0, 0), width=2)
        zoom = image.crop((left, top, right, bottom)).resize((width, height), PIL.Image.NEAREST)
        figure.paste(zoom, (x, y + height + gap))
    return figure


def stack_figures(figures: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
    """Figures one above the other (left-aligned, on white): one row per image shown.

    Args:
        figures (`Sequence[PIL.Image.Image]`): RGB figures, e.g. from [`make_figure`].

    Returns:
        `PIL.Image.Image`: the stacked figure (the figure itself when there is one).

    Example:
        >>> import PIL.Image
        >>> from neurop_diff_diffusers.evaluation.figures import stack_figures
        >>> stack_figures([PIL.Image.new("RGB", (10, 4)), PIL.Image.new("RGB", (8, 6))]).size
        (10, 10)
    """
    if not figures:
        raise ValueError("`figures` must not be empty.")
    if len(figures) == 1:
        return figures[0]
    stacked = PIL.Image.new("RGB", (max(f.width for f in figures), sum(f.height for f in figures)), "white")
    top = 0
    for figure in figures:
        stacked.paste(figure, (0, top))
        top += figure.height
    return stacked


# --------------------------------------------------------------------------------------------------------------------
# The evaluation's panels


def figure_panels(
    run: EvaluationRun,
    lr: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    per_image: list[dict[str, Any]],
    hr_unit: torch.Tensor,
    hr_niqe: list[dict[str, Any]],
    scoring: EvaluationScoring,
) -> list[tuple[str, np.ndarray]]:
    """The panels of one scale's figure: the enlarged LR, each method's output with its figures, the HR."""
    hr_size = tuple(hr_unit.shape[-2:])
    lr_display = PIL.Image.fromarray(to_uint8_array(to_unit_levels(lr))).resize(
        (hr_size[1], hr_size[0]), PIL.Image.NEAREST
    )
    panels = [(f"LR x{per_image[-1]['scale']:g} ({lr.shape[-1]}x{lr.shape[-2]})", np.asarray(lr_display))]
    for method in run.methods:
        record = per_image[-len(run.methods) + run.methods.index(method)]
        label = f"{METHOD_LABELS[method]}\n{record['psnr']:.2f} dB / {record['ssim']:.4f}\n"
        label += f"NIQE {record['niqe']:.2f} / " if record["niqe"] is not None else ""
        label += f"HF {record['hf_ratio']:.3f}"
        panels.append((label, to_uint8_array(outputs[method])))
    hr_label = f"HR\n\nNIQE {hr_niqe[-1]['niqe']:.2f}" if scoring.niqe_enabled else "HR"
    panels.append((hr_label, to_uint8_array(hr_unit)))
    return panels


def trust_panels(
    run: EvaluationRun, outputs: dict[str, torch.Tensor], hr_unit: torch.Tensor, scale: float
) -> list[tuple[str, np.ndarray]]:
    """The panels of one image's trust figure: each method's classification map, then the HR."""
    from ..data import bicubic_degrade
    from ..metrics.trust import correctness, correctness_map_image, upsample_lr

    lr = (bicubic_degrade(hr_unit * 2.0 - 1.0, scale) + 1.0) / 2.0
    up = upsample_lr(lr[0], tuple(hr_unit.shape[-2:]))
    panels = []
    for method in run.methods:
        result = correctness(outputs[method][0], hr_unit[0], up)
        shares = " / ".join("n/a" if v is None else f"{100 * v:.0f}%" for v in result.fractions.values())
        panels.append(
            (f"{METHOD_LABELS[method]}\nimpr / omis / hall\n{shares}", correctness_map_image(result, hr_unit[0]))
        )
    panels.append(("HR\ngreen improvement, blue omission,\nred hallucination", to_uint8_array(hr_unit)))
    return panels


def build_figures(
    run: EvaluationRun, panels_by_scale: dict[float, list[tuple[Any, list, list]]]
) -> tuple[dict[float, PIL.Image.Image], dict[float, PIL.Image.Image]]:
    """The report's figures: per scale, one row per image shown of its comparison and of its trust panels.

    Args:
        run ([`~neurop_diff_diffusers.evaluation.methods.EvaluationRun`]): the run (its protocol and steps title
            the rows).
        panels_by_scale (`dict`): ``{scale: [(image key, panels, trust panels), ...]}`` from [`figure_panels`] and
            [`trust_panels`].

    Returns:
        `tuple[dict, dict]`: ``{scale: figure}`` and ``{scale: trust figure}`` (RGB PIL images).
    """
    figures, trust_figures = {}, {}
    for scale, rows in panels_by_scale.items():
        title = f"x{scale:g}  ({run.protocol} protocol, T={run.num_inference_steps})"
        figures[scale] = stack_figures([make_figure(panels, title=f"{key}  {title}") for key, panels, _ in rows])
        trust_figures[scale] = stack_figures(
            [make_figure(trust, title=f"{key}  {title}: per-pixel classification") for key, _, trust in rows]
        )
    return figures, trust_figures


def to_uint8_array(unit: torch.Tensor) -> np.ndarray:
    """A panel's pixels: the first image of a ``(N, 3, H, W)`` batch in ``[0, 1]`` as ``(H, W, 3)`` uint8.

    Args:
        unit (`torch.Tensor`): the batch, values in ``[0, 1]`` (clamped).

    Returns:
        `np.ndarray`: ``(H, W, 3)`` uint8, rounded to the nearest level.

    Example:
        >>> import torch
        >>> from neurop_diff_diffusers.evaluation.figures import to_uint8_array
        >>> to_uint8_array(torch.full((1, 3, 2, 2), 0.5))[0, 0].tolist()
        [128, 128, 128]
    """
    return (unit[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


__all__ = [
    "build_figures",
    "figure_panels",
    "make_figure",
    "stack_figures",
    "to_uint8_array",
    "trust_panels",
]
