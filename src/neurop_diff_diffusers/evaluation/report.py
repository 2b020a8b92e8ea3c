"""The evaluation's report as files: ``results.json``, ``results.md`` and the figures as PNG (written atomically).

The report itself is the output of [`~neurop_diff_diffusers.evaluation.run.evaluate`] (its figures are drawn by
[`~neurop_diff_diffusers.evaluation.figures`]); this module turns it into files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..file_safety import check_file_target
from ..utils import atomic_write, atomic_write_text
from .figures import make_figure, stack_figures  # noqa: F401 (re-exported: their home before figures.py)
from .methods import METHOD_LABELS, METHODS
from .settings import MAX_IN_DISTRIBUTION_SCALE

# --------------------------------------------------------------------------------------------------------------------
# Writers


def results_to_json(report: dict[str, Any]) -> str:
    """The report as strict JSON (the PIL figures left out; non-finite numbers as `null`).

    Args:
        report (`dict`): the output of [`evaluate`].

    Returns:
        `str`: indented JSON.

    Example:
        >>> from neurop_diff_diffusers.evaluation.report import results_to_json
        >>> results_to_json({"seed": 0, "figures": {}})
        '{\\n  "seed": 0\\n}'
    """
    images = ("figures", "trust_figures")
    return json.dumps({k: v for k, v in report.items() if k not in images}, indent=2, allow_nan=False)


def _scale_header(scale: float) -> str:
    return f"x{scale:g}" + ("" if scale <= MAX_IN_DISTRIBUTION_SCALE else " (OOD)")


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def results_to_markdown(report: dict[str, Any]) -> str:
    """A Markdown summary: PSNR / SSIM / LPIPS, then NIQE / HF ratio, per method (rows) and scale (columns), then
    seconds per image.

    Args:
        report (`dict`): the output of [`evaluate`] (or a `results.json` loaded back).

    Returns:
        `str`: the Markdown text.

    Example:
        >>> from neurop_diff_diffusers.evaluation.report import results_to_markdown
        >>> report = {"protocol": {"name": "rgb", "description": "..."}, "images": [0], "seed": 0,
        ...           "lpips": {"available": False, "reason": "no weights"}, "config": {"num_inference_steps": 5},
        ...           "results": [{"method": "bicubic", "scale": 2.0, "psnr": 30.0, "ssim": 0.9, "lpips": None,
        ...                        "n_images": 1, "seconds_per_image": 0.01}]}
        >>> print(results_to_markdown(report).splitlines()[-7])
        | Bicubic | 30.00 / 0.9000 / n/a |
    """
    results = report["results"]
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    methods += sorted({r["method"] for r in results} - set(methods))
    scales = sorted({r["scale"] for r in results})
    table = {(r["method"], r["scale"]): r for r in results}
    protocol = report.get("protocol", {})
    lpips = report.get("lpips", {})
    config = report.get("config", {})
    lines = [
        "# NeurOp-Diff evaluation",
        "",
        f"- Protocol: `{protocol.get('name')}`: {protocol.get('description', '')}",
        f"- Images: {len(report.get('images', []))}; seed {report.get('seed')}; "
        f"T = {config.get('num_inference_steps')} denoising steps"
        + (
            f", strength {config['strength']:g} (from the diffused prior)." if config.get("strength", 1.0) < 1 else "."
        ),
        "- LPIPS: " + ("AlexNet" if lpips.get("available") else f"n/a ({lpips.get('reason', 'unavailable')})"),
    ]
    detail = any("niqe" in r or "hf_ratio" in r for r in results)
    if detail:
        niqe_info = report.get("niqe", {})
        if niqe_info.get("available"):
            hr = niqe_info.get("hr")
            lines.append(
                f"- NIQE: model `{niqe_info.get('model', 'live')}`"
                + (f"; the HR images themselves: {hr:.2f}" if hr is not None else "")
                + ". NIQE is not a measure of detail here: on 10 held-out UCMerced images the real HR images "
                "score worse (16.17) than the outputs (NeurOp-Diff 10.80); judge detail by the HF ratio and the trust "
                "metrics"
            )
        else:
            lines.append(f"- NIQE: n/a ({niqe_info.get('reason', 'unavailable')})")
    if report.get("command"):
        lines.append(f"- Command: `{report['command']}`")
    lines += [
        "",
        "PSNR (dB) / SSIM / LPIPS; OOD: scale outside the training range (1, 8].",
        "",
    ]
    lines += _method_table(
        methods,
        scales,
        table,
        lambda row: f"{_cell(row['psnr'], 2)} / {_cell(row['ssim'], 4)} / {_cell(row.get('lpips'), 4)}",
    )
    if detail:
        lines += [
            "",
            "NIQE (no-reference, lower is better) / HF ratio (energy above the LR Nyquist frequency relative to the "
            "HR's; 1 = as much fine detail as the HR):",
            "",
        ]
        lines += _method_table(
            methods, scales, table, lambda row: f"{_cell(row.get('niqe'), 2)} / {_cell(row.get('hf_ratio'), 3)}"
        )
    if any("lr_l1_255" in r for r in results):
        spread = {(r["method"], r["scale"]): r for r in report.get("trust_summary", [])}

        def stat(row: dict[str, Any], name: str, key: str = "mean") -> float | None:
            entry = spread.get((row["method"], row["scale"]), {}).get(name)
            return None if entry is None else entry[key]

        lines += [
            "",
            "Trust (weight-free, see `neurop_diff_diffusers.metrics.trust`): LR agreement (mean |downsampled output - "
            "LR| on 0..255) with the training kernel (near 0 by construction after back-projection) / with an "
            "independent bilinear kernel / spectral angle (degrees) / shift (LR pixels) / synthesis (mean L1 to the "
            "upsampled LR). Bicubic is a floor that holds by construction (synthesis 0), not a measurement:",
            "",
        ]
        lines += _method_table(
            methods,
            scales,
            table,
            lambda row: (
                f"{_cell(row.get('lr_l1_255'), 2)} / {_cell(stat(row, 'lr_l1_255_bilinear'), 2)} / "
                f"{_cell(row.get('spectral_angle'), 2)} / {_cell(stat(row, 'shift'), 2)} / "
                f"{_cell(row.get('synthesis'), 4)}"
            ),
        )
        lines += [
            "",
            "Improvement / omission / hallucination (% of the classed pixels: those where the HR differs from the "
            "upsampled LR, or the output from either, by more than the 75th percentile of the reference distance); "
            "classed (% of all pixels); hallucination in % of all pixels, median [90th percentile] over the images. "
            "Bicubic is all omission by construction:",
            "",
        ]
        lines += _method_table(
            methods,
            scales,
            table,
            lambda row: (
                " / ".join(_percent(row.get(k)) for k in ("improvement", "omission", "hallucination"))
                + f"; {_percent(stat(row, 'classified'))}; {_percent(stat(row, 'hallucination_all', 'median'))} "
                f"[{_percent(stat(row, 'hallucination_all', 'p90'))}]"
            ),
        )
    lines += ["", "Seconds per image:", ""]
    lines += _method_table(
        methods, scales, table, lambda row: f"{row['seconds_per_image']:.3f}", header=lambda s: f"x{s:g}"
    )
    return "\n".join(lines) + "\n"


def no_reference_to_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of [`~neurop_diff_diffusers.evaluation.no_reference.evaluate_no_reference`].

    Args:
        report (`dict`): its output.

    Returns:
        `str`: the Markdown text.

    Example:
        >>> from neurop_diff_diffusers.evaluation.report import no_reference_to_markdown
        >>> report = {"image": "a.png", "config": {"num_inference_steps": 5, "lr_size": [8, 8]}, "results": [
        ...     {"method": "bicubic", "scale": 4.0, "lr_l1_255": 0.2, "spectral_angle": 0.1, "shift": 0.0,
        ...      "synthesis": 0.0, "seconds": 0.01}]}
        >>> print(no_reference_to_markdown(report).splitlines()[-1])
        | Bicubic | 0.20 / 0.10 / 0.00 / 0.0000 |
    """
    results = report["results"]
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    scales = sorted({r["scale"] for r in results})
    table = {(r["method"], r["scale"]): r for r in results}
    config = report.get("config", {})
    lines = [
        "# NeurOp-Diff no-reference evaluation",
        "",
        f"- Image: `{report.get('image')}` ({config.get('lr_size')} px, taken as the LR); no HR, so no PSNR / SSIM / "
        f"correctness; T = {config.get('num_inference_steps')} denoising steps.",
    ]
    if report.get("command"):
        lines.append(f"- Command: `{report['command']}`")
    lines += [
        "",
        "LR agreement (mean |downsampled output - LR| on 0..255, the training degradation) / spectral angle "
        "(degrees) / shift (LR pixels, phase correlation) / synthesis (mean L1 to the upsampled LR):",
        "",
    ]
    lines += _method_table(
        methods,
        scales,
        table,
        lambda row: (
            f"{row['lr_l1_255']:.2f} / {row['spectral_angle']:.2f} / {row['shift']:.2f} / {row['synthesis']:.4f}"
        ),
    )
    return "\n".join(lines) + "\n"


def _method_table(
    methods: Sequence[str],
    scales: Sequence[float],
    table: dict[tuple[str, float], dict[str, Any]],
    cell: Callable[[dict[str, Any]], str],
    header: Callable[[float], str] = _scale_header,
) -> list[str]:
    """The lines of a Markdown table, one row per method and one column per scale (``-`` where no result)."""
    lines = ["| method | " + " | ".join(header(s) for s in scales) + " |", "| --- |" + " --- |" * len(scales)]
    for method in methods:
        cells = ["-" if (method, s) not in table else cell(table[(method, s)]) for s in scales]
        lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return lines


def figure_file_name(scale: float) -> str:
    """File name of the figure of one scale: `figure_x4.png`, `figure_x2.5.png`.

    Args:
        scale (`float`): the scale.

    Example:
        >>> from neurop_diff_diffusers.evaluation.report import figure_file_name
        >>> figure_file_name(4.0), figure_file_name(2.5)
        ('figure_x4.png', 'figure_x2.5.png')
    """
    return f"figure_x{scale:g}.png"


def results_paths(output_dir: str | os.PathLike, scales: Sequence[float]) -> dict[str, Path]:
    """Every file [`save_results`] may write for ``scales``, checked as targets (a local name, nothing but a regular
    file or nothing there: no link, folder, FIFO or device), so that a run can refuse them before any work.

    Args:
        output_dir (`str` or `os.PathLike`): the folder (not a file).
        scales (`Sequence[float]`): the evaluated scales.

    Returns:
        `dict[str, Path]`: `"json"`, `"markdown"`, `"figure_x<scale>"` and `"trust_x<scale>"` -> path.

    Raises:
        ValueError: ``output_dir`` is a file, or one of its files is not a regular file (the message names it).

    Example:
        >>> sorted(results_paths("eval_out", [2.0]))
        ['figure_x2', 'json', 'markdown', 'trust_x2']
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` must be a folder, got the file {str(output_dir)!r}.")
    paths = {"json": output_dir / "results.json", "markdown": output_dir / "results.md"}
    for scale in scales:
        for name in (figure_file_name(scale), figure_file_name(scale).replace("figure_", "trust_", 1)):
            paths[Path(name).stem] = output_dir / name
    for path in paths.values():
        check_file_target(path, "output")
    return paths


def save_results(report: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `results.json`, `results.md`, one `figure_x<scale>.png` and one `trust_x<scale>.png` (the per-pixel
    classification maps) per scale, each atomically.

    Args:
        report (`dict`): the output of [`evaluate`].
        output_dir (`str` or `os.PathLike`): the folder (created if needed).

    Returns:
        `dict[str, Path]`: `"json"`, `"markdown"`, `"figure_x<scale>"` and `"trust_x<scale>"` -> path.

    Example:
        >>> from neurop_diff_diffusers.evaluation.report import save_results  # doctest: +SKIP
        >>> save_results(report, "eval_out")  # doctest: +SKIP
    """
    scales = {*report.get("figures", {}), *report.get("trust_figures", {})}
    targets = results_paths(output_dir, sorted(scales))  # all refused before the first is written
    text_json = results_to_json(report)
    text_md = results_to_markdown(report)
    paths = {"json": targets["json"], "markdown": targets["markdown"]}
    for key, prefix in (("figures", "figure_"), ("trust_figures", "trust_")):
        for scale, figure in report.get(key, {}).items():
            path = targets[Path(figure_file_name(scale).replace("figure_", prefix, 1)).stem]
            atomic_write(path, lambda temp, figure=figure: figure.save(temp, format="PNG"))
            paths[path.stem] = path
    atomic_write_text(paths["markdown"], text_md)
    atomic_write_text(paths["json"], text_json + "\n")
    return paths


__all__ = [
    "figure_file_name",
    "results_paths",
    "make_figure",
    "no_reference_to_markdown",
    "results_to_json",
    "results_to_markdown",
    "save_results",
    "stack_figures",
]
