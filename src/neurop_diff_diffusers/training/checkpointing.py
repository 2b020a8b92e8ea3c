"""The output folder's file protocol: checkpoints in the diffusers layout ``OUTPUT_DIR/checkpoint-<global step>``,
written under a temporary name and renamed when complete, the run's arguments (the guard against writing into an
unrelated run) and the validation history."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..file_safety import MAX_JSON_BYTES, load_json_file
from ..utils import TrainingSetupError, atomic_write_text

#: Name of the marker file a training script writes into its output folder (script name, package version, args).
TRAINING_ARGS_FILE = "training_args.json"
#: Validation figures, one JSON object per line: ``{"step": ..., "psnr": ..., ...}``.
VALIDATION_HISTORY_FILE = "validation_history.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_CHECKPOINT_PREFIX = ".tmp-checkpoint-"
_OLD_CHECKPOINT_PREFIX = ".old-checkpoint-"


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step of a checkpoint folder named ``checkpoint-<step>``.

    Example:
        >>> checkpoint_step("out/checkpoint-1200")
        1200
    """
    match = _CHECKPOINT_RE.match(Path(path).name)
    if match is None:
        raise TrainingSetupError(
            f"`--resume_from_checkpoint` must be a folder named checkpoint-<step> or 'latest', got {str(path)!r}."
        )
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints ``checkpoint-<step>`` of `output_dir`, oldest first.

    Checkpoints are written under a temporary name and renamed once complete (see [`save_checkpoint`]), so a
    folder with the final name is complete; partial ones (``.tmp-checkpoint-<step>``) are not listed.

    Args:
        output_dir (`str | os.PathLike`): the training output folder (may not exist).
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint to resume from: ``None``, ``"latest"`` (the newest complete one, or ``None``) or a path.

    A relative path that does not exist as given is looked up in `output_dir` (``--resume_from_checkpoint
    checkpoint-500`` works, as in diffusers).

    Args:
        output_dir (`str | os.PathLike`): the training output folder.
        resume_from_checkpoint (`str | None`): the argument's value.

    Raises:
        TrainingSetupError: a path that is not a complete checkpoint folder.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint).expanduser()
    if not path.is_dir() and not path.is_absolute():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise TrainingSetupError(
            f"`--resume_from_checkpoint` {resume_from_checkpoint!r}: no such checkpoint folder (looked in the current "
            f"directory and in {str(output_dir)!r}); pass 'latest' to resume from the newest one."
        )
    checkpoint_step(path)
    return path


def _on_main(accelerator: Any) -> bool:
    return accelerator is None or accelerator.is_main_process


def _wait(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the leftovers of checkpoints that were being written when a run died; returns what was removed.

    Args:
        output_dir (`str | os.PathLike`): the training output folder.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith((_TMP_CHECKPOINT_PREFIX, _OLD_CHECKPOINT_PREFIX))
    ]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most `total_limit` remain; returns the deleted folders.

    Args:
        output_dir (`str | os.PathLike`): the training output folder.
        total_limit (`int | None`): how many to keep (``None``: keep all).
    """
    if total_limit is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - total_limit)]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def save_checkpoint(
    accelerator: Any, output_dir: str | os.PathLike, global_step: int, total_limit: int | None = None
) -> Path:
    """``accelerator.save_state`` into ``OUTPUT_DIR/checkpoint-<global_step>``, atomically, then prune.

    The state is written to ``.tmp-checkpoint-<step>`` and renamed when complete, so a run killed while saving
    leaves the previous checkpoints intact and ``latest`` never picks a partial one. Call it on every process (the
    state of each process's random generators is saved by that process).

    Args:
        accelerator (`Any`): the ``Accelerator``.
        output_dir (`str | os.PathLike`): the training output folder.
        global_step (`int`): optimizer steps done.
        total_limit (`int | None`, *optional*): keep at most this many checkpoints (the oldest are deleted after the
            new one is complete).

    Returns:
        The checkpoint folder.
    """
    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{global_step}"
    tmp = root / f"{_TMP_CHECKPOINT_PREFIX}{global_step}"
    if _on_main(accelerator):
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    _wait(accelerator)
    accelerator.save_state(str(tmp))
    _wait(accelerator)
    if _on_main(accelerator):
        _commit_folder(tmp, final)
        prune_checkpoints(root, total_limit)
    _wait(accelerator)
    return final


def _commit_folder(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first and deleted after the rename."""
    old = None
    if final.exists():
        old = final.with_name(_OLD_CHECKPOINT_PREFIX + final.name[len(CHECKPOINT_PREFIX) :])
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_training_args(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The marker file [`TRAINING_ARGS_FILE`] of `output_dir` as a dict, or ``None`` if there is none.

    Args:
        output_dir (`str | os.PathLike`): the training output folder.
    """
    path = Path(output_dir) / TRAINING_ARGS_FILE
    if not path.is_file():
        return None
    try:  # a resume file is hostile input: within a size and depth budget, never through a link
        return load_json_file(path, "training arguments", max_bytes=MAX_JSON_BYTES)
    except (OSError, ValueError):
        return {}


def check_output_dir(output_dir: str | os.PathLike, script: str, *, resuming: bool, overwrite: bool = False) -> None:
    """Refuse an output folder that holds something else than a run of `script` that may be continued.

    - a missing or empty folder is fine;
    - a non-empty folder without the marker [`TRAINING_ARGS_FILE`], or with the marker of another script, is refused
      (it is unrelated: choose another ``--output_dir``);
    - a run of the same script is fine when resuming (``--resume_from_checkpoint``); otherwise it is refused unless
      `overwrite` (``--overwrite_output_dir``), so that a new run never mixes its checkpoints with an old one's.

    Args:
        output_dir (`str | os.PathLike`): the ``--output_dir``.
        script (`str`): the name of the training script (e.g. ``"train_neurop_diff"``).
        resuming (`bool`): ``--resume_from_checkpoint`` was given.
        overwrite (`bool`, defaults to `False`): ``--overwrite_output_dir`` was given.

    Raises:
        TrainingSetupError: the folder is refused; the message says why and what to do.
    """
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise TrainingSetupError(f"`--output_dir` {str(root)!r} is a file, not a folder.")
    if not root.is_dir() or not any(root.iterdir()):
        return
    marker = read_training_args(root)
    if marker is None:
        raise TrainingSetupError(
            f"`--output_dir` {str(root)!r} is not empty and holds no {TRAINING_ARGS_FILE}: it is not the output of "
            f"{script}.py. Choose an empty or new folder."
        )
    other = marker.get("script")
    if other != script:
        raise TrainingSetupError(
            f"`--output_dir` {str(root)!r} holds a run of {other or 'an unknown script'}, not of {script}.py. Choose "
            "another folder."
        )
    if not resuming and not overwrite:
        raise TrainingSetupError(
            f"`--output_dir` {str(root)!r} holds an earlier run of {script}.py: pass `--resume_from_checkpoint "
            "latest` to continue it, or `--overwrite_output_dir` to start a new run there (its checkpoints are "
            "deleted)."
        )


def write_training_args(
    output_dir: str | os.PathLike, script: str, args: dict[str, Any], resumed_from: str | None = None
) -> Path:
    """Write the marker file [`TRAINING_ARGS_FILE`]: script, package version, arguments, and the resumptions.

    Args:
        output_dir (`str | os.PathLike`): the training output folder.
        script (`str`): the training script's name.
        args (`dict[str, Any]`): the arguments (JSON-serialisable values; others are written as strings).
        resumed_from (`str | None`, *optional*): the checkpoint this invocation resumed from, appended to the
            ``"resumed_from"`` list.
    """
    from .. import __version__

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    previous = read_training_args(root) or {}
    history = list(previous.get("resumed_from", [])) if previous.get("script") == script else []
    if resumed_from is not None:
        history.append(resumed_from)
    payload = {
        "script": script,
        "package_version": __version__,
        "args": json.loads(json.dumps(args, default=str)),
        "resumed_from": history,
    }
    return atomic_write_text(root / TRAINING_ARGS_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def changed_args(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """The `keys` whose values differ between two argument dicts (after a JSON round trip), as ``{key: (old, new)}``.

    Example:
        >>> changed_args({"seed": 0, "lr": 1}, {"seed": 1, "lr": 1}, ["seed", "lr"])
        {'seed': (0, 1)}
    """
    old = json.loads(json.dumps(old, default=str))
    new = json.loads(json.dumps(new, default=str))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def append_validation_history(output_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record (``{"step": ..., metric: value}``) to [`VALIDATION_HISTORY_FILE`] in `output_dir`."""
    path = Path(output_dir) / VALIDATION_HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_validation_history(output_dir: str | os.PathLike, max_step: int | None = None) -> list[dict[str, Any]]:
    """The records of [`VALIDATION_HISTORY_FILE`] (step order, the last record of a step wins), up to `max_step`.

    Args:
        output_dir (`str | os.PathLike`): the training output folder.
        max_step (`int | None`, *optional*): drop records after this step (a resumed run repeats the steps after its
            checkpoint).
    """
    path = Path(output_dir) / VALIDATION_HISTORY_FILE
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            if max_step is None or record["step"] <= max_step:
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def truncate_validation_history(output_dir: str | os.PathLike, max_step: int) -> None:
    """Keep only the records of steps ``<= max_step`` (called when a run resumes from the checkpoint at that step)."""
    records = read_validation_history(output_dir, max_step)
    path = Path(output_dir) / VALIDATION_HISTORY_FILE
    if path.is_file():
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
