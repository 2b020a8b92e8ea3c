"""Model cards (``README.md`` with Hub metadata) for trained NeurOp-Diff pipelines and neural operators.

The cards are rendered from the Jinja templates in the repository's ``model_cards/`` folder
(``neurop_diff_template.md`` for a pipeline, ``neural_operator_template.md`` for a stage-1 operator), which the
package ships as ``model_card_templates/`` (symbolic links in a checkout, copies in a wheel), with the real
training arguments and validation figures of a run. The metadata block is ``huggingface_hub``'s ``ModelCardData``:
``library_name: diffusers``, ``pipeline_tag: image-to-image``, ``license: apache-2.0``, the tags
[`CARD_TAGS`], the datasets (hub ids, where the data came from the Hub) and the metrics (PSNR, SSIM).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData

#: The package's template folder: links to the repository's ``model_cards/`` templates, their copies once installed.
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "model_card_templates"
TEMPLATES = {"pipeline": "neurop_diff_template.md", "neural_operator": "neural_operator_template.md"}
CARD_TAGS = ["super-resolution", "remote-sensing", "neurop-diff", "diffusers"]
CARD_METRICS = ["psnr", "ssim"]
#: Argument names never written to a card (defence in depth: the scripts take no token argument).
_SECRET_MARKERS = ("token", "password", "secret")


def template_path(kind: str, templates_dir: str | os.PathLike | None = None) -> Path:
    """The template file of a card `kind` (``"pipeline"`` or ``"neural_operator"``).

    Args:
        kind (`str`): the kind of model.
        templates_dir (`str | os.PathLike | None`, *optional*): the folder of the templates (default: the package's
            copy of the repository's ``model_cards/``).

    Raises:
        FileNotFoundError: the template is not there.
    """
    if kind not in TEMPLATES:
        raise ValueError(f"`kind` must be one of {sorted(TEMPLATES)}, got {kind!r}.")
    path = Path(templates_dir or TEMPLATES_DIR) / TEMPLATES[kind]
    if not path.is_file():
        raise FileNotFoundError(
            f"Model card template {str(path)!r} not found: pass `template_dir`, a folder holding {TEMPLATES[kind]!r}."
        )
    return path


def _format_value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def args_table(args: Mapping[str, Any]) -> str:
    """A Markdown table of training arguments (sorted by name; anything that looks like a secret is left out).

    Args:
        args (`Mapping[str, Any]`): argument names and values.

    Example:
        >>> print(args_table({"seed": 0, "preset": "tiny"}))
        | argument | value |
        | --- | --- |
        | `preset` | `'tiny'` |
        | `seed` | `0` |
    """
    lines = ["| argument | value |", "| --- | --- |"]
    for key in sorted(args):
        if any(marker in key.lower() for marker in _SECRET_MARKERS):
            continue
        lines.append(f"| `{key}` | {_format_value(args[key])} |")
    return "\n".join(lines)


def validation_table(history: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of validation records (``{"step": ..., "psnr": ..., ...}``), one row per step.

    Columns: the step, then every metric present (``psnr``, ``ssim`` first), values with 4 decimals.

    Args:
        history (`Sequence[Mapping[str, Any]]`): the records, in step order.

    Example:
        >>> print(validation_table([{"step": 10, "psnr": 20.5, "ssim": 0.5}]))
        | step | psnr | ssim |
        | --- | --- | --- |
        | 10 | 20.5000 | 0.5000 |
    """
    if not history:
        return "No validation was run."
    keys: list[str] = []
    for record in history:
        keys.extend(k for k in record if k != "step" and k not in keys and isinstance(record[k], (int, float)))
    keys.sort(key=lambda k: ({"psnr": 0, "ssim": 1}.get(k, 2), k))
    lines = ["| step | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for record in history:
        cells = [f"{record[k]:.4f}" if isinstance(record.get(k), (int, float)) else "" for k in keys]
        lines.append(f"| {record['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def card_data(*, datasets: Sequence[str] | None = None, base_model: str | None = None) -> ModelCardData:
    """The Hub metadata of a NeurOp-Diff card.

    Args:
        datasets (`Sequence[str] | None`, *optional*): Hub dataset ids the model was trained on (local folders are
            described in the text only).
        base_model (`str | None`, *optional*): the Hub id of a model this one builds on (e.g. the stage-1 operator), if
            any.

    Example:
        >>> card_data().pipeline_tag
        'image-to-image'
    """
    return ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-image",
        license="apache-2.0",
        tags=list(CARD_TAGS),
        datasets=list(datasets) if datasets else None,
        metrics=list(CARD_METRICS),
        base_model=base_model,
    )


def make_model_card(
    kind: str,
    *,
    training_args: Mapping[str, Any],
    context: Mapping[str, Any],
    validation_history: Sequence[Mapping[str, Any]] = (),
    datasets: Sequence[str] | None = None,
    base_model: str | None = None,
    template_dir: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the card of a trained model from its template.

    The template sees every training argument by name, then `context` (which wins), plus ``card_data`` (the YAML
    metadata), ``kind``, ``args_table`` and ``validation_table``. An undefined template variable is an error.

    Args:
        kind (`str`): ``"pipeline"`` or ``"neural_operator"``.
        training_args (`Mapping[str, Any]`): the script's arguments (written to the card's argument table).
        context (`Mapping[str, Any]`): facts of the run: ``model_name``, ``repo_id_or_path``, ``global_step``,
            ``num_processes``, ``total_batch_size``, ``num_train_images``, ``num_validation_images_total``,
            ``dataset_description``, ``command``, ``validation_description``, ``grid_image`` (file name or ``None``),
            ``grid_columns``, and for a pipeline ``unet_weights``.
        validation_history (`Sequence[Mapping[str, Any]]`, defaults to `()`): validation records ``{"step": ...,
            "psnr": ..., ...}``.
        datasets (`Sequence[str] | None`, *optional*): Hub dataset ids for the metadata.
        base_model (`str | None`, *optional*): Hub id of a base model for the metadata.
        template_dir (`str | os.PathLike | None`, *optional*): folder of the templates (default: the package's, the
            repository's ``model_cards/``).

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(folder / "README.md")`` writes it.
    """
    data = card_data(datasets=datasets, base_model=base_model)
    safe_args = {k: v for k, v in training_args.items() if not any(m in k.lower() for m in _SECRET_MARKERS)}
    values = {
        **safe_args,
        **context,
        "kind": kind,
        "card_data": data.to_yaml(),
        "args_table": args_table(safe_args),
        "validation_table": validation_table(validation_history),
    }
    source = template_path(kind, template_dir).read_text()
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return ModelCard(environment.from_string(source).render(**values))


__all__ = [
    "CARD_METRICS",
    "CARD_TAGS",
    "TEMPLATES",
    "TEMPLATES_DIR",
    "args_table",
    "card_data",
    "make_model_card",
    "template_path",
    "validation_table",
]
