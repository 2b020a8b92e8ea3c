"""The training scripts' shared run: Accelerate set-up, data splits, the resumable training loop, validation
logging and the hand-over (model card, Hub upload)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import diffusers
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from ..data import (
    HubUnavailableError,
    load_full_dataset,
    resolve_hub_id,
    select_split,
    split_parts,
    unique_file_names,
)
from ..utils import atomic_write_text
from . import (
    VALIDATION_HISTORY_FILE,
    TrainingSetupError,
    ValidationResult,
    ValidationSet,
    append_validation_history,
    changed_args,
    check_output_dir,
    checkpoint_step,
    derive_seed,
    drop_unreadable_images,
    get_lr_scheduler,
    list_checkpoints,
    push_folder_to_hub,
    read_training_args,
    remove_incomplete_checkpoints,
    resolve_resume_checkpoint,
    resume_position,
    save_checkpoint,
    seeded_generator,
    truncate_validation_history,
    write_training_args,
)
from .arguments import RESUME_SENSITIVE_ARGS, SPLIT_FILE

logger = get_logger(__name__, log_level="INFO")
_STREAM_LOSS, _STREAM_GLOBAL = 11, 12


# ----------------------------------------------------------------------------------------------------------------
# Accelerate
# ----------------------------------------------------------------------------------------------------------------
def make_accelerator(args: argparse.Namespace, script: str) -> Accelerator:
    """The Accelerator of a run, after checking ``--output_dir`` (see ``check_output_dir``) on every process."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    logger.info(accelerator.state, main_process_only=False)

    check_output_dir(
        output_dir, script, resuming=args.resume_from_checkpoint is not None, overwrite=args.overwrite_output_dir
    )
    accelerator.wait_for_everyone()
    return accelerator


def start_run(accelerator: Accelerator, args: argparse.Namespace, script: str, split: dict[str, Any]) -> None:
    """Claim ``--output_dir`` once data and models are ready (main process): remove the leftovers of interrupted
    checkpoint writes, apply ``--overwrite_output_dir``, write the marker ``training_args.json`` and ``split.json``.

    Nothing is written before this, so a run that fails on its arguments or data leaves no trace.
    """
    output_dir = Path(args.output_dir)
    resuming = args.resume_from_checkpoint is not None
    if accelerator.is_main_process:
        previous = read_training_args(output_dir)
        if previous and resuming:
            changed = changed_args(previous.get("args", {}), vars(args), RESUME_SENSITIVE_ARGS)
            if changed:
                logger.warning(f"Resuming with changed arguments (old, new): {changed}: the run will not be exact.")
        if args.overwrite_output_dir and not resuming:
            for folder in list_checkpoints(output_dir):
                shutil.rmtree(folder)
            (output_dir / VALIDATION_HISTORY_FILE).unlink(missing_ok=True)
        removed = remove_incomplete_checkpoints(output_dir)
        if removed:
            logger.info(f"Removed {len(removed)} incomplete checkpoint folder(s): {[p.name for p in removed]}")
        write_training_args(output_dir, script, vars(args))
        atomic_write_text(output_dir / SPLIT_FILE, json.dumps(split, indent=1) + "\n")
    accelerator.wait_for_everyone()


def init_trackers(accelerator: Accelerator, args: argparse.Namespace, script: str) -> None:
    """Start the trackers with the arguments as hyper-parameters (simple types only)."""
    if args.report_to == "none":
        return
    config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
    init_kwargs = {}
    checkpoint = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:  # TensorBoard drops what the interrupted run logged after its checkpoint
        init_kwargs["tensorboard"] = {"purge_step": checkpoint_step(checkpoint) + 1}
    accelerator.init_trackers(args.tracker_project_name or script, config=config, init_kwargs=init_kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def _source(args: argparse.Namespace) -> tuple[str, str]:
    return ("--dataset_name", args.dataset_name) if args.dataset_name else ("--train_data_dir", args.train_data_dir)


def load_splits(args: argparse.Namespace, accelerator: Accelerator) -> tuple[Any, Any, dict[str, Any]]:
    """Load the dataset, split it into train / validation parts and record the split.

    Returns ``(train, validation, record)``; the record (method, arguments, file names or indices of both parts) is
    written to ``OUTPUT_DIR/split.json`` by [`start_run`]. Unreadable images are dropped with one counted warning.
    """
    flag, value = _source(args)
    if args.train_data_dir is not None and not Path(args.train_data_dir).expanduser().exists():
        raise TrainingSetupError(f"`--train_data_dir` {args.train_data_dir!r}: no such folder.")
    try:
        with accelerator.main_process_first():
            full = load_full_dataset(
                value if args.dataset_name else Path(value).expanduser(), cache_dir=args.cache_dir
            )
    except HubUnavailableError as err:
        raise TrainingSetupError(f"`{flag}` {value!r}: {err}") from None
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError) as err:
        raise TrainingSetupError(f"`{flag}` {value!r}: {err}") from None

    by_name = unique_file_names(full) is not None
    if not by_name:  # record the split by index into the whole dataset
        full = full.add_column("source_index", list(range(len(full))))

    try:
        parts, chosen = split_parts(
            full,
            args.split_method,
            data_dir=args.train_data_dir,
            test_fraction=args.test_fraction,
            seed=args.split_seed,
            split_file=args.split_file,
        )
        train = select_split(full, parts["train"])
        validation = select_split(full, parts["test"])
    except (ValueError, TypeError) as err:
        flag_name = "--split_file" if args.split_file is not None else "--split_method"
        raise TrainingSetupError(f"`{flag_name}`: {err}") from None
    method = chosen["method"].split(" ")[0]
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, _ = drop_unreadable_images(train)
        validation, _ = drop_unreadable_images(validation)
    for w in caught:
        logger.warning(str(w.message))
    if len(train) == 0:
        raise TrainingSetupError(f"`{flag}` {value!r}: the training split is empty (split method {method!r}).")

    def keys(part: Any) -> list[Any]:
        return list(part["file_name"] if by_name else part["source_index"])

    record = {
        "source": {flag.lstrip("-"): value},
        "method": method,
        "test_fraction": args.test_fraction if method == "fraction" else None,
        "split_seed": args.split_seed if method == "fraction" else None,
        "max_train_samples": args.max_train_samples,
        "train": keys(train),
        "test": keys(validation),
    }
    logger.info(f"Data: {len(train)} training and {len(validation)} validation images (split {method!r}).")
    return train, validation, record


def validation_set(args: argparse.Namespace, validation: Any) -> ValidationSet | None:
    """The fixed validation pairs of a run (``None`` when ``--num_validation_images`` is 0 or the split is empty)."""
    if args.num_validation_images == 0 or len(validation) == 0:
        if args.num_validation_images:
            logger.warning("The validation split is empty: no validation.")
        return None
    return ValidationSet.from_images(
        validation, resolution=args.resolution, scale=args.validation_scale, num_images=args.num_validation_images
    )


def make_train_dataloader(
    dataset: torch.utils.data.Dataset, args: argparse.Namespace, collate_fn: Callable
) -> tuple[torch.utils.data.DataLoader, Any]:
    """A DataLoader whose order is ``EpochShuffleSampler(seed)`` and whose worker seeds do not touch the global RNG."""
    from .data import EpochShuffleSampler

    sampler = EpochShuffleSampler(len(dataset), seed=args.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=False,
    )
    return loader, sampler


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------
def resume(accelerator: Accelerator, args: argparse.Namespace, script: str) -> int:
    """Load ``--resume_from_checkpoint`` (if any) and return the global step to continue from (0 for a new run)."""
    if args.resume_from_checkpoint is None:
        return 0
    checkpoint = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is None:
        logger.info(f"No checkpoint in {args.output_dir}: starting a new training run.")
        if accelerator.is_main_process:
            truncate_validation_history(args.output_dir, 0)
        accelerator.wait_for_everyone()
        return 0
    logger.info(f"Resuming from {checkpoint}")
    accelerator.load_state(str(checkpoint))
    global_step = checkpoint_step(checkpoint)
    if accelerator.is_main_process:
        truncate_validation_history(args.output_dir, global_step)
        write_training_args(args.output_dir, script, vars(args), resumed_from=checkpoint.name)
    accelerator.wait_for_everyone()
    return global_step


def total_train_steps(args: argparse.Namespace, num_batches: int, num_processes: int = 1) -> int:
    """``--max_train_steps``, or ``--num_train_epochs`` epochs of optimizer steps.

    ``num_batches`` is the dataloader's length; before ``accelerator.prepare`` shards it, pass the process count.
    """
    steps_per_epoch = math.ceil(math.ceil(num_batches / num_processes) / args.gradient_accumulation_steps)
    return args.max_train_steps or args.num_train_epochs * steps_per_epoch


def make_optimizer(
    args: argparse.Namespace, parameters: Any, num_batches: int, num_processes: int
) -> tuple[torch.optim.Optimizer, Any]:
    """Adam on `parameters` and its learning-rate schedule over the run, from the shared training arguments.

    Args:
        args (`argparse.Namespace`): the parsed arguments (``--learning_rate``, ``--adam_*``, ``--lr_*``, the run
            length).
        parameters (`Any`): the parameters to optimise.
        num_batches (`int`): the dataloader's length, before ``accelerator.prepare`` shards it.
        num_processes (`int`): the number of processes (the schedule is stepped once per process and optimizer step).
    """
    optimizer = torch.optim.Adam(
        parameters,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.adam_weight_decay,
    )
    max_train_steps = total_train_steps(args, num_batches, num_processes)
    lr_scheduler = get_lr_scheduler(
        args.lr_scheduler,
        optimizer,
        num_training_steps=max_train_steps * num_processes,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        constant_fraction=args.lr_constant_fraction,
        min_lr=args.lr_min,
        step_rules=args.lr_step_rules,
    )
    return optimizer, lr_scheduler


def train_loop(
    accelerator: Accelerator,
    args: argparse.Namespace,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    train_dataloader: Any,
    sampler: Any,
    dataset: Any,
    compute_loss: Callable[[dict[str, Any], torch.Generator], torch.Tensor],
    max_train_steps: int,
    global_step: int,
    after_optimizer_step: Callable[[], None] | None = None,
    validate: Callable[[int], None] | None = None,
) -> int:
    """The resumable Accelerate training loop shared by both stages; returns the final global step.

    Reproducibility: batch ``i`` of epoch ``e`` holds the samples of positions ``i * B ...`` of the order of
    ``(seed, e)``, each made with the generator of ``(seed, e, index)``; its loss gets a generator of ``(seed, e, i,
    process)`` and the global torch generator (dropout) is re-seeded from the same key. A run resumed from
    ``checkpoint-<step>`` (optimizer, LR scheduler, models, EMA, gradient-accumulation counter: Accelerate's
    ``load_state``) skips the batches already seen in the current epoch and then computes exactly what the
    uninterrupted run computes.
    """
    num_batches = len(train_dataloader)
    first_epoch, skip = resume_position(global_step, num_batches, args.gradient_accumulation_steps)
    num_epochs = math.ceil(max_train_steps / math.ceil(num_batches / args.gradient_accumulation_steps))
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(dataset)}, batches per epoch (per process) = {num_batches}")
    logger.info(f"  Num epochs = {num_epochs}, total batch size = {total_batch_size}")
    logger.info(f"  Optimization steps = {max_train_steps}, starting at step {global_step}")

    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    process = accelerator.process_index
    train_loss = 0.0
    start_time = time.monotonic()
    out_of_time = False
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps or out_of_time:
            break
        model.train()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        start = skip if epoch == first_epoch else 0
        loader = accelerator.skip_first_batches(train_dataloader, start) if start else train_dataloader
        loader.set_epoch(epoch)
        for i, batch in enumerate(loader, start=start):
            generator = seeded_generator(args.seed, _STREAM_LOSS, epoch, i, process)
            torch.manual_seed(derive_seed(args.seed, _STREAM_GLOBAL, epoch, i, process))
            with accelerator.accumulate(model):
                loss = compute_loss(batch, generator)
                train_loss += accelerator.reduce(loss.detach(), "mean").item() / args.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            if after_optimizer_step is not None:
                after_optimizer_step()
            global_step += 1
            lr = lr_scheduler.get_last_lr()[0]
            progress.update(1)
            progress.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.3g}")
            accelerator.log({"train_loss": train_loss, "lr": lr}, step=global_step)
            train_loss = 0.0
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                path = save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                logger.info(f"Saved state to {path}")
            if validate is not None and args.validation_steps and global_step % args.validation_steps == 0:
                validate(global_step)
            if global_step >= max_train_steps:
                break
            if args.max_train_minutes is not None and time_is_up(accelerator, start_time, args.max_train_minutes):
                out_of_time = True
                logger.info(f"--max_train_minutes {args.max_train_minutes:g} reached at step {global_step}: stopping.")
                if args.checkpointing_steps and global_step % args.checkpointing_steps:
                    path = save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                    logger.info(f"Saved state to {path}")
                break
    progress.close()
    return global_step


def time_is_up(accelerator: Accelerator, start_time: float, max_minutes: float) -> bool:
    """Whether ``max_minutes`` have passed since ``start_time`` (``time.monotonic``); when any process says so, all
    processes get that answer, so that all stop at the same step."""
    elapsed = time.monotonic() - start_time
    flag = torch.tensor([1.0 if elapsed >= 60.0 * max_minutes else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, "max")
    return bool(flag.item())


# ----------------------------------------------------------------------------------------------------------------
# Validation logging and the end of a run
# ----------------------------------------------------------------------------------------------------------------
def log_validation(accelerator: Accelerator, args: argparse.Namespace, result: ValidationResult, step: int) -> None:
    """Log a validation (main process): figures to the trackers and the history file, the grid to TensorBoard /
    wandb and to ``OUTPUT_DIR/validation/grid-<step>.png``."""
    figures = {f"val/{k}": v for k, v in result.metrics.items()}
    accelerator.log(figures, step=step)
    append_validation_history(args.output_dir, {"step": step, **result.metrics})
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    result.grid.save(folder / f"grid-{step:08d}.png")
    caption = " | ".join(result.columns)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("val/grid", np.asarray(result.grid), step, dataformats="HWC")
            tracker.writer.add_text("val/grid_columns", caption, step)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"val/grid": wandb.Image(result.grid, caption=caption)}, step=step)
    text = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    logger.info(f"Validation at step {step}: {text}")


def command_line(script_path: str, argv: Sequence[str] | None) -> str:
    """The command of this run, as a user would type it (for the model card)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "accelerate launch " + shlex.join([f"training/{Path(script_path).name}", *args])


def dataset_description(args: argparse.Namespace) -> tuple[str, list[str] | None]:
    """A phrase describing the training data for the card, and the Hub dataset ids for its metadata."""
    if args.dataset_name:
        hub_id = resolve_hub_id(args.dataset_name)
        return f"`{args.dataset_name}` (Hugging Face Hub dataset `{hub_id}`)", [hub_id]
    return f"the local image folder `{Path(args.train_data_dir).name}`", None


def maybe_push(args: argparse.Namespace, folder: Path) -> None:
    """Upload `folder` to ``--hub_model_id`` when ``--push_to_hub`` (main process only)."""
    if not args.push_to_hub:
        return
    url = push_folder_to_hub(folder, args.hub_model_id, private=args.hub_private_repo or None)
    logger.info(f"Uploaded {folder} to {url}")
