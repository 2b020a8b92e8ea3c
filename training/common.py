"""Script-only glue shared by ``train_neural_operator.py`` and ``train_neurop_diff.py``.

Command-line arguments common to both stages, the data splits, the Accelerate set-up, the resumable training loop,
validation logging and the final hand-over (model card, Hub upload). The pieces that are library code (losses,
checkpoints, samplers, validation figures) live in ``neurop_diff_diffusers.training_utils`` and are unit-tested there.
"""

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
from accelerate.utils import ProjectConfiguration, is_tensorboard_available, is_wandb_available
from tqdm.auto import tqdm

from neurop_diff_diffusers.data import (
    HUB_DATASET_IDS,
    HubUnavailableError,
    add_split_arguments,
    load_full_dataset,
    resolve_hub_id,
    select_split,
    split_parts,
    unique_file_names,
)
from neurop_diff_diffusers.training_utils import (
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
from neurop_diff_diffusers.utils import atomic_write_text

logger = get_logger(__name__, log_level="INFO")

SPLIT_FILE = "split.json"
#: Streams of the per-batch random generators (see `train_loop`).
_STREAM_LOSS, _STREAM_GLOBAL = 11, 12
#: Arguments that must not change when a run is resumed (a warning names those that did).
RESUME_SENSITIVE_ARGS = (
    "seed",
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_train_steps",
    "num_train_epochs",
    "learning_rate",
    "lr_scheduler",
    "dataset_name",
    "train_data_dir",
    "resolution",
    "split_method",
    "test_fraction",
    "split_seed",
    "max_train_samples",
    "scale_min",
    "scale_max",
)


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Add the arguments shared by both training scripts.

    Args:
        parser: the script's parser.
        defaults: per-script defaults for ``output_dir``, ``resolution``, ``train_batch_size``, ``learning_rate``,
            ``lr_scheduler``, ``max_train_steps``, ``num_train_epochs``, ``checkpointing_steps``,
            ``validation_steps``, ``max_grad_norm``, ``scale_min``, ``scale_max``.
    """
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help=f"A dataset of the Hugging Face Hub: {', '.join(HUB_DATASET_IDS)} (the paper's) or any hub id with an "
        "image column. Exclusive with --train_data_dir.",
    )
    data.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="A local folder of images, one sub-folder per class (e.g. ../shared/data/UCMerced_LandUse), or a local "
        "copy of a hub dataset.",
    )
    data.add_argument("--cache_dir", type=str, default=None, help="datasets cache folder for hub downloads.")
    add_split_arguments(data, "--train_data_dir")
    data.add_argument(
        "--max_train_samples", type=int, default=None, help="Use only the first N training images (debugging)."
    )
    data.add_argument(
        "--resolution",
        type=int,
        default=defaults["resolution"],
        help="Side of the HR images: each image is centre-cropped to a square and downsampled to it (never "
        "upsampled).",
    )
    data.add_argument("--scale_min", type=float, default=defaults["scale_min"], help="Smallest scale (excluded).")
    data.add_argument("--scale_max", type=float, default=defaults["scale_max"], help="Largest scale (included).")
    data.add_argument(
        "--no_augment", action="store_true", help="Disable the random flips / 90-degree rotations of the samples."
    )
    data.add_argument("--train_batch_size", type=int, default=defaults["train_batch_size"], help="Per process.")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")

    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", type=str, default=defaults["output_dir"], help="Where everything is written.")
    out.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start a new run in an --output_dir that holds an earlier run of this script (its checkpoints are "
        "deleted).",
    )
    out.add_argument("--logging_dir", type=str, default="logs", help="Tracker logs, relative to --output_dir.")
    out.add_argument(
        "--report_to",
        type=str,
        default="tensorboard",
        help="'tensorboard' (needs `pip install tensorboard`), 'wandb', 'all' or 'none'.",
    )
    out.add_argument("--tracker_project_name", type=str, default=None, help="Tracker project (default: the script).")
    out.add_argument("--push_to_hub", action="store_true", help="Upload the result to the Hub (token from HF_TOKEN).")
    out.add_argument("--hub_model_id", type=str, default=None, help="The Hub repository, 'user/name'.")
    out.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")

    train = parser.add_argument_group("training")
    train.add_argument("--seed", type=int, default=0, help="Seed of the weights, data order and all random draws.")
    train.add_argument(
        "--max_train_steps",
        type=int,
        default=defaults["max_train_steps"],
        help="Optimizer steps; overrides --num_train_epochs.",
    )
    train.add_argument("--num_train_epochs", type=int, default=defaults["num_train_epochs"])
    train.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Stop cleanly after this many minutes of training (checkpoint, EMA weights, model card), even before "
        "--max_train_steps: a run that fits a working day on a CPU or a short slot on a GPU. The LR schedule still "
        "follows --max_train_steps.",
    )
    train.add_argument("--learning_rate", type=float, default=defaults["learning_rate"])
    train.add_argument(
        "--lr_scheduler",
        type=str,
        default=defaults["lr_scheduler"],
        help="'paper' (constant for --lr_constant_fraction of the steps, then a cosine decay to --lr_min) or a "
        "diffusers schedule: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, "
        "piecewise_constant.",
    )
    train.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps (diffusers schedules).")
    train.add_argument("--lr_constant_fraction", type=float, default=0.1, help="'paper': constant part.")
    train.add_argument("--lr_min", type=float, default=1e-6, help="'paper': final learning rate.")
    train.add_argument("--lr_step_rules", type=str, default=None, help="'piecewise_constant': diffusers' rules.")
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--adam_weight_decay", type=float, default=0.0)
    train.add_argument(
        "--max_grad_norm",
        type=float,
        default=defaults["max_grad_norm"],
        help="Gradient clipping (total norm); 0 disables it.",
    )
    train.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Mixed precision (default: the accelerate config's).",
    )
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument(
        "--checkpointing_steps",
        type=int,
        default=defaults["checkpointing_steps"],
        help="Save the full training state every N steps to OUTPUT_DIR/checkpoint-<step> (0: never).",
    )
    train.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints.")
    train.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder, or 'latest' (the newest complete one in --output_dir; a new run if none).",
    )

    val = parser.add_argument_group("validation")
    val.add_argument(
        "--validation_steps",
        type=int,
        default=defaults["validation_steps"],
        help="Validate every N steps (0: only at the end).",
    )
    val.add_argument("--num_validation_images", type=int, default=4, help="Images of the validation split used.")
    val.add_argument("--validation_scale", type=float, default=4.0, help="Scale of the validation LR images.")


def check_common_args(args: argparse.Namespace) -> None:
    """Validate the common arguments; raise [`TrainingSetupError`] naming the first bad one."""
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise TrainingSetupError("Pass exactly one of `--dataset_name` (a hub dataset) and `--train_data_dir`.")
    positive = [
        "resolution",
        "train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
    ]
    for name in positive:
        value = getattr(args, name)
        if value is None or value < 1:
            raise TrainingSetupError(f"`--{name}` must be a positive integer, got {value}.")
    for name in ("max_train_steps", "max_train_samples", "checkpoints_total_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TrainingSetupError(f"`--{name}` must be a positive integer, got {value}.")
    for name in ("dataloader_num_workers", "checkpointing_steps", "validation_steps", "num_validation_images"):
        if getattr(args, name) < 0:
            raise TrainingSetupError(f"`--{name}` must be >= 0, got {getattr(args, name)}.")
    if not args.learning_rate > 0:
        raise TrainingSetupError(f"`--learning_rate` must be positive, got {args.learning_rate}.")
    if args.max_train_minutes is not None and not (0 < args.max_train_minutes < math.inf):
        raise TrainingSetupError(f"`--max_train_minutes` must be a positive number, got {args.max_train_minutes}.")
    if args.max_grad_norm < 0:
        raise TrainingSetupError(f"`--max_grad_norm` must be >= 0, got {args.max_grad_norm}.")
    if not 1.0 <= args.scale_min <= args.scale_max:
        raise TrainingSetupError(
            f"Need 1 <= `--scale_min` <= `--scale_max`, got {args.scale_min} and {args.scale_max}."
        )
    if not args.validation_scale >= 1.0:
        raise TrainingSetupError(f"`--validation_scale` must be >= 1, got {args.validation_scale}.")
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingSetupError("`--push_to_hub` needs `--hub_model_id` (the repository, 'user/name').")
    if args.report_to in ("tensorboard",) and not is_tensorboard_available():
        raise TrainingSetupError(
            "`--report_to tensorboard` needs TensorBoard, which is not installed: `pip install tensorboard`, or pass "
            "`--report_to none`."
        )
    if args.report_to == "wandb" and not is_wandb_available():
        raise TrainingSetupError("`--report_to wandb` needs wandb: `pip install wandb`, or pass `--report_to none`.")
    if args.report_to not in ("tensorboard", "wandb", "all", "none"):
        raise TrainingSetupError(f"`--report_to` must be tensorboard, wandb, all or none, got {args.report_to!r}.")


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> Any:
    """Run a script's ``main``; a [`TrainingSetupError`] ends the process with its one-line message (exit code 2)."""
    try:
        return main(argv)
    except TrainingSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


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
    from neurop_diff_diffusers.training_utils import EpochShuffleSampler

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
        args: the parsed arguments (``--learning_rate``, ``--adam_*``, ``--lr_*``, the run length).
        parameters: the parameters to optimise.
        num_batches: the dataloader's length, before ``accelerator.prepare`` shards it.
        num_processes: the number of processes (the schedule is stepped once per process and optimizer step).
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
